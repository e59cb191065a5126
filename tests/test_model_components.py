"""RefSAM3D components one by one: patch embedding, positions, 3D windows, adapter, text encoder."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model_fixtures import shared_minilm_text, shared_tiny_text, tiny_clip_text_encoder  # noqa: F401 (fixtures)


# ----------------------------------------------------------------------------- patch embedding / positions
def test_patch_embedding_is_sam_2d_conv_for_depth_constant_patches():
    from lib.model.image_encoder import PatchEmbed3D
    from lib.model.sam_checkpoint import fold_patch_embedding

    torch.manual_seed(0)
    w2d, b2d = torch.randn(8, 3, 16, 16), torch.randn(8)
    pe = PatchEmbed3D(16, 1, 8)
    with torch.no_grad():
        pe.proj.weight.copy_(fold_patch_embedding(w2d, 16))
        pe.proj.bias.copy_(b2d)
    slice2d = torch.rand(1, 1, 32, 48)
    vol = slice2d[:, :, None].expand(1, 1, 16, 32, 48)  # constant over depth
    tokens = pe(vol)
    assert tokens.shape == (1, 1, 2, 3, 8)  # [B, D/16, H/16, W/16, C]
    sam = F.conv2d(slice2d.expand(1, 3, 32, 48), w2d, b2d, stride=16)  # gray replicated to RGB, as SAM sees it
    torch.testing.assert_close(tokens[0, 0], sam[0].permute(1, 2, 0), rtol=1e-4, atol=1e-4)
    assert pe.depth_conv.groups == 8 and tuple(pe.depth_conv.kernel_size) == (16, 1, 1)


def test_positional_tables_resize():
    from lib.model.image_encoder import ImageEncoderViT3D

    enc = ImageEncoderViT3D(patch_size=4, embed_dim=16, depth=1, num_heads=2, out_chans=8, window_size=0,
                            global_attn_indexes=(0,), stage_indexes=(0,), pos_embed_size=6, depth_embed_size=5, adapter_dim=4)
    assert not enc.pos_embed_depth.any()  # learnable depth table starts at zero
    assert enc.positional_embedding((5, 6, 6)).shape == (1, 5, 6, 6, 16)
    torch.testing.assert_close(enc.positional_embedding((5, 6, 6))[0, 2], enc.pos_embed[0])  # native size: SAM's table
    assert enc.positional_embedding((3, 4, 7)).shape == (1, 3, 4, 7, 16)


# ----------------------------------------------------------------------------- 3D windows
def _block(window: int, shift: bool):
    from lib.model.image_encoder import Block3D

    torch.manual_seed(0)
    blk = Block3D(16, 2, window_size=window, shift=shift, rel_pos_hw_size=3, rel_pos_d_size=3, adapter_dim=0).eval()
    with torch.no_grad():
        for p in (blk.attn.rel_pos_h, blk.attn.rel_pos_w, blk.attn.rel_pos_d):
            p.normal_()
    return blk


def test_window_attention_equals_attention_per_window():
    blk = _block(3, shift=False)
    x = torch.randn(1, 6, 3, 9, 16)
    with torch.no_grad():
        out = blk.window_attention(x)
        for d in (0, 3):
            for w in (0, 3, 6):
                win = x[:, d:d + 3, :, w:w + 3]
                torch.testing.assert_close(out[:, d:d + 3, :, w:w + 3], blk.attn(win), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("grid", [(6, 6, 6), (7, 5, 8)])
def test_shifted_windows_only_mix_tokens_of_the_same_shifted_window(grid):
    """Perturbing one token changes exactly the tokens of its (shifted, non-wrapped) window."""
    from lib.model.image_encoder import balanced_window

    blk = _block(3, shift=True)
    x = torch.randn(1, *grid, 16)
    ws = [balanced_window(g, 3) for g in grid]
    src = (1, 2, 2)
    with torch.no_grad():
        base = blk.window_attention(x)
        x2 = x.clone()
        x2[0, src[0], src[1], src[2]] += 5.0
        changed = (blk.window_attention(x2) - base).abs().sum(-1)[0] > 1e-6
    expected = torch.ones(grid, dtype=torch.bool)
    for axis, (g, w) in enumerate(zip(grid, ws)):
        s = w // 2 if w < g else 0
        idx = torch.arange(g)
        win = (idx - s) // w if s else idx // w  # window index in shifted coords (no wrap for these tokens)
        shape = [1, 1, 1]
        shape[axis] = g
        expected &= (win == win[src[axis]]).view(shape)
    assert torch.equal(changed, expected)


def test_padded_windows_ignore_padding():
    """A window that needs padding gives the same result as attention over its real tokens only."""
    blk = _block(3, shift=False)
    x = torch.randn(1, 5, 3, 3, 16)  # depth 5 -> 2 windows of 3, the second one padded by 1
    with torch.no_grad():
        blk.attn.rel_pos_d.zero_()  # the reference below has depth 2, which would resize the depth table
        out = blk.window_attention(x)
        torch.testing.assert_close(out[:, :3], blk.attn(x[:, :3]), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out[:, 3:], blk.attn(x[:, 3:]), rtol=1e-5, atol=1e-5)
    from lib.model.image_encoder import window_mask3d

    allowed = window_mask3d((5, 3, 3), (6, 3, 3), (3, 3, 3), (0, 0, 0), torch.device("cpu"))
    assert allowed is not None and allowed.shape == (2, 27, 27)
    assert allowed[0].all() and allowed[1][:18, :18].all() and not allowed[1][:18, 18:].any()  # depth 5 is padding


def test_window_size_covering_the_grid_is_global_attention():
    blk = _block(8, shift=True)
    x = torch.randn(2, 5, 6, 7, 16)
    with torch.no_grad():
        torch.testing.assert_close(blk.window_attention(x), blk.attn(x))


def test_attention_matches_sam_formula_for_one_slice():
    """With depth 1 the 3D attention is SAM's 2D attention (same qkv, proj, rel_pos_h/w)."""
    from segment_anything.modeling.image_encoder import Attention as SamAttention

    blk = _block(0, shift=False)
    sam = SamAttention(16, 2, use_rel_pos=True, input_size=(3, 3)).eval()
    sam.load_state_dict({k: v for k, v in blk.attn.state_dict().items() if k != "rel_pos_d"})
    x = torch.randn(2, 1, 5, 4, 16)
    with torch.no_grad():
        torch.testing.assert_close(blk.attn(x)[:, 0], sam(x[:, 0]), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- adapter / decoder pieces
def test_adapter_starts_as_identity_and_is_depthwise():
    from lib.model.adapter import Adapter3D

    ad = Adapter3D(32, 8)
    x = torch.randn(1, 3, 4, 5, 32)
    torch.testing.assert_close(ad(x), x)
    assert ad.dwconv.groups == 8 and ad.down.out_features == 8 and ad.up.in_features == 8


def test_patch_conv_transpose_equals_conv_transpose3d():
    from lib.model.common import PatchConvTranspose3d

    torch.manual_seed(0)
    for s in (2, 4):
        m = PatchConvTranspose3d(6, 5, s)
        x = torch.randn(2, 6, 3, 4, 2)
        ref = F.conv_transpose3d(x, m.weight, m.bias, stride=s)
        torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)
        extra = torch.randn(2, 1, *ref.shape[2:])
        torch.testing.assert_close(m(x, extra=extra), torch.cat([ref, extra], 1), rtol=1e-5, atol=1e-5)


