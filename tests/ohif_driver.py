"""Drive the OHIF v3 bundled by MONAI Label (served at ``/ohif/``) in Debian's headless Chromium with playwright.

The browser is the system one (``/usr/bin/chromium``, software WebGL through SwiftShader); nothing is downloaded.
OHIF's state is read through the services it puts on ``window`` (``window.services.segmentationService``).
Selectors come from the monai-label extension's sources (``MonaiLabelPanel.tsx``, ``SettingsTable.tsx``,
``ModelSelector.tsx``, ``ClassPrompts.tsx``, ``OptionTable.tsx``)."""

from __future__ import annotations

import email.parser
import email.policy
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from conftest import require

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--use-angle=swiftshader", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
WAIT_MS = 300_000  # generous: a loaded 2-core machine renders WebGL in software and runs the model on the CPU

# OHIF's labelmap '1' (created on connect, one segment per /info label): names and voxel counts by segment index
READ_SEGMENTATION_JS = """() => {
  const s = window.services && window.services.segmentationService;
  const seg = s && s.getSegmentation('1');
  const vol = seg && s.getLabelmapVolume('1');
  if (!vol || !vol.voxelManager) return null;
  const data = vol.voxelManager.getCompleteScalarDataArray();
  const counts = {};
  for (let i = 0; i < data.length; i++) { const v = data[i]; if (v) counts[v] = (counts[v] || 0) + 1; }
  const names = {};
  for (const [k, x] of Object.entries(seg.segments || {})) { if (x) names[k] = x.label; }
  return {names, counts, dimensions: Array.from(vol.dimensions), data: Array.from(data)};
}"""

# true once the labelmap's {segment index: voxel count} (integer keys enumerate in ascending order) is ``want``
COUNTS_EQUAL_JS = """(want) => {
  const s = window.services && window.services.segmentationService;
  const vol = s && s.getLabelmapVolume('1');
  if (!vol || !vol.voxelManager) return false;
  const data = vol.voxelManager.getCompleteScalarDataArray();
  const counts = {};
  for (let i = 0; i < data.length; i++) { const v = data[i]; if (v) counts[v] = (counts[v] || 0) + 1; }
  return JSON.stringify(counts) === want;
}"""


