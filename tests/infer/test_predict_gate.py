"""``medattn predict`` on bad inputs among good ones: each bad case is refused by name with its reason (one line),
the good ones are written, nothing of the inputs is touched, and a killed run leaves a consistent folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medattn.cli import main
from tests.conftest import REPO, blob_case, write_nifti
from tests.infer.conftest import small_plan

SHAPE = (21, 17, 13)


def _images(folder: Path, n: int = 2) -> list[Path]:
    return [write_nifti(folder / f"good{i}.nii.gz", blob_case(SHAPE, seed=i)[0]) for i in range(n)]


def _summary(out: Path) -> dict:
    return json.loads((out / "predictions.json").read_text())


# ---- non-finite voxels -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "count"), [(np.nan, 64), (np.inf, 65)])
def test_nonfinite_case_is_refused_and_can_be_replaced(tmp_path: Path, model_file, value: float, count: int) -> None:
    inp = tmp_path / "in"
    _images(inp)
    image = blob_case(SHAPE, seed=5)[0]
    flat = image.reshape(-1)
    flat[np.random.default_rng(1).choice(flat.size, count, replace=False)] = value
    write_nifti(inp / "bad.nii.gz", image)
    model = model_file()

    out = tmp_path / "out"
    assert main(["predict", str(model), str(inp), str(out), "--quiet"]) == 1
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["good0.nii.gz", "good1.nii.gz"]
    failed = {f["case"]: f for f in _summary(out)["failed"]}
    assert set(failed) == {"bad"} and failed["bad"]["file"].endswith("bad.nii.gz")
    kind = "NaN" if np.isnan(value) else "Inf"
    assert f"{count} {kind}" in failed["bad"]["reason"] and "first at index" in failed["bad"]["reason"]

    # --replace-nonfinite: the case is written, the count recorded, and the mask is the one of the image with its
    # non-finite voxels set to the lowest finite value by hand (an independent replacement)
    out2 = tmp_path / "out2"
    assert main(["predict", str(model), str(inp), str(out2), "--replace-nonfinite", "--quiet"]) == 0
    case = {c["case"]: c for c in _summary(out2)["cases"]}["bad"]
    assert case["status"] == "ok" and case["nonfinite_replaced"] == count
    assert any("replaced" in w for w in case["warnings"])
    by_hand = image.copy()
    by_hand[~np.isfinite(by_hand)] = by_hand[np.isfinite(by_hand)].min()
    ref = tmp_path / "ref"
    write_nifti(ref / "bad.nii.gz", by_hand)
    assert main(["predict", str(model), str(ref / "bad.nii.gz"), str(tmp_path / "out3"), "--quiet"]) == 0
    got = np.asarray(nib.load(out2 / "bad.nii.gz").dataobj)
    want = np.asarray(nib.load(tmp_path / "out3" / "bad.nii.gz").dataobj)
    np.testing.assert_array_equal(got, want)


def test_a_blank_scan_is_written_with_its_warning_on_the_console(tmp_path: Path, model_file, capsys, caplog) -> None:
    """A constant (blank) volume is predicted, but the input check's warning reaches the console (the log and the
    command's closing lines), not only predictions.json: its mask must not pass as a plain "written"."""
    inp = tmp_path / "in"
    _images(inp, n=1)
    write_nifti(inp / "blank.nii.gz", np.zeros(SHAPE, np.float32))
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="medattn"):
        assert main(["predict", str(model_file()), str(inp), str(out), "--quiet"]) == 0
    case = {c["case"]: c for c in _summary(out)["cases"]}
    assert any("constant" in w for w in case["blank"]["warnings"]) and not case["good0"]["warnings"]
    logged = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("case blank" in m and "blank.nii.gz" in m and "constant" in m for m in logged), logged
    printed = capsys.readouterr().out
    assert "1 of the written cases have input warnings" in printed and "  blank: [intensity]" in printed
    assert "good0:" not in printed


# ---- outputs never touch inputs -----------------------------------------------------------------------------------


