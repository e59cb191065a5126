"""Extra fixtures and helpers for the RefSAM3D model tests (conftest.py is the lead's)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session")
def shared_tiny_text(tiny_text_encoder: Path):
    """One built tiny TextEncoder shared by the tests (frozen, so sharing is safe)."""
    from lib.model import TextEncoder

    return TextEncoder(tiny_text_encoder)


@pytest.fixture(scope="session")
def shared_minilm_text(minilm_text_encoder: Path):
    from lib.model import TextEncoder

    return TextEncoder(minilm_text_encoder)


@pytest.fixture(scope="session")
def vit_b_sam(sam_vit_b_checkpoint: Path, shared_tiny_text):
    """vit_b built from the (random, full-size) SAM ViT-B checkpoint; do not modify in tests."""
    from lib.model import build_refsam3d

    torch.manual_seed(0)
    return build_refsam3d("vit_b", sam_checkpoint=sam_vit_b_checkpoint, text_encoder=shared_tiny_text).eval()


@pytest.fixture(scope="session")
def tiny_clip_text_encoder(tmp_path_factory: pytest.TempPathFactory, minilm_text_encoder: Path) -> Path:
    """A tiny random CLIPModel (text + vision) saved with save_pretrained, with MiniLM's tokenizer."""
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    out = tmp_path_factory.mktemp("tiny-clip")
    tok = AutoTokenizer.from_pretrained(str(minilm_text_encoder))
    cfg = CLIPConfig(
        text_config=dict(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, eos_token_id=tok.sep_token_id,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=16),
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def load_hippocampus_case(root: Path, case: str = "hippocampus_004") -> tuple[torch.Tensor, torch.Tensor]:
    """One MSD hippocampus case: image ``[1, 1, D, H, W]`` (0.5-99.5 percentiles -> [0, 1]) and
    label ``[1, 2, D, H, W]`` (anterior, posterior)."""
    import nibabel as nib

    img = np.asarray(nib.load(str(root / "imagesTr" / f"{case}.nii.gz")).dataobj).astype(np.float32)
    lab = np.asarray(nib.load(str(root / "labelsTr" / f"{case}.nii.gz")).dataobj).astype(np.int64)
    lo, hi = np.percentile(img, [0.5, 99.5])
    img = np.clip((img - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    x = torch.from_numpy(img)[None, None]
    y = torch.stack([torch.from_numpy(lab == 1), torch.from_numpy(lab == 2)]).float()[None]
    return x, y


def dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Hard Dice per (batch, channel): ``[B, K]``."""
    pred = (logits > 0).float()
    inter = (pred * target).sum((2, 3, 4))
    return 2 * inter / (pred.sum((2, 3, 4)) + target.sum((2, 3, 4))).clamp(min=1e-6)


def quiet_build(*args, **kwargs):
    """build_refsam3d without the 'no SAM weights' warning (expected in tests)."""
    from lib.model import build_refsam3d

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return build_refsam3d(*args, **kwargs)
