"""The app's own annotation page (``/annotate/``, NiiVue from npm) in Debian's headless Chromium (playwright).

One server (local studies: two MSD hippocampus MR cases, the shipped hippocampus checkpoint) and one browser for the
module.  The flow an annotator follows: open the page, pick a study, a free-text prompt, paint with the brush, save,
then train a tiny run and watch the progress reach done.  The label saved on disk must equal, voxel for voxel, what
the page shows; the mask the page shows after the prompt must be the server's answer.  Screenshots are kept under
``test-artifacts/annotate_page/``."""

from __future__ import annotations

import shutil
import time

import nibabel as nib
import numpy as np
import pytest
import requests
from app_fixtures import infer, read_volume
from conftest import require
from ohif_driver import OhifSession, browser_session
from server_process import REPO_ROOT, MonaiLabelServer

CASES = ("hippocampus_004", "hippocampus_006")
CHECKPOINT = REPO_ROOT / "checkpoints" / "msd_hippocampus" / "refsam3d_small.pt"
NIIVUE = REPO_ROOT / "apps" / "refsam3d" / "lib" / "web" / "node_modules" / "@niivue" / "niivue" / "dist" / "index.js"
FREE_TEXT = "hippocampus"
FREE_TEXT_VALUE = 255  # the msd_hippocampus label set's 'free text prompt'

COUNTS_JS = """() => { const b = window.refsam3d.nv.drawBitmap; const c = {};
  if (!b) return null; for (const v of b) if (v) c[v] = (c[v] || 0) + 1; return c; }"""


@pytest.fixture(scope="module")
def server(tmp_path_factory, hippocampus_dir):
    require(NIIVUE.is_file(), f"NiiVue is not installed ({NIIVUE} is absent): run scripts/setup.sh")
    root = tmp_path_factory.mktemp("app-annotate")
    studies = root / "studies"
    studies.mkdir()
    for case in CASES:
        shutil.copy(hippocampus_dir / "imagesTr" / f"{case}.nii.gz", studies / f"{case}.nii.gz")
    (root / "model").mkdir()
    shutil.copy(CHECKPOINT, root / "model" / "refsam3d_small.pt")
    conf = {"preset": "small", "label_set": "msd_hippocampus", "text_encoder": "minilm",
            "use_pretrained_model": "false", "model_dir": str(root / "model"), "train_threads": "2"}
    with MonaiLabelServer(studies, conf, root / "server.log") as srv:
        srv.studies_dir, srv.model_dir = studies, root / "model"
        yield srv


@pytest.fixture(scope="module")
def browser(tmp_path_factory, pytestconfig):
    yield from browser_session(tmp_path_factory, pytestconfig, REPO_ROOT, "annotate_page")


def drawing_counts(page) -> dict:
    return {int(k): v for k, v in (page.evaluate(COUNTS_JS) or {}).items()}


def wait_status(page, text: str) -> None:
    """Wait until the page's status line says ``text`` (it says '... failed: ...' on an error: fail at once)."""
    page.wait_for_function("(t) => { const s = document.getElementById('status').textContent;"
                           " if (s.includes('failed')) throw new Error(s); return s.includes(t); }", arg=text)


def paint_stroke(page, value: int) -> None:
    """Brush with ``value`` across the middle of the axial view (a real mouse drag on the canvas)."""
    page.select_option("#pen-label", str(value))
    page.keyboard.press("b")
    page.keyboard.press("1")  # axial view only
    box = page.locator("#gl").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 60, cy - 20)
    page.mouse.down()
    for step in range(13):
        page.mouse.move(cx - 60 + 10 * step, cy - 20 + 3 * step)
    page.mouse.up()


