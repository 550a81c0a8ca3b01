"""MONAI pipelines from a plan: patch shapes, normalisation, label mapping, and exact inversion to the input grid."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import DataLoader

from medattn.data.importers import load_dataset
from medattn.data.io import write_volume
from medattn.data.plan import ChannelNorm, Plan, make_plan
from medattn.data.transforms import (
    AugmentConfig,
    apply,
    eval_transforms,
    inference_transforms,
    invert_to_input,
    make_dataset,
    normalise_channel,
    train_transforms,
)
from medattn.errors import DataError
from tests.conftest import blob_case, write_nifti


def _plan(**over) -> Plan:
    base = Plan(
        dataset="t",
        channels=(ChannelNorm("T1", "MR", "zscore", 0, 1, 0, 1),),
        labels={0: "bg", 1: "a", 2: "b"},
        target_spacing=(1.0, 1.0, 1.0),
        anisotropic=False,
        median_shape=(16, 18, 20),
        patch_size=(16, 16, 16),
        batch_size=2,
        strides=((1, 1, 1), (2, 2, 2), (2, 2, 2)),
        kernel_sizes=((3, 3, 3),) * 3,
        crop_foreground=False,
        foreground_ratio=0.5,
        memory_budget_mb=100,
        estimated_memory_mb=10,
    )
    return replace(base, **over)


def test_training_batch_has_planned_patch_shape_on_real_data(shared_data: Path) -> None:
    m = load_dataset(shared_data / "Task04_Hippocampus")
    plan = make_plan(m, max_cases=20)
    data = m.datalist()[:4]
    ds = make_dataset(data, train_transforms(plan, samples_per_volume=2), cache="memory")
    batch = next(iter(DataLoader(ds, batch_size=2, shuffle=False)))
    assert batch["image"].shape == (4, 1, *plan.patch_size)  # 2 volumes x 2 patches each
    assert batch["label"].shape == (4, 1, *plan.patch_size)
    assert batch["image"].dtype == torch.float32
    assert set(batch["label"].unique().tolist()) <= {0.0, 1.0, 2.0}


def test_foreground_ratio_one_always_samples_foreground(make_msd) -> None:
    root = make_msd(n=2, shape=(40, 40, 40))
    m = load_dataset(root)
    plan = _plan(patch_size=(8, 8, 8), foreground_ratio=1.0)
    t = train_transforms(plan, AugmentConfig.none(), samples_per_volume=8)
    for item in m.datalist():
        patches = t({"image": item["image"][0], "label": item["label"]})
        assert len(patches) == 8
        # Each patch is centred on a foreground voxel.
        assert all(p["label"][0, 4, 4, 4] > 0 for p in patches)


def test_augmentations_run_and_keep_shapes(make_msd) -> None:
    root = make_msd(n=1, shape=(24, 24, 24))
    item = load_dataset(root).datalist()[0]
    every = AugmentConfig(**{k: 1.0 for k in AugmentConfig.__dataclass_fields__ if k.endswith("_prob")})
    t = train_transforms(_plan(), every, samples_per_volume=2)
    t.set_random_state(seed=3)
    out = t({"image": item["image"][0], "label": item["label"]})
    assert out[0]["image"].shape == (1, 16, 16, 16)
    assert torch.isfinite(out[0]["image"]).all()
    assert set(out[0]["label"].unique().tolist()) <= {0.0, 1.0, 2.0}
    with pytest.raises(Exception, match="unknown augmentation option"):
        AugmentConfig.from_dict({"flip_probability": 0.5})


def test_normalisation_zscore_body_mask_and_ct() -> None:
    x = torch.zeros(10, 10, 10)
    x[2:8, 2:8, 2:8] = torch.arange(216, dtype=torch.float32).reshape(6, 6, 6)
    z = normalise_channel(x, ChannelNorm("T1", "MR", "zscore", 0, 0, 0, 1, use_body_mask=False))
    assert z.mean().item() == pytest.approx(0, abs=1e-5) and z.std(unbiased=False).item() == pytest.approx(1, abs=1e-5)
    b = normalise_channel(x, ChannelNorm("T1", "MR", "zscore", 0, 0, 0, 1, use_body_mask=True))
    body = x != 0
    assert b[~body].abs().max() == 0
    assert b[body].mean().item() == pytest.approx(0, abs=1e-5)
    ct = normalise_channel(torch.tensor([-2000.0, 0.0, 50.0, 3000.0]), ChannelNorm("CT", "CT", "ct", -100, 200, 50, 10))
    np.testing.assert_allclose(ct.numpy(), [(-100 - 50) / 10, (0 - 50) / 10, 0.0, (200 - 50) / 10])


def test_sparse_label_values_map_to_class_indices(tmp_path: Path) -> None:
    image, label = blob_case((12, 12, 12), seed=0)
    lab = np.where(label == 1, 63, np.where(label == 2, 117, 0)).astype(np.uint8)
    write_nifti(tmp_path / "i.nii.gz", image)
    write_nifti(tmp_path / "l.nii.gz", lab)
    plan = _plan(labels={0: "bg", 63: "x", 117: "y"})
    d = eval_transforms(plan)({"image": str(tmp_path / "i.nii.gz"), "label": str(tmp_path / "l.nii.gz")})
    np.testing.assert_array_equal(d["label"][0].numpy(), label.astype(np.float32))


@pytest.mark.parametrize("geometry", ["ras", "lps_anisotropic", "oblique"])
def test_inference_pipeline_inverts_to_input_grid(tmp_path: Path, geometry: str) -> None:
    """A label pushed through the pipeline and inverted lands on the input's exact grid (shape, affine, voxels)."""
    image, label = blob_case((21, 17, 13), seed=4)
    if geometry == "ras":
        aff = np.diag([1.0, 1.0, 1.0, 1.0])
    elif geometry == "lps_anisotropic":
        aff = np.diag([-0.9, -0.9, 3.0, 1.0])
        aff[:3, 3] = [30, 40, -10]
    else:
        th = np.deg2rad(25)
        aff = np.eye(4)
        aff[:3, :3] = np.array([[np.cos(th), 0, np.sin(th)], [0, -1, 0], [-np.sin(th), 0, np.cos(th)]]) @ np.diag(
            [1.2, 1.0, 2.0]
        )
        aff[:3, 3] = [5, -3, 8]
    write_nifti(tmp_path / "img.nii.gz", image, aff)
    write_nifti(tmp_path / "lab.nii.gz", label, aff)
    plan = _plan(target_spacing=(1.0, 1.0, 1.0))
    item = {"image": str(tmp_path / "img.nii.gz"), "label": str(tmp_path / "lab.nii.gz")}
    pre = eval_transforms(plan)(item)
    itr = inference_transforms(plan)
    data = itr({"image": item["image"]})
    assert data["image"].shape[1:] == pre["label"].shape[1:]
    back = invert_to_input(pre["label"], data, itr)
    assert tuple(back.shape[1:]) == label.shape
    np.testing.assert_allclose(np.asarray(back.affine), aff, atol=1e-4)
    agreement = (np.asarray(back[0]).round() == label).mean()
    # Identity grids invert exactly; resampled ones lose only boundary voxels (nearest neighbour both ways).
    assert agreement == 1.0 if geometry == "ras" else agreement > 0.9


