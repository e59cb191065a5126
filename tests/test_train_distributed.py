"""Distributed training (DDP on torch.distributed): 2 CPU processes on gloo, started by torchrun, train like one
process with the same global batch, and only rank 0 writes and publishes.

Real command lines (``python -m torch.distributed.run --standalone --nproc_per_node 2 scripts/train.py`` and
``scripts/train.py``) on real MSD hippocampus volumes, the real ``small`` RefSAM3D with a tiny text encoder.

Same global batch, same data: 2 ranks x batch 1 against 1 process x batch 2 on two training cases. The cases
are the central 32^3 voxels of two hippocampus volumes, written as NIfTI files, and the crop is 32^3, so the
crop is the whole volume: no random crop position, no augmentation, every label asked for by its canonical
prompt, no clicks, no negative prompts -- nothing random left in a step. The loss is a mean over the batch
(binary cross-entropy over every voxel, Dice over the non-empty pairs, both cases hold both labels), so the
gradient DDP averages over the ranks is the batch-2 gradient.

Tolerance (also in docs/training.md): the global loss of each of the first ``ITERATIONS`` iterations within a
relative 1e-3 of the single process's; validation Dice (reduced over the ranks) within 0.01 absolute.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TRAIN_CASES = ["hippocampus_004", "hippocampus_006"]
VAL_CASES = ["hippocampus_007", "hippocampus_011", "hippocampus_014"]  # 3 cases: ranks hold 2 and 1
SIZE = 32
SHIPPED = REPO / "checkpoints" / "msd_hippocampus" / "refsam3d_small.pt"  # fine-tuned: Dice far from 0
ITERATIONS = 3
LOSS_RTOL = 1e-3
DICE_ATOL = 0.01


def _crop_case(hippocampus_dir: Path, out: Path, case: str) -> None:
    """The central SIZE^3 voxels of one case (image and label, affine kept) as NIfTI files."""
    import nibabel as nib

    for part in ("imagesTr", "labelsTr"):
        img = nib.load(str(hippocampus_dir / part / f"{case}.nii.gz"))
        starts = [max(0, (s - SIZE) // 2) for s in img.shape[:3]]
        crop = img.slicer[tuple(slice(a, a + SIZE) for a in starts)]
        (out / part).mkdir(parents=True, exist_ok=True)
        nib.save(crop, str(out / part / f"{case}.nii.gz"))
    label = np.asarray(nib.load(str(out / "labelsTr" / f"{case}.nii.gz")).dataobj)
    assert set(np.unique(label)) >= {1, 2}, f"{case}: the crop must hold both labels"


@pytest.fixture(scope="module")
def small_msd(hippocampus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("msd-crops")
    cases = TRAIN_CASES + VAL_CASES
    for case in cases:
        _crop_case(hippocampus_dir, out, case)
    (out / "dataset.json").write_text(json.dumps({"training": [
        {"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in cases]}))
    split = out / "split.json"
    split.write_text(json.dumps({"train": TRAIN_CASES, "val": VAL_CASES}))
    return out, split


def _run(launcher: list[str], out: Path, data: tuple[Path, Path], batch: int) -> tuple[str, str]:
    """(the report printed on stdout, the whole log)."""
    cmd = [*launcher, str(REPO / "scripts" / "train.py"), "--data", str(data[0]), "--split-file", str(data[1]),
           "--preset", "small", "--init", str(SHIPPED), "--text-encoder", "minilm", "--roi", str(SIZE),
           "--crop", str(SIZE),
           "--batch-size", str(batch), "--epochs", str(ITERATIONS), "--val-interval", "1", "--no-augment",
           "--no-clicks", "--no-prompt-variety", "--negative-prompts-per-step", "0", "--device", "cpu",
           "--threads", "1", "--no-progress", "--output", str(out / "refsam3d_small.pt"),
           "--minutes", "100000", "--warmup", "0"]  # a budget (never reached): the ranks share one clock
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=str(REPO), env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    return proc.stdout, log


def _losses(run_dir: Path) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list((run_dir / "events").glob("events.out.tfevents.*"))
    assert len(files) == 1, f"one events file (rank 0's) expected, found {files}"
    acc = EventAccumulator(str(files[0]))
    acc.Reload()
    return [e.value for e in sorted(acc.Scalars("train_loss"), key=lambda e: e.step)]


def test_two_gloo_ranks_train_like_one_process_with_the_same_global_batch(small_msd, tmp_path):
    ddp_out, single_out = tmp_path / "ddp", tmp_path / "single"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    ddp_report, ddp_log = _run(torchrun, ddp_out, small_msd, batch=1)
    _, single_log = _run([sys.executable], single_out, small_msd, batch=2)

    ddp_stats = json.loads((ddp_out / "refsam3d_small.run" / "train_stats.json").read_text())
    single_stats = json.loads((single_out / "refsam3d_small.run" / "train_stats.json").read_text())
    assert ddp_stats["status"] == "DONE" and ddp_stats["world_size"] == 2 and ddp_stats["global_batch_size"] == 2
    assert single_stats["world_size"] == 1 and single_stats["global_batch_size"] == 2
    assert ddp_stats["iteration"] == single_stats["iteration"] == ITERATIONS  # each rank: 1 case, batch 1

    ddp_losses, single_losses = _losses(ddp_out / "refsam3d_small.run"), _losses(single_out / "refsam3d_small.run")
    print(f"\nloss per iteration: 2 ranks x batch 1 {ddp_losses}\n{'':20}1 process x batch 2 {single_losses}")
    assert len(ddp_losses) == len(single_losses) == ITERATIONS
    assert ddp_losses[0] != ddp_losses[-1]  # it trained
    np.testing.assert_allclose(ddp_losses, single_losses, rtol=LOSS_RTOL)

    # validation: the Dice of all 3 cases, added up over the ranks (rank 0 holds only some of them)
    ddp_dice = [h["val_mean_dice"] for h in ddp_stats["history"]]
    single_dice = [h["val_mean_dice"] for h in single_stats["history"]]
    print(f"validation mean Dice per epoch: 2 ranks {ddp_dice}, 1 process {single_dice}")
    np.testing.assert_allclose(ddp_dice, single_dice, atol=DICE_ATOL)
    assert f"({len(VAL_CASES)} cases," in ddp_log

    # rank 0 alone logs and publishes: one run announced, one checkpoint, no temporary leftovers
    assert ddp_log.count("Training run ") == 1 and "world_size 2" in ddp_log
    assert ddp_log.count("Published model") == single_log.count("Published model") >= 1
    files = sorted(p.relative_to(ddp_out).as_posix() for p in ddp_out.rglob("*") if p.is_file())
    assert [f for f in files if f.endswith(".pt")] == ["refsam3d_small.pt"], files
    assert not [f for f in files if "tmp" in f or Path(f).name.startswith(".")], files
    assert json.loads(ddp_report)["world_size"] == 2  # rank 0's report, printed once

    from lib.model import read_checkpoint

    stored = read_checkpoint(ddp_out / "refsam3d_small.pt")["extra"]["training"]
    assert stored["val"]["mean_dice"] == pytest.approx(ddp_stats["best_metric"])


def test_shards_cover_the_data_evenly_for_training_and_once_for_validation():
    from lib.training.distributed import Ranks, env_ranks, shard

    assert env_ranks({}) == Ranks() and not env_ranks({"WORLD_SIZE": "1"}).distributed
    assert env_ranks({"WORLD_SIZE": "4", "RANK": "5", "LOCAL_RANK": "1"}) == Ranks(5, 1, 4)
    items = list(range(5))
    train = [shard(items, Ranks(r, r, 2), even=True, seed=3) for r in range(2)]
    assert [len(t) for t in train] == [3, 3] and set(train[0]) | set(train[1]) == set(items)
    assert train == [shard(items, Ranks(r, r, 2), even=True, seed=3) for r in range(2)]  # same on every rank
    val = [shard(items, Ranks(r, r, 2), even=False) for r in range(2)]
    assert sorted(val[0] + val[1]) == items  # every validation case exactly once
    assert shard(items[:1], Ranks(1, 1, 2), even=True) == [0]  # fewer cases than ranks: every rank gets them all
    assert shard(items, Ranks(), even=True) == items  # one process: as is


# ----------------------------------------------------------------------------------------------- the train task
# 5 studies: 4 train, 1 validation (fewer validation cases than ranks: every rank validates it, nothing to add up)
TASK_REQUEST = {"max_epochs": 1, "crop_size": "32", "val_split": 0.2, "train_batch_size": 1, "device": "cpu",
                "clicks": False, "threads": 1, "multi_gpu": True}


@pytest.fixture
def train_task(small_msd, tiny_text_encoder, tmp_path):
    """The app's own train task (``RefSAM3DConfig.trainer()``) on a MONAI Label ``LocalDatastore`` of the crops."""
    import shutil

    from lib.configs.refsam3d import RefSAM3DConfig
    from monailabel.datastore.local import LocalDatastore

    studies = tmp_path / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    for case in TRAIN_CASES + VAL_CASES:
        shutil.copy(small_msd[0] / "imagesTr" / f"{case}.nii.gz", studies / f"{case}.nii.gz")
        shutil.copy(small_msd[0] / "labelsTr" / f"{case}.nii.gz", studies / "labels" / "final" / f"{case}.nii.gz")
    config = RefSAM3DConfig()
    config.init("refsam3d", str(tmp_path / "model"), {"preset": "small", "label_set": "msd_hippocampus",
                                                      "text_encoder": str(tiny_text_encoder),
                                                      "use_pretrained_model": "false", "preload": "false"}, None)
    return config.trainer(), LocalDatastore(str(studies), extensions=("*.nii.gz",), auto_reload=False)


