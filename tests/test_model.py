"""RefSAM3D network: shapes, prompts, determinism, freezing/gradients, components (CPU, small inputs)."""

from __future__ import annotations

import pytest
import torch

from model_fixtures import quiet_build, shared_minilm_text, shared_tiny_text, vit_b_sam  # noqa: F401 (fixtures)

PROMPTS = ["anterior hippocampus", "posterior hippocampus", "left kidney"]


@pytest.fixture(scope="module")
def small(shared_tiny_text):
    torch.manual_seed(0)
    return quiet_build("small", text_encoder=shared_tiny_text).eval()


# ----------------------------------------------------------------------------- public interface
def test_shapes_small_non_cubic_batch_and_prompts(small):
    x = torch.rand(2, 1, 19, 30, 13)  # non-cubic, not multiples of the patch (8)
    with torch.no_grad():
        y = small(x, PROMPTS)
    assert y.shape == (2, 3, 19, 30, 13) and y.dtype == torch.float32 and torch.isfinite(y).all()
    assert small.size_divisor == 8


def test_shapes_vit_b_non_multiple_of_16(vit_b_sam):
    x = torch.rand(2, 1, 20, 35, 17)
    with torch.no_grad():
        y = vit_b_sam(x, PROMPTS[:2])
    assert y.shape == (2, 2, 20, 35, 17) and torch.isfinite(y).all()
    assert vit_b_sam.size_divisor == 16
    with torch.no_grad():
        enc = vit_b_sam.encode_image(x)
    assert [tuple(s.shape) for s in enc.stages] == [(2, 256, 2, 3, 2)] * 4  # token grid = padded size / 16
    assert tuple(enc.mask_features.shape[2:]) == (32, 48, 32)  # 4 x2 upsamplings back to the padded input


def test_patch_size_and_input_scale_overrides(shared_tiny_text, sam_vit_b_checkpoint):
    from lib.model import build_refsam3d

    m = build_refsam3d("vit_b", sam_checkpoint=sam_vit_b_checkpoint, text_encoder=shared_tiny_text, patch_size=8, input_scale=2.0).eval()
    assert m.size_divisor == 4 and m.config["decoder_channels"] == [128, 64, 32]  # log2(8) = 3 upsamplings
    assert tuple(m.image_encoder.patch_embed.proj.weight.shape) == (768, 1, 1, 8, 8)
    x = torch.rand(1, 1, 10, 13, 9)
    with torch.no_grad():
        enc = m.encode_image(x)
        y = m.decode(enc, ["liver"])
    assert enc.stages[0].shape[2:] == (3, 4, 3)  # 20x26x18 scaled -> padded 24x32x24 -> /8
    assert y.shape == (1, 1, 10, 13, 9)


def test_bad_inputs_and_options_fail_clearly(small, shared_tiny_text):
    with pytest.raises(ValueError, match=r"\[B, 1, D, H, W\]"):
        small(torch.rand(1, 3, 8, 8, 8), ["x"])
    with pytest.raises(TypeError, match="list of strings"):
        small(torch.rand(1, 1, 8, 8, 8), "liver")
    with pytest.raises(ValueError, match="valid options") as err:
        quiet_build("small", text_encoder=shared_tiny_text, not_an_option=3)
    assert "patch_size" in str(err.value)
    with pytest.raises(ValueError, match="unknown RefSAM3D preset"):
        quiet_build("vit_h", text_encoder=shared_tiny_text)


def test_config_is_json_and_rebuilds(small):
    import json

    from lib.model import resolve_config

    cfg = json.loads(json.dumps(small.config))
    assert cfg["preset"] == "small" and cfg["text_encoder"] == small.text_encoder.name_or_path
    rebuilt = resolve_config("small", {k: v for k, v in cfg.items() if k not in ("preset", "text_encoder")})
    assert {**rebuilt, "text_encoder": cfg["text_encoder"]} == cfg


