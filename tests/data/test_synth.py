"""The phantom dataset and ``medattn synth`` (phantom and ``--from``), including replay from the saved parameters."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from medattn.cli import main
from medattn.data.acquisition import apply_shift
from medattn.data.io import read_header, read_volume, spacing_from_affine
from medattn.data.manifest import Manifest
from medattn.data.phantom import phantom_case
from medattn.data.scanner_table import PROFILES
from medattn.data.synth import synth_phantom
from medattn.data.synth_writer import default_splits

HIPPO_CASES = ("hippocampus_001", "hippocampus_003", "hippocampus_004")  # uint8, float32, float32 encodings


def _stored(path: Path) -> np.ndarray:
    """Voxels exactly as stored (before NIfTI scl_slope/scl_inter)."""
    return np.asarray(nib.load(str(path)).dataobj.get_unscaled())


def _touching(label: np.ndarray, a: int, b: int) -> bool:
    """Whether some voxel of ``a`` has a face neighbour of ``b``."""
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        x, y = label[tuple(lo)], label[tuple(hi)]
        if np.any((x == a) & (y == b)) or np.any((x == b) & (y == a)):
            return True
    return False


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> tuple[Manifest, float]:
    out = tmp_path_factory.mktemp("phantom") / "ds"
    start = time.perf_counter()
    result = synth_phantom(out, seed=3, cases=3, size=32)
    return Manifest.load(result.path), time.perf_counter() - start


# ---- the anatomy -------------------------------------------------------------------------------------------------


def test_phantom_case_is_deterministic_by_seed() -> None:
    a = phantom_case(0, "A", 1, size=32)
    b = phantom_case(0, "A", 1, size=32)
    c = phantom_case(1, "A", 1, size=32)
    assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()
    assert a[3] == b[3]
    assert not np.array_equal(a[1], c[1])
    assert not np.array_equal(a[1], phantom_case(0, "B", 1, size=32)[1])  # domains hold independent anatomies


def test_phantom_anatomy_has_touching_classes_of_varied_size() -> None:
    sizes = []
    for i in range(4):
        image, label, affine, _, _ = phantom_case(0, "A", i, size=40)
        assert image.dtype == np.float32 and label.dtype == np.uint8 and image.shape == label.shape == (40, 40, 40)
        assert set(np.unique(label)) == {0, 1, 2}
        assert _touching(label, 1, 2)
        sizes.append((int((label == 1).sum()), int((label == 2).sum())))
        np.testing.assert_allclose(spacing_from_affine(affine), 1.0)
    assert len(set(sizes)) == len(sizes)
    ratios = [a / b for a, b in sizes]
    assert max(ratios) / min(ratios) > 1.3  # head/tail proportions vary, not only the scale


def test_phantom_is_not_thresholdable() -> None:
    """Distractors share the labels' intensities, so an intensity interval cannot find a class."""
    image, label, _, _, _ = phantom_case(0, "A", 0, size=48)
    for cls in (1, 2):
        lo, hi = np.percentile(image[label == cls], [10, 90])
        inside = (image >= lo) & (image <= hi)
        precision = float((label[inside] == cls).mean())
        assert precision < 0.5, f"class {cls}: an intensity window finds it with precision {precision:.2f}"


def test_default_splits_give_train_val_test_with_the_earlier_test_cases() -> None:
    ids = [f"A_{i:03d}" for i in range(40)]
    splits = default_splits(ids)
    assert set(splits) == {"train", "val", "test"}
    assert splits["test"] == tuple(ids[30:])  # the last quarter, as the earlier train/test split had it
    assert splits["val"] == tuple(ids[24:30])  # 20% of the 30 before it validate ...
    assert splits["train"] == tuple(ids[:24])  # ... and the rest train: validation never draws on test
    sizes = {n: tuple(len(default_splits(ids[:n])[k]) for k in ("train", "val", "test")) for n in (1, 2, 3, 8)}
    assert sizes == {1: (1, 0, 0), 2: (1, 0, 1), 3: (1, 1, 1), 8: (5, 1, 2)}