def test_train_task_multi_gpu_without_two_gpus_trains_in_one_process_and_says_so(train_task, caplog):
    import torch
    from conftest import require

    require(torch.cuda.device_count() < 2, "this machine has 2+ GPUs: multi_gpu would really spawn ranks here")
    task, datastore = train_task
    with caplog.at_level("WARNING"):
        stats = task(dict(TASK_REQUEST), datastore)
    assert "multi_gpu needs at least 2 CUDA GPUs" in caplog.text and "ONE process" in caplog.text
    saved = json.loads(Path(task._stats_path).read_text())
    for s in (stats, saved):
        assert s["status"] == "DONE" and s["world_size"] == 1
        assert s["multi_gpu"].startswith("multi_gpu needs at least 2 CUDA GPUs") and "one process" in s["multi_gpu"]
    assert task.store.published_path.exists()


def test_train_task_ranks_spawned_as_monai_label_does_train_ddp_and_rank0_publishes(train_task, monkeypatch):
    """MONAI Label's ``BasicTrainTask.__call__`` with ``multi_gpu`` spawns its ``main_worker`` over the ranks with a
    pickled copy of the task; here 2 CPU ranks on gloo (``device`` cpu), since this machine has no two GPUs."""
    import copy

    import torch.multiprocessing
    from lib.training.distributed import free_port
    from monailabel.tasks.train.basic_train import main_worker

    task, datastore = train_task
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # MONAI Label's task runner sets these for a train task
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    request = {**copy.deepcopy(task._config), **TASK_REQUEST, "run_id": "ddp"}
    datalist = task.pre_process(request, datastore)
    torch.multiprocessing.spawn(main_worker, nprocs=2, args=(2, request, datalist, task), join=True)

    stats = json.loads(Path(task._stats_path).read_text())
    assert stats["status"] == "DONE" and stats["world_size"] == 2 and stats["multi_gpu"] is True
    assert stats["train_cases"] == 4 and stats["iteration"] == 2  # 4 cases over 2 ranks: 2 each, batch 1
    assert stats["val_cases"] == 1 and stats["history"][0]["val_mean_dice"] is not None
    assert stats["published_epoch"] == 1
    model_dir = task.store.published_path.parent
    files = sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file())
    assert [f for f in files if f.endswith(".pt")] == [task.store.published_path.name], files
    assert not [f for f in files if "tmp" in f or Path(f).name.startswith(".")], files
    assert len([f for f in files if "tfevents" in f]) == 1, files  # rank 0's TensorBoard events only
