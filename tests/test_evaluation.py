"""Evaluation metrics against hand-computed cases, and the report files on real hippocampus volumes."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from lib.evaluation import case_metrics, evaluate, probs_to_masks, summarise, write_reports
from model_fixtures import shared_tiny_text  # noqa: F401 (fixture)


def _cube(shape=(10, 10, 10), lo=(2, 2, 2), size=4):
    m = torch.zeros(shape, dtype=torch.bool)
    m[lo[0]:lo[0] + size, lo[1]:lo[1] + size, lo[2]:lo[2] + size] = True
    return m


def test_shifted_cube_dice_nsd_hd95_by_hand():
    """4^3 cube vs the same cube shifted by one voxel along the last axis.

    Dice = 2*48/(64+64) = 0.75. Each cube has 56 boundary voxels; in both directions 36 boundary
    voxels lie on the other boundary (distance 0) and 20 at distance 1, so HD95 = 1, NSD(tol 1) = 1
    and NSD(tol 0.5) = (36+36)/(56+56) = 0.642857.
    """
    gt = _cube()[None]
    pred = _cube(lo=(2, 2, 3))[None]
    m = case_metrics(pred, gt, spacing=(1, 1, 1), nsd_tolerance=1.0)
    assert m["dice"][0] == pytest.approx(0.75)
    assert m["hd95"][0] == pytest.approx(1.0)
    assert m["nsd"][0] == pytest.approx(1.0)
    m = case_metrics(pred, gt, nsd_tolerance=0.5)
    assert m["nsd"][0] == pytest.approx(72 / 112)


def test_spacing_scales_distances():
    """Shift along axis 0 whose voxels are 2 mm long: the 16 voxels of the far face are 2 mm from the
    other boundary; 4 face voxels now find the other boundary 1 mm away sideways (was 1 along axis 0
    too), so within 1 mm: 36 + 4 per direction -> NSD = 80/112, HD95 = 2 mm."""
    gt = _cube()[None]
    pred = _cube(lo=(3, 2, 2))[None]
    m = case_metrics(pred, gt, spacing=(2.0, 1.0, 1.0), nsd_tolerance=1.0)
    assert m["hd95"][0] == pytest.approx(2.0)
    assert m["nsd"][0] == pytest.approx(80 / 112)
    assert case_metrics(pred, gt, spacing=(2.0, 1.0, 1.0), nsd_tolerance=2.0)["nsd"][0] == pytest.approx(1.0)


def test_empty_structures_conventions():
    gt = torch.zeros(3, 8, 8, 8, dtype=torch.bool)
    pred = gt.clone()
    gt[0, 2:4, 2:4, 2:4] = True  # label 0: missed entirely
    pred[1, 1:3, 1:3, 1:3] = True  # label 1: predicted but absent
    # label 2: absent in both -> a correct "not here"
    m = case_metrics(pred, gt)
    assert m["dice"] == [0.0, 0.0, 1.0]
    assert m["nsd"] == [0.0, 0.0, 1.0]
    assert math.isnan(m["hd95"][0]) and math.isnan(m["hd95"][1]) and m["hd95"][2] == 0.0
    s = summarise([{"labels": {"a": {"dice": 0.5, "nsd": 1.0, "hd95": float("nan")}}},
                   {"labels": {"a": {"dice": 1.0, "nsd": 0.5, "hd95": 3.0}}}], ["a"])
    assert s["per_label"]["a"]["dice_mean"] == 0.75 and s["per_label"]["a"]["hd95_mean"] == 3.0
    assert s["per_label"]["a"]["hd95_undefined"] == 1 and s["mean"]["nsd"] == 0.75


def test_probs_to_masks_gives_one_label_per_voxel():
    probs = torch.tensor([[0.9, 0.6, 0.2, 0.5], [0.8, 0.7, 0.3, 0.1]]).view(2, 1, 1, 4)
    m = probs_to_masks(probs)
    assert m[:, 0, 0].tolist() == [[True, False, False, True], [False, True, False, False]]
    assert probs_to_masks(probs, exclusive=False)[:, 0, 0].tolist() == [[True, True, False, True],
                                                                        [True, True, False, False]]


class _Oracle:
    """Returns the ground truth of the cases in order (and the swapped labels per prompt)."""

    def __init__(self, datalist, entries):
        from lib.training import val_transforms
        from lib.training.prompts import label_map_to_binary

        xf = val_transforms("MR", (1.0, 1.0, 1.0))
        self.gts = [label_map_to_binary(torch.as_tensor(xf(dict(d))["label"]), entries) for d in datalist]
        self.i = self.j = 0

    def segment(self, image):
        gt = self.gts[self.i]
        self.i += 1
        assert tuple(image.shape[2:]) == tuple(gt.shape[1:])  # the whole volume, not a crop
        return gt

    def segment_each(self, image):
        gt = self.gts[self.j]
        self.j += 1
        return gt.flip(0)  # prompt "anterior" answers with the posterior structure and vice versa


def test_evaluate_writes_json_csv_png(hippocampus_dir, tmp_path):
    from lib.training import LabelEntry, msd_datalist

    datalist = msd_datalist(hippocampus_dir)[:2]
    entries = [LabelEntry("anterior hippocampus", 1, "a"), LabelEntry("posterior hippocampus", 2, "p")]
    result = evaluate(_Oracle(datalist, entries), datalist, [e.name for e in entries], [1, 2], "MR",
                      (1.0, 1.0, 1.0), nsd_tolerance=1.0, cross_prompts=True, info={"what": "oracle"})
    assert result["num_cases"] == 2 and result["info"] == {"what": "oracle"}
    for name in ("anterior hippocampus", "posterior hippocampus"):
        assert result["per_label"][name]["dice_mean"] == pytest.approx(1.0)
        assert result["per_label"][name]["nsd_mean"] == pytest.approx(1.0)
        assert result["per_label"][name]["hd95_mean"] == pytest.approx(0.0)
    routing = result["routing"]
    assert routing["dice_matrix"][0][0] == 0.0 and routing["dice_matrix"][0][1] == pytest.approx(1.0)
    assert routing["swapped_dice_mean"] == pytest.approx(1.0)

    paths = write_reports(result, tmp_path / "out", stem="eval")
    data = json.loads(open(paths["json"]).read())
    assert data["mean"]["dice"] == pytest.approx(1.0) and len(data["cases"]) == 2
    rows = list(csv.DictReader(open(paths["csv"])))
    assert len(rows) == 2 * 2 + 2  # per case and label + one mean row per label
    assert {r["case"] for r in rows} == {datalist[0]["id"], datalist[1]["id"], "MEAN"}
    assert open(paths["png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_mirror_averaged_is_the_mean_over_flips_flipped_back():
    from lib.inference import mirror_averaged

    image = torch.arange(2 * 3 * 4, dtype=torch.float32).view(1, 1, 2, 3, 4)

    def predict(x):  # not flip-equivariant: depends on position along axis 1 (tensor dim 3)
        return x.cumsum(dim=3)

    torch.testing.assert_close(mirror_averaged(predict, image, ()), predict(image))
    expected = (predict(image) + predict(image.flip(3)).flip(3)) / 2
    torch.testing.assert_close(mirror_averaged(predict, image, [1]), expected)
    both = mirror_averaged(predict, image, [0, 1])
    flips = [[], [2], [3], [2, 3]]
    manual = sum(predict(image.flip(d)).flip(d) if d else predict(image) for d in flips) / 4
    torch.testing.assert_close(both, manual)
    with pytest.raises(ValueError, match="spatial axes"):
        mirror_averaged(predict, image, [3])


def test_keep_largest_removes_islands_per_label():
    from lib.evaluation import keep_largest

    masks = torch.zeros(2, 10, 10, 10, dtype=torch.bool)
    masks[0] = _cube(lo=(1, 1, 1), size=4)
    masks[0, 8, 8, 8] = True  # an island of label 0
    masks[1, 7:9, 0:2, 0:2] = True  # label 1: one piece, smaller than label 0's: kept
    out = keep_largest(masks)
    assert out.dtype == torch.bool and out.shape == masks.shape
    assert torch.equal(out[0], _cube(lo=(1, 1, 1), size=4)) and torch.equal(out[1], masks[1])


class _FixedProbs:
    """An ensemble member whose probabilities are given (the ``predict_probs`` interface of the adapters)."""

    def __init__(self, probs: torch.Tensor, names=("anterior hippocampus", "posterior hippocampus")):
        from lib.training import LabelEntry

        self.probs = probs
        self.entries = [LabelEntry(n, i + 1, n) for i, n in enumerate(names)]
        self.threshold = 0.5
        self.device = torch.device("cpu")
        self.prompts_seen: list[list[str]] = []

    def predict_probs(self, image, prompts):
        self.prompts_seen.append(list(prompts))
        return self.probs


def test_ensemble_thresholds_the_mean_of_its_members():
    from lib.training import EnsembleSegmenter

    shape = (2, 3, 3, 3)
    a = torch.full(shape, 0.3)  # alone: nothing
    b = torch.full(shape, 0.9)  # alone: everything
    a[1], b[1] = 0.1, 0.2  # posterior channel low in both
    a[0, 0, 0, 0], b[0, 0, 0, 0] = 0.05, 0.9  # mean 0.475: below the threshold
    members = [_FixedProbs(a), _FixedProbs(b)]
    ensemble = EnsembleSegmenter(members)
    image = torch.zeros(1, 1, 3, 3, 3)
    torch.testing.assert_close(ensemble.predict_probs(image, ["p0", "p1"]), (a + b) / 2)
    masks, each = ensemble.segment_and_each(image)
    expected = torch.zeros(shape, dtype=torch.bool)
    expected[0] = True
    expected[0, 0, 0, 0] = False
    assert torch.equal(masks, expected) and torch.equal(each, expected)
    assert members[0].prompts_seen[-1] == [e.prompt for e in members[0].entries]  # label prompts, in order


def test_ensemble_refuses_members_with_other_labels():
    from lib.training import EnsembleSegmenter

    probs = torch.zeros(2, 2, 2, 2)
    with pytest.raises(ValueError, match="same labels"):
        EnsembleSegmenter([_FixedProbs(probs), _FixedProbs(probs, names=("liver", "spleen"))])
    with pytest.raises(ValueError, match="at least one"):
        EnsembleSegmenter([])


class _OracleWithBlob(_Oracle):
    """The ground truth plus a detached 5x5x5 blob of label 0 in a corner (a typical false-positive island)."""

    def segment(self, image):
        pred = super().segment(image).clone()
        assert not pred[:, :6, :6, :6].any()
        pred[0, :5, :5, :5] = True
        return pred


def test_largest_component_option_removes_a_planted_island(hippocampus_dir):
    from lib.training import LabelEntry, msd_datalist

    datalist = msd_datalist(hippocampus_dir)[:1]
    entries = [LabelEntry("anterior hippocampus", 1, "a"), LabelEntry("posterior hippocampus", 2, "p")]
    names, indices = [e.name for e in entries], [1, 2]
    plain = evaluate(_OracleWithBlob(datalist, entries), datalist, names, indices, "MR", (1.0, 1.0, 1.0))
    cleaned = evaluate(_OracleWithBlob(datalist, entries), datalist, names, indices, "MR", (1.0, 1.0, 1.0),
                       largest_component=True)
    assert plain["per_label"]["anterior hippocampus"]["dice_mean"] < 0.97  # the island costs Dice ...
    assert cleaned["per_label"]["anterior hippocampus"]["dice_mean"] == pytest.approx(1.0)  # ... until it is removed
    assert cleaned["per_label"]["anterior hippocampus"]["hd95_mean"] == pytest.approx(0.0)
    assert cleaned["largest_component"] is True and plain["largest_component"] is False


def test_mirroring_option_changes_the_probabilities_of_a_real_network(hippocampus_dir, shared_tiny_text):
    """A real (untrained, seeded) small RefSAM3D is not flip-equivariant: on a real, asymmetric MRI the mirrored
    prediction must differ from one pass, and be exactly the mean of the pass and the flipped-back flipped pass."""
    from model_fixtures import load_hippocampus_case, quiet_build

    from lib.training import LabelEntry, PromptModelAdapter, TrainConfig

    x = load_hippocampus_case(hippocampus_dir)[0][..., :32, :32, :32].contiguous()  # one 32^3 window per pass
    assert not torch.equal(x, x.flip(2))  # asymmetric along the mirrored axis
    torch.manual_seed(0)
    model = quiet_build("small", text_encoder=shared_tiny_text).eval()
    entries = [LabelEntry("anterior hippocampus", 1, "anterior"), LabelEntry("posterior hippocampus", 2, "posterior")]

    def adapter(axes):
        return PromptModelAdapter(model, entries, TrainConfig(), roi_size=(32, 32, 32), device="cpu", mirror_axes=axes)

    with torch.no_grad():
        one_pass = adapter(()).predict_probs(x, ["anterior", "posterior"])
        mirrored = adapter((0,)).predict_probs(x, ["anterior", "posterior"])
        flipped = adapter(()).predict_probs(x.flip(2), ["anterior", "posterior"]).flip(1)
    assert (mirrored - one_pass).abs().max() > 1e-3
    torch.testing.assert_close(mirrored, (one_pass + flipped) / 2)


def test_mirrored_predictions_plain_pass_first_then_each_flip_flipped_back():
    """The uncertainty scoring compares these two passes; mirror_averaged averages them."""
    from lib.inference import mirror_averaged, mirrored_predictions

    image = torch.arange(2 * 3 * 4, dtype=torch.float32).view(1, 1, 2, 3, 4)

    def predict(x):
        return x.cumsum(dim=4)

    plain, mirrored = mirrored_predictions(predict, image, (2,))
    torch.testing.assert_close(plain, predict(image))
    torch.testing.assert_close(mirrored, predict(image.flip(4)).flip(4))
    assert not torch.equal(plain, mirrored)
    torch.testing.assert_close(mirror_averaged(predict, image, (2,)), (plain + mirrored) / 2)


def test_dice_where_present_is_monais_dice_and_leaves_out_labels_absent_from_both():
    from lib.evaluation import dice_where_present

    y = torch.tensor([0, 1, 1, 2, 2, 0, 0, 0])  # label 4 in neither, 3 only in the prediction
    p = torch.tensor([0, 1, 0, 0, 0, 3, 0, 0])
    masks = [torch.stack([t == k for k in range(1, 5)])[:, None, None] for t in (p, y)]  # [K, 1, 1, 8]
    assert dice_where_present(*masks) == [pytest.approx(2 / 3), 0.0, 0.0, None]
    assert case_metrics(masks[0][3:], masks[1][3:], metrics=("dice",))["dice"] == [1.0]  # case_metrics scores it 1
