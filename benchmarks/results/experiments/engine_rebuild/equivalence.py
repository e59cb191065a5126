"""The training loop before issue 23 (commit 32c6996) vs the MONAI-engine rebuild, step by step.

The benchmark's recipe (small preset, bf16 autocast on the CPU, augmentation, batch 2, 48^3 crops, lr 1e-3 with
warm-up; no clicks, canonical prompts) for 40 iterations on 8 hippocampus cases, 1 validation case every 5 epochs:
prints both runs' losses, learning rates, validation history and stats keys, and whether they are equal.

    .venv/bin/python benchmarks/results/experiments/engine_rebuild/equivalence.py amp   # from the repo root
"""
import importlib.util, json, os, subprocess, sys, tempfile, time
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), *[".."] * 4))
sys.path.insert(0, os.path.join(ROOT, "apps/refsam3d"))
OLD = os.path.join(tempfile.mkdtemp(), "old_engine.py")
with open(OLD, "w") as f:
    f.write(subprocess.check_output(["git", "-C", ROOT, "show", "32c6996:apps/refsam3d/lib/training/engine.py"], text=True))
import torch
from lib.labelsets import load_label_set
from lib.training import PromptModelAdapter, TrainConfig, entries_from_label_set, msd_datalist
from lib.training.runner import build_model

spec = importlib.util.spec_from_file_location("lib.training._old_engine", OLD)
old = importlib.util.module_from_spec(spec); sys.modules[spec.name] = old; spec.loader.exec_module(old)
from lib.training import TrainData, TrainOutput, run_training

ls = load_label_set("msd_hippocampus")
data = [d for d in msd_datalist(os.path.join(ROOT, "../shared/data/msd-hippocampus"))][:9]
amp = sys.argv[1] == "amp" if len(sys.argv) > 1 else False
def go(which, out):
    cfg = TrainConfig(max_epochs=10, learning_rate=1e-3, batch_size=2, num_samples=1, crop_size=(48,)*3, threads=1, clicks=False, prompt_variety=False, negative_prompts_per_step=0, grad_clip=1.0, weight_decay=1e-5, warmup_fraction=0.03,
                      log_interval_s=0.5, seed=0, val_interval=5, amp_cpu=amp)
    entries = entries_from_label_set(ls)
    adapter = PromptModelAdapter(build_model("small", "minilm", seed=0), entries, cfg, roi_size=(32,)*3, device="cpu")
    losses, lrs = [], []
    orig = adapter.training_loss
    def tl(image, label):
        loss, info = orig(image, label); losses.append(float(loss.detach())); lrs.append(adapter_opt[0].param_groups[0]["lr"]); return loss, info
    adapter.training_loss = tl
    adapter_opt = []
    mk = adapter.make_optimizer
    def mo(c):
        o = mk(c); adapter_opt.append(o); return o
    adapter.make_optimizer = mo
    os.makedirs(out, exist_ok=True)
    t0 = time.time()
    if which == "old":
        st = old.run_training(adapter, data[:8], data[8:], cfg, "MR", ls.target_spacing, (32,)*3, publish_path=f"{out}/m.pt",
                              stats_path=f"{out}/s.json", events_dir=f"{out}/ev", run_id="x")
    else:
        st = run_training(adapter, cfg, TrainData(data[:8], data[8:], "MR", ls.target_spacing, (32,)*3),
                          TrainOutput(f"{out}/m.pt", stats_path=f"{out}/s.json", events_dir=f"{out}/ev", run_id="x"))
    return losses, lrs, st, time.time() - t0
a = go("old", os.path.join(tempfile.gettempdir(), "eq23/o")); b = go("new", os.path.join(tempfile.gettempdir(), "eq23/n"))
print("old losses", [round(x, 5) for x in a[0]]); print("new losses", [round(x, 5) for x in b[0]])
print("old lrs", a[1]); print("new lrs", b[1])
print("old hist", a[2]["history"]); print("new hist", b[2]["history"])
print("keys only old", set(a[2]) - set(b[2]), "only new", set(b[2]) - set(a[2]))
so, sn = json.load(open(os.path.join(tempfile.gettempdir(), "eq23/o/s.json"))), json.load(open(os.path.join(tempfile.gettempdir(), "eq23/n/s.json")))
print("file keys only old", set(so) - set(sn), "only new", set(sn) - set(so))
for k in ("epoch", "iteration", "stop_reason", "best_metric", "best_metric_epoch", "published_epoch", "train", "eval", "status"):
    print(k, so.get(k), "|", sn.get(k))
print("time old %.1f new %.1f" % (a[3], b[3]))
print("EQUAL losses:", a[0] == b[0], "lrs:", a[1] == b[1])
