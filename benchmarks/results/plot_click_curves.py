"""Clicks against Dice for several evaluated checkpoints, with and without text (issue 20's experiments).

Each RUN is ``label=folder``, the folder holding ``clicks_text/clicks.json`` and ``clicks_only/clicks.json`` as
``scripts/evaluate.py --clicks 5 [--no-text]`` writes them; the first run is drawn solid, the others dashed/dotted.

    python benchmarks/results/plot_click_curves.py OUT.png "title" "shipped=benchmarks/results/issue25_mirroring" ...
"""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(out: str, title: str, *runs: str) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for (who, folder), style in zip((r.split("=", 1) for r in runs), ("-", "--", ":", "-.")):
        for mode, color in (("clicks_text", "tab:blue"), ("clicks_only", "tab:orange")):
            c = json.loads((Path(folder) / mode / "clicks.json").read_text())
            what = "text + clicks" if mode == "clicks_text" else "clicks alone"
            ax.plot(c["clicks"], c["mean"]["dice_mean"], style, marker="o", color=color,
                    label=f"{who}: {what} (NoC@90 {c['mean']['noc90_mean']:.2f})")
    ax.axhline(0.90, color="grey", linewidth=0.8)
    ax.set_xlabel("clicks (0 = text alone)")
    ax.set_ylabel("mean Dice, 40 test cases, mirrored")
    ax.set_ylim(0.84, 0.95)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    if len(sys.argv) < 4:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
