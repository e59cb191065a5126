"""Click prompts in the model: prompt-encoder shapes, PE consistency, no-click == text-only, clicks only,
old checkpoints (the shipped hippocampus one) load and report the parts they lack."""

from __future__ import annotations

import warnings

import pytest
import torch

from model_fixtures import load_hippocampus_case, quiet_build, shared_minilm_text, shared_tiny_text  # noqa: F401
from server_process import REPO_ROOT

SHIPPED = REPO_ROOT / "checkpoints" / "msd_hippocampus" / "refsam3d_small.pt"


@pytest.fixture(scope="module")
def small(shared_tiny_text):
    torch.manual_seed(0)
    return quiet_build("small", text_encoder=shared_tiny_text).eval()


def _clicks(b: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    points = torch.tensor([[3.0, 4.0, 5.0], [10.0, 2.0, 7.0], [0.0, 0.0, 0.0]]).expand(b, k, 3, 3).clone()
    labels = torch.tensor([1, 0, -1]).expand(b, k, 3).clone()
    return points, labels


def test_prompt_encoder_shapes_and_padding(small):
    enc = small.prompt_encoder
    norm = torch.rand(6, 4, 3)
    labels = torch.tensor([[1, 0, -1, -1]] * 6)
    tokens, valid = enc.embed_points(norm, labels)
    assert tokens.shape == (6, 4, small.config["decoder_dim"]) and valid.tolist() == [[True, True, False, False]] * 6
    assert torch.equal(tokens[:, 2], enc.not_a_point_embed.weight.expand(6, -1))  # padding: no position, own embedding
    pos_minus_neg = tokens[:, 0] - tokens[:, 1]
    assert not torch.allclose(pos_minus_neg, torch.zeros_like(pos_minus_neg))
    dense = enc.embed_mask(torch.randn(2, 1, 16, 24, 8))
    assert dense.shape == (2, small.config["decoder_dim"], 2, 3, 1)  # scaled+padded grid / patch 8
    assert torch.count_nonzero(dense) == 0  # last conv zero-initialised: changes nothing at start


def test_point_pe_uses_the_decoder_grid_pe(small):
    """A click at a token's centre voxel gets exactly the PE the decoder gives that token (same matrix,
    same normalisation, through scaling and padding)."""
    from lib.model.prompt_encoder import normalise_points

    assert small.prompt_encoder.pe_layer is small.mask_decoder.pe_layer  # shared, not a copy
    assert not any(k.startswith("prompt_encoder.pe") for k in small.state_dict())  # stored once, by the decoder
    grid = (2, 3, 2)  # 13x20x9 -> padded 16x24x16 -> tokens 2x3x2
    pe = small.mask_decoder.pe_layer(grid)  # [C, 2, 3, 2]
    centres = torch.tensor([[[3.5, 3.5, 3.5], [11.5, 19.5, 11.5]]])  # voxel centres of tokens (0,0,0) and (1,2,1)
    norm = normalise_points(centres, (13, 20, 9), (13, 20, 9), (16, 24, 16))
    got = small.prompt_encoder.encode_coords(norm)[0]
    assert torch.allclose(got[0], pe[:, 0, 0, 0], atol=1e-5) and torch.allclose(got[1], pe[:, 1, 2, 1], atol=1e-5)
    # input_scale 2: voxel v of a 5-voxel axis covers (v + 0.5) * 2 in the 10-voxel scaled axis, padded to 16
    scaled = normalise_points(torch.tensor([[2.0, 2.0, 2.0]]), (5, 5, 5), (10, 10, 10), (16, 16, 16))
    assert torch.allclose(scaled, torch.full((1, 3), 5.0 / 16))


def test_no_clicks_is_bit_identical_to_text_only(small):
    x = torch.rand(2, 1, 13, 20, 9)
    prompts = ["anterior hippocampus", "left kidney"]
    with torch.no_grad():
        enc = small.encode_image(x)
        text_only = small.decode(enc, prompts)
        same = small.decode(enc, prompts, points=None, point_labels=None, previous_mask=None)
        via_forward = small(x, prompts)
    assert torch.equal(text_only, same) and torch.equal(text_only, via_forward)
    points, labels = _clicks(2, 2)
    with torch.no_grad():
        clicked = small.decode(enc, prompts, points, labels)
        zero_mask = small.decode(enc, prompts, previous_mask=torch.randn(2, 2, 13, 20, 9))
    assert clicked.shape == text_only.shape and not torch.allclose(clicked, text_only)  # clicks change the answer
    assert torch.allclose(zero_mask, text_only, atol=1e-5)  # untrained mask prompt: zero contribution


def test_clicks_only_and_mixed_prompts(small):
    x = torch.rand(1, 1, 16, 16, 16)
    points, labels = _clicks(1, 2)
    with torch.no_grad():
        enc = small.encode_image(x)
        clicks_only = small.decode(enc, None, points, labels)
        mixed = small.decode(enc, [None, "left kidney"], points, labels, previous_mask=torch.randn(1, 2, 16, 16, 16))
        text = small.decode(enc, ["left kidney"], points[:, 1:], labels[:, 1:])
    assert clicks_only.shape == mixed.shape == (1, 2, 16, 16, 16) and torch.isfinite(clicks_only).all()
    assert torch.allclose(mixed[:, 1:], text, atol=1e-5)  # the text entry is unaffected by the text-less one
    assert torch.allclose(mixed[:, 0], clicks_only[:, 0], atol=1e-5)  # zero-initialised mask prompt
    # per-(image, prompt) clicks: different clicks for the second image give a different answer there only
    x2 = x.expand(2, -1, -1, -1, -1)
    p2, l2 = _clicks(2, 1)
    p2[1, 0, 0] = torch.tensor([12.0, 12.0, 12.0])
    with torch.no_grad():
        y2 = small.decode(small.encode_image(x2), [None], p2, l2)
    assert torch.allclose(y2[0], clicks_only[0, :1], atol=1e-5) and not torch.allclose(y2[1], y2[0])


def _perturbed_click_head(model, seed: int = 0) -> dict:
    """Random weights in the click head's zero-initialised last layer; returns the saved state to restore."""
    saved = {k: v.clone() for k, v in model.click_refinement.state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    last = model.click_refinement.hypernetwork.layers[-1]
    with torch.no_grad():
        last.weight.copy_(torch.randn(last.weight.shape, generator=g))
        last.bias.copy_(torch.randn(last.bias.shape, generator=g))
    return saved


def test_click_refinement_starts_as_no_change_and_edits_only_near_clicks(small):
    """Untrained, the local click head adds exactly nothing; with weights, it changes the logits only in the box
    around each valid click (padding clicks and clicks far outside the window edit nothing)."""
    x = torch.rand(1, 1, 32, 32, 32)
    points = torch.tensor([[[[4.0, 5.0, 6.0], [100.0, 100.0, 100.0], [20.0, 20.0, 20.0]]]])  # [1, 1, 3, 3]
    labels = torch.tensor([[[1, 0, -1]]])  # the far click is negative; the third is padding
    head = small.click_refinement
    assert torch.count_nonzero(head.hypernetwork.layers[-1].weight) == 0
    with torch.no_grad():
        enc = small.encode_image(x)
        untrained = small.decode(enc, ["a"], points, labels)
        head.forward = lambda logits, *args: logits  # the same model without the head
        try:
            without_head = small.decode(enc, ["a"], points, labels)
        finally:
            del head.forward
    assert torch.equal(untrained, without_head)
    saved = _perturbed_click_head(small)
    try:
        with torch.no_grad():
            edited = small.decode(enc, ["a"], points, labels)
    finally:
        head.load_state_dict(saved)
    changed = (edited != untrained)[0, 0]
    r = head.radius()
    near = torch.zeros_like(changed)
    near[max(0, 4 - r):4 + r + 1, max(0, 5 - r):5 + r + 1, max(0, 6 - r):6 + r + 1] = True
    assert changed.any() and not (changed & ~near).any(), (r, changed.nonzero().max(0).values)


def test_click_refinement_learns_from_the_click_loss(small):
    """The zero-initialised head still gets a gradient in its last layer from a click step (the window width gets
    none until that layer is non-zero)."""
    x = torch.rand(1, 1, 16, 16, 16)
    points, labels = _clicks(1, 1)
    small.train()
    try:
        y = small(x, ["a"], points=points, point_labels=labels)
        (y * torch.randn_like(y)).sum().backward()
    finally:
        small.eval()
    last = small.click_refinement.hypernetwork.layers[-1]
    assert torch.count_nonzero(last.weight.grad) > 0 and torch.count_nonzero(last.bias.grad) > 0
    small.zero_grad(set_to_none=True)


def test_click_gradients_reach_the_prompt_encoder(small):
    x = torch.rand(1, 1, 16, 16, 16)
    points, labels = _clicks(1, 1)
    small.train()
    try:
        y = small(x, [None], points=points, point_labels=labels, previous_mask=torch.randn(1, 1, 16, 16, 16))
        y.mean().backward()
    finally:
        small.eval()
    pe = small.prompt_encoder
    grads = [pe.point_embeddings[1].weight.grad, pe.no_text_embed.weight.grad, pe.mask_downscaling[-1].weight.grad]
    assert all(g is not None and torch.count_nonzero(g) > 0 for g in grads)
    small.zero_grad(set_to_none=True)


def test_bad_clicks_fail_clearly(small):
    x = torch.rand(1, 1, 8, 8, 8)
    enc = small.encode_image(x)
    with pytest.raises(ValueError, match="points must be"):
        small.decode(enc, ["a"], torch.zeros(1, 1, 3), torch.ones(1, 1))
    with pytest.raises(ValueError, match="point_labels must be"):
        small.decode(enc, ["a"], torch.zeros(1, 1, 2, 3), torch.ones(1, 1, 3))
    with pytest.raises(ValueError, match="1 \\(positive\\)"):
        small.decode(enc, ["a"], torch.zeros(1, 1, 1, 3), torch.full((1, 1, 1), 2))
    with pytest.raises(ValueError, match="previous_mask must be"):
        small.decode(enc, ["a"], previous_mask=torch.zeros(1, 1, 4, 4, 4))
    with pytest.raises(ValueError, match="no prompt"):
        small.decode(enc, None)


def test_checkpoint_without_clicks_loads_reports_missing_parts_and_text_is_unchanged(hippocampus_dir, shared_minilm_text,
                                                                                      tmp_path):
    """A checkpoint written before clicks existed (the shipped one with its ``prompt_encoder.*`` entries removed, as
    the text-only version in git history is): it loads, says so, and its text answers do not depend on the new parts
    (perturbing them changes nothing) and still segment."""
    from lib.model import load_checkpoint

    old = torch.load(SHIPPED, map_location="cpu", weights_only=False)
    new_parts = ("prompt_encoder.", "click_refinement.")
    old["state_dict"] = {k: v for k, v in old["state_dict"].items() if not k.startswith(new_parts)}
    torch.save(old, tmp_path / "text_only.pt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_checkpoint(tmp_path / "text_only.pt", text_encoder=shared_minilm_text).eval()
    assert sorted(model.checkpoint_missing_parts) == ["click_refinement", "prompt_encoder"]
    assert any("prompt_encoder" in str(w.message) and "click_refinement" in str(w.message) for w in caught)
    assert torch.count_nonzero(model.prompt_encoder.mask_downscaling[-1].weight) == 0
    x, y = load_hippocampus_case(hippocampus_dir, "hippocampus_004")
    prompts = [e["prompt"] for e in model.checkpoint_extra["label_set"]["labels"]]
    with torch.no_grad():
        enc = model.encode_image(x)
        before = model.decode(enc, prompts)
        for p in model.prompt_encoder.parameters():
            p.add_(torch.randn_like(p))
        after = model.decode(enc, prompts)
        with_mask = model.decode(enc, prompts, previous_mask=before)
    assert torch.equal(before, after)
    assert not torch.allclose(with_mask, before)  # the perturbed mask prompt is live
    pred = (before > 0).float()
    dice = 2 * (pred * y).sum((2, 3, 4)) / (pred.sum((2, 3, 4)) + y.sum((2, 3, 4)))
    assert float(dice.mean()) > 0.8, dice
