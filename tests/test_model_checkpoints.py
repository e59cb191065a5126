"""SAM checkpoint mapping/validation and save/load of our own RefSAM3D checkpoints."""

from __future__ import annotations

import os
import re
import stat

import pytest
import torch

from model_fixtures import quiet_build, shared_tiny_text, vit_b_sam  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def sam_sd(sam_vit_b_checkpoint):
    return torch.load(sam_vit_b_checkpoint, map_location="cpu", weights_only=True)


# ----------------------------------------------------------------------------- official SAM checkpoint
def test_every_reused_sam_tensor_equals_the_checkpoint(vit_b_sam, sam_sd):
    own = vit_b_sam.state_dict()
    reused = 0
    for key, value in sam_sd.items():
        if key == "image_encoder.patch_embed.proj.weight":
            torch.testing.assert_close(own[key], value.sum(1, keepdim=True)[:, :, None], rtol=0, atol=0)  # RGB folded
        elif key == "mask_decoder.mask_tokens.weight":
            assert torch.equal(own[key], value[:1])
        elif key.startswith("image_encoder.blocks.") or key in ("image_encoder.pos_embed", "image_encoder.patch_embed.proj.bias") \
                or key.startswith("mask_decoder.transformer."):
            assert torch.equal(own[key], value), key
        else:
            continue
        reused += 1
    assert reused == 1 + 1 + 1 + 12 * 14 + 1 + len([k for k in sam_sd if k.startswith("mask_decoder.transformer.")])
    assert vit_b_sam.sam_initialised


def test_sam_mapping_exact_key_sets(vit_b_sam, sam_vit_b_checkpoint, sam_sd, shared_tiny_text):
    from lib.model import load_sam_checkpoint

    report = load_sam_checkpoint(vit_b_sam, sam_vit_b_checkpoint)  # same weights again: idempotent
    unused = {k for k in sam_sd if k.startswith(("prompt_encoder.", "image_encoder.neck.")) or
              re.match(r"mask_decoder\.(iou_token|iou_prediction_head|output_upscaling|output_hypernetworks_mlps)", k)}
    assert report.unused == unused and len(unused) > 20
    assert set(report.reused) == set(sam_sd) - unused
    own = {k for k in vit_b_sam.state_dict() if not k.startswith("text_encoder.")}
    assert report.missing == own - set(report.reused)
    families = (r"image_encoder\.patch_embed\.depth_conv\..*", r"image_encoder\.pos_embed_depth", r"image_encoder\.blocks\.\d+\.attn\.rel_pos_d",
                r"image_encoder\.blocks\.\d+\.adapter\..*", r"image_encoder\.necks\..*", r"text_projector\..*", r"cross_attention\..*",
                r"pixel_decoder\..*", r"mask_decoder\.(pe_layer|output_hypernetworks_mlp|coarse_mlp)\..*",
                r"prompt_encoder\..*",  # our 3D click encoder: SAM's 2D prompt encoder is not reused
                r"click_refinement\..*")  # local click edits: new
    assert all(any(re.fullmatch(f, k) for f in families) for k in report.missing)
    for key in ("image_encoder.patch_embed.depth_conv.weight", "image_encoder.pos_embed_depth", "image_encoder.blocks.11.attn.rel_pos_d",
                "image_encoder.blocks.0.adapter.dwconv.weight", "image_encoder.necks.3.2.weight", "text_projector.fc1.weight",
                "cross_attention.stages.3.q_proj.weight", "pixel_decoder.final.weight", "mask_decoder.pe_layer.positional_encoding_gaussian_matrix",
                "click_refinement.log_sigma"):
        assert key in report.missing, key
    # frozen exactly = reused SAM encoder tensors (decoder transformer stays trainable)
    frozen = {k for k, p in vit_b_sam.named_parameters() if not p.requires_grad and not k.startswith("text_encoder.")}
    assert frozen == {k for k in report.reused if k.startswith("image_encoder.")}


