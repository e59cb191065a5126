"""Unit tests of the app's parts that need no server: label sets, prompts, cache, transforms, weights, geometry."""

from __future__ import annotations

import json
import os
import stat
import threading
import time

import nibabel as nib
import numpy as np
import pytest
import torch

from lib.encoding_cache import EncodingCache, file_identity, nbytes
from lib.labelsets import available_label_sets, load_label_set, parse_label_set
from lib.errors import Unprocessable
from lib.image_errors import UnusableImageError
from lib.transforms import CheckImaged, load_transforms

BTCV = ["spleen", "right kidney", "left kidney", "gallbladder", "esophagus", "liver", "stomach", "aorta",
        "inferior vena cava", "portal vein and splenic vein", "pancreas", "right adrenal gland", "left adrenal gland"]


# ---------------------------------------------------------------------------------------------------- label sets
def test_builtin_label_sets():
    assert {"btcv", "tumours", "msd_hippocampus", "totalsegmentator"} <= set(available_label_sets())
    btcv = load_label_set("btcv")
    assert list(btcv.labels) == BTCV and list(btcv.labels.values()) == list(range(1, 14))
    assert btcv.modality == "CT" and btcv.target_spacing == (1.5, 1.5, 1.5)
    tumours = load_label_set("tumours")
    assert list(tumours.labels) == ["kidney tumour", "pancreas tumour", "liver tumour", "colon cancer"]
    assert tumours.prompts["colon cancer"] == "CT images, colon cancer segmentation, abdominal scans."  # Table II
    hip = load_label_set("msd_hippocampus")
    assert hip.labels == {"anterior hippocampus": 1, "posterior hippocampus": 2} and hip.modality == "MR"
    for name in available_label_sets():
        ls = load_label_set(name)
        prefix = "CT images" if ls.modality == "CT" else "MRI images"
        assert all(p.startswith(prefix) for p in ls.prompts.values()), name  # the paper's prompt style
        assert ls.name_of(next(iter(ls.labels.values()))) == next(iter(ls.labels))
        assert len(ls.roi_size("small")) == 3 and len(ls.roi_size("vit_b")) == 3


@pytest.mark.parametrize("set_name,segs,names_file", [
    ("totalsegmentator", ["example_seg.nii.gz", "example_seg_dicom.nii.gz"], "labels_total.json"),
    ("totalsegmentator_mr", ["example_seg_mr.nii.gz"], "labels_total_mr.json"),
])
def test_totalsegmentator_sets_have_the_structures_of_the_example(totalseg_dir, set_name, segs, names_file):
    names = json.loads((totalseg_dir / names_file).read_text())
    present = set()
    for seg in segs:
        present |= {int(v) for v in np.unique(np.asanyarray(nib.load(str(totalseg_dir / seg)).dataobj)) if v}
    expected = {names[str(i)]: i for i in sorted(present)}
    assert load_label_set(set_name).labels == expected


def test_label_set_from_file_and_errors(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"name": "mine", "modality": "MRI", "target_spacing": 2,
                                "labels": [{"name": "a", "index": 3, "prompt": "MRI images, a"}]}))
    ls = load_label_set(str(path))
    assert ls.labels == {"a": 3} and ls.modality == "MR" and ls.target_spacing == (2.0, 2.0, 2.0)
    with pytest.raises(ValueError, match="btcv"):
        load_label_set("no_such_set")
    with pytest.raises(ValueError, match="duplicate"):
        parse_label_set({"labels": [{"name": "a", "index": 1}, {"name": "b", "index": 1}]})
    with pytest.raises(ValueError, match="modality"):
        parse_label_set({"modality": "PET", "labels": [{"name": "a", "index": 1}]})


# ---------------------------------------------------------------------------------------------------- prompts
class _Store:
    preset = "small"

    def warnings(self):
        return []


