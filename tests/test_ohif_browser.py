"""OHIF in a real browser: Debian's headless Chromium (playwright, ``executable_path=/usr/bin/chromium``) drives the
OHIF v3 bundled by MONAI Label against the app served on DICOMweb from a real Orthanc.

The study is a held-out MSD hippocampus case (never trained on) written as a DICOM MR series and stored in Orthanc;
the app serves the shipped hippocampus checkpoint, so masks are meaningful.  Flows, in one browser session:
study list -> MONAI Label mode -> connect -> Auto-segmentation -> Class Prompts -> a label's name typed in the options
-> free text typed in the options -> Class Prompts with that text still in the options (both answered) -> Point
Prompts (``refsam3d_clicks``, type ``vista3d``): a click on the image for the posterior hippocampus.
After each run the test reads OHIF's labelmap (``window.services.segmentationService``) and compares it voxel for
voxel with the mask the server returns for the same request body, sent again by the test, each value under the name
``/info`` declares for it.  Screenshots and the request bodies OHIF sent are kept under ``test-artifacts/``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import requests
from app_fixtures import parse_all, read_volume
from conftest import require
from dicom_series import nifti_to_dicom_series
from ohif_driver import InferCall, OhifSession, browser_session
from orthanc_process import OrthancServer, orthanc_missing
from server_process import REPO_ROOT, MonaiLabelServer

# what OHIF's PointPrompts.onRunInference reads: the ProbeMONAILabel annotations of cornerstone3D's annotation manager
PROBE_POINT_PLACED = """() => {
  const saved = window.cornerstoneTools.annotation.state.getAnnotationManager().saveAnnotations(null, 'ProbeMONAILabel');
  return Object.values(saved || {}).some(frame => ((frame || {})['ProbeMONAILabel'] || []).length > 0);
}"""

CASE = "hippocampus_019"  # a test case of benchmarks/results/hippocampus_split.json: never seen in training
CHECKPOINT = REPO_ROOT / "checkpoints" / "msd_hippocampus" / "refsam3d_small.pt"
STRUCTURES = ("anterior hippocampus", "posterior hippocampus")
FREE_TEXT = "hippocampus"  # not a label of the set (neither a name nor a prompt): free text


@pytest.fixture(scope="module")
def pacs(tmp_path_factory, hippocampus_dir):
    require(orthanc_missing() is None, orthanc_missing() or "")
    series = nifti_to_dicom_series(hippocampus_dir / "imagesTr" / f"{CASE}.nii.gz", CASE)
    with OrthancServer(tmp_path_factory.mktemp("orthanc")) as orthanc:
        assert orthanc.store(series.files) == series.shape[2]
        yield orthanc, series


@pytest.fixture(scope="module")
def server(pacs, tmp_path_factory):
    orthanc, _ = pacs
    root = tmp_path_factory.mktemp("app-ohif")
    (root / "model").mkdir()
    shutil.copy(CHECKPOINT, root / "model" / "refsam3d_small.pt")
    conf = {"preset": "small", "label_set": "msd_hippocampus", "text_encoder": "minilm",
            "use_pretrained_model": "false", "model_dir": str(root / "model"),
            "skip_trainers": "true", "skip_strategies": "true"}
    env = {"MONAI_LABEL_DICOMWEB_CACHE_PATH": str(root / "cache"),
           "MONAI_LABEL_DICOMWEB_SEARCH_FILTER": json.dumps({"Modality": "MR"})}
    with MonaiLabelServer(f"{orthanc.url}/dicom-web", conf, root / "server.log", env=env) as srv:
        yield srv


@pytest.fixture(scope="module")
def ohif(tmp_path_factory, pytestconfig):
    yield from browser_session(tmp_path_factory, pytestconfig, REPO_ROOT, "ohif_browser")


def server_mask(server: MonaiLabelServer, call: InferCall, series_uid: str):
    """(label_names, mask in NRRD file order) the server answers to OHIF's request body, sent again by the test."""
    res = requests.post(f"{server.url}/infer/refsam3d", params={"image": series_uid, "output": "all"},
                        data={"params": json.dumps(call.params)}, timeout=900)
    assert res.status_code == 200, f"{res.status_code} {res.text[:500]}\n{server.log()[-3000:]}"
    params, image, name = parse_all(res)
    assert name.endswith(".nrrd"), name
    return params["label_names"], read_volume(image, name)[0].ravel(order="F")


