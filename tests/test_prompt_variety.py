"""Issue 25, training side: synonyms and templates, absent prompts from the vocabulary, held-out phrasings,
the phrasings a checkpoint stores, and ``scripts/evaluate.py --prompts`` on real hippocampus cases."""

from __future__ import annotations

import copy
import json
import os
import random
import subprocess
import sys

import pytest
import torch
from server_process import REPO_ROOT

from lib.labelsets import load_label_set, parse_label_set, trained_phrasings
from lib.training import TrainConfig, entries_from_label_set, sample_prompts
from lib.training.prompts import add_typo, expand_phrasings, negative_pool, phrasing_metadata, prompt_options
from lib.vocabulary import absent_vocabulary, anatomy_vocabulary, normalise

HELDOUT = REPO_ROOT / "benchmarks" / "prompts" / "msd_hippocampus_heldout.json"
HELDOUT_V2 = REPO_ROOT / "benchmarks" / "prompts" / "msd_hippocampus_heldout_v2.json"
HELDOUT_V3 = REPO_ROOT / "benchmarks" / "prompts" / "msd_hippocampus_heldout_v3.json"
CHECKPOINT = REPO_ROOT / "checkpoints" / "msd_hippocampus" / "refsam3d_small.pt"
SPLIT = REPO_ROOT / "benchmarks" / "results" / "hippocampus_split.json"


def _hippocampus():
    label_set = load_label_set("msd_hippocampus")
    return label_set, entries_from_label_set(label_set)


def _crop_batch() -> torch.Tensor:
    lab = torch.zeros(2, 1, 6, 6, 6)
    lab[0, 0, :2] = 1  # anterior in crop 0
    lab[1, 0, 3:] = 2  # posterior in crop 1
    return lab


NO_TYPOS = TrainConfig(typo_fraction=0.0)  # the phrasings exactly as listed (typos: test_typos_keep_their_meaning)


def _draws(entries, seed: int, steps: int = 60, cfg: TrainConfig | None = None):
    opts = prompt_options(entries, cfg or NO_TYPOS)
    rng = random.Random(seed)
    return [sample_prompts(_crop_batch(), entries, rng=rng, **opts) for _ in range(steps)]


def test_every_shipped_label_has_synonyms_and_templates():
    from lib.labelsets import available_label_sets

    for name in available_label_sets():
        label_set = load_label_set(name)
        assert all(label_set.synonyms[n] for n in label_set.labels), f"{name}: a label without synonyms"
        assert all(t.count("{}") == 1 for t in label_set.prompt_templates)
    hippo = load_label_set("msd_hippocampus").synonyms
    assert {"hippocampal head", "pes hippocampi", "head of the hippocampus"} <= set(hippo["anterior hippocampus"])
    assert {"hippocampal tail", "hippocampal body and tail"} <= set(hippo["posterior hippocampus"])
    assert "IVC" in load_label_set("btcv").synonyms["inferior vena cava"]


def test_a_synonym_maps_to_its_label():
    _, entries = _hippocampus()
    by_name = {e.name: e for e in entries}
    lab = _crop_batch()
    used: dict[str, set[str]] = {e.name: set() for e in entries}
    for prompts, target, names in _draws(entries, seed=0):
        for k, name in enumerate(names):
            if name in by_name:
                assert prompts[k] in expand_phrasings(by_name[name])
                assert torch.equal(target[:, k], (lab[:, 0] == by_name[name].index).float())
                used[name].add(prompts[k])
    for name, texts in used.items():
        synonyms_used = [t for t in texts if any(s in t for s in by_name[name].synonyms)]
        assert by_name[name].prompt in texts and len(synonyms_used) >= 5, (name, sorted(texts))