def test_wrong_sam_files_fail_clearly(tmp_path, sam_vit_b_checkpoint, shared_tiny_text):
    from lib.model import SamCheckpointError, build_refsam3d

    def build(path):
        return build_refsam3d("vit_b", sam_checkpoint=path, text_encoder=shared_tiny_text)

    with pytest.raises(SamCheckpointError, match="does not exist"):
        build(tmp_path / "nope.pth")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(sam_vit_b_checkpoint.read_bytes()[: 20_000_000])
    with pytest.raises(SamCheckpointError, match="truncated"):
        build(truncated)
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(SamCheckpointError, match="not a readable PyTorch checkpoint"):
        build(text)
    other = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(3)}, other)
    with pytest.raises(SamCheckpointError, match="not a SAM checkpoint"):
        build(other)
    vit_l = tmp_path / "sam_vit_l.pth"
    fake = {"image_encoder.patch_embed.proj.weight": torch.zeros(1024, 3, 16, 16)}
    fake.update({f"image_encoder.blocks.{i}.norm1.weight": torch.zeros(1) for i in range(24)})
    torch.save(fake, vit_l)
    with pytest.raises(SamCheckpointError, match=r"ViT-L checkpoint.*sam_vit_b_01ec64\.pth"):
        build(vit_l)
    with pytest.raises(SamCheckpointError, match="vit_b architecture"):
        build_refsam3d("small", sam_checkpoint=sam_vit_b_checkpoint, text_encoder=shared_tiny_text)


# ----------------------------------------------------------------------------- our checkpoints
def test_small_checkpoint_roundtrip(tmp_path, shared_tiny_text):
    from lib.model import load_checkpoint, read_checkpoint, save_checkpoint

    torch.manual_seed(0)
    m = quiet_build("small", text_encoder=shared_tiny_text, embed_dim=64, decoder_dim=32, drop_path_rate=0.1).eval()
    path = save_checkpoint(m, tmp_path / "sub" / "model.pt", extra={"labels": {"liver": 1}, "epoch": 3})
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # atomic: no temporary file left
    payload = read_checkpoint(path)
    assert not any(k.startswith("text_encoder.") for k in payload["state_dict"])
    m2 = load_checkpoint(path, text_encoder=shared_tiny_text)
    assert m2.config == m.config and m2.checkpoint_extra == {"labels": {"liver": 1}, "epoch": 3}
    x = torch.rand(1, 1, 9, 13, 8)
    with torch.no_grad():
        torch.testing.assert_close(m2.eval()(x, ["liver", "spleen"]), m(x, ["liver", "spleen"]))


def test_saved_checkpoint_gets_the_mode_open_would_give_and_keeps_a_replaced_files_mode(tmp_path, shared_tiny_text):
    """Atomic writes go through a temporary file: the published file must still be readable as usual."""
    from lib.model import save_checkpoint, update_checkpoint_extra

    m = quiet_build("small", text_encoder=shared_tiny_text, embed_dim=32, decoder_dim=16)
    old_umask = os.umask(0o022)
    try:
        path = save_checkpoint(m, tmp_path / "model.pt")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644  # as open() + umask 022 would create it
        os.chmod(path, 0o640)
        save_checkpoint(m, path)  # replacing a published model keeps the mode it was given
        update_checkpoint_extra(path, test_evaluation={"mean_dice": 0.5})
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
        os.umask(0o077)
        assert stat.S_IMODE(save_checkpoint(m, tmp_path / "private.pt").stat().st_mode) == 0o600
    finally:
        os.umask(old_umask)


def test_update_checkpoint_extra_keeps_weights(tmp_path, shared_tiny_text):
    from lib.model import CheckpointError, read_checkpoint, save_checkpoint, update_checkpoint_extra

    torch.manual_seed(0)
    m = quiet_build("small", text_encoder=shared_tiny_text, embed_dim=64, decoder_dim=32)
    path = save_checkpoint(m, tmp_path / "model.pt", extra={"epoch": 3, "test_evaluation": {"dice": 0.1}})
    before = read_checkpoint(path)
    update_checkpoint_extra(path, test_evaluation={"dice": 0.9}, split_file="split.json")
    after = read_checkpoint(path)
    assert after["extra"] == {"epoch": 3, "test_evaluation": {"dice": 0.9}, "split_file": "split.json"}
    assert after["config"] == before["config"] and after["state_dict"].keys() == before["state_dict"].keys()
    assert all(torch.equal(after["state_dict"][k], v) for k, v in before["state_dict"].items())
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # atomic: no temporary file left
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):  # refuses to "update" a file that is not a RefSAM3D checkpoint
        update_checkpoint_extra(junk, epoch=1)
    assert junk.read_bytes() == b"not a checkpoint"


