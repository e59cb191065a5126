"""Diagnostic (issue 25): scripts/evaluate.py where ``--mirror-axes 0`` means the flipped pass ONLY (flipped back),
to tell a left-right asymmetry of the weights from pass-to-pass variance. Same arguments as scripts/evaluate.py:

    .venv/bin/python benchmarks/results/issue25_mirroring/diagnostics/eval_flip_only.py --checkpoint X \\
        --data ../shared/data/msd-hippocampus --split-file benchmarks/results/hippocampus_split.json --part test \\
        --mirror-axes 0 --out DIR
"""
import runpy
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(REPO / "apps" / "refsam3d"))
import lib.inference as inference  # noqa: E402

all_passes = inference.mirrored_predictions


def flipped_only(predict, image, axes=()):
    yield list(all_passes(predict, image, axes))[-1]  # the plain pass comes first, the flipped one last


inference.mirrored_predictions = flipped_only
sys.argv[0] = str(REPO / "scripts" / "evaluate.py")
runpy.run_path(sys.argv[0], run_name="__main__")
