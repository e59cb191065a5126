"""Clicks without a server: the two viewers' request formats, validation, the coordinate mapping through the real
pre-processing, and decoder-only reruns on the touched windows with the real (small, untrained) network."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from model_fixtures import quiet_build, shared_tiny_text  # noqa: F401 (fixture)

from lib.infers.clicks import MAX_CLICKS, check_inside, drop_free_text_from_auto, parse_click_request, to_model_grid
from lib.infers.prompt_parsing import PromptParser
from lib.labelsets import parse_label_set
from lib.errors import Unprocessable
from lib.transforms import load_transforms

LABEL_SET = parse_label_set({"name": "t", "labels": [{"name": "spleen", "index": 1, "prompt": "CT images, spleen"},
                                                     {"name": "liver", "index": 5, "prompt": "CT images, liver"}]})
PARSER = PromptParser(LABEL_SET)


def test_ohif_vista3d_body():
    # PointPrompts.tsx: the selected segment's clicks, then the background ones; label_prompt = its /info index
    body = {"points": [[10, 20, 5], [11, 21, 5], [40, 2, 7]], "point_labels": [1, 1, 0], "label_prompt": [5],
            "text_prompt": "", "threshold": 0.5, "result_extension": ".nrrd", "result_dtype": "uint8"}
    req = parse_click_request(body, PARSER)
    assert (req.name, req.value, req.text, req.mode) == ("liver", 5, "CT images, liver", "text+clicks")
    assert req.points.tolist() == [[10, 20, 5], [11, 21, 5], [40, 2, 7]] and req.labels.tolist() == [1, 1, 0]
    only = parse_click_request({**body, "clicks_only": True}, PARSER)
    assert (only.name, only.value, only.text, only.mode) == ("liver", 5, None, "clicks")
    free = parse_click_request({**body, "label_prompt": [255]}, PARSER)  # the "free text prompt" segment, no text
    assert (free.name, free.value, free.mode) == ("free text prompt", 255, "clicks")
    typed = parse_click_request({**body, "label_prompt": [255], "text_prompt": "left kidney cyst"}, PARSER)
    assert (typed.name, typed.value, typed.text) == ("left kidney cyst", 255, "left kidney cyst")
    assert parse_click_request({**body, "points": [], "point_labels": []}, PARSER) is None  # no clicks: text path


def test_slicer_deepgrow_body():
    # MONAILabel.py onClickDeepgrow: label (segment name), foreground, background + every config option
    body = {"label": "Spleen", "foreground": [[3, 4, 5]], "background": [[6, 7, 8], [1, 1, 1]],
            "text_prompt": "", "threshold": 0.5, "clicks_only": False, "result_extension": ".nrrd"}
    req = parse_click_request(body, PARSER)
    assert (req.name, req.value, req.mode) == ("spleen", 1, "text+clicks")
    assert req.labels.tolist() == [1, 0, 0] and req.points.tolist() == [[3, 4, 5], [6, 7, 8], [1, 1, 1]]
    seg = parse_click_request({**body, "label": "Segment_1"}, PARSER)  # a segment the label set does not know
    assert (seg.name, seg.value, seg.mode) == ("Segment_1", 255, "clicks")
    assert parse_click_request({**body, "label": "Segment_1", "text_prompt": "liver"}, PARSER).value == 5


@pytest.mark.parametrize("body,message", [
    ({"points": [[1, "a", 3]], "point_labels": [1]}, "finite numbers"),
    ({"points": [[1, 2, float("nan")]], "point_labels": [1]}, "finite numbers"),
    ({"points": [[1, 2]], "point_labels": [1]}, "3 voxel coordinates"),
    ({"points": "1,2,3", "point_labels": [1]}, "must be a list"),
    ({"points": [[1, 2, 3], [4, 5, 6]], "point_labels": [1]}, "point_labels has 1"),
    ({"points": [[1, 2, 3]]}, "point_labels has 0"),
    ({"points": [[1, 2, 3]], "point_labels": [2]}, "1 (positive) or 0"),
    ({"points": [[1, 2, 3]], "point_labels": [True]}, "1 (positive) or 0"),
    ({"points": [[1, 2, 3]] * (MAX_CLICKS + 1), "point_labels": [1] * (MAX_CLICKS + 1)}, f"at most {MAX_CLICKS}"),
    ({"foreground": [[1, 2, 3]] * 40, "background": [[1, 2, 3]] * 40}, f"at most {MAX_CLICKS}"),
    ({"points": [[1, 2, 3]], "point_labels": [1], "foreground": [[1, 2, 3]]}, "not both"),
    ({"points": [[1, 2, 3]], "point_labels": [1], "label_prompt": [1, 5]}, "one label"),
    ({"points": [[1, 2, 3]], "point_labels": [1], "label_prompt": [7]}, "not in label set"),
])
def test_bad_clicks_are_422(body, message):
    with pytest.raises(Unprocessable, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        parse_click_request(body, PARSER)
    assert err.value.status_code == 422


def test_clicks_outside_the_volume():
    check_inside(np.array([[0, 0, 0], [9, 19, 29], [9.4, 0, 0]]), (10, 20, 30))
    for p in ([10, 0, 0], [0, -1, 0], [0, 0, 29.6]):
        with pytest.raises(Unprocessable, match="outside the image: it has 10 x 20 x 30 voxels"):
            check_inside(np.array([p], dtype=float), (10, 20, 30))


def test_vista3d_auto_segmentation_drops_the_free_text_index():
    # OHIF sends every /info index for Auto-segmentation of a vista3d model, 255 (free text prompt) included
    assert drop_free_text_from_auto({"label_prompt": [0, 1, 5, 255]}, 255)["label_prompt"] == [1, 5]
    assert drop_free_text_from_auto({"label_prompt": [255]}, 255)["label_prompt"] == [255]  # asked for alone: 422 later
    assert drop_free_text_from_auto({"label_prompt": [0, 1, 255], "text_prompt": "x"}, 255)["label_prompt"] == [1, 255]


def test_clicks_map_through_orientation_and_resampling(tmp_path):
    """A bright voxel clicked in the file's own grid (LPS-like axes, 2 x 1 x 3 mm) lands on the bright voxel of
    the pre-processed (RAS, 1 mm) volume."""
    data = np.zeros((20, 30, 12), np.float32)
    click = (13, 7, 4)
    data[click] = 1000.0
    affine = np.diag([-2.0, -1.0, 3.0, 1.0])
    affine[:3, 3] = (40.0, 25.0, -10.0)
    path = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(path))
    d = {"image": str(path)}
    for t in load_transforms("CT", (1.0, 1.0, 1.0), ct_window=(0, 1000)):
        d = t(d)
    image = d["image"]
    assert tuple(image.shape[1:]) != data.shape  # really re-oriented and resampled
    grid = to_model_grid(np.array([click], float), np.asarray(image.meta["original_affine"]),
                         np.asarray(image.affine), image.shape[1:])[0]
    peak = np.unravel_index(int(torch.argmax(image[0])), image.shape[1:])
    assert np.abs(np.asarray(peak) - grid).max() <= 0.5, (peak, grid)


@pytest.fixture(scope="module")
def small_model(shared_tiny_text):  # noqa: F811
    torch.manual_seed(0)
    return quiet_build("small", text_encoder=shared_tiny_text).eval()


def test_only_the_touched_windows_are_decoded(small_model):
    from lib.click_inference import click_probabilities

    torch.manual_seed(1)
    image = torch.rand(1, 96, 40, 40)
    base = torch.rand(96, 40, 40)
    encodings: dict = {}
    probs, stats = click_probabilities(small_model, image, "CT images, liver", np.array([[5.0, 5.0, 5.0]]),
                                       np.array([1]), (32, 32, 32), "auto", base=base, encodings=encodings)
    assert stats.total == 16 and stats.decoded == 1 and stats.encoded == 1 and stats.clicks_used == 1
    assert len(encodings) == 1  # only the touched window was encoded
    assert torch.equal(probs[40:], base[40:])  # far from the click: the base answer, untouched
    assert not torch.allclose(probs[:8, :8, :8], base[:8, :8, :8])  # the touched window: the decoder's answer
    again, stats2 = click_probabilities(small_model, image, "CT images, liver", np.array([[5.0, 5.0, 5.0], [90.0, 35.0, 35.0]]),
                                        np.array([1, 0]), (32, 32, 32), "auto", base=base, encodings=encodings)
    assert stats2.decoded == 2 and stats2.encoded == 1  # the first window's encoding is reused
    assert torch.allclose(again[:8, :8, :8], probs[:8, :8, :8], atol=1e-5)  # same window, same clicks: same answer
    _, same = click_probabilities(small_model, image, "CT images, liver", np.array([[5.0, 5.0, 5.0]]), np.array([1]),
                                  (32, 32, 32), "auto", base=base, previous=base, encodings=encodings)
    assert same.decoded == 1  # a previous mask equal to the base answer (first click on a text answer) adds nothing
    prev = torch.zeros(96, 40, 40)
    prev[50, 20, 20] = 0.9  # what an earlier click grew (clicks only: the base is empty) is decoded again too
    _, stats3 = click_probabilities(small_model, image, None, np.array([[5.0, 5.0, 5.0]]), np.array([1]),
                                    (32, 32, 32), "auto", previous=prev, encodings=encodings)
    assert stats3.decoded > 1 and stats3.total == 16


def test_mirrored_clicks_average_the_flipped_pass_of_flipped_clicks(small_model):
    """The server decodes clicks as it mirrors the text answer: the plain pass and the pass on the image flipped
    left-right, with the clicks, base and previous answer flipped too, averaged back in the image's own grid."""
    from lib.click_inference import click_probabilities, mirrored_click_probabilities

    torch.manual_seed(2)
    image = torch.rand(1, 80, 40, 40)
    base, previous = torch.rand(80, 40, 40), torch.rand(80, 40, 40)
    points, labels = np.array([[5.0, 7.0, 9.0], [60.0, 30.0, 12.0]]), np.array([1, 0])
    args = ("CT images, liver", points, labels, (32, 32, 32), "auto")
    plain, _ = click_probabilities(small_model, image, *args, base=base, previous=previous)
    flipped_points = points.copy()
    flipped_points[:, 0] = 79.0 - flipped_points[:, 0]  # the same voxels, counted from the other end
    flipped, _ = click_probabilities(small_model, image.flip(1), "CT images, liver", flipped_points, labels,
                                     (32, 32, 32), "auto", base=base.flip(0), previous=previous.flip(0))
    assert not torch.allclose(plain, flipped.flip(0), atol=1e-3)  # a random model: the passes differ
    encodings: dict = {}
    mirrored, stats = mirrored_click_probabilities(small_model, image, *args, base=base, previous=previous,
                                                   mirror_axes=(0,), encodings=encodings)
    torch.testing.assert_close(mirrored, (plain + flipped.flip(0)) / 2)
    assert stats.decoded == stats.encoded == len(encodings)  # every touched window of both passes, encoded once
    assert {k[0] == "flip" for k in encodings} == {True, False}  # each pass decodes its own cached windows
    one, _ = mirrored_click_probabilities(small_model, image, *args, base=base, previous=previous, mirror_axes=())
    torch.testing.assert_close(one, plain)


