"""``medattn predict``: masks in the input's exact geometry, label values on disk, bad cases named and skipped."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference

from medattn.cli import main
from medattn.data.transforms import inference_transforms
from medattn.errors import DataError
from medattn.infer.inputs import InputCase, collect_inputs, shard
from medattn.models.model_file import load_model
from tests.conftest import REPO, blob_case, split_manifest, write_nifti
from tests.infer.conftest import small_plan

SHAPE = (21, 17, 13)


def _affine(geometry: str) -> np.ndarray:
    if geometry == "ras":
        return np.eye(4)
    if geometry == "lps":  # same spacing as the plan: orientation is the only change
        aff = np.diag([-1.0, -1.0, 1.0, 1.0])
        aff[:3, 3] = [30, 40, -10]
        return aff
    if geometry == "lps_anisotropic":
        aff = np.diag([-0.9, -0.9, 3.0, 1.0])
        aff[:3, 3] = [30, 40, -10]
        return aff
    th = np.deg2rad(25)  # oblique
    aff = np.eye(4)
    rot = np.array([[np.cos(th), 0, np.sin(th)], [0, -1, 0], [-np.sin(th), 0, np.cos(th)]])
    aff[:3, :3] = rot @ np.diag([1.2, 1.0, 2.0])
    aff[:3, 3] = [5, -3, 8]
    return aff


def _reference_labels(model_path: Path, image_path: Path) -> np.ndarray:
    """Class indices on the preprocessed (RAS) grid by MONAI's sliding_window_inference: an independent path."""
    loaded = load_model(model_path)
    data = inference_transforms(loaded.plan)({"image": str(image_path)})
    with torch.inference_mode():
        logits = sliding_window_inference(
            data["image"].as_tensor()[None], loaded.plan.patch_size, 1, loaded.model, overlap=0.5, mode="gaussian"
        )
    return logits[0].argmax(0).numpy()


@pytest.mark.parametrize("geometry", ["ras", "lps", "lps_anisotropic", "oblique"])
def test_masks_have_the_input_shape_affine_and_orientation(tmp_path: Path, model_file, geometry: str) -> None:
    image, _ = blob_case(SHAPE, seed=4)
    aff = _affine(geometry)
    src = write_nifti(tmp_path / "in" / "scan.nii.gz", image, aff)
    model = model_file()
    assert main(["predict", str(model), str(src), str(tmp_path / "out"), "--quiet"]) == 0
    out = nib.load(str(tmp_path / "out" / "scan.nii.gz"))
    assert out.shape == SHAPE
    np.testing.assert_allclose(out.affine, aff, atol=1e-5)
    assert nib.aff2axcodes(out.affine) == nib.aff2axcodes(aff)
    assert out.get_data_dtype() == np.uint8
    mask = np.asarray(out.dataobj)
    assert set(np.unique(mask)) <= {0, 1, 2}
    if geometry in ("ras", "lps"):  # no resampling: the mask is the reference labels, reoriented
        ref = _reference_labels(model, src)
        expected = ref if geometry == "ras" else ref[::-1, ::-1, :]
        np.testing.assert_array_equal(mask, expected)
        assert len(np.unique(ref)) >= 2


def test_sparse_label_values_are_written_as_stored_on_disk(tmp_path: Path, model_file) -> None:
    plan = small_plan(labels={0: "background", 63: "anterior", 117: "posterior"})
    model = model_file(plan, seed=2)
    image, _ = blob_case(SHAPE, seed=1)
    src = write_nifti(tmp_path / "in" / "scan.nii.gz", image)
    assert main(["predict", str(model), str(src), str(tmp_path / "out"), "--quiet"]) == 0
    mask = np.asarray(nib.load(str(tmp_path / "out" / "scan.nii.gz")).dataobj)
    ref = _reference_labels(model, src)
    assert len(np.unique(ref)) == 3  # every class occurs, so every value of the mapping is checked
    np.testing.assert_array_equal(mask, np.array([0, 63, 117])[ref])


