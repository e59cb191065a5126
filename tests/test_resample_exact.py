"""The fast resampling paths against MONAI's own, on real images (``lib/label_resample.py``, ``lib/separable_spacing.py``).

* Restoring a label map onto the original grid (``RestoreGeometryd``) gives exactly the voxels of MONAI's float32
  nearest ``SpatialResample`` (the code it replaced), for real CT / MR / NRRD images with 3 mm, 1 mm and
  0.63 x 0.63 x 5 mm grids, LPS and RAS orientations, a permuted-axes file, tie-heavy target spacings
  (2 mm from 1 mm and 3 mm grids: every other voxel sits half-way) and an oblique grid (MONAI's path).
* Pre-processing (``SeparableSpacingd``, bilinear) equals MONAI's ``Spacingd`` within float rounding, with the same
  affine, shape and transform trace; labels (nearest) are MONAI's exactly.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, Spacingd, SpatialResample

from conftest import require
from lib.infers.refsam3d import RestoreGeometryd
from lib.label_resample import axis_pairing, resample_label_map, voxel_transform
from lib.separable_spacing import SeparableSpacingd
from lib.transforms import load_transforms

RAS = (("L", "R"), ("P", "A"), ("I", "S"))


@pytest.fixture(scope="module")
def images(totalseg_dir, hippocampus_dir, shared_data, tmp_path_factory):
    """Real images: CT crop (RAS, 3 mm, int32), MR (LPS, 3 mm), hippocampus MRI (1 mm), lung CT (NRRD, LPS, 0.63 x 0.63 x 5 mm),
    and the CT crop stored with permuted, flipped axes (its voxels in (z, y, x) order)."""
    lung = shared_data / "lung-tumour-ct" / "lung2_image.nrrd"
    require(lung.exists(), f"missing {lung} (../shared/data)")
    ct = totalseg_dir / "example_ct_sm.nii.gz"
    img = nib.load(str(ct))
    perm = np.transpose(np.asanyarray(img.dataobj), (2, 1, 0))[:, ::-1]
    affine = img.affine[:, [2, 1, 0, 3]].copy()
    affine[:3, 3] += affine[:3, 1] * (perm.shape[1] - 1)
    affine[:3, 1] *= -1
    permuted = tmp_path_factory.mktemp("permuted") / "ct_zyx.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(perm), affine), str(permuted))
    return {
        "ct": str(ct),
        "mr_lps": str(totalseg_dir / "example_mr_sm.nii.gz"),
        "hippocampus": str(hippocampus_dir / "imagesTr" / "hippocampus_004.nii.gz"),
        "lung_nrrd": str(lung),
        "ct_permuted": str(permuted),
    }


def _monai_restore(pred: torch.Tensor, image: MetaTensor) -> torch.Tensor:
    """What ``RestoreGeometryd`` did before: MONAI's float32 nearest resampling of the whole map."""
    resampler = SpatialResample(mode="nearest", padding_mode="zeros", dtype=torch.float32)
    shape = [int(s) for s in np.asarray(image.meta["spatial_shape"]).tolist()][-3:]
    original = torch.as_tensor(np.asarray(image.meta["original_affine"]), dtype=torch.float64)
    with resampler.trace_transform(False):
        out = resampler(MetaTensor(pred.float(), affine=image.affine.clone()), dst_affine=original, spatial_size=shape)
    return torch.round(out.as_tensor())


def _labels(image: torch.Tensor, values=(1, 2)) -> torch.Tensor:
    pred = torch.zeros(image.shape, dtype=torch.int32)
    pred[image > 0.3] = values[0]
    pred[image > 0.6] = values[1]
    return pred


@pytest.mark.parametrize("name,spacing,values", [
    ("ct", 1.5, (1, 2)), ("ct", 2.0, (7, 300)), ("mr_lps", 1.5, (7, 300)), ("mr_lps", 2.0, (1, 2)),
    ("hippocampus", 1.5, (1, 2)), ("hippocampus", 2.0, (7, 300)), ("lung_nrrd", 1.5, (1, 2)),
    ("ct_permuted", 1.5, (1, 2)), ("ct_permuted", 2.0, (7, 300)),
])
def test_restore_equals_monai_nearest_resampling(images, name, spacing, values):
    modality = "MR" if name in ("mr_lps", "hippocampus") else "CT"
    d = Compose(load_transforms(modality, (spacing,) * 3))({"image": images[name]})
    image = d["image"]
    xform = voxel_transform(image.affine.double(), np.asarray(image.meta["original_affine"]))
    assert axis_pairing(xform) is not None  # the separable path is the one under test
    pred = _labels(image, values)  # values > 255: an int16 map
    expected = _monai_restore(pred, image)
    d["pred"] = MetaTensor(pred.float(), affine=image.affine.clone())
    out = RestoreGeometryd("pred", "image")(d)["pred"]
    assert not out.is_floating_point() and out.dtype == (torch.uint8 if values[1] < 256 else torch.int16)
    assert tuple(out.shape) == tuple(expected.shape) and int((expected != 0).sum()) > 1000
    assert torch.equal(out.as_tensor().long(), expected.long()), f"{int((out.as_tensor().long() != expected.long()).sum())} voxels differ"
    np.testing.assert_array_equal(np.asarray(out.affine), np.asarray(image.meta["original_affine"]))