def test_annotate_loop_in_a_browser(server, browser: OhifSession):
    page = browser.page
    page.goto(f"{server.url}/annotate/")
    page.wait_for_selector("body[data-ready=true]")
    listed = [li.get_attribute("data-id") for li in page.locator("#studies li").all()]
    assert listed == sorted(CASES)
    info = requests.get(f"{server.url}/info/", timeout=60).json()
    assert page.locator("#app-name").inner_text() == info["name"]
    structures = page.locator("#structures input").evaluate_all("els => els.map(e => e.value)")
    assert structures == ["anterior hippocampus", "posterior hippocampus"]
    browser.screenshot("opened")

    # Next sample (key N) with the strategy 'first': the first unlabelled study opens
    study = CASES[0]
    page.select_option("#strategy", "first")
    page.keyboard.press("n")
    wait_status(page, f"Opening {study}: done")
    assert page.locator("#study-title").inner_text() == study
    assert page.evaluate("() => window.refsam3d.nv.volumes.length") == 1

    # pick a study from the list and run a free-text prompt: the page shows the server's mask, voxel for voxel
    page.locator(f"#studies li[data-id={CASES[1]}]").click()
    wait_status(page, f"Opening {CASES[1]}: done")
    page.locator(f"#studies li[data-id={study}]").click()
    wait_status(page, f"Opening {study}: done")
    page.fill("#prompt", FREE_TEXT)
    page.click("#run-text")
    wait_status(page, "Segmenting: done")
    res = infer(server.url, study, {"text_prompt": FREE_TEXT, "result_extension": ".nii.gz"}, output="image")
    assert res.status_code == 200, res.text[:300]
    answer = read_volume(res.content, "mask.nii.gz")[0]
    served = {int(v): int(c) for v, c in zip(*np.unique(answer, return_counts=True)) if v}
    assert set(served) == {FREE_TEXT_VALUE} and served[FREE_TEXT_VALUE] > 50, served
    assert drawing_counts(page) == served
    browser.screenshot("free_text_prompt")

    # paint with the brush (anterior hippocampus = 1), undo restores, paint again, eraser is tested by counts
    paint_stroke(page, 1)
    painted = drawing_counts(page)
    assert painted.get(1, 0) > 0, painted
    page.keyboard.press("Control+z")
    assert drawing_counts(page) == served
    paint_stroke(page, 1)
    painted = drawing_counts(page)
    assert painted.get(1, 0) > 0 and painted[FREE_TEXT_VALUE] <= served[FREE_TEXT_VALUE], painted
    browser.screenshot("painted")
    page.keyboard.press("o")  # overlay off and on again
    assert page.evaluate("() => window.refsam3d.nv.drawOpacity") == 0
    page.keyboard.press("o")

    # save: the final label on disk is the painted mask, in the image's grid
    page.keyboard.press("Control+s")
    wait_status(page, f"Saving the final label of {study}: done")
    shown = bytes(page.evaluate("async () => Array.from(await window.refsam3d.labelBytes())"))
    shown_img = nib.Nifti1Image.from_bytes(shown)
    saved_files = list((server.studies_dir / "labels" / "final").glob(f"{study}.*"))
    assert len(saved_files) == 1, saved_files
    saved_img = nib.load(str(saved_files[0]))
    image = nib.load(str(server.studies_dir / f"{study}.nii.gz"))
    saved = np.asarray(saved_img.dataobj)
    np.testing.assert_array_equal(saved, np.asarray(shown_img.dataobj))
    assert saved.shape == image.shape
    np.testing.assert_allclose(saved_img.affine, image.affine, atol=1e-3)
    assert {int(v): int(c) for v, c in zip(*np.unique(saved, return_counts=True)) if v} == painted
    page.wait_for_selector(f"#studies li.labelled[data-id={study}]")
    assert requests.post(f"{server.url}/activelearning/first", json={}, timeout=60).json()["id"] != study

    # train a tiny run from the page; the progress never passes 100 % and reaches done; the weights it replaced are kept
    versions_before = requests.get(f"{server.url}/model/refsam3d/versions", timeout=60).json()["versions"]
    page.fill("#epochs", "1")
    page.click("#train")
    seen, deadline = [], time.time() + 600
    while time.time() < deadline and page.locator("#train-stats").get_attribute("data-task") != "DONE":
        seen.append(page.locator("#train-progress").evaluate("e => e.value"))
        assert page.locator("#train-stats").get_attribute("data-task") not in ("ERROR", "STOPPED"), server.log()[-3000:]
        time.sleep(0.5)
    browser.screenshot("trained")
    assert page.locator("#train-stats").get_attribute("data-task") == "DONE", server.log()[-3000:]
    assert max(seen + [0]) <= 100
    assert page.locator("#train-progress").evaluate("e => e.value") == 100
    stats_text = page.locator("#train-stats").inner_text()
    assert "epoch 1/1" in stats_text and "validation Dice" in stats_text and "ETA" in stats_text, stats_text
    stats = requests.get(f"{server.url}/info/", timeout=60).json()["train_stats"]["refsam3d"]
    assert stats["total_epochs"] == 1 and stats["status"] == "DONE"
    versions = requests.get(f"{server.url}/model/refsam3d/versions", timeout=60).json()
    assert len(versions["versions"]) == len(versions_before) + 1
    assert f"({len(versions['versions'])} earlier kept)" in page.locator("#weights").inner_text()
    assert not [c for c in browser.console if c.startswith("pageerror")], browser.console
