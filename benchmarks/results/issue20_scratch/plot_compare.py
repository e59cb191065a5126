"""Clicks against Dice: the shipped split checkpoint (round 3) and the from-scratch run, with and without text."""
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
SHIPPED = HERE.parent / "issue25_mirroring"
fig, ax = plt.subplots(figsize=(6.5, 4.5))
for folder, who, style in ((SHIPPED, "shipped (text 60 min + 3 fine-tunes, 252 min)", "-"),
                           (HERE, "from scratch, whole recipe, 115 min", "--")):
    for mode, color in (("clicks_text", "tab:blue"), ("clicks_only", "tab:orange")):
        c = json.loads((folder / mode / "clicks.json").read_text())
        label = f"{who}: {'text + clicks' if mode == 'clicks_text' else 'clicks alone'} (NoC@90 {c['mean']['noc90_mean']:.2f})"
        ax.plot(c["clicks"], c["mean"]["dice_mean"], style, marker="o", color=color, label=label)
ax.axhline(0.90, color="grey", linewidth=0.8)
ax.set_xlabel("clicks (0 = text alone)")
ax.set_ylabel("mean Dice, 40 test cases, mirrored")
ax.set_ylim(0.86, 0.95)
ax.grid(alpha=0.3)
ax.legend(fontsize=7, loc="lower right")
ax.set_title("Issue 20: the whole recipe from scratch vs the shipped fine-tunes")
fig.tight_layout()
fig.savefig(HERE / "clicks_compare.png", dpi=110)