def ohif_expected(mask: np.ndarray, declared: dict, segments: dict, names: list, previous=None) -> np.ndarray:
    """What OHIF's labelmap must hold after a run: each server value under the segment named as /info names it.

    Values of labels the tab did not ask for are dropped; with ``previous`` (Class Prompts), voxels of other segments
    are kept, as the extension's ``updateView(..., override=true)`` does."""
    index_of = {name: int(k) for k, name in segments.items()}
    lut = np.zeros(256, dtype=np.int64)
    for name in names:
        lut[declared[name]] = index_of[name]
    new = lut[mask]
    if previous is None:
        return new
    targets = np.unique(new)
    return np.where(np.isin(previous, targets), new, previous)


def check_run(ohif: OhifSession, server, series_uid, call: InferCall, names: list, previous=None):
    """OHIF got a 200 with the server's mask and holds it voxel for voxel under the right names; the counts."""
    assert call.status == 200, call.body[:500]
    label_names, mask = server_mask(server, call, series_uid)
    received = read_volume(call.body, "ohif.nrrd")[0].ravel(order="F")
    np.testing.assert_array_equal(received, mask)  # what OHIF received is what the server answers
    declared = requests.get(f"{server.url}/info/", timeout=60).json()["models"]["refsam3d"]["labels"]
    shown_as = {value: name for name, value in declared.items()}
    for name, value in label_names.items():  # a label under its own value; free text under a value of its own
        assert shown_as.get(value) == name or (name not in declared and shown_as.get(value) not in (None, *STRUCTURES)), \
            f"{name!r} written as {value}, which /info declares as {shown_as.get(value)!r}"
    state = ohif.segmentation()
    expected = ohif_expected(mask, declared, state["names"], names, previous)
    counts = {int(v): int(c) for v, c in zip(*np.unique(expected, return_counts=True)) if v}
    ohif.wait_for_counts(counts)
    state = ohif.segmentation()
    np.testing.assert_array_equal(np.asarray(state["data"]), expected)
    return label_names, mask, state, {state["names"][str(k)]: c for k, c in counts.items()}


def check_class_prompts(ohif: OhifSession, server, series_uid, call: InferCall, before: dict):
    """A Class Prompts run for the posterior hippocampus: OHIF shows the server's posterior mask under its name,
    except voxels another segment held before (the extension keeps those)."""
    previous = np.asarray(before["data"])
    label_names, mask, state, counts = check_run(ohif, server, series_uid, call, ["posterior hippocampus"], previous)
    index = int(next(k for k, n in state["names"].items() if n == "posterior hippocampus"))
    assert counts["posterior hippocampus"] == int(((mask == 2) & np.isin(previous, [0, index])).sum()) > 50, counts
    assert all(int((mask == v).sum()) > 50 for v in label_names.values()), label_names  # every answer is a mask
    return label_names, counts


