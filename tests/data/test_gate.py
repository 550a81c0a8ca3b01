"""The input gate and the output guard: channel matching, non-finite voxels, outputs that would touch inputs,
unwritable outputs and the temporary files a killed run leaves."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medattn.data.gate import channel_mismatch, check_image_case, gate_manifest
from medattn.data.guard import InputGuard, clean_orphans, prepare_output_dir, prepare_output_file
from medattn.data.importers import load_dataset
from medattn.data.io import atomic_path, atomic_write_text, host_tag
from medattn.errors import ConfigError
from tests.conftest import blob_case, write_nifti

# ---- channels ----------------------------------------------------------------------------------------------------


def test_channels_are_matched_by_name_and_order() -> None:
    model = ["FLAIR", "T1", "T1b"]
    assert channel_mismatch(model, ["FLAIR", "T1", "T1b"]) is None
    assert channel_mismatch(model, ["flair", "t1", "t1b"]) is None  # case does not matter
    why = channel_mismatch(model, ["T1", "FLAIR", "T1b"])
    assert why is not None and "T1, FLAIR, T1b in another order" in why and "expects FLAIR, T1, T1b" in why
    why = channel_mismatch(model, ["FLAIR", "T2", "T1b"])
    assert why is not None and "in another order" not in why and "T2" in why
    assert channel_mismatch(["T1w"], ["T2w"]) is not None  # one channel, another contrast
    # unnamed inputs: the count decides, except a single file that would hold several unnamed channels
    assert channel_mismatch(model, None) is None  # numbered channel files (nnU-Net _0000 ...)
    assert channel_mismatch(["MRI"], None, single_file=True) is None
    assert channel_mismatch(["MRI"], ["image"]) is None  # a flat folder names nothing
    why = channel_mismatch(model, None, single_file=True)
    assert why is not None and "single file" in why
    why = channel_mismatch(model, ["image", "image"])
    assert why == "the input has 2 channel(s), the model expects 3 (FLAIR, T1, T1b)"


# ---- non-finite voxels -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "count"), [(np.nan, 64), (np.inf, 65)])
def test_nonfinite_voxels_are_refused_with_count_and_first_index(tmp_path: Path, value: float, count: int) -> None:
    image, _ = blob_case((16, 18, 20), seed=0)
    flat = image.reshape(-1)
    where = np.random.default_rng(0).choice(flat.size, count, replace=False)
    flat[where] = value
    path = write_nifti(tmp_path / "bad.nii.gz", image)
    first = tuple(int(i) for i in np.argwhere(~np.isfinite(image))[0])

    result = check_image_case("bad", [path], ["MRI"])
    assert not result.ok and [p.check for p in result.errors] == ["finite"]
    message = result.errors[0].message
    kind = "NaN" if np.isnan(value) else "Inf"
    assert f"{count} {kind}" in message and f"first at index {first}" in message
    assert result.stats["nonfinite"] == count

    replaced = check_image_case("bad", [path], ["MRI"], nonfinite="replace")
    assert replaced.ok and [p.check for p in replaced.warnings] == ["finite"]
    assert "replaced" in replaced.warnings[0].message


def test_finite_values_too_large_for_any_scan_are_refused(tmp_path: Path) -> None:
    """Byte-swapped or damaged float data can hold finite values near float32's limit: their z-score is NaN
    (checked here with NumPy in float32), which would stop training with a NaN loss naming no case."""
    image, _ = blob_case((16, 18, 20), seed=0)
    huge = (image / np.abs(image).max() * 3e38).astype(np.float32)
    with np.errstate(all="ignore"):
        z = (huge - huge.mean()) / huge.std()
    assert not np.isfinite(z).all()  # what normalising it would give
    result = check_image_case("huge", [write_nifti(tmp_path / "huge.nii.gz", huge)], ["MRI"])
    assert not result.ok and [p.check for p in result.errors] == ["finite"]
    assert "values up to 3e+38" in result.errors[0].message and "overflows" in result.errors[0].message
    ct = (image / np.abs(image).max() * 3000 - 1000).astype(np.float32)  # Hounsfield units pass
    assert check_image_case("ct", [write_nifti(tmp_path / "ct.nii.gz", ct)], ["CT"]).ok


def test_complex_and_rgb_voxels_are_refused_not_read_as_their_real_part(tmp_path: Path) -> None:
    """A complex64 NIfTI was segmented on its real part with status "ok" (its magnitude's mask agreed on 76% of
    the voxels); RGB voxels are no intensity either."""
    image, _ = blob_case((16, 18, 20), seed=0)
    cplx = tmp_path / "c.nii.gz"
    nib.save(nib.Nifti1Image((image * np.exp(1j * image)).astype(np.complex64), np.eye(4)), str(cplx))
    rgb = tmp_path / "rgb.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 18, 20), [("R", "u1"), ("G", "u1"), ("B", "u1")]), np.eye(4)), str(rgb))
    for path, stored in ((cplx, "complex64"), (rgb, "[('R', 'u1')")):
        result = check_image_case(path.name, [path], ["MRI"])
        assert not result.ok and [p.check for p in result.errors] == ["voxels"], result.errors
        assert f"voxels stored as {stored}" in result.errors[0].message


def test_gate_manifest_names_every_bad_case(make_msd) -> None:
    root = make_msd(n=4)
    image, label = blob_case((16, 18, 20), seed=1)
    write_nifti(root / "labelsTr" / "blob_001.nii.gz", np.where(label == 2, 5, label).astype(np.uint8))
    image[0, 0, :3] = np.nan
    write_nifti(root / "imagesTr" / "blob_002.nii.gz", image)
    report = gate_manifest(load_dataset(root))
    assert sorted(report.refused_ids) == ["blob_001", "blob_002"]
    reasons = {r["case"]: r["reason"] for r in report.to_list()}
    assert "label value(s) 5" in reasons["blob_001"] and "3 NaN" in reasons["blob_002"]
    assert all(line.count("\n") == 0 for line in report.lines())


# ---- outputs never touch inputs ---------------------------------------------------------------------------------


def test_guard_refuses_input_files_their_folders_and_the_dataset_description(make_msd, tmp_path: Path) -> None:
    root = make_msd(n=2)
    guard = InputGuard.of_manifest(load_dataset(root), dataset=root)
    for target in (root / "dataset.json", root / "labelsTr" / "blob_000.nii.gz", root / "labelsTr" / "new.json"):
        with pytest.raises(ConfigError, match="-o"):
            guard.check_file(target, "-o")
    for folder in (root / "labelsTr", root / "imagesTr"):
        with pytest.raises(ConfigError, match="folder of the input dataset"):
            guard.check_dir(folder, "OUTPUT")
    # a link that leads into the label folder is the label folder
    (tmp_path / "via").symlink_to(root / "labelsTr")
    with pytest.raises(ConfigError):
        guard.check_dir(tmp_path / "via", "OUTPUT")
    # beside the data, or in a sub-folder nothing reads as data, is fine
    guard.check_dir(root / "predictions", "OUTPUT")
    guard.check_dir(root / "labelsTr" / "run", "OUTPUT")
    guard.check_file(root / "metrics.json", "-o")
    guard.check_file(tmp_path / "plan.json", "-o")


# ---- writable output first ----------------------------------------------------------------------------------------


def test_unwritable_output_fails_in_one_line(read_only_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        prepare_output_dir(read_only_dir, "OUTPUT")
    assert str(read_only_dir) in str(e.value) and "cannot write" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="cannot write it"):
        prepare_output_file(read_only_dir / "metrics.json", "-o")
    with pytest.raises(ConfigError, match="cannot write"):
        prepare_output_dir(read_only_dir / "sub", "OUTPUT")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        prepare_output_dir(tmp_path / "afile", "OUTPUT")


# ---- crash leftovers --------------------------------------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_case_name_near_the_file_name_limit_is_written(tmp_path: Path) -> None:
    """The temporary name adds the writer's tag to the destination's: a 230-byte case name (e.g. built from a long
    series description) used to fail with "File name too long" (errno 36)."""
    dest = tmp_path / ("c" * 230 + "_\u00e9.nii.gz")  # a multi-byte character near the cut
    with atomic_path(dest) as tmp:
        assert len(tmp.name.encode()) <= 255 and tmp.name.endswith(".nii.gz")
        tmp.write_bytes(b"mask")
    assert dest.read_bytes() == b"mask" and [p.name for p in tmp_path.iterdir()] == [dest.name]


def test_temporary_names_carry_the_writer_and_orphans_are_removed(tmp_path: Path) -> None:
    target = tmp_path / "case.nii.gz"
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"x")
        assert tmp.name.startswith(f".case.nii.gz.medattn-tmp-{host_tag()}-{os.getpid()}-")
        assert tmp.name.endswith(".tmp.nii.gz")
        assert clean_orphans(tmp_path) == []  # our own file, still being written
        assert tmp.exists()
    assert target.read_bytes() == b"x"

    dead = tmp_path / f".other.nii.gz.medattn-tmp-{host_tag()}-{_dead_pid()}-abc_123.tmp.nii.gz"
    live = tmp_path / f".busy.json.medattn-tmp-{host_tag()}-1-zzz.tmp.json"  # pid 1 always runs
    foreign_new = tmp_path / ".x.json.medattn-tmp-00000000-5-q.tmp.json"
    foreign_old = tmp_path / ".y.json.medattn-tmp-00000000-6-q.tmp.json"
    legacy_old = tmp_path / ".predictions.json.k3j_9x0a.tmp.json"  # unnamed: could be anybody's, never removed
    user_file = tmp_path / ".hidden_notes.tmp"
    for p in (dead, live, foreign_new, foreign_old, legacy_old, user_file):
        p.write_text("half")
    day_ago = time.time() - 2 * 24 * 3600
    for p in (foreign_old, legacy_old):
        os.utime(p, (day_ago, day_ago))
    removed = clean_orphans(tmp_path)
    assert sorted(removed) == sorted([dead, foreign_old])
    assert live.exists() and foreign_new.exists() and user_file.exists() and legacy_old.exists()


def test_a_kill_during_a_write_leaves_an_orphan_the_next_run_removes(tmp_path: Path) -> None:
    code = (
        "import os, sys\n"
        "from medattn.data.io import atomic_path\n"
        f"with atomic_path({str(tmp_path / 'out.json')!r}) as tmp:\n"
        "    tmp.write_text('half')\n"
        "    os.kill(os.getpid(), 9)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == -9
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".out.json.")]
    assert len(left) == 1 and not (tmp_path / "out.json").exists()
    prepare_output_dir(tmp_path, "OUTPUT")
    assert not left[0].exists()
    atomic_write_text(tmp_path / "out.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_a_process_in_another_pid_namespace_leaves_a_live_writer_alone(tmp_path: Path) -> None:
    """Containers can share a host name but not process ids: a cleaner in another pid namespace must not take a
    live writer's temporary file for an orphan."""
    code = f"from medattn.data.guard import clean_orphans; print(len(clean_orphans({str(tmp_path)!r})))"
    with atomic_path(tmp_path / "mask.nii.gz") as tmp:
        tmp.write_bytes(b"x")
        proc = subprocess.run(
            ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", code],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            pytest.skip(f"cannot start a process in a new pid namespace here: {proc.stderr.strip()[:200]}")
        assert proc.stdout.strip() == "0" and tmp.exists()


def test_bids_description_files_are_inputs(tmp_path: Path) -> None:
    root = tmp_path / "bids"
    (root / "sub-01" / "anat").mkdir(parents=True)
    for name in ("dataset_description.json", "participants.tsv"):
        (root / name).write_text("{}")
    guard = InputGuard.of([root / "sub-01" / "anat" / "sub-01_T1w.nii.gz"], dataset=root)
    for name in ("dataset_description.json", "participants.tsv"):
        with pytest.raises(ConfigError, match="input files"):
            guard.check_file(root / name, "-o")
    guard.check_file(root / "manifest.json", "-o")  # a new file beside the description is fine