def test_restore_keeps_monai_for_oblique_grids_and_empty_maps(images):
    d = Compose(load_transforms("MR", (1.5,) * 3))({"image": images["hippocampus"]})
    image = d["image"]
    angle = np.deg2rad(10)
    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    oblique = rot @ np.asarray(image.meta["original_affine"], dtype=np.float64)
    assert axis_pairing(voxel_transform(image.affine.double(), oblique)) is None
    pred = _labels(image)
    shape = [int(s) for s in np.asarray(image.meta["spatial_shape"]).tolist()]
    resampler = SpatialResample(mode="nearest", padding_mode="zeros", dtype=torch.float32)
    with resampler.trace_transform(False):
        expected = resampler(MetaTensor(pred.float(), affine=image.affine.clone()),
                             dst_affine=torch.as_tensor(oblique), spatial_size=shape)
    out = resample_label_map(pred[0], image.affine.double(), oblique, shape)
    assert torch.equal(out.long(), torch.round(expected.as_tensor()[0]).long()) and int((out != 0).sum()) > 1000
    empty = resample_label_map(torch.zeros_like(pred[0]), image.affine.double(), np.asarray(image.meta["original_affine"]), shape)
    assert tuple(empty.shape) == tuple(shape) and not bool(empty.any())


@pytest.mark.parametrize("name,spacing", [("ct", 1.5), ("mr_lps", 1.5), ("hippocampus", 1.5), ("lung_nrrd", 2.0),
                                          ("ct_permuted", 2.0)])
def test_separable_spacing_equals_monai_within_float_rounding(images, name, spacing):
    load = Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image"),
                    Orientationd("image", axcodes="RAS", labels=RAS)])
    d = load({"image": images[name]})
    expected = Spacingd("image", pixdim=(spacing,) * 3, mode="bilinear")(dict(d))["image"]
    out = SeparableSpacingd("image", pixdim=(spacing,) * 3, mode="bilinear")(dict(d))["image"]
    assert out.dtype == torch.float32 and tuple(out.shape) == tuple(expected.shape)
    assert torch.equal(out.affine, expected.affine)
    trace = [(op["class"], tuple(op["orig_size"]), op["extra_info"]["mode"]) for op in out.applied_operations[-1:]]
    assert trace == [(op["class"], tuple(op["orig_size"]), op["extra_info"]["mode"]) for op in expected.applied_operations[-1:]]
    scale = float(expected.abs().max())
    diff = float((out.as_tensor() - expected.as_tensor()).abs().max())
    assert diff <= 2e-7 * scale, f"max difference {diff} for values up to {scale}"  # float32 rounding
    assert float((out.as_tensor() - expected.as_tensor()).abs().mean()) < 1e-9 * scale


def test_training_pipeline_labels_stay_monai_exact(hippocampus_dir):
    """With a label key (training, evaluation) the label is resampled by MONAI's nearest path: the same voxels."""
    case = {"image": str(hippocampus_dir / "imagesTr" / "hippocampus_004.nii.gz"),
            "label": str(hippocampus_dir / "labelsTr" / "hippocampus_004.nii.gz")}
    ours = Compose(load_transforms("MR", (1.5,) * 3, label_key="label"))(dict(case))
    keys = ["image", "label"]
    reference = Compose([LoadImaged(keys, image_only=True), EnsureChannelFirstd(keys),
                         Orientationd(keys, axcodes="RAS", labels=RAS),
                         Spacingd(keys, pixdim=(1.5,) * 3, mode=["bilinear", "nearest"])])(dict(case))
    assert ours["label"].dtype == torch.float32 and torch.equal(ours["label"].as_tensor(), reference["label"].as_tensor())
    assert set(torch.unique(ours["label"]).tolist()) == {0.0, 1.0, 2.0}