def browser_missing() -> Optional[str]:
    """Why the browser test cannot run here (None when it can)."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is absent (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed (pip install -r requirements.txt)"
    return None


@dataclass
class InferCall:
    """One ``POST /infer/...`` OHIF sent: its query, its ``params`` form field, and the mask bytes it got back."""
    url: str
    params: Dict[str, Any]
    status: int
    body: bytes = field(repr=False)


def multipart_params(post_data: bytes, content_type: str) -> Dict[str, Any]:
    """The JSON ``params`` field of a multipart/form-data request body."""
    raw = b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + post_data
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    for part in msg.iter_parts():
        if 'name="params"' in part.get("Content-Disposition", ""):
            return json.loads(part.get_payload(decode=True))
    raise AssertionError(f"no params field in the request body: {post_data[:300]!r}")


class OhifSession:
    """One headless Chromium (fresh user-data-dir) with one page; use as a context manager."""

    def __init__(self, user_data_dir: Path, artifacts: Path):
        self.user_data_dir, self.artifacts = Path(user_data_dir), Path(artifacts)
        self.console: List[str] = []
        self.shots: List[Path] = []

    def __enter__(self) -> "OhifSession":
        from playwright.sync_api import sync_playwright

        shutil.rmtree(self.artifacts, ignore_errors=True)
        self.artifacts.mkdir(parents=True, exist_ok=True)
        self._pw = sync_playwright().start()
        self.context = self._pw.chromium.launch_persistent_context(
            str(self.user_data_dir), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1600, "height": 1000})
        self.context.set_default_timeout(WAIT_MS)
        self.page = self.context.pages[0] if self.context.pages else self.context.new_page()
        self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"[:500]))
        self.page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"[:500]))
        return self

    def __exit__(self, *exc) -> None:
        (self.artifacts / "console.log").write_text("\n".join(self.console))
        self.context.close()
        self._pw.stop()

    def screenshot(self, name: str) -> Path:
        path = self.artifacts / f"{len(self.shots) + 1:02d}_{name}.png"
        self.page.screenshot(path=str(path))
        self.shots.append(path)
        return path

    def wait_for_volume(self) -> None:
        """Wait until the series is loaded as a cornerstone volume and drawn on a canvas."""
        self.page.locator("canvas.cornerstone-canvas").first.wait_for(state="visible")
        self.page.wait_for_function("() => { const c = window.cornerstone && window.cornerstone.cache;"
                                    " return !!c && c.getVolumes().some(v => v.loadStatus && v.loadStatus.loaded); }")

    # ---------------------------------------------------------------------------------------------- MONAI Label
    def connect(self, server_url: str) -> str:
        """Type the server's address in the panel, press connect; the app name the panel then shows."""
        field_ = self.page.locator("#monailabelServerURL")
        field_.wait_for(state="visible")
        field_.fill(server_url.rstrip("/") + "/")
        with self.page.expect_response(lambda r: "/info/" in r.url and r.request.method == "GET") as info:
            self.page.locator(".settingsTable button.actionButton").click()
        assert info.value.status == 200, info.value.text()
        subtitle = self.page.locator(".monaiLabelPanel p.subtitle")
        subtitle.wait_for(state="visible")
        self.page.wait_for_function("() => { const s = window.services.segmentationService;"
                                    " return !!(s.getSegmentation('1') && s.getLabelmapVolume('1')); }")
        return subtitle.inner_text()

    def tab(self, title: str):
        """The action tab whose label reads ``title`` (clicked open)."""
        tab = self.page.locator("div.tab").filter(has=self.page.locator("label.tab-label", has_text=title))
        tab.locator("label.tab-label").click()
        return tab

    def run(self, tab, model: str = "refsam3d") -> InferCall:
        """Press the tab's Run button; the infer request OHIF sent and its answer."""
        with self.page.expect_response(lambda r: f"/infer/{model}" in r.url, timeout=WAIT_MS) as answer:
            tab.locator("button.actionButton", has_text="Run").click()
        response = answer.value
        request = response.request
        params = multipart_params(request.post_data_buffer or b"", request.headers.get("content-type", ""))
        return InferCall(request.url, params, response.status, response.body())

    def set_option(self, key: str, value: str, section: str = "infer", name: str = "refsam3d") -> None:
        """Options / Configurations: type ``value`` for ``key`` and confirm."""
        self.page.get_by_text("Options / Configurations", exact=True).first.click()
        self.page.locator(f"#{section}{name}{key}").fill(value)
        self.page.get_by_role("button", name="Confirm").click()
        self.page.get_by_role("button", name="Confirm").wait_for(state="detached")

    def segmentation(self) -> Optional[Dict[str, Any]]:
        return self.page.evaluate(READ_SEGMENTATION_JS)

    def wait_for_counts(self, counts: Dict[int, int]) -> None:
        """Wait until OHIF's labelmap holds exactly these {segment index: voxel count} (a condition, no sleeps)."""
        want = json.dumps({str(k): v for k, v in sorted(counts.items()) if v}, separators=(",", ":"))
        self.page.wait_for_function(COUNTS_EQUAL_JS, arg=want, timeout=WAIT_MS)

def browser_session(tmp_path_factory, pytestconfig, repo_root: Path, name: str):
    """Body of a module-scoped browser fixture (``yield from``): one Chromium whose screenshots go to
    ``artifacts_dir(repo_root, name)``, a last screenshot also after a failure, the folder printed at the end."""
    require(browser_missing() is None, browser_missing() or "")
    with OhifSession(tmp_path_factory.mktemp("chromium-profile"), artifacts_dir(repo_root, name)) as s:
        yield s
        s.screenshot("final")  # also after a failure: what the page showed then
    with pytestconfig.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        print(f"\nScreenshots, console log, request bodies: {s.artifacts}/ ({', '.join(p.name for p in s.shots)})")


def artifacts_dir(repo_root: Path, name: str) -> Path:
    """Where a test keeps its screenshots: ``$REFSAM3D_TEST_ARTIFACTS/<name>`` or ``<repo>/test-artifacts/<name>``."""
    return Path(os.environ.get("REFSAM3D_TEST_ARTIFACTS", repo_root / "test-artifacts")) / name