def test_mask_projection_from_float16_features_equals_the_float32_einsum():
    """The server's cached float16 mask features are projected slab by slab: the same numbers as one einsum."""
    from lib.model.mask_decoder import project_mask_features

    torch.manual_seed(0)
    m16 = torch.randn(2, 16, 9, 12, 10).to(torch.float16).contiguous(memory_format=torch.channels_last_3d)
    weights, bias = torch.randn(2, 3, 16), torch.randn(2, 3)
    ref = torch.einsum("bcdhw,bkc->bkdhw", m16.float(), weights) + bias[..., None, None, None]
    with torch.no_grad():
        for slab_voxels in (1, 120, 1 << 18):  # one depth slice per slab, a few slices, one slab
            out = project_mask_features(m16, weights, bias, slab_voxels=slab_voxels)
            assert out.dtype == torch.float32 and out.shape == (2, 3, 9, 12, 10)
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    w = weights.clone().requires_grad_()  # with autograd: one einsum, gradients flow
    project_mask_features(m16.float(), w, bias).sum().backward()
    assert w.grad is not None and torch.isfinite(w.grad).all()


@pytest.mark.parametrize("shape,size", [((8, 1, 8, 8, 8), (128, 128, 128)), ((2, 3, 5, 7, 4), (40, 21, 17)),
                                        ((1, 2, 3, 4, 5), (3, 8, 2))])