# ---- the written phantom dataset ---------------------------------------------------------------------------------


def test_phantom_dataset_layout_and_manifest(phantom: tuple[Manifest, float]) -> None:
    manifest, _seconds = phantom
    assert manifest.domain_names == list(PROFILES) and len(manifest.domains) >= 3
    assert manifest.labels == {0: "background", 1: "head", 2: "tail"}
    assert [(c.name, c.modality) for c in manifest.channels] == [("MR", "MR")]
    root = manifest.data_root()
    for dom in manifest.domains:
        assert len(dom.cases) == 3
        ids = [c.id for c in dom.cases]
        assert dom.splits == default_splits(ids) == {"train": (ids[0],), "val": (ids[1],), "test": (ids[2],)}
        assert dom.metadata["Manufacturer"] and dom.metadata["MagneticFieldStrength"] > 0 and dom.metadata["simulated"]
        for case in dom.cases:
            assert case.label is not None
            ih = read_header(root / case.images[0])
            label, lh = read_volume(root / case.label, dtype=None)
            assert ih.shape == lh.shape and np.allclose(ih.affine, lh.affine) and lh.dtype == "uint8"
            assert ih.dtype == PROFILES[dom.name].dtype
            assert {1, 2} <= set(np.unique(label).tolist())
            assert (root / dom.name / "params" / f"{case.id}.json").is_file()
    assert json.loads((root / "synth.json").read_text())["seed"] == 3


def test_phantom_domains_differ_in_intensity_statistics(phantom: tuple[Manifest, float]) -> None:
    manifest, _ = phantom
    root = manifest.data_root()
    stats = {}
    for dom in manifest.domains:
        contrast, noise = [], []
        for case in dom.cases:
            assert case.label is not None
            image, _ = read_volume(root / case.images[0])
            label, _ = read_volume(root / case.label, dtype=None)
            lo, hi = np.percentile(image, [1, 99])
            x = (image - lo) / (hi - lo)
            shell = ndimage.binary_dilation(label > 0, iterations=2) & (label == 0)  # tissue around the structure
            contrast.append(float(x[label > 0].mean() - x[shell].mean()))
            air = x[tuple(slice(0, 3) for _ in range(3))]  # a corner: air
            noise.append(float(air.std()))
        stats[dom.name] = (np.mean(contrast), np.mean(noise))
    assert stats["A"][0] > 0.2 and stats["B"][0] < 0  # B inverts the structure's contrast
    assert stats["D"][1] > 1.5 * stats["A"][1]  # D is noisier (its noise sigma range is about twice A's)
    spacing_c = spacing_from_affine(read_volume(root / manifest.domain("C").cases[0].images[0])[1].affine)
    assert max(spacing_c) >= 2.5  # thick slices


def test_phantom_params_replay_the_written_case(phantom: tuple[Manifest, float]) -> None:
    manifest, _ = phantom
    root = manifest.data_root()
    for dom in manifest.domains:
        case = dom.cases[0]
        record = json.loads((root / dom.name / "params" / f"{case.id}.json").read_text())
        gen = record["generator"]
        image, label, affine, anatomy, _ = phantom_case(gen["seed"], gen["domain"], gen["index"], gen["size"])
        assert anatomy == record["anatomy"]
        stored, new_label, new_affine = apply_shift(image, label, affine, record["shift"])
        assert case.label is not None
        np.testing.assert_array_equal(_stored(root / case.images[0]), stored)
        np.testing.assert_array_equal(_stored(root / case.label), new_label)
        np.testing.assert_allclose(nib.load(str(root / case.images[0])).affine, new_affine, atol=1e-5)


# ---- the command -------------------------------------------------------------------------------------------------


