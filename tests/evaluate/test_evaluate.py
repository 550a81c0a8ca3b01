"""``medattn evaluate`` and its metrics, checked against independent NumPy / SciPy computations."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from medattn.cli import main
from medattn.evaluate.metrics import binary_scores, bootstrap_ci, summarise
from tests.conftest import blob_case, split_manifest, write_nifti

LABELS = {0: "background", 63: "anterior", 117: "posterior"}
SPACING = (0.8, 1.0, 2.5)


def _dataset(root: Path, n: int, shape=(16, 18, 20)) -> Path:
    """An MSD-layout dataset with sparse label values (63, 117) and anisotropic spacing; returns its folder."""
    aff = np.diag([*SPACING, 1.0])
    training = []
    for i in range(n):
        image, label = blob_case(shape, seed=i)
        lab = np.array([0, 63, 117], np.uint8)[label]
        write_nifti(root / "imagesTr" / f"c{i}.nii.gz", image, aff)
        write_nifti(root / "labelsTr" / f"c{i}.nii.gz", lab, aff)
        training.append({"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"})
    doc = {
        "name": "T",
        "modality": {"0": "MRI"},
        "labels": {str(k): v for k, v in LABELS.items()},
        "training": training,
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(doc))
    return root


def _perturbed(label: np.ndarray, seed: int) -> np.ndarray:
    """A plausible prediction: the label shifted by a voxel or two, with some voxels swapped."""
    rng = np.random.default_rng(seed)
    pred = np.roll(label, seed % 3, axis=seed % 3).copy()
    flip = rng.random(label.shape) < 0.02
    pred[flip] = rng.choice([0, 63, 117], size=int(flip.sum()))
    return pred


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask)


def _scipy_distances(a: np.ndarray, b: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from a's surface voxels to b's surface and back, by Euclidean distance transforms."""
    sa, sb = _surface(a), _surface(b)
    da = ndimage.distance_transform_edt(~sb, sampling=spacing)[sa]
    db = ndimage.distance_transform_edt(~sa, sampling=spacing)[sb]
    return da, db


def test_dice_per_case_and_class_equals_numpy_on_the_files(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "data", n=4)
    for i in range(4):
        lab = np.asarray(nib.load(str(root / "labelsTr" / f"c{i}.nii.gz")).dataobj)
        write_nifti(tmp_path / "pred" / f"c{i}.nii.gz", _perturbed(lab, i), np.diag([*SPACING, 1.0]))
    out = tmp_path / "m.json"
    assert main(["evaluate", str(tmp_path / "pred"), str(root), "-o", str(out), "--quiet"]) == 0
    doc = json.loads(out.read_text())
    rows = list(csv.DictReader((tmp_path / "m.csv").open()))
    assert len(rows) == 4 * 2
    dices = {}
    for i in range(4):
        gt = np.asarray(nib.load(str(root / "labelsTr" / f"c{i}.nii.gz")).dataobj)
        pred = np.asarray(nib.load(str(tmp_path / "pred" / f"c{i}.nii.gz")).dataobj)
        for v in (63, 117):
            p, g = pred == v, gt == v
            expected = 2 * (p & g).sum() / (p.sum() + g.sum())
            got = doc["cases"][i]["classes"][str(v)]["dice"]
            assert got == pytest.approx(expected, abs=1e-6)
            row = next(r for r in rows if r["case"] == f"c{i}" and r["label"] == str(v))
            assert float(row["dice"]) == pytest.approx(expected, abs=1e-6)
            dices.setdefault(v, []).append(expected)
    assert min(dices[63]) < 0.99  # the perturbation made the scores informative
    s = doc["summary"]["63"]["dice"]
    assert s["mean"] == pytest.approx(np.mean(dices[63]), abs=1e-6)
    assert s["std"] == pytest.approx(np.std(dices[63], ddof=1), abs=1e-6)
    assert s["ci_low"] <= s["mean"] <= s["ci_high"]
    mean_fg = [np.mean([dices[63][i], dices[117][i]]) for i in range(4)]
    assert doc["summary"]["mean"]["dice"]["mean"] == pytest.approx(np.mean(mean_fg), abs=1e-6)


