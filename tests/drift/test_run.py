"""`medattn drift` end to end on the phantom: one feature pass, decisions, exit codes, failures, inputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medattn.cli import main
from medattn.data.importers import load_dataset
from medattn.data.synth import synth_phantom
from medattn.drift.analysis import analyse
from medattn.drift.extract import extract_features
from medattn.drift.features import FeatureCollector, bottleneck_module, image_statistics
from medattn.drift.options import DriftOptions
from medattn.models.model_file import load_model
from medattn.train.config import TrainConfig
from medattn.train.trainer import train


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("drift")
    synth_phantom(root / "ph", seed=0, cases=12, size=32)
    manifest = load_dataset(root / "ph" / "manifest.json")
    # A briefly trained model: drift tests are about what a trained network's features see.
    config = TrainConfig(
        model="ag_unet",
        widths=(4, 8, 16),
        epochs=3,
        iterations=12,
        val_every=3,
        val_max_cases=2,
        augment="none",
        fold="fixed",
        lr=3e-3,
        seed=0,
    )
    result = train(config, manifest.select(["A"]), root / "run", progress=False)
    (root / "model.pt").write_bytes((result.out / "model.pt").read_bytes())
    loaded = load_model(root / "model.pt")
    feats = {d: extract_features(loaded, manifest.datalist(domain=d))[0] for d in ("A", "B")}
    return {"root": root, "manifest": manifest, "loaded": loaded, "feats": feats}


def test_collector_matches_a_direct_forward_pass(setup: dict) -> None:
    """Pooled bottleneck features equal a hand-made hook's on the same window; the output is unchanged."""
    model = setup["loaded"].model
    x = torch.randn(2, 1, 16, 16, 16)
    seen = []
    h = bottleneck_module(model).register_forward_hook(lambda m, i, o: seen.append(o.mean(dim=(2, 3, 4))))
    with torch.no_grad():
        direct = model(x)
    h.remove()
    collector = FeatureCollector(model)
    with torch.no_grad():
        out = collector(x)
    torch.testing.assert_close(out, direct)
    feats = collector.volume_features()
    np.testing.assert_allclose(feats["bottleneck"], seen[0].mean(0).numpy(), rtol=1e-5)
    p = torch.softmax(direct, 1)
    assert feats["entropy"] == pytest.approx(float(-(p * p.log()).sum(1).mean()), rel=1e-4)
    q = np.exp(direct.numpy().astype(np.float64))
    q /= q.sum(1, keepdims=True)
    h, w = -(q * np.log(q)).sum(1), 1 - q[:, 0]  # foreground-weighted entropy, from NumPy's softmax
    assert feats["foreground_entropy"] == pytest.approx(float((w * h).sum() / w.sum()), rel=1e-4)


def test_image_noise_estimate_tracks_true_noise() -> None:
    rng = np.random.default_rng(0)
    base = np.zeros((40, 40, 40), np.float32)
    base[5:35, 5:35, 5:35] = 100.0
    base[15:25, 15:25, 15:25] = 200.0
    low = image_statistics(base + rng.normal(0, 2, base.shape).astype(np.float32))
    high = image_statistics(base + rng.normal(0, 8, base.shape).astype(np.float32))
    assert high["noise_rel"] == pytest.approx(4 * low["noise_rel"], rel=0.25)


def test_no_drift_between_random_halves_of_one_domain(setup: dict) -> None:
    """Over several random splits of scanner A, the false-alarm rate stays near alpha."""
    fa = setup["feats"]["A"]
    alarms = 0
    for seed in range(10):
        order = np.random.default_rng(seed).permutation(len(fa))
        ref, tgt = [fa[i] for i in order[:6]], [fa[i] for i in order[6:]]
        alarms += analyse(ref, tgt, DriftOptions(permutations=300, seed=seed)).drift
    assert alarms <= 2


