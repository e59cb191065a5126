"""Numbers behind ``--conf min_prompt_similarity``: how similar paraphrases and absent structures are to what the
hippocampus weights know, with the real MiniLM sentence encoder (``lib/prompt_matching.py``, no image work).

Two sets of known phrasings: the shipped checkpoint's (label names + prompts) and the same plus a few synonyms
per label (as training with synonyms records them in ``trained_prompts``).  Prints one row per prompt and the
gap between the lowest paraphrase and the highest absent structure; writes the table as JSON.

    python benchmarks/bench_prompt_similarity.py     # benchmarks/results/prompt_similarity_minilm.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "apps" / "refsam3d"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SYNONYMS = {"anterior hippocampus": ["hippocampal head", "pes hippocampi", "anterior part of the hippocampus"],
            "posterior hippocampus": ["hippocampal tail", "hippocampal body", "posterior part of the hippocampus"]}
PARAPHRASES = ["anterior part of the hippocampus", "anterior hipocampus", "hippocampal head", "head of the hippocampus",
               "front of the hippocampus", "posterior hipocampus", "hippocampal tail", "back of the hippocampus",
               "tail of the hippocampus", "body of the hippocampus", "rear hippocampus"]
ABSENT = ["liver", "left kidney", "spleen", "aorta", "amygdala", "lateral ventricle", "brain tumour", "glioma",
          "thalamus", "entorhinal cortex", "caudate nucleus", "putamen", "corpus callosum", "cerebellum",
          "white matter", "brainstem"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "msd_hippocampus" / "refsam3d_small.pt"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "prompt_similarity_minilm.json"))
    args = parser.parse_args()

    from lib.labelsets import load_label_set, trained_phrasings
    from lib.model import read_checkpoint
    from lib.model.text_encoder import TextEncoder
    from lib.model_store import minilm_folder
    from lib.prompt_matching import PromptMatcher, encoder_embed

    encoder = TextEncoder(str(minilm_folder()))
    shipped = trained_phrasings(read_checkpoint(args.checkpoint)["extra"], load_label_set("msd_hippocampus"))
    setups = {"names + prompts (shipped checkpoint)": shipped,
              "+ 3 synonyms per label": {k: v + SYNONYMS[k] for k, v in shipped.items()}}
    out = {}
    for title, phrasings in setups.items():
        matcher = PromptMatcher(phrasings, encoder_embed(encoder))
        rows = [{"group": group, "prompt": p, **matcher.match(p).to_json()}
                for group, prompts in (("paraphrase", PARAPHRASES), ("absent", ABSENT)) for p in prompts]
        low = min(r["score"] for r in rows if r["group"] == "paraphrase")
        high = max(r["score"] for r in rows if r["group"] == "absent")
        print(f"== {title}")
        for r in rows:
            print(f"  {r['group']:10s} {r['prompt']:34s} {r['score']:.3f}  {r['label']}  <- {r['nearest'][:40]!r}")
        print(f"  lowest paraphrase {low:.3f}, highest absent structure {high:.3f}")
        out[title] = {"rows": rows, "lowest_paraphrase": low, "highest_absent": high}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
