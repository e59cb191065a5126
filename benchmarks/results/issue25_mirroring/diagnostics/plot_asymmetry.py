"""The plot of the experiment log's "Test-time mirroring in the server": plain pass, mirrored pass alone and their
mean, for the text-only checkpoint and the shipped (round 3) one, on the 40 test cases."""
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
R3 = HERE.parents[1] / "issue25_20_round3"


def dice(path: Path) -> float:
    return json.loads(path.read_text())["mean"]["dice"]


def mirrored_text_only() -> float:
    """The text-only run mirrored: side A of round 3's paired comparison with it (mean over the two labels)."""
    rows = json.loads((R3 / "vs_text_only" / "comparison.json").read_text())["rows"]
    return sum(r["mean_a"] for r in rows.values()) / len(rows)


rows = {
    "text-only (68c935b)": [dice(R3 / "text_only_single_pass" / "evaluation.json"),
                            dice(HERE / "t_fliponly" / "evaluation.json"),
                            mirrored_text_only()],
    "shipped, round 3 (9b74b7b)": [dice(HERE.parent / "exact_one_pass" / "evaluation.json"),
                                   dice(HERE / "r3_fliponly" / "evaluation.json"),
                                   dice(HERE.parent / "exact_mirrored_auto" / "evaluation.json")],
}
fig, ax = plt.subplots(figsize=(7, 3.6))
names = ["plain pass", "mirrored pass alone", "mean of both (the server now)"]
for k, (label, values) in enumerate(rows.items()):
    xs = [i + (k - 0.5) * 0.35 for i in range(3)]
    ys = values
    bars = ax.bar(xs, ys, width=0.35, label=label)
    for b, v in zip(bars, values):
        ax.text(b.get_x() + b.get_width() / 2, v + 0.0003, f"{v:.4f}", ha="center", fontsize=8)
ax.set_xticks(range(3), names)
ax.set_ylim(0.884, 0.895)
ax.set_ylabel("mean test Dice (40 cases)")
ax.set_title("Left-right asymmetry of the fine-tuned weights, and the server's mirroring", fontsize=10)
ax.legend(loc="upper left", fontsize=8)
fig.tight_layout()
fig.savefig(HERE.parent / "asymmetry.png", dpi=120)
print({k: v for k, v in rows.items()})