def test_drift_detected_against_simulated_scanner_copy(setup: dict) -> None:
    report = analyse(setup["feats"]["A"], setup["feats"]["B"], DriftOptions(permutations=500))
    assert report.drift
    # The decision rule: either set-level test below alpha / 2 (Bonferroni over the two tests).
    assert min(t.p_value for t in report.tests.values()) < 0.025
    assert report.metadata_changes["Manufacturer"] == {"reference": ["Siemens"], "target": ["Philips"]}
    assert report.metadata_changes["orientation"]["target"] == ["LPS"]
    d = report.to_dict()
    assert d["n_reference"] == 12 and d["n_target"] == 12
    assert set(d["volume_level"]["target_scores"]) == {f.case_id for f in setup["feats"]["B"]}


def test_cli_exit_codes_plots_and_named_failures(setup: dict, tmp_path: Path) -> None:
    root, model = setup["root"], str(setup["root"] / "model.pt")
    manifest = str(root / "ph" / "manifest.json")
    out = tmp_path / "ab.json"
    code = main(
        [
            "drift",
            model,
            "--reference",
            f"{manifest}:A",
            "--target",
            f"{manifest}:B",
            "-o",
            str(out),
            "--permutations",
            "300",
            "--quiet",
        ]
    )
    assert code == 4
    doc = json.loads(out.read_text())
    assert doc["drift"] is True and doc["dice"]["reference_mean"] is not None
    assert all(Path(p).is_file() for p in doc["plots"])
    # No drift, exit 0: a target that is the reference itself (MMD and KS see no difference at all).
    same = tmp_path / "aa.json"
    argv = ["drift", model, "--reference", f"{manifest}:A", "--target", f"{manifest}:A", "-o", str(same)]
    assert main([*argv, "--permutations", "300", "--quiet"]) == 0
    doc = json.loads(same.read_text())
    assert doc["drift"] is False and min(t["p_value"] for t in doc["tests"].values()) > 0.5

    # A target folder of images with one corrupt file: the report names it and the rest is still tested.
    folder = tmp_path / "incoming"
    folder.mkdir()
    for item in setup["manifest"].datalist(domain="B")[:5]:
        src = Path(item["image"][0])
        (folder / src.name).write_bytes(src.read_bytes())
    (folder / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    nan_img = nib.load(setup["manifest"].datalist(domain="B")[5]["image"][0])
    voxels = np.asarray(nan_img.dataobj, dtype=np.float32)
    voxels[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(voxels, nan_img.affine), str(folder / "nan.nii.gz"))
    out2 = tmp_path / "folder.json"
    code = main(
        [
            "drift",
            model,
            "--reference",
            f"{manifest}:A",
            "--target",
            str(folder),
            "-o",
            str(out2),
            "--permutations",
            "300",
            "--quiet",
        ]
    )
    doc = json.loads(out2.read_text())
    assert code == (4 if doc["drift"] else 1)  # refused volumes make "no drift" exit 1, not 0
    assert doc["n_target"] == 5
    assert [f["case"] for f in doc["failures"]] == ["broken", "nan"]
    assert "broken.nii.gz" in doc["failures"][0]["file"]
    assert "1 NaN" in doc["failures"][1]["reason"] and "first at index (1, 2, 3)" in doc["failures"][1]["reason"]

    # Too few readable volumes (two given, one readable): exit 1, not a traceback.
    few = tmp_path / "few"
    few.mkdir()
    (few / "x.nii.gz").write_bytes(b"junk")
    good = next(p for p in sorted(folder.iterdir()) if p.name not in ("broken.nii.gz", "nan.nii.gz"))
    (few / "y.nii.gz").write_bytes(good.read_bytes())
    assert (
        main(
            [
                "drift",
                model,
                "--reference",
                f"{manifest}:A",
                "--target",
                str(few),
                "-o",
                str(tmp_path / "few.json"),
                "--quiet",
            ]
        )
        == 1
    )


def test_image_files_as_reference_or_target(setup: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A single image file and a folder of images are read as volumes (as ``predict`` reads them), not as a
    manifest: one file is one volume, too few for the set-level tests, which says so (exit 2, no traceback)."""
    from medattn.drift.inputs import dataset_items
    from medattn.errors import DataError

    root, model = setup["root"], str(setup["root"] / "model.pt")
    manifest = str(root / "ph" / "manifest.json")
    b_images = [Path(d["image"][0]) for d in setup["manifest"].datalist(domain="B")]
    one = tmp_path / "one" / b_images[0].name
    one.parent.mkdir()
    one.write_bytes(b_images[0].read_bytes())
    items = dataset_items(str(one), None, 1)
    assert items == [
        {"image": [str(one.resolve())], "case_id": one.name[: -len(".nii.gz")], "domain": None, "metadata": {}}
    ]
    with pytest.raises(DataError, match="needs a dataset with splits"):
        dataset_items(str(one), None, 1, split="test")

    capsys.readouterr()
    argv = ["drift", model, "--permutations", "50", "--quiet", "-o"]
    import medattn.drift.run as drift_run

    def not_now(*args, **kwargs):
        raise AssertionError("features extracted before the counts were checked")

    with pytest.MonkeyPatch.context() as mp:  # said before minutes of feature extraction, as a usage error
        mp.setattr(drift_run, "extract_features", not_now)
        assert main([*argv, str(tmp_path / "t.json"), "--reference", f"{manifest}:A", "--target", str(one)]) == 2
        said = capsys.readouterr()
        assert "need at least 4 reference and 2 target volumes, given 12 and 1" in said.out
        assert "internal error" not in said.err
        assert main([*argv, str(tmp_path / "r.json"), "--reference", str(one), "--target", f"{manifest}:B"]) == 2
        assert "given 1 and 12" in capsys.readouterr().out

    # A folder of images as the reference, another as the target: tested end to end, without labels.
    ref_dir, tgt_dir = tmp_path / "ref", tmp_path / "tgt"
    for folder, images in (
        (ref_dir, [Path(d["image"][0]) for d in setup["manifest"].datalist(domain="A")]),
        (tgt_dir, b_images),
    ):
        folder.mkdir()
        for src in images[:6]:
            (folder / src.name).write_bytes(src.read_bytes())
    out = tmp_path / "folders.json"
    code = main([*argv, str(out), "--reference", str(ref_dir), "--target", str(tgt_dir)])
    doc = json.loads(out.read_text())
    assert code == (4 if doc["drift"] else 0)
    assert (doc["n_reference"], doc["n_target"], doc["failures"]) == (6, 6, [])
    assert doc["dice"]["reference_mean"] is None


# ---- which target cases to label first -----------------------------------------------------------------------------


def _window_logits(loaded, item: dict, overlap: float) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    """The logits of every window a drift pass feeds the network for ``item`` (recorded, not collected)."""
    from medattn.data.transforms import apply, eval_transforms
    from medattn.infer.sliding import sliding_window_predict

    data = apply(eval_transforms(loaded.plan), {"image": item["image"][0], "label": item["label"]})
    seen: list[np.ndarray] = []

    def network(x: torch.Tensor) -> torch.Tensor:
        out = loaded.model(x)
        logits = out[0] if isinstance(out, (list, tuple)) else out
        seen.append(logits.detach().double().numpy())
        return out

    with torch.no_grad():
        sliding_window_predict(data["image"], network, loaded.plan.patch_size, overlap=overlap, device="cpu")
    return seen


def test_drift_writes_a_labelling_ranking_of_the_target_cases(setup: dict, tmp_path: Path) -> None:
    from medattn.drift.run import drift_report
    from medattn.drift.summary import format_report

    root, manifest = setup["root"], setup["manifest"]
    spec = str(root / "ph" / "manifest.json")
    out = tmp_path / "ab.json"
    options = DriftOptions(permutations=200)
    report = drift_report(root / "model.pt", f"{spec}:A", f"{spec}:B", out, options=options)
    csv_path, json_path = tmp_path / "ab_ranking.csv", tmp_path / "ab_ranking.json"
    assert report.ranking_files == [str(csv_path), str(json_path)]
    rows = list(csv.DictReader(csv_path.open()))
    b_items = manifest.datalist(domain="B")
    # one row per target case, named by the manifest's case ids (what `medattn adapt` selects labels by)
    assert sorted(r["case_id"] for r in rows) == sorted(d["case_id"] for d in b_items)
    assert [int(r["rank"]) for r in rows] == list(range(1, len(b_items) + 1))
    sources = {d["case_id"]: d["image"][0] for d in b_items}
    assert all(r["source"] == sources[r["case_id"]] and r["domain"] == "B" for r in rows)
    entropy = np.array([float(r["foreground_entropy"]) for r in rows])
    assert np.all(np.isfinite(entropy)) and np.ptp(entropy) > 1e-4  # it tells cases apart
    scores = {f.case_id: s for f, s in zip(report.target, report.target_scores, strict=True)}
    assert all(float(r["volume_score"]) == pytest.approx(scores[r["case_id"]]) for r in rows)
    # the rule: flagged volumes first, then by the mean of the two ranks
    flagged = [r["flagged"] == "True" for r in rows]
    assert flagged == sorted(flagged, reverse=True)
    for group in (True, False):
        means = [float(r["mean_rank"]) for r, f in zip(rows, flagged) if f is group]
        assert means == sorted(means)
    # the JSON holds the same rows; the report and its text name the files and the first five
    doc = json.loads(json_path.read_text())
    assert doc["format"] == "medattn-drift-ranking" and doc["n"] == len(rows)
    assert [c["case_id"] for c in doc["cases"]] == [r["case_id"] for r in rows]
    saved = json.loads(out.read_text())["ranking"]
    assert saved["files"] == report.ranking_files
    assert [t["case_id"] for t in saved["top"]] == [r["case_id"] for r in rows[:5]]
    text = format_report(report)
    assert str(csv_path) in text and all(f"{k + 1}. {rows[k]['case_id']} " in text for k in range(5))

    # one case's foreground entropy recomputed with NumPy from the windows' logits
    case = rows[0]["case_id"]
    logits = _window_logits(setup["loaded"], next(d for d in b_items if d["case_id"] == case), options.overlap)
    num = den = 0.0
    for z in logits:
        q = np.exp(z - z.max(1, keepdims=True))
        q /= q.sum(1, keepdims=True)
        h, w = -(q * np.log(np.clip(q, 1e-12, None))).sum(1), 1 - q[:, 0]
        num, den = num + float((w * h).sum()), den + float(w.sum())
    assert float(rows[0]["foreground_entropy"]) == pytest.approx(num / den, rel=1e-4)


def test_a_visibly_shifted_volume_ranks_above_its_unshifted_copy(setup: dict, tmp_path: Path) -> None:
    """Targets: four reference cases copied as they are, one of them with inverted contrast, another with heavy
    noise. Each shifted volume must come before its own unshifted copy."""
    from medattn.drift.inputs import dataset_items
    from medattn.drift.ranking import labelling_ranking

    items = setup["manifest"].datalist(domain="A")[:4]
    folder = tmp_path / "incoming"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k, item in enumerate(items):
        img = nib.load(item["image"][0])
        voxels = np.asarray(img.dataobj, dtype=np.float32)
        nib.save(nib.Nifti1Image(voxels, img.affine), str(folder / f"copy_{k}.nii.gz"))
        if k == 0:
            shifted = voxels.max() + voxels.min() - voxels  # inverted contrast
            nib.save(nib.Nifti1Image(shifted, img.affine), str(folder / "inverted_0.nii.gz"))
        if k == 1:
            shifted = voxels + rng.normal(0, 2 * float(voxels.std()), voxels.shape).astype(np.float32)
            nib.save(nib.Nifti1Image(shifted, img.affine), str(folder / "noisy_1.nii.gz"))
    target, failures = extract_features(setup["loaded"], dataset_items(str(folder), None, 1))
    assert failures == [] and len(target) == 6
    report = analyse(setup["feats"]["A"], target, DriftOptions(permutations=100))
    rows = report.ranking
    rank = {r["case_id"]: r["rank"] for r in rows}
    assert rank["inverted_0"] < rank["copy_0"] and rank["noisy_1"] < rank["copy_1"], rows
    assert {rank["inverted_0"], rank["noisy_1"]} == {1, 2}  # both before every unshifted copy
    assert sorted(rank.values()) == list(range(1, 7))
    assert rows == labelling_ranking(target, report.target_scores, report.threshold, report.reference_scores)


def test_dicom_series_folders_as_reference_and_target_report_the_scanner_change(setup: dict, tmp_path: Path) -> None:
    """Folders of DICOM series (one per volume, written from the phantom's A and B images): drift reads them as it
    reads NIfTI folders, and the headers' Manufacturer appears among the metadata changes."""
    from tests.conftest import write_dicom_series

    for folder, domain, vendor in (("ref", "A", "Acme"), ("tgt", "B", "Zenith")):
        for d in setup["manifest"].datalist(domain=domain)[:6]:
            img = nib.load(d["image"][0])
            volume = np.round(np.asarray(img.dataobj, dtype=float) * 1000).astype(np.int16)
            write_dicom_series(tmp_path / folder / d["case_id"], volume, img.affine, manufacturer=vendor)
    out = tmp_path / "dicom.json"
    argv = ["drift", str(setup["root"] / "model.pt"), "--permutations", "50", "--quiet", "-o", str(out)]
    code = main([*argv, "--reference", str(tmp_path / "ref"), "--target", str(tmp_path / "tgt")])
    doc = json.loads(out.read_text())
    assert code == (4 if doc["drift"] else 0)
    assert (doc["n_reference"], doc["n_target"], doc["failures"]) == (6, 6, [])
    assert doc["metadata_changes"]["Manufacturer"] == {"reference": ["Acme"], "target": ["Zenith"]}


def test_a_blank_scan_is_named_and_ranked_last_to_label(setup: dict, tmp_path: Path, caplog) -> None:
    """A constant image's features are measured (it may well drift), but its input warning is logged and in the
    ranking, and it comes after every other volume: labelling a blank scan teaches nothing."""
    from medattn.drift.inputs import dataset_items

    items = setup["manifest"].datalist(domain="A")[:3]
    folder = tmp_path / "incoming"
    folder.mkdir()
    for k, item in enumerate(items):
        img = nib.load(item["image"][0])
        voxels = np.asarray(img.dataobj, dtype=np.float32)
        nib.save(nib.Nifti1Image(voxels, img.affine), str(folder / f"copy_{k}.nii.gz"))
    nib.save(nib.Nifti1Image(np.full(voxels.shape, 7.0, np.float32), img.affine), str(folder / "blank.nii.gz"))
    with caplog.at_level("WARNING"):
        target, failures = extract_features(setup["loaded"], dataset_items(str(folder), None, 1))
    assert failures == [] and len(target) == 4
    assert "volume blank: intensity: image is constant" in caplog.text
    rows = analyse(setup["feats"]["A"], target, DriftOptions(permutations=50)).ranking
    assert rows[-1]["case_id"] == "blank" and "constant" in rows[-1]["input_warning"]
    assert all(r["input_warning"] is None for r in rows[:-1])
    # the report of such a target is strict JSON: what the blank scan leaves undefined is null, not NaN
    out = tmp_path / "report.json"
    manifest = str(setup["root"] / "ph" / "manifest.json")
    args = ["drift", str(setup["root"] / "model.pt"), "--reference", f"{manifest}:A", "--target", str(folder)]
    main([*args, "-o", str(out), "--permutations", "50", "--quiet"])
    json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
