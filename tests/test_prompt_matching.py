"""PromptMatcher with the real MiniLM sentence encoder: known prompts score 1.0, paraphrases high, unknown low."""

from __future__ import annotations

import pytest

HIPPOCAMPUS = {
    "anterior hippocampus": ["MRI images, hippocampus segmentation, anterior hippocampus (hippocampus proper)",
                             "hippocampal head", "pes hippocampi"],
    "posterior hippocampus": ["MRI images, hippocampus segmentation, posterior hippocampus (subiculum)",
                              "hippocampal tail", "hippocampal body"],
}
ABDOMEN = {"liver": ["hepatic parenchyma"], "spleen": [], "left kidney": ["kidney left"], "right kidney": [],
           "aorta": ["abdominal aorta"]}


@pytest.fixture(scope="module")
def encoder(minilm_text_encoder):
    from lib.model.text_encoder import TextEncoder

    return TextEncoder(str(minilm_text_encoder))


@pytest.fixture(scope="module")
def matcher(encoder):
    from lib.prompt_matching import PromptMatcher, encoder_embed

    return PromptMatcher(HIPPOCAMPUS, encoder_embed(encoder))


def test_known_phrasings_score_one_up_to_case_and_spacing(matcher):
    for prompt, label in [("anterior hippocampus", "anterior hippocampus"), ("  Hippocampal   TAIL ", "posterior hippocampus"),
                          ("pes_hippocampi", "anterior hippocampus")]:
        m = matcher.match(prompt)
        assert (m.score, m.label) == (1.0, label), m
        assert m.top[0] == (label, 1.0) and m.top[1][1] < 1.0  # the other label really compared, not zeroed
        assert -1.0 <= m.top[1][1] < 1.0


def test_paraphrase_scores_high_and_names_its_label(matcher):
    m = matcher.match("head of the hippocampus")
    assert m.label == "anterior hippocampus" and m.nearest == "hippocampal head"
    assert 0.8 < m.score < 1.0
    m = matcher.match("tail of the hippocampus")
    assert m.label == "posterior hippocampus" and 0.8 < m.score < 1.0


def test_unknown_structures_score_below_the_default_threshold(matcher):
    from lib.infers.prompt_report import DEFAULT_MIN_SIMILARITY

    scores = {p: matcher.match(p).score for p in ("liver", "left kidney", "amygdala", "lateral ventricle")}
    assert max(scores.values()) < DEFAULT_MIN_SIMILARITY, scores
    assert matcher.match("hippocampal head").score >= DEFAULT_MIN_SIMILARITY
    assert matcher.match("anterior part of the hippocampus").score >= DEFAULT_MIN_SIMILARITY


def test_top_labels_are_ordered_and_batch_equals_single(encoder):
    from lib.prompt_matching import PromptMatcher, encoder_embed

    m = PromptMatcher(ABDOMEN, encoder_embed(encoder))
    one = m.match("the left kidney")
    assert one.label == "left kidney" and len(one.top) == 3
    assert [s for _, s in one.top] == sorted((s for _, s in one.top), reverse=True)
    assert one.top[0] == ("left kidney", pytest.approx(one.score))
    assert "right kidney" in [label for label, _ in one.top]  # the other kidney is nearer than e.g. the aorta
    batch = m.match_many(["aorta", "the left kidney", "abdominal aorta"])
    assert batch[1].score == pytest.approx(one.score, abs=1e-5) and batch[1].top[0][0] == "left kidney"
    assert batch[0].score == batch[2].score == 1.0 and batch[0].label == batch[2].label == "aorta"
    assert set(m.phrasings["liver"]) == {"liver", "hepatic parenchyma"}


def test_a_matcher_needs_phrasings(encoder):
    from lib.prompt_matching import PromptMatcher, encoder_embed

    with pytest.raises(ValueError):
        PromptMatcher({}, encoder_embed(encoder))


def test_confidence_is_the_mean_probability_inside_each_mask(tiny_text_encoder):
    import torch
    from lib.inference import segment_prompts, sliding_window_segment
    from lib.model import build_refsam3d

    torch.manual_seed(0)
    model = build_refsam3d("small", text_encoder=str(tiny_text_encoder)).eval()
    image = torch.rand(1, 1, 36, 32, 20)
    prompts, store = ["liver", "spleen", "aorta"], {}
    probs = sliding_window_segment(model, image, prompts, (32, 32, 32), 0.25, encodings=store)[0]
    confidences: dict = {}
    threshold = float(probs.max(dim=0).values.median())  # about half the voxels labelled, whatever the random weights
    labels, counts = segment_prompts(model, image, prompts, (32, 32, 32), 0.25, encodings=store, threshold=threshold,
                                     confidences=confidences)
    assert set(confidences) == {1, 2, 3} and any(counts.values())
    for k in (1, 2, 3):
        inside = labels == k
        if counts[k]:
            expected = float(probs[k - 1][inside].double().mean())
            assert confidences[k] == pytest.approx(expected, abs=1e-5) and confidences[k] >= threshold
        else:
            assert confidences[k] is None


@pytest.mark.parametrize("key,value", [("min_prompt_similarity", "high"), ("min_prompt_similarity", "1.5"),
                                       ("strict_prompts", "maybe")])
def test_bad_prompt_check_conf_is_refused_with_its_name(tmp_path, key, value):
    from lib.configs.refsam3d import ConfError, RefSAM3DConfig

    with pytest.raises(ConfError, match=key):
        RefSAM3DConfig().init("refsam3d", str(tmp_path), {"preset": "small", "label_set": "msd_hippocampus", key: value}, None)
