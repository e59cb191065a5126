"""The settings object (lib/settings.py): defaults defined once, --conf strings parsed, bad values named; the one
set of parsers (lib/parsing.py); the request settings (lib/request_settings.py); docs/app.md's table of keys."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lib import defaults
from lib.errors import Unprocessable
from lib.parsing import parse_bool, parse_modality, parse_number, parse_size
from lib.request_settings import InferOptions, TrainRequest
from lib.settings import AppSettings, ConfError, conf_table
from lib.training.config import TrainConfig

DOCS = Path(__file__).resolve().parents[1] / "docs" / "app.md"


def test_defaults_come_from_one_place():
    s = AppSettings.from_conf({}, app_dir="/repo/apps/refsam3d")
    assert s.preset == defaults.DEFAULT_PRESET == "vit_b" and s.label_set.name == defaults.DEFAULT_LABEL_SET
    assert s.text_encoder == defaults.DEFAULT_TEXT_ENCODER and s.device == defaults.DEFAULT_DEVICE
    assert s.modality == "CT" and s.ct_window == defaults.DEFAULT_CT_WINDOW  # btcv sets no window of its own
    assert s.target_spacing == s.label_set.target_spacing and s.roi_size == s.label_set.roi_size("vit_b")
    assert s.sw_overlap == "auto" and s.sw_overlap_fraction == defaults.DEFAULT_SW_OVERLAP
    assert s.min_prompt_similarity == defaults.DEFAULT_MIN_SIMILARITY and s.strict_prompts is False
    assert s.model_dir == "/repo/model" and s.skip_scoring is True and s.skip_trainers is False
    assert s.train.learning_rate == defaults.DEFAULT_LEARNING_RATE["vit_b"] == TrainConfig().learning_rate
    small = AppSettings.from_conf({"preset": "small"})
    assert small.train.learning_rate == defaults.DEFAULT_LEARNING_RATE["small"] != s.train.learning_rate
    assert small.roi_size == small.label_set.roi_size("small")
    # the network, the pre-processing, the label sets and the model store use the same constants
    from lib.labelsets import LabelSet
    from lib.model.text_encoder import DEFAULT_TEXT_ENCODER
    from lib.model_store import DEFAULT_TEXT_ENCODER as STORE_TEXT_ENCODER
    from lib.transforms import DEFAULT_CT_WINDOW

    assert DEFAULT_TEXT_ENCODER is STORE_TEXT_ENCODER is defaults.DEFAULT_TEXT_ENCODER
    assert DEFAULT_CT_WINDOW is defaults.DEFAULT_CT_WINDOW is LabelSet.__dataclass_fields__["ct_window"].default


def test_conf_strings_are_parsed():
    s = AppSettings.from_conf({
        "preset": " Small ", "label_set": "msd_hippocampus", "modality": "mri", "target_spacing": "1.5,1.5,2",
        "roi_size": "48x64x48", "sw_overlap": "0.5", "sw_batch_size": "4", "strict_prompts": "yes",
        "use_pretrained_model": "off", "preload": "0", "cache_size_mb": "0", "max_upload_mb": "1.5",
        "skip_scoring": "false", "train_max_epochs": "3", "train_learning_rate": "2e-3", "train_keep_versions": "2",
        "al_max_samples": "7", "precision": "Float32", "device": "CPU", "text_encoder": " minilm "})
    assert (s.preset, s.modality, s.target_spacing, s.roi_size) == ("small", "MR", (1.5, 1.5, 2.0), (48, 64, 48))
    assert s.sw_overlap == 0.5 == s.sw_overlap_fraction and s.sw_batch_size == 4 and s.strict_prompts is True
    assert s.use_pretrained_model is False and s.preload is False and s.cache_size_mb == 0 and s.skip_scoring is False
    assert s.limits.max_upload_bytes == int(1.5 * 2**20) and s.limits.max_voxels == 1_000_000_000
    assert (s.train.max_epochs, s.train.learning_rate, s.keep_versions) == (3, 2e-3, 2)
    assert (s.al_max_samples, s.precision, s.device, s.text_encoder) == (7, "float32", "cpu", "minilm")
    assert s.ct_window is None  # MR: no HU window
    assert AppSettings.from_conf({"roi_size": "64", "target_spacing": "[1, 2, 3]"}).roi_size == (64, 64, 64)
    assert AppSettings.from_conf({"sw_overlap": " Auto ", "modality": ""}).sw_overlap == "auto"


def test_mirror_axes_auto_follows_the_weights_training_flips():
    auto = AppSettings.from_conf({})
    assert auto.mirror_axes == "auto"
    assert auto.served_mirror_axes((0,)) == (0,) and auto.served_mirror_axes(()) == ()  # nnU-Net's rule
    assert AppSettings.from_conf({"mirror_axes": "none"}).served_mirror_axes((0,)) == ()  # one pass, whatever trained
    assert AppSettings.from_conf({"mirror_axes": "2,0"}).served_mirror_axes(()) == (0, 2)
    for bad in ("3", "left", "0,x"):
        with pytest.raises(ConfError, match=re.escape("--conf mirror_axes must be auto, none or spatial axes")):
            AppSettings.from_conf({"mirror_axes": bad})


@pytest.mark.parametrize("key,value,words", [
    ("preset", "huge", "--conf preset must be one of vit_b, small, got 'huge'"),
    ("label_set", "nope", "--conf label_set"),
    ("modality", "PET", "--conf modality must be CT or MR, got 'PET'"),
    ("roi_size", "1,2", "--conf roi_size must be one positive number or 3"),
    ("target_spacing", "-1", "--conf target_spacing must be one positive number"),
    ("sw_overlap", "0.95", "--conf sw_overlap must be between 0 and 0.9"),
    ("sw_batch_size", "many", "--conf sw_batch_size must be a number, got 'many'"),
    ("strict_prompts", "maybe", "--conf strict_prompts must be true or false, got 'maybe'"),
    ("precision", "half", "--conf precision must be one of auto, float32, bfloat16"),
    ("max_concurrent_infers", "0", "--conf max_concurrent_infers must be between 1 and 64"),
    ("train_learning_rate", "-1", "--conf train_learning_rate: learning_rate must be > 0"),
    ("train_max_epochs", "ten", "--conf train_max_epochs"),
])
def test_bad_values_name_the_setting(key, value, words):
    with pytest.raises(ConfError, match=re.escape(words)):
        AppSettings.from_conf({key: value})


def test_one_set_of_parsers():
    assert [parse_bool(v) for v in ("TRUE", " yes", "on", "1", "t", 1)] == [True] * 6
    assert [parse_bool(v) for v in ("false", "No", "off", "0", "", "none", 0)] == [False] * 7
    assert parse_size("48") == (48, 48, 48) and parse_size([1.5, 2, 2], cast=float) == (1.5, 2.0, 2.0)
    assert parse_size("auto") is None and parse_size(" ") is None
    assert [parse_modality(m) for m in ("mr", "MRI", " ct ", ["MRI"])] == ["MR", "MR", "CT", "MR"]
    assert parse_number("3", 1, 5, int) == 3
    for bad, fn in (("x", parse_bool), ("0,4,4", parse_size), ("US", parse_modality)):
        with pytest.raises(ValueError, match="must be"):
            fn(bad)
    # the training options and the label sets read with the same parsers
    assert TrainConfig.from_mapping({"roi_size": "32x48x32", "augment": "off"}).crop_size == (32, 48, 32)
    from lib.labelsets import parse_label_set

    ls = parse_label_set({"modality": "MRI", "target_spacing": 2, "roi_size": 32,
                          "labels": [{"name": "a", "index": 1}]})
    assert (ls.modality, ls.target_spacing, ls.roi_size("small")) == ("MR", (2.0, 2.0, 2.0), (32, 32, 32))


def test_infer_request_options():
    request = {"threshold": ["0.3"], "modality": "mri", "result_extension": "NRRD"}
    opts = InferOptions.from_request(request, "auto", "CT")
    assert (opts.threshold, opts.sw_overlap, opts.modality, opts.result_extension) == (0.3, "auto", "MR", ".nrrd")
    assert InferOptions.from_request({}, 0.25, "CT").sw_overlap == 0.25  # the server's setting when not given
    for request, words in (({"threshold": 1}, "threshold must be between 0 and 1 (exclusive), got 1.0"),
                           ({"threshold": "x"}, "threshold must be a number between 0 and 1, got 'x'"),
                           ({"sw_overlap": 2}, "sw_overlap must be 'auto' or a number in [0, 0.9], got 2.0"),
                           ({"modality": "US"}, "modality must be CT or MR, got 'US'"),
                           ({"result_dtype": "float"}, "result_dtype must be one of uint8")):
        with pytest.raises(Unprocessable, match=re.escape(words)) as err:
            InferOptions.from_request(request, "auto", "CT")
        assert err.value.status_code == 422


def test_train_request_over_the_settings():
    settings = AppSettings.from_conf({"preset": "small", "train_max_epochs": "4"})
    run = TrainRequest.from_request({"preset": ["vit_b", "small"], "pretrained": "false", "learning_rate": "5e-4",
                                     "name": "run_a"}, settings.train, settings.preset)
    assert (run.preset, run.pretrained, run.name) == ("vit_b", False, "run_a")
    assert run.config.max_epochs == 4 and run.config.learning_rate == 5e-4  # the conf's default, the request's edit
    assert TrainRequest.from_request({}, settings.train, settings.preset).preset == "small"
    with pytest.raises(ValueError, match="preset must be one of vit_b, small"):
        TrainRequest.from_request({"preset": "big"}, settings.train, settings.preset)


def test_docs_table_lists_every_key_with_its_default():
    """docs/app.md "--conf keys": one row per key of AppSettings, with the default the object has."""
    text = DOCS.read_text()
    section = text[text.index("## `--conf` keys"):]
    table = section[section.index("| key |"):]
    table = table[:table.index("\n\n")]
    documented = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        keys = re.findall(r"`([a-z_]+)`", cells[0])
        shown = cells[1].replace("`", "").split(",") if len(keys) > 1 else [cells[1].replace("`", "")]
        documented.update(zip(keys, (d.strip() for d in shown)))
    expected = dict(conf_table())
    assert set(documented) == set(expected), (set(documented) ^ set(expected))
    for key, default in expected.items():
        assert documented[key] == default or documented[key].startswith(default + " "), (key, documented[key], default)