def test_hd95_and_nsd_in_mm_equal_a_scipy_distance_transform_computation() -> None:
    shape = (30, 28, 20)
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    ball = (zz - 14) ** 2 + (yy - 13) ** 2 + ((xx - 9) * 1.5) ** 2 < 64
    box = np.zeros(shape, bool)
    box[9:21, 7:20, 4:13] = True
    spacing = (0.7, 1.1, 2.0)
    scores = binary_scores(ball, box, spacing, tolerance_mm=1.5)
    da, db = _scipy_distances(ball, box, spacing)
    hd95 = max(np.percentile(da, 95), np.percentile(db, 95))
    nsd = ((da <= 1.5).sum() + (db <= 1.5).sum()) / (da.size + db.size)
    assert scores.hd95 == pytest.approx(hd95, rel=1e-5)
    assert scores.nsd == pytest.approx(nsd, rel=1e-5)
    assert scores.hd95 > 1.0 and 0.1 < scores.nsd < 0.99  # a shape pair that is neither equal nor disjoint
    shifted = np.roll(box, 3, axis=2)  # 3 voxels of 2 mm along the coarse axis
    assert binary_scores(box, shifted, spacing, 1.0).hd95 == pytest.approx(6.0)


def test_empty_masks_follow_the_documented_conventions() -> None:
    empty = np.zeros((8, 8, 8), bool)
    cube = empty.copy()
    cube[2:5, 2:5, 2:5] = True
    both = binary_scores(empty, empty, (1, 1, 1), 1.0)  # nothing to measure: every metric undefined
    assert all(math.isnan(v) for v in (both.dice, both.hd95, both.nsd)) and (both.gt_voxels, both.pred_voxels) == (0, 0)
    for pred, gt in ((empty, cube), (cube, empty)):
        one = binary_scores(pred, gt, (1, 1, 1), 1.0)
        assert (one.dice, one.nsd) == (0.0, 0.0) and math.isinf(one.hd95)
    s = summarise([1.0, math.inf, 3.0, math.nan])
    assert s.n == 2 and s.n_infinite == 1 and s.n_empty == 1 and s.mean == 2.0


def test_a_class_absent_from_a_case_is_null_left_out_and_counted(tmp_path: Path) -> None:
    """Case c1 has no posterior (117) in its label and none predicted: its metrics are null in the JSON, empty in the
    CSV, left out of the class summary and of the case mean, and counted in n_empty."""
    root = _dataset(tmp_path / "data", n=2)
    aff = np.diag([*SPACING, 1.0])
    lab1 = np.asarray(nib.load(str(root / "labelsTr" / "c1.nii.gz")).dataobj)
    no_posterior = np.where(lab1 == 117, 0, lab1).astype(np.uint8)
    write_nifti(root / "labelsTr" / "c1.nii.gz", no_posterior, aff)
    write_nifti(tmp_path / "pred" / "c1.nii.gz", no_posterior, aff)
    lab0 = np.asarray(nib.load(str(root / "labelsTr" / "c0.nii.gz")).dataobj)
    write_nifti(tmp_path / "pred" / "c0.nii.gz", _perturbed(lab0, 1), aff)
    out = tmp_path / "m.json"
    assert main(["evaluate", str(tmp_path / "pred"), str(root), "-o", str(out), "--quiet"]) == 0
    doc = json.loads(out.read_text())
    c1 = next(c for c in doc["cases"] if c["case"] == "c1")["classes"]
    assert {m: c1["117"][m] for m in ("dice", "hd95", "nsd")} == {"dice": None, "hd95": None, "nsd": None}
    assert c1["63"]["dice"] == 1.0
    post = doc["summary"]["117"]
    for m in ("dice", "hd95", "nsd"):
        assert (post[m]["n"], post[m]["n_empty"]) == (1, 1)
    c0 = next(c for c in doc["cases"] if c["case"] == "c0")["classes"]
    assert post["dice"]["mean"] == pytest.approx(c0["117"]["dice"])
    # the case mean of c1 is over its one defined class
    expected_mean = np.mean([np.mean([c0["63"]["dice"], c0["117"]["dice"]]), 1.0])
    assert doc["summary"]["mean"]["dice"]["mean"] == pytest.approx(expected_mean, abs=1e-12)
    assert doc["conventions"]["both_empty"] == {"dice": None, "hd95": None, "nsd": None}
    row = next(r for r in csv.DictReader((tmp_path / "m.csv").open()) if r["case"] == "c1" and r["label"] == "117")
    assert (row["dice"], row["hd95"], row["nsd"]) == ("", "", "")