def test_click_protocol_decodes_as_the_server_mirrors(small_model):
    """``evaluate.py --clicks`` with mirroring: each answer the mean of the plain pass and the flipped pass (flipped
    clicks and previous answer), as logits of that mean, so the protocol scores what the server answers."""
    from lib.evaluation_clicks import MirroredDecoding

    torch.manual_seed(3)
    x = torch.rand(1, 1, 32, 32, 32)
    points = torch.tensor([[[[3.0, 10.0, 20.0], [28.0, 5.0, 6.0]]]])  # [1, K=1, P=2, 3]
    labels = torch.tensor([[[1, 0]]])
    previous = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        mirrored = MirroredDecoding(small_model, (0,))
        out = mirrored.decode(mirrored.encode_image(x), ["liver"], points, labels, previous_mask=previous)
        plain = torch.sigmoid(small_model.decode(small_model.encode_image(x), ["liver"], points, labels,
                                                 previous_mask=previous))
        flipped_points = points.clone()
        flipped_points[..., 0] = 31.0 - flipped_points[..., 0]
        flipped = torch.sigmoid(small_model.decode(small_model.encode_image(x.flip(2)), ["liver"], flipped_points,
                                                   labels, previous_mask=previous.flip(2))).flip(2)
    assert not torch.allclose(plain, flipped, atol=1e-3)
    torch.testing.assert_close(torch.sigmoid(out), ((plain + flipped) / 2).clamp(1e-4, 1 - 1e-4), atol=1e-5, rtol=1e-4)