def test_vit_b_checkpoint_excludes_sam_tensors(tmp_path, vit_b_sam, sam_vit_b_checkpoint, shared_tiny_text):
    from lib.model import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint

    path = save_checkpoint(vit_b_sam, tmp_path / "vit_b.pt")
    stored = set(read_checkpoint(path)["state_dict"])
    assert stored == {k for k in vit_b_sam.state_dict() if k not in vit_b_sam.frozen_state_keys()}
    assert "image_encoder.blocks.0.attn.qkv.weight" not in stored and "image_encoder.blocks.0.adapter.up.weight" in stored
    with pytest.raises(CheckpointError, match="sam_checkpoint"):
        load_checkpoint(path, text_encoder=shared_tiny_text)
    m2 = load_checkpoint(path, sam_checkpoint=sam_vit_b_checkpoint, text_encoder=shared_tiny_text).eval()
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(m2(x, ["liver"]), vit_b_sam(x, ["liver"]))


def test_bad_own_checkpoints_fail_clearly(tmp_path, sam_vit_b_checkpoint, shared_tiny_text):
    from lib.model import CheckpointError, load_checkpoint, save_checkpoint

    m = quiet_build("small", text_encoder=shared_tiny_text, embed_dim=32, decoder_dim=16, depth=2, stage_indexes=[0, 1])
    good = save_checkpoint(m, tmp_path / "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(truncated, text_encoder=shared_tiny_text)
    with pytest.raises(CheckpointError, match="SAM checkpoint"):
        load_checkpoint(sam_vit_b_checkpoint)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
    other = tmp_path / "other.pt"
    torch.save({"format": "something-else"}, other)
    with pytest.raises(CheckpointError, match="not a RefSAM3D checkpoint"):
        load_checkpoint(other)


def test_checkpoints_from_other_code_versions_fail_with_a_version_message(tmp_path, shared_tiny_text):
    from lib.model import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
    from lib.model.checkpoint import ARCH_VERSION

    m = quiet_build("small", text_encoder=shared_tiny_text, embed_dim=32, decoder_dim=16, depth=2, stage_indexes=[0, 1])
    path = save_checkpoint(m, tmp_path / "current.pt")
    payload = read_checkpoint(path)
    assert payload["arch_version"] == ARCH_VERSION
    newer = tmp_path / "newer.pt"
    torch.save({**payload, "arch_version": ARCH_VERSION + 1}, newer)
    with pytest.raises(CheckpointError, match=rf"architecture version {ARCH_VERSION + 1}, this code has version {ARCH_VERSION}"):
        load_checkpoint(newer, text_encoder=shared_tiny_text)
    # an untagged file (written before versions existed) whose tensors were renamed since
    untagged = {k: v for k, v in payload.items() if k != "arch_version"}
    untagged["state_dict"] = {k.replace("mask_decoder.", "old_decoder."): v for k, v in payload["state_dict"].items()}
    old = tmp_path / "old.pt"
    torch.save(untagged, old)
    with pytest.raises(CheckpointError, match="older RefSAM3D code version"):
        load_checkpoint(old, text_encoder=shared_tiny_text)
    # an untagged file that still fits loads
    fits = tmp_path / "fits.pt"
    torch.save({k: v for k, v in payload.items() if k != "arch_version"}, fits)
    assert load_checkpoint(fits, text_encoder=shared_tiny_text).config == m.config


def test_checkpoint_without_later_options_loads_as_built(tmp_path, shared_tiny_text):
    """A file written before ``image_skip_channels`` / ``drop_path_rate`` existed (no key in its config) rebuilds
    without image skips and without stochastic depth."""
    from lib.model import load_checkpoint, read_checkpoint, save_checkpoint

    m = quiet_build("small", text_encoder=shared_tiny_text, embed_dim=32, decoder_dim=16, depth=2, stage_indexes=[0, 1],
                    image_skip_channels=[]).eval()
    payload = read_checkpoint(save_checkpoint(m, tmp_path / "plain.pt"))
    payload["config"].pop("image_skip_channels")
    payload["config"].pop("drop_path_rate")
    old = tmp_path / "before_option.pt"
    torch.save(payload, old)
    m2 = load_checkpoint(old, text_encoder=shared_tiny_text).eval()
    assert m2.config["image_skip_channels"] == [] and len(m2.pixel_decoder.image_stem) == 0
    assert m2.config["drop_path_rate"] == 0.0
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(m2(x, ["liver"]), m(x, ["liver"]))
