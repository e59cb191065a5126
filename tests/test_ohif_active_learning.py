"""OHIF's Active Learning tab against the app on DICOMweb (a real Orthanc holding three MSD hippocampus cases as DICOM
MR series), with NO ``MONAI_LABEL_DICOMWEB_SEARCH_FILTER`` set: the app lists the label set's modality by itself.

One Orthanc, one app server and one headless Chromium (playwright, Debian's chromium) for the module:
* ``/info`` counts the MR series and warns of nothing; an app whose label set is CT warns that it lists no series;
* in OHIF: Next Sample opens a dialog naming an MR series; once a label is saved for a series (DICOM-SEG stored in
  Orthanc), Next Sample never names it again and the tab's annotated count moves;
* Update Model in OHIF starts training; the tab's Training bar never passes 100 % while it runs.
Screenshots are kept under ``test-artifacts/ohif_active_learning/``."""

from __future__ import annotations

import json
import re
import shutil
import time

import pytest
import requests
from conftest import require
from dicom_series import nifti_to_dicom_series
from loop_helpers import ok, save_model_label
from ohif_driver import OhifSession, browser_session
from orthanc_process import OrthancServer, orthanc_missing
from server_process import REPO_ROOT, MonaiLabelServer

CASES = ("hippocampus_004", "hippocampus_006", "hippocampus_007")
CHECKPOINT = REPO_ROOT / "checkpoints" / "msd_hippocampus" / "refsam3d_small.pt"


@pytest.fixture(scope="module")
def pacs(tmp_path_factory, hippocampus_dir):
    require(orthanc_missing() is None, orthanc_missing() or "")
    with OrthancServer(tmp_path_factory.mktemp("orthanc")) as orthanc:
        series = {}
        for case in CASES:
            s = nifti_to_dicom_series(hippocampus_dir / "imagesTr" / f"{case}.nii.gz", case)
            assert orthanc.store(s.files) == s.shape[2]
            series[s.series_uid] = s
        yield orthanc, series


def app_server(orthanc, root, **extra):
    (root / "model").mkdir(parents=True, exist_ok=True)
    shutil.copy(CHECKPOINT, root / "model" / "refsam3d_small.pt")
    conf = {"preset": "small", "label_set": "msd_hippocampus", "text_encoder": "minilm",
            "use_pretrained_model": "false", "model_dir": str(root / "model"), "train_threads": "2",
            "train_max_epochs": "2", **extra}
    env = {"MONAI_LABEL_DICOMWEB_CACHE_PATH": str(root / "cache")}  # and no MONAI_LABEL_DICOMWEB_SEARCH_FILTER
    return MonaiLabelServer(f"{orthanc.url}/dicom-web", conf, root / "server.log", env=env)


@pytest.fixture(scope="module")
def server(pacs, tmp_path_factory):
    with app_server(pacs[0], tmp_path_factory.mktemp("app-al")) as srv:
        yield srv


@pytest.fixture(scope="module")
def ohif(tmp_path_factory, pytestconfig):
    yield from browser_session(tmp_path_factory, pytestconfig, REPO_ROOT, "ohif_active_learning")


def test_info_lists_the_label_sets_modality_without_environment(server, pacs):
    info = ok(requests.get(f"{server.url}/info/", timeout=120), server).json()
    assert info["datastore"]["total"] == len(pacs[1]) and info["warnings"] == []


def test_info_warns_when_the_datastore_lists_no_series(pacs, tmp_path_factory):
    with app_server(pacs[0], tmp_path_factory.mktemp("app-ct"), modality="CT", skip_trainers="true") as srv:
        info = ok(requests.get(f"{srv.url}/info/", timeout=120), srv).json()
    assert info["datastore"]["total"] == 0
    assert len(info["warnings"]) == 1 and "lists no series for the filter {'Modality': 'CT'}" in info["warnings"][0]


def panel_cell(page, row: str) -> str:
    """The text of a row of the Active Learning tab's progress table ('Annotated:', 'Training:', 'Train Acc:')."""
    return page.locator("div.tab table.optionsTable tr", has=page.locator("td", has_text=row)).last.inner_text()


def percent(text: str) -> int:
    return int(re.search(r"(\d+)%", text).group(1))


def next_sample(ohif: OhifSession, shot: str = "") -> str:
    """Press Next Sample; the SeriesInstanceUID the dialog names (screenshot ``shot``; the dialog is closed again)."""
    page = ohif.page
    with page.expect_response(lambda r: "/activelearning/random" in r.url) as answer:
        page.get_by_role("button", name="Next Sample").click()
    assert answer.value.status == 200, answer.value.text()
    form = page.locator("div.nextSampleForm")
    form.wait_for(state="visible")
    uid = form.locator("tr", has=page.locator("td", has_text="Series Instance UID")).locator("a").inner_text()
    if shot:
        ohif.screenshot(shot)
    page.keyboard.press("Escape")
    form.wait_for(state="detached")
    return uid


def test_ohif_next_sample_progress_and_training(pacs, server, ohif: OhifSession):
    orthanc, series = pacs
    page = ohif.page
    first = next(iter(series.values()))
    page.goto(f"{server.url}/ohif/monai-label?StudyInstanceUIDs={first.study_uid}")
    page.get_by_role("button", name="Confirm and Hide").click()
    ohif.wait_for_volume()
    ohif.connect(server.url)
    ohif.tab("Active Learning")
    ohif.screenshot("active_learning_tab")

    # Next Sample names an MR series of Orthanc (nothing filtered away)
    uid = next_sample(ohif, "next_sample_dialog")
    assert uid in series

    # a final label saved for that series (stored as DICOM-SEG in Orthanc) is never served again
    save_model_label(server, uid)
    for _ in range(6):
        assert next_sample(ohif) in set(series) - {uid}
    ohif.connect(server.url)  # the panel reads /info on connect
    ohif.tab("Active Learning")
    assert percent(panel_cell(page, "Annotated")) == round(100 / len(series))
    ohif.screenshot("labelled_one")

    # Update Model: training runs; the Training bar stays within 100 % (OHIF: epoch / total_epochs)
    assert percent(panel_cell(page, "Training")) == 0  # no run yet: not "1/1 epochs" (OHIF's reading of no stats)
    with page.expect_response(lambda r: "/train/" in r.url and r.request.method == "POST") as started:
        page.get_by_role("button", name="Update Model").click()
    assert started.value.status == 200, started.value.text()
    readings, deadline = [], time.time() + 600
    while time.time() < deadline:
        task = requests.get(f"{server.url}/train/", timeout=60).json()
        ohif.connect(server.url)
        ohif.tab("Active Learning")
        readings.append(percent(panel_cell(page, "Training")))
        if task.get("status") in ("DONE", "ERROR", "STOPPED"):
            break
    ohif.screenshot("after_training")
    (ohif.artifacts / "training_readings.json").write_text(json.dumps(readings))
    assert task.get("status") == "DONE", server.log()[-3000:]
    assert readings and max(readings) <= 100 and any(0 < r for r in readings), readings  # shown, never past 100 %
    stats = requests.get(f"{server.url}/info/", timeout=60).json()["train_stats"]["refsam3d"]
    assert stats["total_epochs"] >= stats["epoch"] >= 1