def test_corrupt_truncated_and_wrong_channel_files_are_named_and_skipped(tmp_path: Path, model_file, capsys) -> None:
    inp = tmp_path / "in"
    for i in range(2):
        write_nifti(inp / f"good{i}.nii.gz", blob_case(SHAPE, seed=i)[0])
    (inp / "garbage.nii.gz").write_bytes(b"not an image at all")
    whole = write_nifti(tmp_path / "whole.nii.gz", blob_case(SHAPE, seed=9)[0]).read_bytes()
    (inp / "truncated.nii.gz").write_bytes(whole[: len(whole) // 2])
    write_nifti(inp / "twochannel.nii.gz", np.stack([blob_case(SHAPE, seed=3)[0]] * 2, axis=-1))
    rc = main(["predict", str(model_file()), str(inp), str(tmp_path / "out"), "--quiet"])
    assert rc == 1
    written = sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz"))
    assert written == ["good0.nii.gz", "good1.nii.gz"]
    summary = json.loads((tmp_path / "out" / "predictions.json").read_text())
    failed = {f["case"]: f for f in summary["failed"]}
    assert set(failed) == {"garbage", "truncated", "twochannel"}
    assert failed["truncated"]["file"].endswith("truncated.nii.gz") and "truncated" in failed["truncated"]["reason"]
    assert "holds 2 volumes" in failed["twochannel"]["reason"]
    assert "single channel 'MRI'" in failed["twochannel"]["reason"]
    assert summary["num_written"] == 2 and summary["num_failed"] == 3
    ok = [c for c in summary["cases"] if c["status"] == "ok"]
    assert all(c["seconds"]["inference"] >= 0 and c["windows"] >= 1 for c in ok)
    out = capsys.readouterr().out
    assert "garbage.nii.gz" in out and "truncated.nii.gz" in out


def test_probability_maps_sum_to_one_and_agree_with_the_mask(tmp_path: Path, model_file) -> None:
    src = write_nifti(tmp_path / "in" / "scan.nii.gz", blob_case(SHAPE, seed=0)[0], _affine("lps"))
    model = model_file()
    assert main(["predict", str(model), str(src), str(tmp_path / "out"), "--save-probabilities", "--quiet"]) == 0
    prob = nib.load(str(tmp_path / "out" / "probabilities" / "scan.nii.gz"))
    arr = np.asarray(prob.dataobj)
    assert arr.shape == (*SHAPE, 3) and arr.dtype == np.float32
    np.testing.assert_allclose(prob.affine, _affine("lps"), atol=1e-5)
    np.testing.assert_allclose(arr.sum(-1), 1.0, atol=1e-4)
    mask = np.asarray(nib.load(str(tmp_path / "out" / "scan.nii.gz")).dataobj)
    np.testing.assert_array_equal(arr.argmax(-1), mask)
    rc = main(["predict", str(model), str(src), str(tmp_path / "per"), "--save-probabilities", "per-class", "--quiet"])
    assert rc == 0
    per = [np.asarray(nib.load(str(tmp_path / "per" / "probabilities" / f"scan_{k}.nii.gz")).dataobj) for k in range(3)]
    np.testing.assert_allclose(np.stack(per, -1), arr, atol=1e-6)
    # predicted again into the same folder without the maps: the earlier run's maps go, not left beside the new mask
    assert main(["predict", str(model), str(src), str(tmp_path / "per"), "--quiet"]) == 0
    assert not list((tmp_path / "per" / "probabilities").glob("*.nii.gz"))
    doc = json.loads((tmp_path / "per" / "predictions.json").read_text())
    assert len(doc["cases"][0]["removed_stale"]) == 3


def test_manifest_input_with_the_shipped_config_and_mirror_flag(tmp_path: Path, model_file, make_msd) -> None:
    """Cases are named by case id; pipelines/predict.yaml applies (window_batch 2, workers 1: read-ahead thread);
    ``--mirror`` on the command line beats ``tta: false`` in the file."""
    root = make_msd(n=2, shape=(16, 18, 20))
    config = REPO / "pipelines" / "predict.yaml"
    args = ["predict", str(model_file()), str(root), str(tmp_path / "out"), "--config", str(config), "--quiet"]
    assert main([*args, "--mirror"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz")) == [f"blob_{i:03d}.nii.gz" for i in range(2)]
    options = json.loads((tmp_path / "out" / "predictions.json").read_text())["options"]
    assert options["mirror_axes"] == [0, 1, 2]
    assert options["window_batch"] == 2 and options["workers"] == 1 and options["stitch_device"] == "auto"
    assert main([*args, "--overlap", "0.25"]) == 0
    options = json.loads((tmp_path / "out" / "predictions.json").read_text())["options"]
    assert options["mirror_axes"] == [] and options["overlap"] == 0.25


def test_split_option_predicts_only_that_split(tmp_path: Path, model_file, make_msd, capsys) -> None:
    manifest = split_manifest(make_msd(n=3, shape=(16, 18, 20)), ["blob_001"])
    out = tmp_path / "out"
    assert main(["predict", str(model_file()), str(manifest), str(out), "--split", "test", "--quiet"]) == 0
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["blob_001.nii.gz"]
    capsys.readouterr()
    # A split the manifest does not have is an error naming it, and nothing is written.
    assert main(["predict", str(model_file()), str(manifest), str(tmp_path / "o2"), "--split", "tset"]) == 3
    err = capsys.readouterr().err
    assert "'tset'" in err and "test" in err and not (tmp_path / "o2").exists()
    # Image files have no splits.
    scan = write_nifti(tmp_path / "scan.nii.gz", blob_case(SHAPE, seed=0)[0])
    assert main(["predict", str(model_file()), str(scan), str(tmp_path / "o3"), "--split", "test"]) == 3
    assert "needs a dataset with splits" in capsys.readouterr().err


def test_output_that_would_overwrite_an_input_is_refused(tmp_path: Path, model_file) -> None:
    src = write_nifti(tmp_path / "scan.nii.gz", blob_case(SHAPE, seed=0)[0])
    before = src.read_bytes()
    rc = main(["predict", str(model_file()), str(src), str(tmp_path), "--format", "input", "--quiet"])
    assert rc == 2
    assert src.read_bytes() == before


def test_folder_inputs_group_nnunet_channel_files(tmp_path: Path) -> None:
    for case in ("a", "b"):
        for c in range(2):
            write_nifti(tmp_path / "two" / f"{case}_{c:04d}.nii.gz", np.zeros((4, 4, 4)))
        write_nifti(tmp_path / "one" / f"{case}_0000.nii.gz", np.zeros((4, 4, 4)))
    two = collect_inputs(tmp_path / "two", num_channels=2)
    assert [c.case_id for c in two] == ["a", "b"]
    assert [p.name for p in two[0].images] == ["a_0000.nii.gz", "a_0001.nii.gz"]
    assert [c.case_id for c in collect_inputs(tmp_path / "one")] == ["a", "b"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        collect_inputs(tmp_path / "empty")
    cases = [InputCase(str(i), (Path(f"{i}.nii.gz"),)) for i in range(5)]
    assert [c.case_id for c in shard(cases, 1, 2)] == ["1", "3"]
    assert [c.case_id for c in shard(cases, 0, 2)] == ["0", "2", "4"]


@pytest.mark.slow  # two fresh processes importing torch and MONAI: ~40 s on 2 cores; test_folder_inputs... covers shard
def test_torchrun_shards_cases_and_rank0_writes_the_summary(tmp_path: Path, model_file) -> None:
    inp = tmp_path / "in"
    for i in range(3):
        write_nifti(inp / f"c{i}.nii.gz", blob_case((12, 12, 12), seed=i)[0])
    model = model_file()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        port,
        "-m",
        "medattn.cli",
        "predict",
        str(model),
        str(inp),
        str(tmp_path / "out"),
        "--quiet",
    ]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert summary["world_size"] == 2 and summary["num_written"] == 3
    assert {c["case"]: c["rank"] for c in summary["cases"]} == {"c0": 0, "c1": 1, "c2": 0}
    assert sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz")) == ["c0.nii.gz", "c1.nii.gz", "c2.nii.gz"]


def test_predict_on_real_hippocampus_scans_keeps_their_geometry(tmp_path: Path, shared_data: Path, model_file) -> None:
    from medattn.data.importers import load_dataset
    from medattn.data.plan import make_plan

    manifest = load_dataset(shared_data / "Task04_Hippocampus")
    plan = make_plan(manifest, max_cases=4)
    cases = manifest.datalist()[:2]
    inp = tmp_path / "in"
    inp.mkdir()
    for d in cases:
        (inp / Path(d["image"][0]).name).symlink_to(d["image"][0])
    assert main(["predict", str(model_file(plan)), str(inp), str(tmp_path / "out"), "--quiet"]) == 0
    for d in cases:
        src = nib.load(d["image"][0])
        out = nib.load(str(tmp_path / "out" / f"{d['case_id']}.nii.gz"))
        assert out.shape == src.shape
        np.testing.assert_allclose(out.affine, src.affine, atol=1e-5)
        assert set(np.unique(np.asarray(out.dataobj))) <= set(plan.labels)


def test_a_folder_of_links_names_its_cases_by_the_links(tmp_path: Path, model_file) -> None:
    """A folder assembled from shared storage with links (``case7.nii.gz -> store/ab12.nii.gz``): each mask is named
    after the link, in the target's geometry, and nothing is written beside the target."""
    store = tmp_path / "store"
    targets = [write_nifti(store / f"blob{i}.nii.gz", blob_case((20, 18, 14), seed=i)[0]) for i in range(2)]
    inp = tmp_path / "in"
    inp.mkdir()
    for i, target in enumerate(targets):
        (inp / f"case{i + 7}.nii.gz").symlink_to(target)
    assert [c.case_id for c in collect_inputs(inp)] == ["case7", "case8"]
    assert main(["predict", str(model_file()), str(inp), str(tmp_path / "out"), "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz")) == ["case7.nii.gz", "case8.nii.gz"]
    assert nib.load(str(tmp_path / "out" / "case7.nii.gz")).shape == (20, 18, 14)
    assert sorted(p.name for p in store.iterdir()) == ["blob0.nii.gz", "blob1.nii.gz"]


def test_tta_of_a_model_trained_without_flips_says_so(tmp_path: Path, caplog) -> None:
    """Mirroring a network never shown a flipped image can lower its accuracy: predict --tta warns where the model
    file records training with flip_prob 0, and not where it flipped."""
    import torch

    from medattn.models import build_model
    from medattn.models.model_file import save_model
    from tests.infer.conftest import small_plan

    src = write_nifti(tmp_path / "in" / "scan.nii.gz", blob_case(SHAPE, seed=0)[0], _affine("lps"))
    torch.manual_seed(0)
    net = build_model("ag_unet", 1, 3, channels=(4, 8, 16))
    for p_flip, name in ((0.0, "noflip.pt"), (0.5, "flip.pt")):
        model = save_model(tmp_path / name, net, small_plan(), meta={"run": {"augment": {"flip_prob": p_flip}}})
        caplog.clear()
        with caplog.at_level("WARNING"):
            assert main(["predict", str(model), str(src), str(tmp_path / f"out_{name}"), "--tta", "--quiet"]) == 0
        assert ("trained without flips" in caplog.text) == (p_flip == 0.0)


def test_a_window_the_network_would_pad_is_refused_and_a_small_one_warned(
    tmp_path: Path, model_file, caplog, capsys
) -> None:
    """``--window 7`` (not a multiple of the strides) changed half the mask, ``--window 1`` 59% of it, both with
    exit 0; duplicated mirror axes were taken as given."""
    src = write_nifti(tmp_path / "in" / "scan.nii.gz", blob_case(SHAPE, seed=0)[0], _affine("lps"))
    model = model_file()
    for bad in ("7,8,8", "1,1,1"):
        assert main(["predict", str(model), str(src), str(tmp_path / "o"), "--window", bad, "--quiet"]) == 2
        assert "must be a multiple of the network's 4,4,4" in capsys.readouterr().err
    assert main(["predict", str(model), str(src), str(tmp_path / "o"), "--window", "4,4,4", "--quiet"]) == 2
    assert "twice it on some axis; e.g. 4,4,8" in capsys.readouterr().err  # one multiple on every axis is padded
    with caplog.at_level("WARNING"):
        assert main(["predict", str(model), str(src), str(tmp_path / "o"), "--window", "8,8,4", "--quiet"]) == 0
    assert "under half the patch the model was trained on" in caplog.text
    assert main(["predict", str(model), str(src), str(tmp_path / "o"), "--mirror-axes", "0,0", "--quiet"]) == 2


def test_a_warning_of_a_two_channel_case_names_the_channel_file_it_is_about(tmp_path: Path, model_file) -> None:
    """A FLAIR+T1 case whose T1 is constant was logged as FLAIR's warning (the case's first file)."""
    from tests.infer.conftest import small_plan

    image, _ = blob_case(SHAPE, seed=0)
    write_nifti(tmp_path / "in" / "c_0000.nii.gz", image, _affine("ras"))
    write_nifti(tmp_path / "in" / "c_0001.nii.gz", np.full(SHAPE, 3.0, np.float32), _affine("ras"))
    model = model_file(small_plan(channels=("FLAIR", "T1")))
    assert main(["predict", str(model), str(tmp_path / "in"), str(tmp_path / "out"), "--quiet"]) == 0
    (case,) = json.loads((tmp_path / "out" / "predictions.json").read_text())["cases"]
    (warning,) = case["warnings"]
    assert "is constant" in warning and warning.endswith("(c_0001.nii.gz)")


def test_a_ct_without_a_negative_value_is_warned_as_stored_with_an_offset(tmp_path: Path, model_file) -> None:
    """A CT stored as unsigned HU + 1024 (no rescale intercept) was predicted without a word, its probabilities
    up to 0.45 away from the true-HU image's; a CT with air (-1000) passes without a warning."""
    from tests.infer.conftest import small_plan

    image, _ = blob_case(SHAPE, seed=0)
    hu = (image / np.abs(image).max() * 1000).astype(np.float32) - 200  # -1200 .. 800 HU
    write_nifti(tmp_path / "in" / "hu.nii.gz", hu, _affine("ras"))
    write_nifti(tmp_path / "in" / "offset.nii.gz", (hu + 1200).astype(np.uint16), _affine("ras"))
    model = model_file(small_plan(modality="CT"))
    assert main(["predict", str(model), str(tmp_path / "in"), str(tmp_path / "out"), "--quiet"]) == 0
    cases = {c["case"]: c for c in json.loads((tmp_path / "out" / "predictions.json").read_text())["cases"]}
    assert not cases["hu"]["warnings"]
    (warning,) = cases["offset"]["warnings"]
    assert "(CT) has no negative value (lowest " in warning and "-1024 offset" in warning