def test_predict_into_the_label_or_image_folder_is_refused(tmp_path: Path, model_file, make_msd, capsys) -> None:
    root = make_msd(n=2)
    before = {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    for target in (root / "labelsTr", root / "imagesTr"):
        assert main(["predict", str(model_file()), str(root), str(target), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "folder of the input dataset's images or labels" in err and err.count("\n") == 1
    assert {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()} == before
    # a bare image file's folder is its image folder too
    img = root / "imagesTr" / "blob_000.nii.gz"
    assert main(["predict", str(model_file()), str(img), str(root / "imagesTr"), "--quiet"]) == 2


def test_read_only_output_fails_before_any_inference(tmp_path: Path, model_file, read_only_dir: Path, capsys) -> None:
    inp = tmp_path / "in"
    _images(inp, n=1)
    assert main(["predict", str(model_file()), str(inp), str(read_only_dir / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medattn predict: error: OUTPUT") and "cannot write" in err and err.count("\n") == 1
    assert "Traceback" not in err


# ---- crash leftovers -------------------------------------------------------------------------------------------


def test_killed_run_says_what_is_done_and_the_next_run_cleans_up(tmp_path: Path, model_file) -> None:
    inp = tmp_path / "in"
    for i in range(20):
        write_nifti(inp / f"case{i:02d}.nii.gz", blob_case((40, 40, 40), seed=i)[0])
    model = model_file()
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "medattn.cli", "predict", str(model), str(inp), str(out), "--quiet"]
    cmd += ["--save-probabilities", "--overlap", "0.75"]  # some 340 windows a case: slow enough to kill between
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and len(list(out.glob("case*.nii.gz"))) < 2:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    masks = sorted(p.name for p in out.glob("case*.nii.gz"))
    assert 2 <= len(masks) < 20, "the run finished before it could be killed: make the cases slower"
    summary = _summary(out)
    assert summary["complete"] is False
    done = {c["case"] for c in summary["cases"] if c["status"] == "ok"}
    # every case the summary calls done has its mask and its probabilities; every mask has its probabilities
    assert {f"{c}.nii.gz" for c in done} <= set(masks)
    for m in masks:
        assert (out / "probabilities" / m).is_file(), m
    # leftovers of the killed writer are removed at the next run's start, whatever they were
    stale = out / ".case99.nii.gz.medattn-tmp-00000000-1-x.tmp.nii.gz"
    stale.write_bytes(b"")
    day_ago = time.time() - 2 * 24 * 3600
    os.utime(stale, (day_ago, day_ago))
    assert main(["predict", str(model), str(inp / "case00.nii.gz"), str(out), "--quiet", "--save-probabilities"]) == 0
    hidden = [p.name for p in [*out.iterdir(), *(out / "probabilities").iterdir()] if p.name.startswith(".")]
    assert hidden == []
    assert _summary(out)["complete"] is True


# ---- channels ---------------------------------------------------------------------------------------------------


def _case_folders(root: Path, names: tuple[str, ...], n: int = 2) -> Path:
    for i in range(n):
        image, label = blob_case(SHAPE, seed=i)
        for k, name in enumerate(names):
            write_nifti(root / "site" / f"case{i}" / f"{name}.nii.gz", image + k)
        write_nifti(root / "site" / f"case{i}" / "seg.nii.gz", label)
    return root


def test_channels_in_another_order_are_refused_naming_both(tmp_path: Path, model_file, capsys) -> None:
    model = model_file(small_plan(channels=("FLAIR", "T1", "T1b")))
    root = _case_folders(tmp_path / "data", ("FLAIR", "T1", "T1b"))
    out = tmp_path / "out"
    assert main(["predict", str(model), str(root), str(out), "--channels", "T1,FLAIR,T1b", "--quiet"]) == 3
    err = capsys.readouterr().err
    assert "T1, FLAIR, T1b in another order" in err and "the model expects FLAIR, T1, T1b" in err
    assert not list(out.glob("*.nii.gz"))
    assert main(["predict", str(model), str(root), str(out), "--channels", "FLAIR,T1,T1b", "--quiet"]) == 0
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["case0.nii.gz", "case1.nii.gz"]
    # numbered channel files carry their order, a single 4D file names nothing
    flat = tmp_path / "flat"
    for k in range(3):
        write_nifti(flat / f"x_{k:04d}.nii.gz", blob_case(SHAPE, seed=0)[0] + k)
    assert main(["predict", str(model), str(flat), str(tmp_path / "o2"), "--quiet"]) == 0
    four_d = write_nifti(tmp_path / "four" / "y.nii.gz", np.stack([blob_case(SHAPE, seed=0)[0]] * 3, axis=-1))
    assert main(["predict", str(model), str(four_d), str(tmp_path / "o3"), "--quiet"]) == 1
    assert "single file" in _summary(tmp_path / "o3")["failed"][0]["reason"]


# ---- messages ---------------------------------------------------------------------------------------------------


def test_bad_files_get_a_one_line_reason_with_file_and_case(tmp_path: Path, model_file) -> None:
    inp = tmp_path / "in"
    _images(inp)
    write_nifti(inp / "flat2d.nii.gz", np.ones((20, 20), np.float32))
    write_nifti(inp / "five_d.nii.gz", np.ones((8, 8, 8, 2, 2), np.float32))
    degenerate = np.eye(4)
    degenerate[:3, 2] = degenerate[:3, 0]  # z axis parallel to x
    write_nifti(inp / "degenerate.nii.gz", blob_case(SHAPE, seed=3)[0], degenerate)
    (inp / "broken.nrrd").write_text("NRRD0004\ntype: float\ndimension: 3\nsizes: 4 4\nencoding: raw\n\n")
    assert main(["predict", str(model_file()), str(inp), str(tmp_path / "out"), "--quiet"]) == 1
    summary = _summary(tmp_path / "out")
    assert summary["num_written"] == 2
    failed = {f["case"]: f for f in summary["failed"]}
    assert set(failed) == {"flat2d", "five_d", "degenerate", "broken"}
    for case, f in failed.items():
        assert f["file"].endswith(case + (".nrrd" if case == "broken" else ".nii.gz"))
        assert "\n" not in f["reason"] and len(f["reason"]) < 400
    assert "2D" in failed["flat2d"]["reason"]
    assert "more than one non-spatial axis" in failed["five_d"]["reason"]
    assert "singular" in failed["degenerate"]["reason"] or "degenerate" in failed["degenerate"]["reason"]
    assert failed["broken"]["reason"].startswith("[header] cannot read image header (SimpleITK:")
    assert "parsed 2 values, but dimension is 3" in failed["broken"]["reason"]  # ITK's cause, not its source path
    assert ".cxx" not in failed["broken"]["reason"]


def test_split_outputs_are_refused_among_the_other_cases_files(tmp_path: Path, model_file, make_msd) -> None:
    """--split selects the cases to predict, not the files to protect: the label folder of the training cases is
    still the dataset's label folder."""
    from tests.conftest import split_manifest

    root = make_msd(n=3)
    manifest = split_manifest(root, ["blob_002"])
    (root / "labelsTr" / "blob_002.nii.gz").unlink()  # the test case has no label: its own folder is not at stake
    assert main(["predict", str(model_file()), str(manifest), str(root / "labelsTr"), "--split", "test"]) == 2
    assert sorted(p.name for p in (root / "labelsTr").iterdir()) == ["blob_000.nii.gz", "blob_001.nii.gz"]


def test_an_interrupted_run_never_leaves_an_earlier_complete_summary(tmp_path: Path, model_file, monkeypatch) -> None:
    import medattn.infer.predict as predict

    inp = tmp_path / "in"
    _images(inp)
    out = tmp_path / "out"
    assert main(["predict", str(model_file()), str(inp), str(out), "--quiet"]) == 0
    assert _summary(out)["complete"] is True and _summary(out)["num_written"] == 2

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # stands for a kill during the first case

    monkeypatch.setattr(predict, "_predict_one", killed)
    assert main(["predict", str(model_file()), str(inp), str(out), "--quiet"]) == 130
    summary = _summary(out)
    assert summary["complete"] is False and summary["cases"] == []  # the old masks are not this run's


def test_numbered_channel_files_of_another_count_are_refused(tmp_path: Path, model_file) -> None:
    model = model_file(small_plan(channels=("FLAIR", "T1")))
    inp = tmp_path / "in"
    for k in range(3):
        write_nifti(inp / f"x_{k:04d}.nii.gz", blob_case(SHAPE, seed=0)[0] + k)
    for k in range(2):
        write_nifti(inp / f"y_{k:04d}.nii.gz", blob_case(SHAPE, seed=1)[0] + k)
    assert main(["predict", str(model), str(inp), str(tmp_path / "out"), "--quiet"]) == 1
    summary = _summary(tmp_path / "out")
    assert [c["case"] for c in summary["cases"] if c["status"] == "ok"] == ["y"]
    assert (
        "3 channel files" in summary["failed"][0]["reason"]
        and "2 channel(s) expected (FLAIR, T1)" in summary["failed"][0]["reason"]
    )


def test_msd_folders_without_dataset_json_are_refused_not_read_as_domains(
    make_msd, model_file, tmp_path: Path, capsys
) -> None:
    """imagesTr/ and labelsTr/ without their dataset.json: as per-domain folders, labelsTr would be a domain whose
    label maps predict (or train) as images. Refused naming the folder and what to do; the images folder alone
    still predicts."""
    root = make_msd(n=2)
    (root / "dataset.json").unlink()
    from medattn.data.importers import load_dataset
    from medattn.errors import ManifestError

    with pytest.raises(ManifestError, match=r"imagesTr/, labelsTr/ \(the MSD / nnU-Net layout\) but no dataset.json"):
        load_dataset(root)
    out = tmp_path / "out"
    assert main(["predict", str(model_file()), str(root), str(out), "--quiet"]) == 3
    assert "no dataset.json" in capsys.readouterr().err and not out.exists()
    assert main(["predict", str(model_file()), str(root / "imagesTr"), str(out), "--quiet"]) == 0
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["blob_000.nii.gz", "blob_001.nii.gz"]


def test_files_predict_did_not_write_are_never_replaced(tmp_path: Path, model_file, capsys) -> None:
    """An OUTPUT folder holding a file at a mask's path, or a predictions.json of something else, is refused before
    anything is written (the files unchanged); a folder an earlier predict run wrote is re-used."""
    inp = tmp_path / "in"
    _images(inp)
    model = model_file()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "good0.nii.gz").write_bytes(b"my own scan")
    assert main(["predict", str(model), str(inp), str(mine), "--quiet"]) == 3
    assert "OUTPUT already holds good0.nii.gz" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["good0.nii.gz"]
    assert (mine / "good0.nii.gz").read_bytes() == b"my own scan"

    other = tmp_path / "other"
    other.mkdir()
    (other / "predictions.json").write_text('{"mine": 1}')
    assert main(["predict", str(model), str(inp), str(other), "--quiet"]) == 3
    assert "predict did not write" in capsys.readouterr().err
    assert (other / "predictions.json").read_text() == '{"mine": 1}' and len(list(other.iterdir())) == 1

    out = tmp_path / "out"
    assert main(["predict", str(model), str(inp), str(out), "--quiet"]) == 0
    assert main(["predict", str(model), str(inp), str(out), "--quiet"]) == 0  # its own earlier run: replaced
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["good0.nii.gz", "good1.nii.gz"]


def test_images_in_sub_folders_of_an_image_folder_are_named_as_left_out(tmp_path: Path, model_file, caplog) -> None:
    """A folder of images predicts the images directly in it; images in its sub-folders are not predicted, and
    the log says so naming the sub-folder (they used to be left out without a word)."""
    inp = tmp_path / "in"
    _images(inp, n=1)
    _images(inp / "more", n=2)
    with caplog.at_level("WARNING", logger="medattn"):
        assert main(["predict", str(model_file()), str(inp), str(tmp_path / "out"), "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz")) == ["good0.nii.gz"]
    assert any("sub-folder(s) more are not predicted" in r.getMessage() for r in caplog.records)
