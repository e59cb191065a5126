"""Units of the annotate -> train loop without a server: weights versions, the 'random' alias, the DICOMweb filter."""

from __future__ import annotations

import json

import pytest
import torch
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random


@pytest.fixture()
def weights(tmp_path):
    """A published weights file holder: ``publish(i)`` writes distinct real RefSAM3D-format files."""
    from lib.model import build_refsam3d, save_checkpoint
    from lib.training.runner import resolve_text_encoder

    path = tmp_path / "model" / "refsam3d_small.pt"
    model = build_refsam3d("small", text_encoder=resolve_text_encoder("minilm"))

    def publish(i: int):
        with torch.no_grad():
            next(p for p in model.parameters() if p.requires_grad).fill_(float(i))
        save_checkpoint(model, path, extra={"label_set_name": "msd_hippocampus",
                                            "training": {"run_id": f"run{i}", "val": {"mean_dice": i / 10}}})
        return path.read_bytes()

    return path, publish


def test_history_keeps_what_each_publish_replaces_prunes_and_restores(weights):
    from lib.weights_history import VersionNotFound, WeightsHistory

    path, publish = weights
    history = WeightsHistory(path, keep=2)
    assert history.archive_current("nothing yet") is None and history.versions() == []
    contents = [publish(1)]
    for i in (2, 3, 4):
        kept = history.archive_current(f"replaced by run{i}")
        assert kept["validation_dice"] == pytest.approx((i - 1) / 10) and kept["training"]["run_id"] == f"run{i - 1}"
        contents.append(publish(i))
    versions = history.versions()
    assert [v["reason"] for v in versions] == ["replaced by run4", "replaced by run3"]  # newest first, 2 kept
    assert len(list(history.folder.glob("*.pt"))) == 2
    restored = history.restore(versions[1]["id"])  # run2's weights, though archiving run4's prunes that version
    assert path.read_bytes() == contents[1] and restored["validation_dice"] == pytest.approx(0.2)
    assert history.versions()[0]["reason"].startswith("replaced by the restore")
    once = history.archive_current("kept once")
    assert history.archive_current("the same weights again") == once  # the newest version holds them already
    with pytest.raises(VersionNotFound, match="no weights version 'nope'"):
        history.restore("nope")
    assert path.read_bytes() == contents[1]


def test_an_unreadable_published_file_is_kept_all_the_same(tmp_path):
    from lib.weights_history import WeightsHistory

    path = tmp_path / "refsam3d_small.pt"
    path.write_bytes(b"not a checkpoint")
    kept = WeightsHistory(path).archive_current("replaced by run1")
    assert "unreadable" in kept and (path.parent / "versions" / "refsam3d_small" / kept["file"]).read_bytes() == \
        b"not a checkpoint"


def test_random_alias_serves_the_chosen_strategy_and_rejects_unknown_names():
    from lib.activelearning.aliases import alias_random

    strategies = {"random": Random(), "first": First()}
    assert alias_random(strategies, None) is strategies and alias_random(strategies, "random") is strategies
    aliased = alias_random(strategies, "first")
    assert aliased["random"].info()["serves"] == "first" and aliased["random_pick"] is strategies["random"]
    assert aliased["random"].target is strategies["first"]
    with pytest.raises(ValueError, match="random_strategy must be one of first, random, got 'uncertain'"):
        alias_random(strategies, "uncertain")


def test_dicomweb_filter_follows_the_label_set_unless_chosen(monkeypatch):
    from lib.datastore import SEARCH_FILTER_ENV, default_search_filter, series_modality

    monkeypatch.delenv(SEARCH_FILTER_ENV, raising=False)
    assert default_search_filter("MR") == {"Modality": "MR"} and default_search_filter(None) == {}
    monkeypatch.setenv(SEARCH_FILTER_ENV, json.dumps({"Modality": "CT"}))  # what start_server exports by default
    assert default_search_filter("MR") == {"Modality": "MR"}
    monkeypatch.setenv(SEARCH_FILTER_ENV, json.dumps({"Modality": "MR", "StudyDate": "2026"}))
    assert default_search_filter("CT") == {"Modality": "MR", "StudyDate": "2026"}
    assert default_search_filter("MR", '{"Modality": "CT"}') == {"Modality": "CT"}
    with pytest.raises(ValueError):
        default_search_filter("MR", '["CT"]')
    assert series_modality({"00080060": {"vr": "CS", "Value": ["seg"]}}) == "SEG" and series_modality({}) == ""


def test_random_answers_when_every_study_was_just_served(tmp_path, hippocampus_dir):
    """MONAI Label's Random raises when all unlabelled studies were served this second; SafeRandom answers."""
    import shutil
    import time

    from lib.activelearning import SafeRandom
    from monailabel.datastore.local import LocalDatastore

    shutil.copy(hippocampus_dir / "imagesTr" / "hippocampus_004.nii.gz", tmp_path / "hippocampus_004.nii.gz")
    datastore = LocalDatastore(str(tmp_path), extensions=("*.nii.gz",), auto_reload=False)
    datastore.update_image_info("hippocampus_004", {"strategy": {"random": {"ts": int(time.time()) + 5}}})
    with pytest.raises(ValueError, match="weights"):
        Random()({"strategy": "random"}, datastore)
    assert SafeRandom()({"strategy": "random"}, datastore)["id"] == "hippocampus_004"