@pytest.fixture(scope="module")
def task():
    from lib.infers.refsam3d import RefSAM3DInfer
    from lib.settings import AppSettings

    ls = parse_label_set({"name": "t", "labels": [{"name": "spleen", "index": 1, "prompt": "CT images, spleen"},
                                                  {"name": "liver", "index": 5, "prompt": "CT images, liver"}]})
    settings = AppSettings(label_set=ls, modality=ls.modality, target_spacing=(3, 3, 3), roi_size=(32, 32, 32),
                           max_prompt_chars=50)
    return RefSAM3DInfer(store=_Store(), settings=settings, cache=EncodingCache(1 << 20))


def test_prompt_precedence(task):
    assert task.parse_prompts({"text_prompt": " big  liver ", "label_prompt": [1]}) == (
        "text+labels", [("big liver", 255, "big liver"), ("spleen", 1, "CT images, spleen")])
    assert task.parse_prompts({"text_prompt": "Ct_Images, LIVER"}) == ("text", [("liver", 5, "CT images, liver")])
    assert task.parse_prompts({"text_prompt": "free text prompt", "label_prompt": ["free_text_prompt", 255]}) == (
        "text+labels", [("free text prompt", 255, "free text prompt")])
    assert task.parse_prompts({"label_prompt": [5, 1, 5]}) == (
        "labels", [("liver", 5, "CT images, liver"), ("spleen", 1, "CT images, spleen")])
    assert task.parse_prompts({"label_prompt": "Liver"})[1] == [("liver", 5, "CT images, liver")]
    assert task.parse_prompts({"label_prompt": [1.0]})[1][0][0] == "spleen"
    for neither in ({}, {"text_prompt": ""}, {"text_prompt": None, "label_prompt": []}, {"label_prompt": ""}):
        mode, prompts = task.parse_prompts(neither)
        assert mode == "auto" and [p[:2] for p in prompts] == [("spleen", 1), ("liver", 5)]


@pytest.mark.parametrize("request_, words", [
    ({"text_prompt": "  "}, "empty"),
    ({"text_prompt": "..."}, "empty"),
    ({"text_prompt": "x" * 51}, "at most 50"),
    ({"text_prompt": ["liver"]}, "string"),
    ({"label_prompt": [2]}, "1=spleen, 5=liver"),
    ({"label_prompt": [1.5]}, "integer"),
    ({"label_prompt": [True]}, "not a label index"),
    ({"label_prompt": {"a": 1}}, "list"),
])
def test_bad_prompts(task, request_, words):
    with pytest.raises(Unprocessable, match=words) as err:
        task.parse_prompts(request_)
    assert err.value.status_code == 422


# ---------------------------------------------------------------------------------------------------- cache
def test_cache_is_bounded_in_bytes_and_lru():
    mb = 2**20
    cache = EncodingCache(max_bytes=10 * mb)
    cache.put("a", torch.zeros(mb, dtype=torch.uint8) .repeat(4))
    cache.put("b", {"x": torch.zeros(4 * mb, dtype=torch.uint8)})
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("c", [torch.zeros(4 * mb, dtype=torch.uint8)])
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    assert cache.bytes <= 10 * mb and cache.stats()["evictions"] == 1
    assert cache.put("huge", torch.zeros(11 * mb, dtype=torch.uint8)) is False and cache.get("huge") is None
    assert nbytes({"s": [torch.zeros(10, dtype=torch.float16)]}) == 20


