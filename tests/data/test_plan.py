"""Planning: target spacing, patch size under a memory budget, normalisation choice, JSON round trip."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from medattn.cli import main
from medattn.data.importers import load_dataset
from medattn.data.plan import Plan, choose_patch, choose_target_spacing, estimate_memory_mb, make_plan, plan_topology
from medattn.errors import ManifestError
from tests.conftest import blob_case, write_nifti


def test_target_spacing_isotropic_is_median() -> None:
    sp = np.array([[1.0, 1.0, 1.2], [0.9, 0.9, 1.0], [1.1, 1.0, 1.4]])
    target, aniso = choose_target_spacing(sp)
    assert not aniso
    np.testing.assert_allclose(target, np.median(sp, axis=0))


def test_target_spacing_anisotropic_uses_tenth_percentile_of_coarse_axis() -> None:
    z = np.array([2.5, 3.0, 5.0, 5.0, 5.0, 5.0, 5.0, 6.0, 7.5, 8.0])
    sp = np.stack([np.full(10, 0.8), np.full(10, 0.8), z], axis=1)
    target, aniso = choose_target_spacing(sp)
    assert aniso
    assert target[:2] == (0.8, 0.8)
    assert target[2] == pytest.approx(np.percentile(z, 10))  # not the median 5.0


def test_topology_does_not_pool_coarse_axis_early() -> None:
    strides, kernels = plan_topology((160, 160, 20), (0.8, 0.8, 5.0))
    assert strides[1] == (2, 2, 1) and kernels[0] == (3, 3, 1)
    # The coarse axis starts pooling only once in-plane spacing caught up within 2x.
    first_z = next(i for i, s in enumerate(strides) if s[2] == 2)
    assert 0.8 * 2 ** (first_z - 1) * 2 >= 5.0 / 2


def test_patch_fits_budget_and_shrinks_with_it() -> None:
    big = choose_patch((240, 240, 155), (1.0, 1.0, 1.0), 4096, 2, 1)
    small = choose_patch((240, 240, 155), (1.0, 1.0, 1.0), 512, 2, 1)
    for patch, strides, _, mem in (big, small):
        mult = np.prod(np.array(strides), axis=0)
        assert all(p % m == 0 for p, m in zip(patch, mult, strict=True))
        assert mem == pytest.approx(estimate_memory_mb(patch, strides, 2, 1))
    assert big[3] <= 4096 and small[3] <= 512
    assert np.prod(small[0]) < np.prod(big[0])


def test_plan_real_hippocampus(shared_data: Path, tmp_path: Path) -> None:
    m = load_dataset(shared_data / "Task04_Hippocampus")
    plan = make_plan(m, max_cases=40)
    assert plan.target_spacing == (1.0, 1.0, 1.0)
    assert not plan.anisotropic
    assert [c.scheme for c in plan.channels] == ["zscore"]
    assert plan.channels[0].modality == "MR"
    # Patch covers the median hippocampus crop (~35 x 50 x 36), rounded up to the pooling multiple.
    assert all(p >= s for p, s in zip(plan.patch_size, plan.median_shape, strict=True))
    assert all(p % m == 0 for p, m in zip(plan.patch_size, plan.required_multiple, strict=True))
    assert plan.estimated_memory_mb <= plan.memory_budget_mb
    path = plan.save(tmp_path / "plan.json")
    assert Plan.load(path) == plan
    fp = plan.fingerprint["overall"]
    # The intensity encoding varies (uint8 and float32 volumes): the fingerprint sees the wide range.
    assert fp["foreground_intensity"]["MRI"]["max"] > 255


def test_plan_ct_channel_clips_to_foreground_percentiles(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    root = tmp_path / "ct"
    training = []
    fg_values = []
    for i in range(3):
        _, label = blob_case((16, 16, 16), seed=i)
        image = rng.normal(-800, 50, label.shape)
        image[label > 0] = rng.normal(60, 20, int((label > 0).sum()))
        fg_values.append(image[label > 0])
        write_nifti(root / "imagesTr" / f"c{i}.nii.gz", image.astype(np.int16), np.diag([0.7, 0.7, 2.5, 1]))
        write_nifti(root / "labelsTr" / f"c{i}.nii.gz", label, np.diag([0.7, 0.7, 2.5, 1]))
        training.append({"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"})
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "name": "CTBlobs",
                "modality": {"0": "CT"},
                "labels": {"0": "background", "1": "a", "2": "b"},
                "training": training,
            }
        )
    )
    plan = make_plan(load_dataset(root))
    ch = plan.channels[0]
    assert ch.scheme == "ct"
    allv = np.rint(np.concatenate(fg_values))  # stored as int16
    assert ch.clip_low == pytest.approx(np.percentile(allv, 0.5), abs=1.0)
    assert ch.clip_high == pytest.approx(np.percentile(allv, 99.5), abs=1.0)
    assert ch.mean == pytest.approx(allv.mean(), abs=1.0)
    assert plan.target_spacing == (0.7, 0.7, 2.5)


def test_plan_brats_per_domain_and_body_mask(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    assert main(["plan", str(shared_data / "BraTS2018_sites"), "-o", str(out), "--quiet"]) == 0
    plan = Plan.load(out)
    assert set(plan.fingerprint["domains"]) == {"CBICA", "TCIA"}
    assert plan.fingerprint["domains"]["TCIA"]["num_cases"] == 3
    # Skull-stripped brains: zeros outside the head, so crop and z-score inside the body.
    assert plan.crop_foreground
    assert all(c.use_body_mask for c in plan.channels)
    assert [c.name for c in plan.channels] == ["FLAIR", "T1"]


def test_unreadable_case_is_skipped_and_named(make_msd) -> None:
    root = make_msd(n=3)
    (root / "imagesTr" / "blob_001.nii.gz").write_bytes(b"broken")
    plan = make_plan(load_dataset(root))
    skipped = plan.fingerprint["skipped_cases"]
    assert len(skipped) == 1 and "blob_001" in skipped[0]
    assert plan.fingerprint["cases_used"] == 2


def test_fingerprint_leaves_out_the_test_split(tmp_path: Path) -> None:
    """A test case shapes neither the CT statistics nor the spacing: ``make_plan`` (what ``medattn plan`` and
    ``medattn train`` without ``--plan`` call) reads the train and val splits only."""
    rng = np.random.default_rng(1)
    root = tmp_path / "ct"
    training, fg_values = [], []
    for i in range(4):
        _, label = blob_case((16, 16, 16), seed=i)
        image = rng.normal(-800, 50, label.shape)
        test_case = i == 3  # bright foreground on a coarse grid: it would move every statistic below
        image[label > 0] = rng.normal(900 if test_case else 60, 20, int((label > 0).sum()))
        if not test_case:
            fg_values.append(image[label > 0])
        affine = np.diag([2.0, 2.0, 5.0, 1]) if test_case else np.diag([0.7, 0.7, 2.5, 1])
        write_nifti(root / "imagesTr" / f"c{i}.nii.gz", image.astype(np.int16), affine)
        write_nifti(root / "labelsTr" / f"c{i}.nii.gz", label, affine)
        training.append({"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"})
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "name": "CTBlobs",
                "modality": {"0": "CT"},
                "labels": {"0": "background", "1": "a", "2": "b"},
                "training": training,
            }
        )
    )
    m = load_dataset(root)
    d = m.domains[0]
    ids = sorted(c.id for c in d.cases)
    split = replace(m, domains=(replace(d, splits={"train": tuple(ids[:2]), "val": (ids[2],), "test": (ids[3],)}),))
    path = split.save(tmp_path / "split.json")
    out = tmp_path / "plan.json"
    assert main(["plan", str(path), "-o", str(out), "--quiet"]) == 0
    for plan in (Plan.load(out), make_plan(split, max_cases=3)):
        assert plan.fingerprint["cases_used"] == 3 and plan.fingerprint["test_cases_left_out"] == 1
        ch = plan.channels[0]
        allv = np.rint(np.concatenate(fg_values))
        assert ch.mean == pytest.approx(allv.mean(), abs=1.0)
        assert ch.clip_high == pytest.approx(np.percentile(allv, 99.5), abs=1.0)
        assert plan.target_spacing == (0.7, 0.7, 2.5)
    # Without splits every case is read (the test case then moves the statistics).
    whole = make_plan(m)
    assert whole.fingerprint["cases_used"] == 4 and whole.fingerprint["test_cases_left_out"] == 0
    assert whole.channels[0].clip_high > 800
    only_test = replace(m, domains=(replace(d, splits={"train": (), "test": tuple(ids)}),))
    with pytest.raises(ManifestError, match=r"4 labelled case.*test split"):
        make_plan(only_test)


def test_plan_leaves_out_cases_the_input_checks_refuse(make_msd, tmp_path: Path, capsys) -> None:
    """A case with a NaN voxel would skew the fingerprint's statistics: it is left out, named, and the exit code
    says so (the plan is still written from the other cases)."""
    import nibabel as nib

    root = make_msd(n=4)
    img = nib.load(root / "imagesTr" / "blob_002.nii.gz")
    voxels = np.asarray(img.dataobj, dtype=np.float32)
    voxels[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(voxels, img.affine), str(root / "imagesTr" / "blob_002.nii.gz"))
    out = tmp_path / "plan.json"
    assert main(["plan", str(root), "-o", str(out), "--quiet"]) == 1
    printed = capsys.readouterr().out
    assert "1 case(s) failed the input checks" in printed and "case 'blob_002'" in printed and "1 NaN" in printed
    plan = json.loads(out.read_text())
    assert plan["fingerprint"]["cases_used"] == 3 and len(plan["fingerprint"]["skipped_cases"]) == 1


def test_plan_spacing_override_coarsens_the_grid(make_msd, tmp_path: Path, capsys) -> None:
    """``plan --spacing`` (a low-resolution plan of large volumes): the plan resamples to the given voxel size, the
    patch and topology follow from it (a coarser grid: a smaller median shape in voxels) and the fingerprint keeps
    its own choice beside the override; a bad value is a usage error."""
    root = make_msd(n=4)
    native, coarse = tmp_path / "native.json", tmp_path / "coarse.json"
    assert main(["plan", str(root), "-o", str(native), "--quiet"]) == 0
    assert main(["plan", str(root), "-o", str(coarse), "--quiet", "--spacing", "2,2,3"]) == 0
    a, b = Plan.load(native), Plan.load(coarse)
    assert b.target_spacing == (2.0, 2.0, 3.0)
    expected = np.round(np.array(a.median_shape) * np.array(a.target_spacing) / np.array([2.0, 2.0, 3.0]))
    np.testing.assert_allclose(b.median_shape, expected, atol=1)
    assert b.fingerprint["spacing_override"] == {"fingerprint_choice": list(a.target_spacing), "used": [2.0, 2.0, 3.0]}
    assert main(["plan", str(root), "-o", str(tmp_path / "one.json"), "--quiet", "--spacing", "1.5"]) == 0
    assert Plan.load(tmp_path / "one.json").target_spacing == (1.5, 1.5, 1.5)
    capsys.readouterr()
    for bad in ("0,1,1", "a,b,c", "1,2"):
        with pytest.raises(SystemExit) as e:
            main(["plan", str(root), "-o", str(tmp_path / "bad.json"), "--spacing", bad])
        assert e.value.code == 2
        assert "--spacing" in capsys.readouterr().err
    assert not (tmp_path / "bad.json").exists()


def test_plan_refuses_a_spacing_that_leaves_nothing_or_too_much_to_train_on(make_msd, tmp_path: Path, capsys) -> None:
    """``--spacing 100,100,100`` would give a median volume of 0 voxels, ``1e-6,1,1`` one of millions along an
    axis (training then fails elsewhere, or allocates tens of GB): refused, naming the shape; no plan written.
    ``--max-cases`` below 1 is a usage error."""
    root = make_msd(n=3)
    for bad, word in (("100,100,100", "too coarse"), ("1e-6,1,1", "too fine")):
        out = tmp_path / f"{word}.json"
        assert main(["plan", str(root), "-o", str(out), "--quiet", "--spacing", bad]) != 0
        err = capsys.readouterr().err
        assert f"--spacing is too {word.split()[1]}" in err and "median volume would be" in err
        assert not out.exists()
    for bad in ("0", "-1", "x"):
        with pytest.raises(SystemExit) as e:
            main(["plan", str(root), "-o", str(tmp_path / "p.json"), "--max-cases", bad])
        assert e.value.code == 2 and "--max-cases" in capsys.readouterr().err


def test_a_label_stored_as_x_y_z_1_is_planned_like_its_3d_map(make_msd) -> None:
    import nibabel as nib

    root = make_msd(n=3)
    flat = make_plan(load_dataset(root))
    path = root / "labelsTr" / "blob_001.nii.gz"
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., None], img.affine), str(path))
    four = make_plan(load_dataset(root))
    assert four.fingerprint["cases_used"] == 3 and not four.fingerprint.get("skipped_cases")
    assert four.median_shape == flat.median_shape and four.patch_size == flat.patch_size
    assert four.channels == flat.channels  # the foreground intensity statistics too