def test_ohif_monai_label_flows(pacs, server, ohif: OhifSession):
    orthanc, series = pacs
    page = ohif.page
    calls = []

    def record(flow: str, call: InferCall) -> InferCall:
        calls.append({"flow": flow, "url": call.url, "params": call.params})
        (ohif.artifacts / "requests.json").write_text(json.dumps(calls, indent=1))
        return call

    # study list: the study stored in Orthanc, listed through the app's DICOMweb proxy
    page.goto(f"{server.url}/ohif/")
    page.get_by_text(CASE, exact=True).first.wait_for(state="visible")
    page.get_by_role("button", name="Confirm and Hide").click()  # OHIF's "investigational use" banner
    ohif.screenshot("study_list")

    # MONAI Label mode: the series renders in a WebGL viewport
    page.goto(f"{server.url}/ohif/monai-label?StudyInstanceUIDs={series.study_uid}")
    ohif.wait_for_volume()
    title = ohif.connect(server.url)
    info = requests.get(f"{server.url}/info/", timeout=60).json()
    assert title == info["name"]  # the panel shows the app name (with the state of the weights)
    all_labels = sorted(info["models"]["refsam3d"]["labels"])  # what Auto-segmentation asks OHIF to show
    segments = ohif.segmentation()["names"]  # one segment per label /info declares
    assert set(segments.values()) == set(info["labels"]) | set(info["models"]["refsam3d"]["labels"]) >= set(STRUCTURES)
    ohif.screenshot("connected")

    # Auto-segmentation: every label of the set, each under its own name
    call = record("Auto-Segmentation", ohif.run(ohif.tab("Auto-Segmentation")))
    assert call.params["result_extension"] == ".nrrd" and call.params["restore_label_idx"] is False
    label_names, mask, state, auto_counts = check_run(ohif, server, series.series_uid, call, all_labels)
    assert all(auto_counts.get(s, 0) > 50 for s in STRUCTURES), auto_counts  # both structures found, each named
    ohif.screenshot("auto_segmentation")

    # Class Prompts: only the posterior hippocampus; other segments are kept
    tab = ohif.tab("Class Prompts")
    tab.locator("tr", has=page.locator("td", has_text="posterior hippocampus")).locator("input[type=checkbox]").check()
    call = record("Class Prompts", ohif.run(tab))
    assert call.params["label_prompt"] == [2] and "text_prompt" not in call.params
    label_names, class_counts = check_class_prompts(ohif, server, series.series_uid, call, state)
    assert label_names == {"posterior hippocampus": 2}
    ohif.screenshot("class_prompts")

    # a label's name typed in the options (another case), run by Auto-segmentation: shown under that label's name
    ohif.set_option("text_prompt", "Posterior Hippocampus")
    call = record("Options text_prompt (a label's name) + Auto-Segmentation", ohif.run(ohif.tab("Auto-Segmentation")))
    assert call.params["text_prompt"] == "Posterior Hippocampus" and "label_prompt" not in call.params
    label_names, mask, state, name_counts = check_run(ohif, server, series.series_uid, call, all_labels)
    assert name_counts == {"posterior hippocampus": int((mask == 2).sum())} and name_counts["posterior hippocampus"] > 50
    ohif.screenshot("label_name_as_text")

    # free text typed in the options, run by Auto-segmentation: shown under the name /info gives its value
    ohif.set_option("text_prompt", FREE_TEXT)
    call = record("Options text_prompt + Auto-Segmentation", ohif.run(ohif.tab("Auto-Segmentation")))
    assert call.params["text_prompt"] == FREE_TEXT
    label_names, mask, state, text_counts = check_run(ohif, server, series.series_uid, call, all_labels)
    value = label_names[FREE_TEXT]
    shown = next(n for n, v in info["models"]["refsam3d"]["labels"].items() if v == value)
    assert shown not in STRUCTURES, f"free text {FREE_TEXT!r} is shown as {shown!r}"
    assert text_counts.get(shown, 0) == int((mask == value).sum()) > 50, text_counts
    ohif.screenshot("free_text")

    # Class Prompts again: the text_prompt stays in the options, so the request carries both; the server answers both
    call = record("Class Prompts with the options' text_prompt", ohif.run(ohif.tab("Class Prompts")))
    assert call.params["label_prompt"] == [2] and call.params["text_prompt"] == FREE_TEXT
    label_names, both_counts = check_class_prompts(ohif, server, series.series_uid, call, state)
    assert label_names == {"posterior hippocampus": 2, FREE_TEXT: value}  # no prompt silently dropped
    ohif.screenshot("class_prompts_and_free_text")

    # Point Prompts (refsam3d_clicks, type vista3d): select the posterior hippocampus, click in the image, Run
    before = np.asarray(ohif.segmentation()["data"])
    tab = ohif.tab("Point Prompts")
    tab.locator("tr.clickable-row", has_text="posterior hippocampus").click()
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    box = page.locator("canvas.cornerstone-canvas").first.bounding_box()
    for _ in range(5):  # the row click activates OHIF's probe tool asynchronously: click until a probe point exists
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        try:
            page.wait_for_function(PROBE_POINT_PLACED, timeout=10_000)
            break
        except PlaywrightTimeoutError:
            continue
    else:
        pytest.fail("no ProbeMONAILabel point after 5 clicks on the viewport (OHIF's Point Prompts tool never activated)")
    call = record("Point Prompts", ohif.run(tab, model="refsam3d_clicks"))
    assert call.status == 200, call.body[:500]
    assert call.params["label_prompt"] == [2] and call.params["point_labels"] == [1], call.params
    (point,) = call.params["points"]  # worldToIndex of the click: [column, row, slice] of the series volume
    assert all(isinstance(c, int) and 0 <= c < n for c, n in zip(point, series.shape)), (point, series.shape)
    received = read_volume(call.body, "ohif.nrrd")[0].ravel(order="F")
    assert set(np.unique(received).tolist()) <= {0, 2}  # the selected label's value, nothing else
    declared = requests.get(f"{server.url}/info/", timeout=60).json()["models"]["refsam3d_clicks"]["labels"]
    state = ohif.segmentation()
    expected = ohif_expected(received, declared, state["names"], ["posterior hippocampus"], before)
    ohif.wait_for_counts({int(v): int(c) for v, c in zip(*np.unique(expected, return_counts=True)) if v})
    np.testing.assert_array_equal(np.asarray(ohif.segmentation()["data"]), expected)  # shown under its name
    ohif.screenshot("point_prompts")
    print(f"\nOHIF voxel counts: auto {auto_counts}, class prompts {class_counts}, label name as text {name_counts}, "
          f"free text {text_counts}, class prompts + free text {both_counts}; point prompt {point}: "
          f"{int((received == 2).sum())} voxels")