def test_negative_prompts_come_from_the_vocabulary_with_empty_targets():
    label_set, entries = _hippocampus()
    pool = negative_pool(entries, TrainConfig())
    assert pool == absent_vocabulary(label_set) and len(pool) > 100
    assert {"liver", "amygdala", "lateral ventricle", "brain tumour", "left kidney"} <= set(pool)
    assert not [p for p in pool if "hippocamp" in p or p in label_set.overlapping]
    negatives = 0
    for prompts, target, names in _draws(entries, seed=1, steps=30):
        for k, name in enumerate(names):
            if name not in label_set.labels:
                negatives += 1
                assert name in pool and target[:, k].sum() == 0 and normalise(name) in normalise(prompts[k])
    assert negatives == 30 * TrainConfig().negative_prompts_per_step


def _one_edit_apart(a: str, b: str) -> bool:
    """``b`` is ``a`` with one letter dropped, doubled, replaced, or two neighbours swapped."""
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]]
                                  and a[diff[1]] == b[diff[0]])
    short, long_ = sorted((a, b), key=len)
    return len(long_) == len(short) + 1 and any(long_[:i] + long_[i + 1:] == short for i in range(len(long_)))


def test_add_typo_changes_one_letter_of_one_long_word():
    rng = random.Random(0)
    kinds = set()
    for _ in range(200):
        typed = add_typo("head of the hippocampus", rng)
        words, original = typed.split(" "), "head of the hippocampus".split(" ")
        changed = [(o, w) for o, w in zip(original, words) if o != w]
        assert len(words) == 4 and len(changed) == 1, typed
        (o, w), = changed
        assert o in ("head", "hippocampus") and w[0] == o[0] and _one_edit_apart(o, w), typed
        kinds.add(len(w) - len(o))
    assert kinds == {-1, 0, 1}  # dropped, swapped or mistyped, doubled letters all occur
    assert add_typo("the CT of", random.Random(1)) == "the CT of"  # no word of 4+ letters: unchanged
    assert [add_typo("posterior hippocampus", random.Random(s)) for s in range(5)] == \
        [add_typo("posterior hippocampus", random.Random(s)) for s in range(5)]  # deterministic with a seed


def test_typos_keep_their_meaning():
    """With every name, synonym and absent name misspelt, a typed label still targets its label and a typed
    absent structure still gets an empty target."""
    label_set, entries = _hippocampus()
    by_name = {e.name: e for e in entries}
    lab = _crop_batch()
    cfg = TrainConfig(typo_fraction=1.0, canonical_prompt_fraction=0.0)
    typed_labels = typed_absent = 0
    for prompts, target, names in _draws(entries, seed=3, steps=30, cfg=cfg):
        for k, name in enumerate(names):
            if name in by_name:
                assert torch.equal(target[:, k], (lab[:, 0] == by_name[name].index).float())
                typed_labels += prompts[k] not in expand_phrasings(by_name[name])
            else:
                assert target[:, k].sum() == 0
                typed_absent += normalise(name) not in normalise(prompts[k])
    assert typed_labels >= 50 and typed_absent >= 50  # of 60 each; a few phrasings have no 4-letter word
    assert TrainConfig().typo_fraction == 0.1 and prompt_options(entries, TrainConfig())["typo_fraction"] == 0.1


def test_absent_vocabulary_never_names_a_structure_of_the_set():
    btcv = absent_vocabulary(load_label_set("btcv"))
    assert "amygdala" in btcv and "hippocampal head" in btcv  # other sets' names and synonyms
    for inside in ("liver", "liver tumour", "ivc", "left kidney", "kidney cyst", "portal vein"):
        assert inside not in btcv
    assert "brain tumour" in anatomy_vocabulary() and "right kidney" in anatomy_vocabulary()  # TotalSegmentator


def test_sampling_is_deterministic_for_a_seed():
    _, entries = _hippocampus()
    first = [(p, n) for p, _, n in _draws(entries, seed=7, steps=20)]
    again = [(p, n) for p, _, n in _draws(entries, seed=7, steps=20)]
    other = [(p, n) for p, _, n in _draws(entries, seed=8, steps=20)]
    assert first == again and first != other