def test_bootstrap_interval_is_seeded_and_shrinks_with_more_cases() -> None:
    rng = np.random.default_rng(0)
    small, large = rng.normal(0.8, 0.1, 10), rng.normal(0.8, 0.1, 200)
    assert bootstrap_ci(small, seed=1) == bootstrap_ci(small, seed=1)
    assert bootstrap_ci(small, seed=1) != bootstrap_ci(small, seed=2)
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert hi_l - lo_l < hi_s - lo_s
    # The percentile interval of the mean is close to the normal approximation mean +- 1.96 sd / sqrt(n).
    half = 1.96 * large.std(ddof=1) / math.sqrt(large.size)
    assert (hi_l - lo_l) / 2 == pytest.approx(half, rel=0.2)
    assert bootstrap_ci(np.array([0.5])) == (0.5, 0.5)


def test_grid_mismatch_fails_that_case_only_and_infinities_are_written(tmp_path: Path, capsys) -> None:
    root = _dataset(tmp_path / "data", n=3)
    aff = np.diag([*SPACING, 1.0])
    lab0 = np.asarray(nib.load(str(root / "labelsTr" / "c0.nii.gz")).dataobj)
    write_nifti(tmp_path / "pred" / "c0.nii.gz", lab0, aff)
    write_nifti(tmp_path / "pred" / "c1.nii.gz", np.zeros((16, 18, 19), np.uint8), aff)  # wrong shape
    shifted = aff.copy()
    shifted[0, 3] = 5.0
    write_nifti(tmp_path / "pred" / "c2.nii.gz", lab0, shifted)  # wrong origin
    write_nifti(tmp_path / "pred" / "stray.nii.gz", lab0, aff)
    out = tmp_path / "m.json"
    assert main(["evaluate", str(tmp_path / "pred"), str(root), "-o", str(out), "--quiet"]) == 1
    doc = json.loads(out.read_text())
    failed = {f["case"]: f for f in doc["failed"]}
    assert set(failed) == {"c1", "c2"}
    assert "shape" in failed["c1"]["reason"] and failed["c1"]["file"].endswith("c1.nii.gz")
    assert "affine" in failed["c2"]["reason"]
    assert doc["num_evaluated"] == 1 and doc["summary"]["63"]["dice"]["mean"] == 1.0
    assert doc["unmatched"] == [str(tmp_path / "pred" / "stray.nii.gz")]

    # A prediction missing a structure: HD95 is inf, written as the string "inf", counted, not averaged.
    (tmp_path / "pred" / "c1.nii.gz").unlink()
    (tmp_path / "pred" / "c2.nii.gz").unlink()
    lab1 = np.asarray(nib.load(str(root / "labelsTr" / "c1.nii.gz")).dataobj)
    write_nifti(tmp_path / "pred" / "c1.nii.gz", np.where(lab1 == 117, 0, lab1).astype(np.uint8), aff)
    # c2 has no prediction now: listed, and exit 1 unless the user accepts scores over the predicted cases alone
    assert main(["evaluate", str(tmp_path / "pred"), str(root), "-o", str(out), "--quiet"]) == 1
    assert "1 case(s) have no prediction" in capsys.readouterr().out
    assert main(["evaluate", str(tmp_path / "pred"), str(root), "-o", str(out), "--quiet", "--allow-missing"]) == 0
    doc = json.loads(out.read_text())
    assert doc["missing"] == ["c2"] and doc["num_evaluated"] == 2
    c1 = next(c for c in doc["cases"] if c["case"] == "c1")
    assert c1["classes"]["117"]["hd95"] == "inf" and c1["classes"]["117"]["dice"] == 0.0
    assert doc["summary"]["117"]["hd95"]["n_infinite"] == 1 and doc["summary"]["117"]["hd95"]["n"] == 1
    assert doc["summary"]["mean"]["hd95"]["n_infinite"] == 1