def test_simpleitk_format_gives_same_tensors_as_nifti(tmp_path: Path) -> None:
    image, label = blob_case((14, 15, 16), seed=2)
    aff = np.diag([-1.0, -1.0, 1.5, 1.0])
    write_volume(image, aff, tmp_path / "i.nii.gz")
    write_volume(label, aff, tmp_path / "l.nii.gz")
    write_volume(image, aff, tmp_path / "i.nrrd")
    write_volume(label, aff, tmp_path / "l.mha")
    plan = _plan()
    a = eval_transforms(plan)({"image": str(tmp_path / "i.nii.gz"), "label": str(tmp_path / "l.nii.gz")})
    b = eval_transforms(plan)({"image": str(tmp_path / "i.nrrd"), "label": str(tmp_path / "l.mha")})
    torch.testing.assert_close(a["image"].as_tensor(), b["image"].as_tensor())
    torch.testing.assert_close(a["label"].as_tensor(), b["label"].as_tensor())
    np.testing.assert_allclose(np.asarray(a["image"].affine), np.asarray(b["image"].affine), atol=1e-5)


def test_multichannel_files_stack_in_manifest_order(tmp_path: Path) -> None:
    image, label = blob_case((10, 10, 10), seed=1)
    write_nifti(tmp_path / "FLAIR.nii.gz", image)
    write_nifti(tmp_path / "T1.nii.gz", -image)
    write_nifti(tmp_path / "seg.nii.gz", label)
    plan = _plan(
        channels=(ChannelNorm("T1", "MR", "zscore", 0, 1, 0, 1), ChannelNorm("FLAIR", "MR", "zscore", 0, 1, 0, 1))
    )
    d = eval_transforms(plan)(
        {"image": [str(tmp_path / "T1.nii.gz"), str(tmp_path / "FLAIR.nii.gz")], "label": str(tmp_path / "seg.nii.gz")}
    )
    assert d["image"].shape == (2, 10, 10, 10)
    # Channel 0 is T1 = -image: after z-scoring it is the negative of channel 1.
    torch.testing.assert_close(d["image"][0], -d["image"][1], atol=1e-5, rtol=1e-5)
    nib_img = nib.load(str(tmp_path / "T1.nii.gz"))
    assert nib_img.shape == (10, 10, 10)


