"""The suite never passes by skipping: with ``CI=true`` missing real data stops the run at once with a message;
locally the same tests skip and say why (``-rs``). Checked on real pytest runs of a small module that uses the
suite's ``conftest.py`` (loaded as a plugin) with a data folder that does not exist."""

from __future__ import annotations

import os
import subprocess
import sys

from server_process import REPO_ROOT

PROBE = """
def test_needs_the_real_data(hippocampus_dir):
    assert hippocampus_dir.is_dir()


def test_needs_nothing():
    assert True
"""


def _pytest(tmp_path, ci: bool) -> subprocess.CompletedProcess:
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update({"REFSAM3D_TEST_DATA": str(tmp_path / "no-such-data"), "PYTHONPATH": str(REPO_ROOT / "tests"),
                **({"CI": "true"} if ci else {})})
    cmd = [sys.executable, "-m", "pytest", "test_probe.py", "-q", "-rs", "-p", "conftest", "-p", "no:randomly",
           "-p", "no:cacheprovider"]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_missing_data_fails_the_run_in_ci_and_skips_with_the_reason_locally(tmp_path):
    ci = _pytest(tmp_path, ci=True)
    assert ci.returncode == 4, ci.stdout[-3000:] + ci.stderr[-3000:]  # pytest's usage error: the run fails
    assert "CI=true and the test suite cannot run all its tests" in ci.stdout + ci.stderr
    assert "no-such-data/msd-hippocampus is absent" in ci.stdout + ci.stderr
    assert " passed" not in ci.stdout  # stopped before running anything

    local = _pytest(tmp_path, ci=False)
    assert local.returncode == 0, local.stdout[-3000:]
    assert "SKIPPED [1]" in local.stdout and "no-such-data/msd-hippocampus is absent" in local.stdout
    assert "skipped" in local.stdout.splitlines()[-1] and "passed" in local.stdout.splitlines()[-1]