def test_old_behaviour_is_reachable():
    _, entries = _hippocampus()
    cfg = TrainConfig.from_mapping({"prompt_variety": "false", "negative_prompts_per_step": "0"})
    for prompts, target, names in _draws(entries, seed=0, steps=10, cfg=cfg):
        assert sorted(prompts) == sorted(e.prompt for e in entries) and target.shape[1] == 2
    defaults = TrainConfig()
    assert defaults.prompt_variety and defaults.negative_prompts_per_step == 2 and defaults.negative_vocabulary


# The first list's "rostral hippocampus" / "caudal hippocampus" share their direction word with synonyms added
# after it was evaluated (the strings differ), so both lists are checked the same way: no exact training phrasing.
@pytest.mark.parametrize("held_out_file", [HELDOUT, HELDOUT_V2, HELDOUT_V3], ids=["v1", "v2", "v3"])
def test_held_out_phrasings_are_never_training_phrasings(held_out_file):
    label_set, _ = _hippocampus()
    held = json.loads(held_out_file.read_text())
    every_entry = entries_from_label_set(label_set)
    trained = {normalise(t) for e in every_entry for t in expand_phrasings(e)}
    paraphrases = [p for ps in held["labels"].values() for p in ps]
    assert set(held["labels"]) == set(label_set.labels) and len(paraphrases) >= 20
    assert not [p for p in paraphrases if normalise(p) in trained]
    assert not [p for p in paraphrases if normalise(p) in anatomy_vocabulary()]  # never a negative either
    vocab = set(absent_vocabulary(label_set))
    in_vocab = [a for a in held["absent"] if normalise(a) in vocab]
    unseen = [a for a in held["absent"] if normalise(a) not in anatomy_vocabulary()]
    assert len(in_vocab) >= 5 and len(unseen) >= 5 and len(in_vocab) + len(unseen) == len(held["absent"])


BASE = {"name": "t", "modality": "MR", "labels": [{"name": "a", "index": 1, "synonyms": ["alpha"]},
                                                    {"name": "b", "index": 2}]}


@pytest.mark.parametrize("change, message", [
    (lambda d: d["labels"][0].update(synonyms="alpha"), "must be a list of strings"),
    (lambda d: d["labels"][0].update(synonyms=["alpha", " "]), "1..200 characters"),
    (lambda d: d["labels"][0].update(synonyms=["alpha", "ALPHA"]), "same phrase twice"),
    (lambda d: d["labels"][1].update(synonyms=["Alpha"]), "given for both 'a' and 'b'"),
    (lambda d: d["labels"][1].update(synonyms=["a"]), "given for both 'a' and 'b'"),
    (lambda d: d.update(prompt_templates=["segment it"]), "exactly one '{}'"),
    (lambda d: d.update(overlapping_structures=[3]), "must be a list of strings"),
])
def test_bad_synonyms_are_refused_with_a_message(change, message):
    data = copy.deepcopy(BASE)
    change(data)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse_label_set(data, "bad.json")
    assert parse_label_set(copy.deepcopy(BASE)).synonyms == {"a": ["alpha"], "b": []}


def test_trained_phrasings_from_the_checkpoint_or_the_label_set():
    label_set, entries = _hippocampus()
    meta = phrasing_metadata(entries, TrainConfig())
    assert meta["negative_vocabulary_size"] == len(absent_vocabulary(label_set))
    assert "segment the {}" in meta["prompt_templates"]
    assert trained_phrasings(meta, label_set) == {e.name: [e.prompt, e.name, *e.synonyms] for e in entries}
    old = {"label_set_name": "msd_hippocampus"}  # a checkpoint from before issue 25
    assert trained_phrasings(old, label_set)["anterior hippocampus"][:3] == [
        entries[0].prompt, "anterior hippocampus", "hippocampal head"]
    plain = phrasing_metadata(entries, TrainConfig(prompt_variety=False, negative_prompts_per_step=0))
    assert plain == {"trained_prompts": {e.name: [e.prompt] for e in entries}, "prompt_templates": [],
                     "negative_vocabulary_size": 0}