def test_separable_trilinear_upsampling_equals_interpolate(shape, size):
    from lib.model.common import upsample_trilinear

    torch.manual_seed(0)
    x = torch.randn(shape, requires_grad=True)
    ref = F.interpolate(x, size=size, mode="trilinear", align_corners=False)
    out = upsample_trilinear(x, size)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    out.sum().backward()  # differentiable, for training
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_pixel_decoder_in_place_activation_matches_training_mode(shared_tiny_text):
    """Without gradients the last GELU runs in place: the same mask features as with autograd."""
    from lib.model import build_refsam3d

    torch.manual_seed(0)
    model = build_refsam3d("small", text_encoder=shared_tiny_text).eval()
    x = torch.rand(1, 1, 24, 16, 16)
    stages = model.image_encoder(x)
    with_grad = model.pixel_decoder(stages, x)
    with torch.no_grad():
        without = model.pixel_decoder([s.detach() for s in stages], x)
    torch.testing.assert_close(without, with_grad.detach())


# ----------------------------------------------------------------------------- text encoder
def test_minilm_text_encoder_offline(shared_minilm_text):
    enc = shared_minilm_text
    enc.clear_cache()
    out = enc(["liver", "left kidney with a large cyst"])
    assert out.tokens.shape[0] == 2 and out.tokens.shape[-1] == 384 and out.sentence.shape == (2, 384)
    assert out.mask[0].sum() < out.mask[1].sum() and not out.tokens[0][~out.mask[0]].any()
    m = out.mask[1][:, None].float()
    torch.testing.assert_close(out.sentence[1], (out.tokens[1] * m).sum(0) / m.sum())  # masked mean
    assert not any(p.requires_grad for p in enc.parameters()) and not enc.model.training
    again = enc(["left kidney with a large cyst"])  # from the cache
    torch.testing.assert_close(again.sentence[0], out.sentence[1])


def test_clip_text_tower_is_used(tiny_clip_text_encoder):
    from lib.model import TextEncoder

    enc = TextEncoder(tiny_clip_text_encoder)
    assert type(enc.model).__name__ == "CLIPTextModel" and enc.use_pooler and enc.hidden_size == 32
    out = enc(["liver", "spleen and pancreas"])
    assert out.sentence.shape == (2, 32) and out.tokens.shape[:2] == out.mask.shape


def test_missing_text_encoder_fails_clearly(tmp_path):
    from lib.model import TextEncoder

    with pytest.raises(RuntimeError, match="local folder") as err:
        TextEncoder(str(tmp_path / "no-such-model"))
    assert "no-such-model" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RuntimeError, match="not a Hugging Face text model"):
        TextEncoder(tmp_path / "empty")


def test_default_text_encoder_offline_fails_clearly(monkeypatch):
    from lib.model import DEFAULT_TEXT_ENCODER, build_refsam3d

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network attempt (without it: the same error after HF's retries)
    with pytest.raises(RuntimeError, match="local folder") as err:
        build_refsam3d("small")
    assert DEFAULT_TEXT_ENCODER == "openai/clip-vit-base-patch16" and DEFAULT_TEXT_ENCODER in str(err.value)