def test_cache_computes_once_for_concurrent_requests():
    cache = EncodingCache(max_bytes=1 << 20)
    calls, results = [], []

    def slow():
        calls.append(1)
        time.sleep(0.3)
        return torch.ones(10)

    threads = [threading.Thread(target=lambda: results.append(cache.compute_once("k", slow))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert sorted(hit for _, hit in results) == [False] + [True] * 5


def test_file_identity_changes_with_content(tmp_path):
    f = tmp_path / "a.nii.gz"
    f.write_bytes(b"1234")
    first = file_identity(str(f))
    assert file_identity(str(f)) == first
    time.sleep(0.01)
    f.write_bytes(b"12345")
    assert file_identity(str(f)) != first
    g = tmp_path / "b.nii.gz"
    g.write_bytes(b"12345")
    assert file_identity(str(f), hash_content=True) == file_identity(str(g), hash_content=True)


# ---------------------------------------------------------------------------------------------------- transforms
def test_intensity_by_modality(hippocampus_dir, totalseg_dir):
    from monai.transforms import Compose

    mr = Compose(load_transforms("MR", (1.0, 1.0, 1.0)))({"image": str(hippocampus_dir / "imagesTr" / "hippocampus_004.nii.gz")})
    img = mr["image"]
    assert img.dtype == torch.float32 and img.shape[0] == 1
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0 and float(img.max()) > 0.9
    ct = Compose(load_transforms("CT", (3.0, 3.0, 3.0), ct_window=(-100, 100)))({"image": str(totalseg_dir / "example_ct_sm.nii.gz")})
    raw = nib.load(str(totalseg_dir / "example_ct_sm.nii.gz")).get_fdata()
    assert tuple(ct["image"].shape[1:]) == raw.shape  # already 3 mm
    np.testing.assert_allclose(float((ct["image"] >= 1.0).float().mean()), float((raw >= 100).mean()), atol=0.01)


@pytest.mark.parametrize("shape,words", [((1, 20, 20), "2D"), ((3, 8, 8, 8), "4D"), ((1, 0, 8, 8), "no voxels"),
                                         ((1, 8, 8, 1), "single slice")])
def test_check_image_rejects_what_cannot_be_segmented(shape, words):
    with pytest.raises(UnusableImageError, match=words):
        CheckImaged("image")({"image": torch.zeros(shape)})
    x = torch.zeros(1, 8, 8, 8)
    x[0, 1, 2, 3] = float("inf")
    with pytest.raises(UnusableImageError, match="NaN or infinite"):
        CheckImaged("image")({"image": x})


def test_restore_geometry_round_trip(totalseg_dir):
    """Pre-process (RAS, 1.5 mm) and restore the label map: same grid and same voxels as on the original image."""
    from monai.transforms import Compose, LoadImage
    from lib.infers.refsam3d import RestoreGeometryd

    path = str(totalseg_dir / "example_mr_sm.nii.gz")  # LPS orientation, 3 mm
    d = Compose(load_transforms("CT", (1.5, 1.5, 1.5)))({"image": path})
    d["pred"] = (d["image"] > 0.5).float()
    out = RestoreGeometryd("pred", "image")(d)["pred"]
    ref = LoadImage(image_only=True)(path)
    original = nib.load(path)
    assert tuple(out.shape[1:]) == original.shape
    np.testing.assert_allclose(np.asarray(out.affine), original.affine, atol=1e-4)
    np.testing.assert_array_equal(out[0].numpy() > 0, ref.numpy() > 0)


# ---------------------------------------------------------------------------------------------------- weights
def test_model_store_offline_never_raises_and_says_what_is_missing(tmp_path, monkeypatch):
    from lib.model_store import ModelStore, minilm_folder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    store = ModelStore(tmp_path, "vit_b", use_pretrained_model=True, sam_url="http://127.0.0.1:9/sam_vit_b_01ec64.pth",
                       text_encoder="no-such-org/no-such-text-model")
    text = " ".join(store.warnings())
    assert store.sam_checkpoint is None and "SAM ViT-B weights could not be downloaded" in text
    assert "randomly initialised" in text and "meaningless" in text
    assert store.text_encoder == str(minilm_folder()) and "all-MiniLM-L6-v2" in text
    assert "no trained RefSAM3D weights" in store.warnings()[0]
    assert not [p.name for p in tmp_path.iterdir() if p.is_file()]  # no half-downloaded file left behind

    local = ModelStore(tmp_path, "small", use_pretrained_model=False, text_encoder="minilm")
    assert local.text_encoder == str(minilm_folder()) and len(local.warnings()) == 1  # only "not trained yet"


def test_sam_download_checks_the_hash_and_leaves_an_ordinary_readable_file(tmp_path):
    """A real HTTP download from 127.0.0.1 (torch.hub's downloader): a wrong hash leaves nothing, the weights get
    the mode open() gives, not a temporary file's 0600."""
    import functools
    import hashlib
    import http.server
    from urllib.error import URLError

    from lib.atomic_files import new_file_mode
    from lib.model_store import SAM_VIT_B_SHA256, download_sam_vit_b

    served = tmp_path / "served"
    served.mkdir()
    (served / "sam.pth").write_bytes(os.urandom(100_000))
    digest = hashlib.sha256((served / "sam.pth").read_bytes()).hexdigest()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/sam.pth"
    old_umask = os.umask(0o027)
    try:
        assert (new_file_mode(), new_file_mode(directory=True)) == (0o640, 0o750)
        dest = tmp_path / "model" / "sam_vit_b_01ec64.pth"
        with pytest.raises(RuntimeError, match="invalid hash value"):  # the official SHA-256 is not this file's
            download_sam_vit_b(dest, url=url)
        assert not dest.parent.exists() or not list(dest.parent.iterdir())  # nothing at (or beside) the final path
        assert download_sam_vit_b(dest, url=url, sha256=digest) == dest
        assert dest.read_bytes() == (served / "sam.pth").read_bytes()
        assert stat.S_IMODE(dest.stat().st_mode) == 0o640  # what open() gives under umask 027, not 0600
        with pytest.raises(RuntimeError, match="invalid hash value"):
            download_sam_vit_b(dest, url=url, sha256=("1" if digest[0] == "0" else "0") + digest[1:6])
        assert dest.read_bytes() == (served / "sam.pth").read_bytes()  # a bad download replaces nothing
        assert sorted(p.name for p in dest.parent.iterdir()) == [dest.name]  # and leaves no .partial behind
        with pytest.raises(URLError):  # nothing listens: a loud error, not a silent fallback
            download_sam_vit_b(tmp_path / "offline" / dest.name, url=f"http://127.0.0.1:9/{dest.name}")
        assert not list((tmp_path / "offline").iterdir())
        assert len(SAM_VIT_B_SHA256) == 64  # the whole official digest is checked, not a prefix
    finally:
        os.umask(old_umask)
        server.shutdown()
        server.server_close()


def test_sliding_window_reuses_window_encodings(tiny_text_encoder):
    from lib.inference import segment_prompts, sliding_window_segment
    from lib.model import build_refsam3d

    torch.manual_seed(0)
    model = build_refsam3d("small", text_encoder=str(tiny_text_encoder)).eval()
    image = torch.rand(1, 1, 40, 36, 20)
    calls = []
    encode = model.encode_image
    model.encode_image = lambda x: (calls.append(1), encode(x))[1]
    store = {}
    first = sliding_window_segment(model, image, ["liver", "spleen"], (32, 32, 32), 0.25, encodings=store)
    n = len(calls)
    assert first.shape == (1, 2, 40, 36, 20) and n == len(store) == 4  # 2 x 2 x 1 windows
    again = sliding_window_segment(model, image, ["spleen"], (32, 32, 32), 0.25, encodings=store)
    assert len(calls) == n  # no new encoding for another prompt
    torch.testing.assert_close(again[0, 0], first[0, 1])
    labels, counts = segment_prompts(model, image, ["liver", "spleen", "aorta"], (32, 32, 32), encodings=store, chunk=2)
    assert labels.shape == (40, 36, 20) and set(np.unique(labels.numpy())) <= {0, 1, 2, 3}
    assert sum(counts.values()) == int((labels > 0).sum()) and len(calls) == n


def test_mirrored_segment_averages_flips_and_caches_them_apart(tiny_text_encoder):
    """The server's test-time mirroring: the mean of the plain and flipped-back passes; the mirrored windows are
    cached under their own keys, the plain ones as one pass caches them (the click path decodes from those)."""
    from lib.inference import mirrored_segment, segment_prompts, sliding_window_segment
    from lib.model import build_refsam3d

    torch.manual_seed(0)
    model = build_refsam3d("small", text_encoder=str(tiny_text_encoder)).eval()
    image = torch.rand(1, 1, 40, 36, 20)
    plain_store, store = {}, {}
    plain = sliding_window_segment(model, image, ["liver"], (32, 32, 32), 0.25, encodings=plain_store)
    flipped = sliding_window_segment(model, image.flip(2), ["liver"], (32, 32, 32), 0.25).flip(2)
    assert not torch.allclose(plain, flipped, atol=1e-3)  # a random model is not symmetric: the test can fail
    mirrored = mirrored_segment(model, image, ["liver"], (32, 32, 32), 0.25, encodings=store, mirror_axes=(0,))
    torch.testing.assert_close(mirrored, (plain + flipped) / 2)
    assert len(store) == 2 * len(plain_store) and all(k in store for k in plain_store)
    for key, enc in plain_store.items():
        torch.testing.assert_close(store[key].mask_features, enc.mask_features)
    assert sum(1 for k in store if k[0] == "flip") == len(plain_store)
    torch.testing.assert_close(mirrored_segment(model, image, ["liver"], (32, 32, 32), 0.25, encodings=store),
                               plain)  # no axes: one plain pass, from the shared cache
    kept = {}
    labels, _ = segment_prompts(model, image, ["liver"], (32, 32, 32), 0.25, encodings=store, threshold=0.5,
                                keep=lambda i, p: kept.setdefault(i, p), mirror_axes=(0,))
    torch.testing.assert_close(kept[0], mirrored[0, 0])
    assert torch.equal(labels, (mirrored[0, 0] >= 0.5).to(torch.int32))


def test_weights_card_shows_the_evaluation_made_as_the_server_predicts():
    from lib.weights_card import headline, summarise_extra, trained_flip_axes

    ev = lambda dice, axes: {"mean": {"dice": dice}, "num_cases": 40, "mirror_axes": axes, "per_label": {}}
    extra = {"label_set": "msd_hippocampus", "training": {"config": {"flip_axes": [0]}},
             "test_evaluation": ev(0.892, [0]), "test_evaluation_single_pass": ev(0.888, [])}
    assert trained_flip_axes(extra) == (0,) and trained_flip_axes({}) == () and trained_flip_axes(None) == ()
    assert "test Dice 0.892" in headline(summarise_extra(extra, (0,)), "msd_hippocampus")
    assert "test Dice 0.888" in headline(summarise_extra(extra, ()), "msd_hippocampus")
    assert summarise_extra(extra)["test"]["from"] == "test_evaluation_single_pass"  # unknown: one pass first


def test_auto_overlap_uses_the_fewest_windows_that_still_overlap():
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval
    from lib.inference import auto_overlap

    for shape, roi, expected in [((243, 201, 223), 128, 8), ((122, 101, 30), 32, 16), ((40, 36, 20), 32, 4)]:
        rois = (roi,) * 3
        size = tuple(max(s, roi) for s in shape)
        slices = dense_patch_slices(size, rois, _get_scan_interval(size, rois, 3, auto_overlap(shape, rois)))
        assert len(slices) == expected
        for axis in range(3):
            starts = sorted({s[axis].start for s in slices})
            stops = sorted({s[axis].stop for s in slices})
            assert starts[0] == 0 and stops[-1] == size[axis]
            assert all(a - b >= roi // 16 for a, b in zip(stops[:-1], starts[1:]))  # neighbours still blend