def test_a_training_step_and_a_save_use_the_phrasings(tmp_path, tiny_text_encoder):
    from lib.model import build_refsam3d, read_checkpoint
    from lib.training import PromptModelAdapter

    _, entries = _hippocampus()
    torch.manual_seed(0)
    model = build_refsam3d("small", text_encoder=str(tiny_text_encoder))
    adapter = PromptModelAdapter(model, entries, TrainConfig(), roi_size=(16, 16, 16), device="cpu")
    label = torch.zeros(1, 1, 16, 16, 16)
    label[0, 0, 2:6] = 1
    loss, info = adapter.training_loss(torch.rand(1, 1, 16, 16, 16), label)
    assert torch.isfinite(loss) and info["prompts"] == 4 and info["absent"] == 3  # posterior + 2 negatives
    adapter.save(tmp_path / "m.pt", extra={"label_set_name": "msd_hippocampus"})
    saved = read_checkpoint(tmp_path / "m.pt")
    extra = saved["extra"]
    assert saved["config"]["text_encoder"] == model.config["text_encoder"]  # not MiniLM: stored as loaded
    assert extra["label_set_name"] == "msd_hippocampus"
    assert "pes hippocampi" in extra["trained_prompts"]["anterior hippocampus"]
    assert extra["negative_vocabulary_size"] > 100 and "{} on this MRI" in extra["prompt_templates"]


def test_evaluate_prompts_on_two_real_cases(tmp_path, hippocampus_dir):
    out = tmp_path / "prompts"
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "evaluate.py"), "--checkpoint", str(CHECKPOINT),
           "--data", str(hippocampus_dir), "--split-file", str(SPLIT), "--part", "test", "--max-cases", "2",
           "--prompts", str(HELDOUT), "--out", str(out), "--no-progress", "--threads", "1"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert {p.name for p in out.iterdir()} >= {"prompts.json", "prompts.csv", "prompts.png"}
    result = json.loads((out / "prompts.json").read_text())
    held = json.loads(HELDOUT.read_text())
    assert result["num_cases"] == 2 and len(result["cases"][0]["answers"]) == 2 + 20 + len(held["absent"])
    assert result["exact_prompt_dice"]["mean"] > 0.75  # the shipped weights' exact prompts (0.891 on 40 cases)
    assert 0.0 <= result["paraphrases"]["mean_dice"] <= 1.0 and result["paraphrases"]["seen_in_training"] == []
    absent = result["absent"]
    assert 0.0 <= absent["empty_share"] <= 1.0 and absent["predicted_ml_mean"] >= 0.0
    assert sum(a["in_training_vocabulary"] for a in absent["per_prompt"]) >= 5
    rows = (out / "prompts.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * (2 + 2 + 20 + len(held["absent"]))


def test_flagged_absent_prompts_count_as_answered():
    from lib.evaluation_prompts import PromptFile, _plan, summarise_prompts

    label_set, _ = _hippocampus()
    rows = _plan(list(label_set.labels), PromptFile({}, ["liver", "optic chiasm"]))
    answers = [{"kind": r["kind"], "label": r["label"], "text": r["text"], "dice": 0.9 if r["label"] else None,
                "predicted_ml": 0.0 if r["text"] == "liver" else 1.5, "empty": r["text"] == "liver",
                "flagged": r["text"] == "optic chiasm" if r["kind"] == "absent" else None} for r in rows]
    cases = [{"id": "c", "exact_prompt_dice": {n: 0.9 for n in label_set.labels}, "ground_truth_ml": 3.0,
              "answers": answers}]
    summary = summarise_prompts(cases, rows, list(label_set.labels), label_set, {}, [])
    assert summary["absent"]["empty_share"] == 0.5 and summary["absent"]["empty_or_flagged_share"] == 1.0
    assert summary["absent"]["empty_share_in_vocabulary"] == 1.0  # liver: in the vocabulary, answered empty
    assert summary["absent"]["empty_share_not_in_vocabulary"] == 0.0  # optic chiasm: not in it, a 1.5 ml mask
    assert summary["targets"]["absent_empty_or_flagged_share>=0.95"] is True