def test_encode_once_decode_many_prompts(small):
    calls = []
    handle = small.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        x = torch.rand(1, 1, 16, 20, 12)
        with torch.no_grad():
            enc = small.encode_image(x)
            assert len(calls) == 1
            a = small.decode(enc, PROMPTS)
            b = small.decode(enc, PROMPTS[1:2])
            full = small(x, PROMPTS)
        assert len(calls) == 2  # decode never re-runs the encoder (only the final forward did)
    finally:
        handle.remove()
    torch.testing.assert_close(a, full)
    torch.testing.assert_close(b[:, 0], a[:, 1], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(a[:, 0], a[:, 1])  # different prompts give different masks


def test_text_padding_does_not_change_result(small, shared_minilm_text):
    m = quiet_build("small", text_encoder=shared_minilm_text).eval()
    x = torch.rand(1, 1, 12, 16, 12)
    with torch.no_grad():
        enc = m.encode_image(x)
        m.text_encoder.clear_cache()
        alone = m.decode(enc, ["liver"])
        m.text_encoder.clear_cache()  # now "liver" is encoded in a padded batch with a long prompt
        padded = m.decode(enc, ["a much longer prompt about the left adrenal gland and its tumour", "liver"])
    torch.testing.assert_close(padded[:, 1], alone[:, 0], rtol=1e-4, atol=1e-4)


def test_eval_is_deterministic(small):
    x = torch.rand(2, 1, 12, 12, 16)
    with torch.no_grad():
        a = small(x, PROMPTS)
        small.text_encoder.clear_cache()
        b = small(x, PROMPTS)
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------- freezing / gradients
def _perturb_zero_init(model):
    """Zero-initialised trainable tensors (adapter ``up``, depth tables) block some gradients at step 0."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.trainable_parameters():
            if not p.any():
                p.add_(torch.randn(p.shape, generator=g) * 1e-2)


def test_gradients_reach_every_trainable_and_no_frozen_parameter(sam_vit_b_checkpoint, shared_tiny_text):
    from lib.model import build_refsam3d

    torch.manual_seed(0)
    m = build_refsam3d("vit_b", sam_checkpoint=sam_vit_b_checkpoint, text_encoder=shared_tiny_text, window_size=2)
    _perturb_zero_init(m)
    m.train()
    # 3x4x2 tokens: windowed + shifted blocks run; a text prompt and a clicks-only one (positive, negative and
    # padding clicks) with a previous mask, so that every part of the click prompt encoder is used
    points = torch.tensor([[5.0, 9.0, 3.0], [30.0, 40.0, 20.0], [0.0, 0.0, 0.0]]).expand(1, 2, 3, 3)
    y = m(torch.rand(1, 1, 48, 64, 32), [PROMPTS[0], None], points=points, point_labels=torch.tensor([1, 0, -1]).expand(1, 2, 3),
          previous_mask=torch.randn(1, 2, 48, 64, 32))
    (y.sigmoid() * torch.linspace(0, 1, y.numel()).view_as(y)).sum().backward()
    names = {p: n for n, p in m.named_parameters()}
    no_grad = [names[p] for p in m.trainable_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    # padding clicks are masked out of attention by design: their embedding (SAM's name) never reaches the output
    no_grad = [n for n in no_grad if n != "prompt_encoder.not_a_point_embed.weight"]
    assert not no_grad, f"trainable parameters without gradient: {no_grad[:10]}"
    frozen_with_grad = [n for n, p in m.named_parameters() if not p.requires_grad and p.grad is not None]
    assert not frozen_with_grad
    enc_frozen = {n for n, p in m.image_encoder.named_parameters() if not p.requires_grad}
    assert "patch_embed.proj.weight" in enc_frozen and "pos_embed" in enc_frozen and "blocks.0.attn.qkv.weight" in enc_frozen
    assert "blocks.0.attn.rel_pos_h" in enc_frozen and "blocks.0.mlp.lin1.weight" in enc_frozen and "blocks.11.norm2.bias" in enc_frozen
    for n in ("patch_embed.depth_conv.weight", "pos_embed_depth", "blocks.0.attn.rel_pos_d", "blocks.0.adapter.down.weight", "necks.3.0.weight"):
        assert n not in enc_frozen
    assert all(not p.requires_grad for p in m.text_encoder.parameters())


def test_vit_b_trainable_share(vit_b_sam):
    rep = vit_b_sam.parameter_report()
    assert rep["trainable"] == sum(p.numel() for p in vit_b_sam.trainable_parameters())
    assert 5e6 < rep["trainable"] < 0.25 * rep["total_without_text_encoder"]
    assert rep["share"] == pytest.approx(rep["trainable"] / rep["total"])


def test_small_preset_trains_encoder_but_not_text(small):
    assert all(p.requires_grad for p in small.image_encoder.parameters())
    assert not any(p.requires_grad for p in small.text_encoder.parameters())


def test_train_mode_keeps_text_encoder_in_eval(small):
    small.train()
    try:
        assert small.image_encoder.training and not small.text_encoder.training and not small.text_encoder.model.training
    finally:
        small.eval()


def test_image_skips_feed_the_decoder_at_full_and_half_resolution(shared_tiny_text):
    """``image_skip_channels`` (small's default [8, 16]): conv features of the image join the decoder at full and
    1/2 resolution; without them (the paper, vit_b) the image joins only the last conv."""
    plain = quiet_build("small", text_encoder=shared_tiny_text, image_skip_channels=[])
    skips = quiet_build("small", text_encoder=shared_tiny_text)
    assert skips.config["image_skip_channels"] == [8, 16] and len(skips.pixel_decoder.image_stem) == 2
    assert sorted(skips.pixel_decoder.image_fuse) == ["2", "3"]  # levels 2 (1/2 res) and 3 (full res) of 3
    assert len(plain.pixel_decoder.image_stem) == 0
    x = torch.rand(1, 1, 16, 24, 16, requires_grad=True)
    y = skips.train()(x, PROMPTS)
    assert y.shape == (1, len(PROMPTS), 16, 24, 16)
    y.sum().backward()
    stem = skips.pixel_decoder.image_stem[0].conv1.conv.weight
    assert stem.grad is not None and stem.grad.abs().sum() > 0  # the stem is trained


def test_stochastic_depth_acts_in_training_only(shared_tiny_text):
    """``drop_path_rate`` (stochastic depth, 0 .. rate linearly over the blocks): random residual drops while
    training; in eval the model is exactly the same network as without it."""
    from monai.networks.layers import DropPath

    kw = dict(text_encoder=shared_tiny_text, embed_dim=32, decoder_dim=16, depth=3, stage_indexes=[0, 1, 2])
    torch.manual_seed(0)
    dropped = quiet_build("small", drop_path_rate=0.5, **kw)
    plain = quiet_build("small", **kw)
    assert plain.config["drop_path_rate"] == 0.0 and dropped.config["drop_path_rate"] == 0.5
    rates = [b.drop_path.drop_prob if isinstance(b.drop_path, DropPath) else 0.0 for b in dropped.image_encoder.blocks]
    assert rates == [0.0, 0.25, 0.5]
    plain.load_state_dict(dropped.state_dict())  # same parameters: stochastic depth adds none
    x = torch.rand(4, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(dropped.eval()(x, ["liver"]), plain.eval()(x, ["liver"]))
        dropped.train()
        torch.manual_seed(1)
        a = dropped(x, ["liver"])
        torch.manual_seed(2)
        b = dropped(x, ["liver"])
    assert not torch.allclose(a, b)