def test_channel_count_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    image, _label = blob_case((10, 10, 10), seed=1)
    write_nifti(tmp_path / "a.nii.gz", image)
    plan = _plan(channels=(ChannelNorm("T1", "MR", "zscore", 0, 1, 0, 1),) * 2)
    with pytest.raises(DataError, match="the plan expects 2") as err:
        apply(inference_transforms(plan), {"image": str(tmp_path / "a.nii.gz")})
    assert err.value.path == str(tmp_path / "a.nii.gz")
    (tmp_path / "b.nii.gz").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"b\.nii\.gz"):
        apply(inference_transforms(_plan()), {"image": str(tmp_path / "b.nii.gz")})


def test_single_4d_file_holds_the_channels(tmp_path: Path) -> None:
    """MSD-style multi-channel case: one 4D NIfTI (X, Y, Z, C) gives a (C, X, Y, Z) image."""
    image, label = blob_case((10, 11, 12), seed=0)
    write_nifti(tmp_path / "img.nii.gz", np.stack([image, -image], axis=-1))
    write_nifti(tmp_path / "lab.nii.gz", label)
    norm = ChannelNorm("a", "MR", "zscore", 0, 1, 0, 1)
    d = apply(
        eval_transforms(_plan(channels=(norm, norm))),
        {"image": str(tmp_path / "img.nii.gz"), "label": str(tmp_path / "lab.nii.gz")},
    )
    assert d["image"].shape == (2, 10, 11, 12)
    torch.testing.assert_close(d["image"][0], -d["image"][1], atol=1e-5, rtol=1e-5)


def test_the_disk_cache_reads_a_file_edited_in_place_anew(make_msd, tmp_path: Path) -> None:
    """MONAI's disk cache keys on the item's paths; medattn's key adds each file's size and modification time, so a
    label corrected in place is not read back stale (``adapt --resume`` reuses ``RUN/cache``)."""
    import os

    root = make_msd(n=1, shape=(16, 18, 20))
    item = load_dataset(root).datalist()[0]
    plan = make_plan(load_dataset(root))
    cache = tmp_path / "cache"
    before = make_dataset([item], eval_transforms(plan), cache="disk", cache_dir=cache)[0]["label"]
    img = nib.load(item["label"])
    edited = np.zeros(img.shape, np.uint8)  # the label emptied in place: same path
    nib.save(nib.Nifti1Image(edited, img.affine, img.header), item["label"])
    stamp = os.stat(item["label"]).st_mtime + 5
    os.utime(item["label"], (stamp, stamp))
    after = make_dataset([item], eval_transforms(plan), cache="disk", cache_dir=cache)[0]["label"]
    assert float(before.sum()) > 0 and float(after.sum()) == 0
    assert len(list(cache.iterdir())) == 2  # one entry per file state
