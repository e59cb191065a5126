"""``RefSAM3DTrain``'s MONAI Label methods (``network``, ``optimizer``, ``loss_function``, transforms, ``val_inferer``)
return what the training run really uses: the real train task's ``train()`` runs one step on real hippocampus
volumes, and what the engine built (spied where it is built) is compared with what the methods return.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

REQUEST = {"max_iterations": 1, "max_epochs": 1, "learning_rate": 0.003, "weight_decay": 0.01, "crop_size": "32",
           "train_batch_size": 1, "num_samples": 1, "augmentation": "nnunet", "dice_weight": 0.5, "val_split": 0.34,
           "threads": 1, "pretrained": False, "name": "train_01", "run_id": "methods"}


def _describe(obj, depth: int = 3):
    """Class and plain parameters of a transform (and of the transforms/objects it holds), random state left out."""
    if isinstance(obj, (list, tuple)):
        return [_describe(o, depth) for o in obj]
    if isinstance(obj, (int, float, str, bool, type(None))):
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if depth == 0 or not hasattr(obj, "__dict__"):
        return type(obj).__name__
    return (type(obj).__name__, {k: _describe(v, depth - 1) for k, v in sorted(vars(obj).items())
                                 if k not in ("R", "_rand_state")})


@pytest.fixture
def task(tmp_path, tiny_text_encoder):
    from lib.model_store import ModelStore
    from lib.settings import AppSettings
    from lib.trainers import RefSAM3DTrain

    settings = AppSettings.from_conf({"preset": "small", "label_set": "msd_hippocampus", "roi_size": "32",
                                      "sw_overlap": "0.5", "model_dir": str(tmp_path / "model")})
    store = ModelStore(tmp_path / "model", "small", text_encoder=str(tiny_text_encoder))
    config = SimpleNamespace(settings=settings, store=store, model_dir=tmp_path / "model", name="refsam3d")
    return RefSAM3DTrain(config=config)


def test_the_train_task_methods_return_what_training_uses(task, hippocampus_dir, monkeypatch):
    from monailabel.tasks.train.basic_train import Context

    import lib.training.engine as engine
    from lib.training import msd_datalist
    from lib.training.inferer import PromptSlidingWindowInferer

    seen: dict = {"transforms": [], "inferers": []}
    cached_dataset, build_trainer = engine.cached_dataset, engine.build_trainer
    infer = PromptSlidingWindowInferer.__call__

    def spy_dataset(datalist, transform, cache_rate=1.0, workers=0):
        seen["transforms"].append((transform, _describe(transform.transforms)))  # as built, before use
        return cached_dataset(datalist, transform, cache_rate, workers)

    def spy_trainer(adapter, *args, **kwargs):
        seen["initial_state"] = {k: v.clone() for k, v in adapter.model.state_dict().items()}
        seen["trainer"] = build_trainer(adapter, *args, **kwargs)
        return seen["trainer"]

    def spy_infer(self, *args, **kwargs):
        seen["inferers"].append(self)
        return infer(self, *args, **kwargs)

    monkeypatch.setattr(engine, "cached_dataset", spy_dataset)
    monkeypatch.setattr(engine, "build_trainer", spy_trainer)
    monkeypatch.setattr(PromptSlidingWindowInferer, "__call__", spy_infer)
    datalist = msd_datalist(hippocampus_dir)[:3]
    stats = task.train(0, 1, dict(REQUEST), datalist)
    assert stats["iteration"] == 1 and stats["val_cases"] == 1
    trainer = seen["trainer"]
    adapter = trainer.network.adapter  # the step's network: ForwardLoss(adapter)

    ctx = Context()
    ctx.request, ctx.datalist = dict(REQUEST), datalist
    # transforms: same classes and parameters, and they follow the request (crop 32, nnU-Net augmentation)
    train_t, val_t = seen["transforms"]
    assert _describe(task.train_pre_transforms(ctx).transforms) == train_t[1]
    assert _describe(task.val_pre_transforms(ctx).transforms) == val_t[1]
    names = [type(t).__name__ for t in train_t[0].transforms]
    crop = next(t for t in train_t[0].transforms if type(t).__name__ == "RandCropByPosNegLabeld")
    assert tuple(crop.cropper.spatial_size) == (32, 32, 32) and "RandSimulateLowResolutiond" in names
    # network: the model the run started from (fresh base weights, pretrained=false)
    network = task.network(ctx)
    assert type(network) is type(adapter.model)
    assert all(torch.equal(v, seen["initial_state"][k]) for k, v in network.state_dict().items())
    # optimizer: same kind and settings, on the adapter's trainable parameters (those the engine's optimizer has)
    ctx.network = network
    mine, used = task.optimizer(ctx), trainer.optimizer
    assert type(mine) is type(used) is torch.optim.AdamW
    for key in ("weight_decay", "betas", "eps"):
        assert mine.param_groups[0][key] == used.param_groups[0][key]
    assert mine.param_groups[0]["lr"] == trainer._process_function.schedule.base_lr == 0.003
    trainable = {id(p) for p in adapter.parameters_to_optimise()}
    assert {id(p) for g in used.param_groups for p in g["params"]} == trainable
    assert {id(p) for g in mine.param_groups for p in g["params"]} == {id(p) for p in task._adapter(ctx).parameters_to_optimise()}
    # loss: the object the step calls, with the request's weights
    assert trainer.loss_function is adapter.loss_fn
    loss = task.loss_function(ctx)
    assert type(loss) is type(adapter.loss_fn) and (loss.dice_weight, loss.ce_weight) == (0.5, 1.0)
    # validation inferer: what validation ran through
    assert seen["inferers"] and all(i == task.val_inferer(ctx) for i in seen["inferers"])
    assert task.val_inferer(ctx).roi_size == (32, 32, 32) and task.val_inferer(ctx).overlap == 0.5