def test_no_matching_prediction_is_a_data_error(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "data", n=1)
    write_nifti(tmp_path / "pred" / "other.nii.gz", np.zeros((16, 18, 20), np.uint8))
    assert main(["evaluate", str(tmp_path / "pred"), str(root), "-o", str(tmp_path / "m.json"), "--quiet"]) == 3


def test_split_option_scores_only_that_split(tmp_path: Path, capsys) -> None:
    """``--split test`` scores the test cases alone (the training cases' missing predictions are not reported);
    an unknown split is a data error naming it."""
    root = _dataset(tmp_path / "data", n=3)
    manifest = split_manifest(root, ["c2"])
    lab = np.asarray(nib.load(str(root / "labelsTr" / "c2.nii.gz")).dataobj)
    write_nifti(tmp_path / "pred" / "c2.nii.gz", _perturbed(lab, 2), np.diag([*SPACING, 1.0]))
    out = tmp_path / "m.json"
    args = ["evaluate", str(tmp_path / "pred"), str(manifest), "-o", str(out)]
    assert main([*args, "--split", "test", "--quiet"]) == 0
    doc = json.loads(out.read_text())
    assert [c["case"] for c in doc["cases"]] == ["c2"]
    assert "no prediction" not in capsys.readouterr().err
    assert main([*args, "--split", "validation", "--quiet"]) == 3
    assert "'validation'" in capsys.readouterr().err


def test_per_class_nsd_tolerance_option(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "data", n=1)
    lab = np.asarray(nib.load(str(root / "labelsTr" / "c0.nii.gz")).dataobj)
    write_nifti(tmp_path / "pred" / "c0.nii.gz", np.roll(lab, 1, axis=2), np.diag([*SPACING, 1.0]))
    out = tmp_path / "m.json"
    args = ["evaluate", str(tmp_path / "pred"), str(root), "-o", str(out), "--quiet"]
    assert main([*args, "--nsd-tolerance", "63:3,117:0.5"]) == 0
    classes = json.loads(out.read_text())["cases"][0]["classes"]
    # Shifted by one 2.5 mm voxel: within 3 mm everything counts, within 0.5 mm only untouched surface.
    assert classes["63"]["nsd"] == pytest.approx(1.0) and classes["63"]["tolerance_mm"] == 3.0
    assert classes["117"]["nsd"] < 0.9 and classes["117"]["tolerance_mm"] == 0.5
    assert main([*args, "--nsd-tolerance", "5:1"]) == 2