def test_cli_phantom_same_seed_same_arrays(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["synth", "--cases", "1", "--size", "24", "--scanners", "A,D", "--quiet"]
    assert main([*args[:1], str(tmp_path / "a"), *args[1:], "--seed", "4"]) == 0
    assert "manifest written to" in capsys.readouterr().out
    assert main([*args[:1], str(tmp_path / "b"), *args[1:], "--seed", "4"]) == 0
    assert main([*args[:1], str(tmp_path / "c"), *args[1:], "--seed", "5"]) == 0
    for rel in ("A/imagesTr/A_000.nii.gz", "D/imagesTr/D_000.nii.gz", "D/labelsTr/D_000.nii.gz"):
        a, b, c = (_stored(tmp_path / x / rel) for x in "abc")
        assert a.tobytes() == b.tobytes()
        assert a.shape != c.shape or not np.array_equal(a, c)
    assert Manifest.load(tmp_path / "a" / "manifest.json").domain_names == ["A", "D"]


def test_cli_refuses_a_non_empty_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["synth", str(out), "--cases", "1", "--size", "24", "--quiet"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"


def test_cli_options_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["synth", str(tmp_path / "x"), "--scanners", "A,Z", "--quiet"]) == 2
    assert "unknown scanner profile" in capsys.readouterr().err
    assert main(["synth", str(tmp_path / "y"), "--size", "8", "--quiet"]) == 2
    assert main(["synth", str(tmp_path / "y"), "--cases", "0", "--quiet"]) == 2
    assert main(["synth", "--quiet"]) == 2
    assert not (tmp_path / "x").exists()


def test_cli_list_profiles(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["synth", "--list-profiles"]) == 0
    out = capsys.readouterr().out
    for name, p in PROFILES.items():
        assert f"{name}: {p.description}" in out
    assert "noise_sigma" in out and "orientations" in out


# ---- --from ------------------------------------------------------------------------------------------------------


def _hippo_manifest(tmp_path: Path) -> Path:
    """A manifest of three hippocampus cases without a root (so --data-root must say where they are)."""
    doc = {
        "name": "Hippocampus",
        "channels": [{"name": "T1", "modality": "MR"}],
        "labels": {"0": "background", "1": "anterior", "2": "posterior"},
        "domains": [
            {
                "name": "vumc",
                "cases": [
                    {"id": c, "images": [f"imagesTr/{c}.nii.gz"], "label": f"labelsTr/{c}.nii.gz"} for c in HIPPO_CASES
                ],
                "splits": {"train": list(HIPPO_CASES[:2]), "test": [HIPPO_CASES[2]]},
            }
        ],
    }
    path = tmp_path / "src" / "manifest.json"
    path.parent.mkdir()
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.realdata
def test_synth_from_hippocampus_writes_consistent_replayable_domains(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "Task04_Hippocampus"
    out = tmp_path / "out"
    code = main(["synth", str(out), "--from", str(_hippo_manifest(tmp_path)), "--data-root", str(src),
                 "--scanners", "B,C", "--seed", "2", "--quiet"])  # fmt: skip
    assert code == 0
    manifest = Manifest.load(out / "manifest.json")
    assert manifest.domain_names == ["vumc", "vumc_B", "vumc_C"]
    assert manifest.labels == {0: "background", 1: "anterior", 2: "posterior"}
    original = manifest.domain("vumc")
    assert [manifest.resolve(c.images[0]).resolve() for c in original.cases] == [
        (src / "imagesTr" / f"{c}.nii.gz").resolve() for c in HIPPO_CASES
    ]
    assert manifest.domain("vumc_C").splits == {"train": ("hippocampus_001_C", "hippocampus_003_C"),
                                                 "test": ("hippocampus_004_C",)}  # fmt: skip
    for name in ("vumc_B", "vumc_C"):
        dom = manifest.domain(name)
        assert [c.id for c in dom.cases] == [f"{c}_{name[-1]}" for c in HIPPO_CASES]
        for case in dom.cases:
            assert case.label is not None
            image_path, label_path = manifest.resolve(case.images[0]), manifest.resolve(case.label)
            _, ih = read_volume(image_path)
            label, lh = read_volume(label_path, dtype=None)
            assert ih.shape == lh.shape and np.allclose(ih.affine, lh.affine, atol=1e-5)
            assert {1, 2} <= set(np.unique(label).tolist())
            record = json.loads((out / name / "params" / f"{case.id}.json").read_text())
            src_image, src_head = read_volume(out / record["source"]["files"][0])
            src_label, _ = read_volume(out / record["source"]["files"][1], dtype=None)
            stored, new_label, new_affine = apply_shift(src_image, src_label.astype(np.uint8), src_head.affine,
                                                        record["shift"])  # fmt: skip
            np.testing.assert_array_equal(_stored(image_path), stored)
            np.testing.assert_array_equal(_stored(label_path), new_label)
            np.testing.assert_allclose(ih.affine, new_affine, atol=1e-5)

            # world position of the anatomy is kept: the label centroids agree within a (coarse) voxel
            def centroid(lab: np.ndarray, aff: np.ndarray) -> np.ndarray:
                return (aff @ np.append(np.argwhere(lab > 0).mean(0), 1.0))[:3]

            shift = np.linalg.norm(centroid(label, ih.affine) - centroid(src_label, src_head.affine))
            assert shift < max(spacing_from_affine(ih.affine))
        if name == "vumc_C":
            assert max(spacing_from_affine(ih.affine)) > 2.4  # thick slices
    assert (src / "imagesTr" / "hippocampus_001.nii.gz").is_file()  # inputs untouched


@pytest.mark.realdata
def test_synth_from_msd_folder_with_cases(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["synth", str(out), "--from", str(shared_data / "Task04_Hippocampus"), "--cases", "2",
                 "--scanners", "D", "--quiet"]) == 0  # fmt: skip
    manifest = Manifest.load(out / "manifest.json")
    assert [len(d.cases) for d in manifest.domains] == [2, 2]
    assert all(manifest.resolve(c.images[0]).is_file() for _, c in manifest.iter_cases())


def test_synth_from_skips_and_names_a_bad_case(
    make_msd: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    root = make_msd(n=3, shape=(16, 18, 20))
    bad = root / "imagesTr" / "blob_001.nii.gz"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated
    out = tmp_path / "out"
    assert main(["synth", str(out), "--from", str(root), "--scanners", "A,B", "--quiet"]) == 1
    assert "blob_001" in capsys.readouterr().out and "blob_001" in caplog.text
    manifest = Manifest.load(out / "manifest.json")
    for dom in manifest.domains:
        assert len(dom.cases) == 2 and not any("blob_001" in c.id for c in dom.cases)
    assert not list(out.rglob("blob_001*"))


def test_synth_from_leaves_out_cases_the_input_checks_refuse(
    make_msd: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A source image with NaN voxels would become an all-zero "scan" carrying the real label, and an undeclared
    label value would be copied into every simulated domain: both cases are refused by the input checks, named,
    and left out (exit 1)."""
    import nibabel as nib

    root = make_msd(n=4, shape=(16, 18, 20))
    img = nib.load(root / "imagesTr" / "blob_001.nii.gz")
    voxels = np.asarray(img.dataobj, dtype=np.float32)
    voxels[3, 4, 5] = np.nan
    nib.save(nib.Nifti1Image(voxels, img.affine), str(root / "imagesTr" / "blob_001.nii.gz"))
    lab = nib.load(root / "labelsTr" / "blob_002.nii.gz")
    values = np.asarray(lab.dataobj).copy()
    values[0, 0, 0] = 7  # the dataset declares 0, 1, 2
    nib.save(nib.Nifti1Image(values, lab.affine, lab.header), str(root / "labelsTr" / "blob_002.nii.gz"))
    out = tmp_path / "out"
    assert main(["synth", str(out), "--from", str(root), "--scanners", "A,B", "--quiet"]) == 1
    printed = capsys.readouterr().out
    assert "blob_001" in printed and "blob_002" in printed
    manifest = Manifest.load(out / "manifest.json")
    for dom in manifest.domains:
        assert sorted(c.id.split("_B")[0].split("_A")[0] for c in dom.cases) == ["blob_000", "blob_003"]
    assert not list(out.rglob("blob_001*")) and not list(out.rglob("blob_002*"))
