"""CUDA checks (skipped without a GPU): autocast bf16/fp16 forward, a bf16 training step, encode/decode reuse."""

from __future__ import annotations

import pytest
import torch

from model_fixtures import quiet_build, shared_tiny_text  # noqa: F401 (fixture)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("preset,size", [("vit_b", 64), ("small", 40)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_forward(preset, size, dtype, shared_tiny_text, sam_vit_b_checkpoint):
    torch.manual_seed(0)
    model = quiet_build(preset, sam_checkpoint=sam_vit_b_checkpoint if preset == "vit_b" else None,
                        text_encoder=shared_tiny_text).cuda().eval()
    x = torch.rand(2, 1, size, size + 8, size - 8, device="cuda")
    with torch.inference_mode():
        ref = model(x, ["liver", "spleen"]).float()
        with torch.autocast("cuda", dtype=dtype):
            enc = model.encode_image(x)
            y = model.decode(enc, ["liver", "spleen"]).float()
    assert y.shape == ref.shape == (2, 2, size, size + 8, size - 8) and torch.isfinite(y).all()
    assert ((y > 0) == (ref > 0)).float().mean() > 0.97


@pytest.mark.parametrize("preset", ["vit_b", "small"])
def test_bf16_training_step(preset, shared_tiny_text, sam_vit_b_checkpoint):
    torch.manual_seed(0)
    model = quiet_build(preset, sam_checkpoint=sam_vit_b_checkpoint if preset == "vit_b" else None,
                        text_encoder=shared_tiny_text).cuda().train()
    x = torch.rand(2, 1, 48, 48, 48, device="cuda")
    target = (torch.rand(2, 2, 48, 48, 48, device="cuda") > 0.9).float()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(x, ["liver", "spleen"])
    torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), target).backward()
    bad = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert not bad, bad[:5]