def test_input_gate_refuses_bad_labels_and_predictions_by_name(make_msd, tmp_path: Path, capsys) -> None:
    """A label with an undeclared value, a prediction holding a value the dataset does not declare and a NaN
    prediction fail alone, each named with its reason; the other cases are scored against their labels."""
    root = make_msd(n=5)
    pred = tmp_path / "pred"
    pred.mkdir()
    for p in sorted((root / "labelsTr").glob("*.nii.gz")):
        (pred / p.name).write_bytes(p.read_bytes())  # perfect predictions
    lab = nib.load(root / "labelsTr" / "blob_001.nii.gz")
    arr = np.asarray(lab.dataobj).copy()
    arr[arr == 2] = 5
    nib.save(nib.Nifti1Image(arr, lab.affine), str(root / "labelsTr" / "blob_001.nii.gz"))
    arr = np.asarray(nib.load(pred / "blob_002.nii.gz").dataobj).copy()
    arr[0, 0, 0] = 9
    nib.save(nib.Nifti1Image(arr, lab.affine), str(pred / "blob_002.nii.gz"))
    nan = np.asarray(nib.load(pred / "blob_003.nii.gz").dataobj).astype(np.float32)
    nan[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(nan, lab.affine), str(pred / "blob_003.nii.gz"))

    out = tmp_path / "metrics.json"
    assert main(["evaluate", str(pred), str(root), "-o", str(out), "--bootstrap", "0", "--quiet"]) == 1
    doc = json.loads(out.read_text())
    failed = {f["case"]: f for f in doc["failed"]}
    assert set(failed) == {"blob_001", "blob_002", "blob_003"}
    assert "label value(s) 5" in failed["blob_001"]["reason"]
    assert failed["blob_001"]["file"].endswith("labelsTr/blob_001.nii.gz")
    assert "label value(s) [9]" in failed["blob_002"]["reason"]
    assert "1 NaN" in failed["blob_003"]["reason"]
    assert doc["num_evaluated"] == 2 and doc["summary"]["mean"]["dice"]["mean"] == pytest.approx(1.0)


def test_a_probability_map_or_interpolated_mask_is_refused_not_rounded(make_msd, tmp_path: Path) -> None:
    """A float prediction with non-integer values (a probability map; a mask resampled linearly) fails its case
    by name: rounding it would score labels nobody predicted. A float prediction with integral values is scored,
    and equals the integer one's Dice."""
    root = make_msd(n=3)
    pred = tmp_path / "pred"
    pred.mkdir()
    for p in sorted((root / "labelsTr").glob("*.nii.gz")):
        (pred / p.name).write_bytes(p.read_bytes())
    lab = nib.load(root / "labelsTr" / "blob_001.nii.gz")
    arr = np.asarray(lab.dataobj)
    probs = np.where(arr == 2, 0.9, np.where(arr == 1, 0.3, 0.0)).astype(np.float32)  # rounds to 1 and 0
    nib.save(nib.Nifti1Image(probs, lab.affine), str(pred / "blob_001.nii.gz"))
    other = nib.load(root / "labelsTr" / "blob_002.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(other.dataobj).astype(np.float32), other.affine), str(pred / "blob_002.nii.gz"))
    out = tmp_path / "metrics.json"
    assert main(["evaluate", str(pred), str(root), "-o", str(out), "--bootstrap", "0", "--quiet"]) == 1
    doc = json.loads(out.read_text())
    assert [f["case"] for f in doc["failed"]] == ["blob_001"]
    assert "non-integer values" in doc["failed"][0]["reason"] and "0.3, 0.9" in doc["failed"][0]["reason"]
    assert doc["failed"][0]["file"].endswith("pred/blob_001.nii.gz")
    assert doc["num_evaluated"] == 2 and doc["summary"]["mean"]["dice"]["mean"] == pytest.approx(1.0)


def test_a_prediction_stored_as_x_y_z_1_is_scored_as_its_3d_map(tmp_path: Path) -> None:
    """A label of shape (X, Y, Z, 1) is read as its 3D map; a prediction stored so (another tool's writer) was
    refused as a shape mismatch. Scored, its Dice equals NumPy's on the 3D arrays."""
    root = _dataset(tmp_path / "data", n=1)
    lab = np.asarray(nib.load(str(root / "labelsTr" / "c0.nii.gz")).dataobj)
    pred = _perturbed(lab, 1)
    write_nifti(tmp_path / "pred" / "c0.nii.gz", pred[..., None], np.diag([*SPACING, 1.0]))
    out = tmp_path / "m.json"
    assert main(["evaluate", str(tmp_path / "pred"), str(root), "-o", str(out), "--quiet"]) == 0
    got = json.loads(out.read_text())["cases"][0]["classes"]["63"]["dice"]
    p, g = pred == 63, lab == 63
    assert got == pytest.approx(2 * (p & g).sum() / (p.sum() + g.sum()), abs=1e-6)
