"""``--conf precision``: which dtype the image encoding runs in, and that bf16 encodings decode like float32 ones."""

from __future__ import annotations

import pytest
import torch


def test_auto_precision_is_bf16_only_where_it_is_fast(monkeypatch):
    import lib.precision as precision

    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert precision.resolve_precision("auto", "cpu") is None  # no native bf16: float32
    assert precision.resolve_precision("bfloat16", "cpu") is torch.bfloat16  # unless asked for
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert precision.resolve_precision("auto", "cpu") is torch.bfloat16  # AVX512-BF16
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"amx_bf16", "amx_tile"}))
    assert precision.resolve_precision("auto", "cpu") is torch.bfloat16  # AMX
    assert precision.resolve_precision("float32", "cpu") is None
    assert precision.resolve_precision(" BFloat16 ", "cpu") is torch.bfloat16
    if not torch.cuda.is_available():
        assert precision.resolve_precision("auto", "cuda") is None  # no GPU here: no bf16 claim for it
    with pytest.raises(ValueError, match="precision must be one of auto, float32, bfloat16"):
        precision.resolve_precision("fp8", "cpu")


def test_bad_precision_conf_is_refused_with_its_name(tmp_path):
    from lib.configs.refsam3d import ConfError, RefSAM3DConfig

    with pytest.raises(ConfError, match="precision"):
        RefSAM3DConfig().init("refsam3d", str(tmp_path), {"preset": "small", "label_set": "msd_hippocampus",
                                                          "precision": "half"}, None)


def test_bf16_encoding_is_stored_as_float32_and_float16_and_decodes_like_float32(tiny_text_encoder):
    from lib.inference import sliding_window_segment
    from lib.model import build_refsam3d

    torch.manual_seed(0)
    model = build_refsam3d("small", text_encoder=str(tiny_text_encoder)).eval()
    image = torch.rand(1, 1, 40, 36, 24)
    with torch.no_grad():  # make the untrained decoder's answer non-trivial: a positive bias on the fine term
        model.mask_decoder.output_hypernetworks_mlp.layers[-1].bias[-1] += 0.05
    ref_store, bf16_store = {}, {}
    ref = sliding_window_segment(model, image, ["liver"], (32, 32, 32), 0.25, encodings=ref_store)
    out = sliding_window_segment(model, image, ["liver"], (32, 32, 32), 0.25, encodings=bf16_store,
                                 precision=torch.bfloat16)
    enc = next(iter(bf16_store.values()))
    assert all(s.dtype == torch.float32 for s in enc.stages) and enc.mask_features.dtype == torch.float16
    assert out.shape == ref.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert not torch.equal(out, ref)  # the encoder really ran in bf16
    assert (out - ref).abs().max() < 0.1 and ((out > 0.5) == (ref > 0.5)).float().mean() > 0.97
