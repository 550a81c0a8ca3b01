"""Importers for the layouts users have: MSD, nnU-Net v2, BIDS, one folder per domain."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medattn.cli import main
from medattn.data.importers import is_label_stem, load_dataset, parse_bids_name, split_spec
from medattn.data.manifest import Manifest
from medattn.errors import ManifestError
from tests.conftest import blob_case, write_nifti


def test_msd_folder(make_msd) -> None:
    root = make_msd(n=3)
    m = load_dataset(root)
    assert m.labels == {0: "background", 1: "core", 2: "rim"}
    assert [c.id for c in m.domains[0].cases] == ["blob_000", "blob_001", "blob_002"]
    assert m.domains[0].cases[0].images == ("imagesTr/blob_000.nii.gz",)
    assert Path(m.datalist()[0]["label"]).is_file()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"labels": {"0": "bg"}}', "no 'training' entry"),
        ('{"labels": {"0": "bg"}, "training": [{"label": "x.nii.gz"}]}', "training[0] must be an object with 'image'"),
        ('{"labels": {"zero": "bg"}, "training": [{"image": "a.nii.gz"}]}', "label key 'zero'"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_malformed_dataset_json(make_msd, content: str, message: str) -> None:
    root = make_msd(n=1)
    (root / "dataset.json").write_text(content)
    with pytest.raises(ManifestError) as err:
        load_dataset(root)
    assert message in str(err.value) and "dataset.json" in str(err.value)
    assert main(["manifest", str(root), "-o", str(root.parent / "m.json"), "--quiet"]) == 3


def _nnunet(tmp_path: Path, channels: int = 2, missing: str | None = None) -> Path:
    root = tmp_path / "Dataset042_Blobs"
    for i in range(3):
        image, label = blob_case((12, 14, 10), seed=i)
        for c in range(channels):
            name = f"case{i}_{c:04d}.nii.gz"
            if name != missing:
                write_nifti(root / "imagesTr" / name, image + c)
        write_nifti(root / "labelsTr" / f"case{i}.nii.gz", label)
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "T2", "1": "ADC"},
                "labels": {"background": 0, "core": 1, "rim": 2},
                "numTraining": 3,
                "file_ending": ".nii.gz",
            }
        )
    )
    (root / "splits_final.json").write_text(json.dumps([{"train": ["case0", "case1"], "val": ["case2"]}]))
    return root


def test_nnunet_v2_folder(tmp_path: Path) -> None:
    m = load_dataset(_nnunet(tmp_path))
    assert [c.name for c in m.channels] == ["T2", "ADC"]
    assert m.labels == {0: "background", 1: "core", 2: "rim"}
    case = m.domains[0].case("case1")
    assert case.images == ("imagesTr/case1_0000.nii.gz", "imagesTr/case1_0001.nii.gz")
    assert case.label == "labelsTr/case1.nii.gz"
    assert m.domains[0].splits["fold0_val"] == ("case2",)


def test_nnunet_v2_missing_channel_is_kept_for_validate(tmp_path: Path) -> None:
    """A missing channel file keeps its expected path so `medattn validate` reports it by name."""
    m = load_dataset(_nnunet(tmp_path, missing="case2_0001.nii.gz"))
    assert m.domains[0].case("case2").images[1] == "imagesTr/case2_0001.nii.gz"


def test_nnunet_v2_region_labels_rejected(tmp_path: Path) -> None:
    root = _nnunet(tmp_path)
    doc = json.loads((root / "dataset.json").read_text())
    doc["labels"] = {"background": 0, "whole": [1, 2]}
    (root / "dataset.json").write_text(json.dumps(doc))
    with pytest.raises(ManifestError, match="region-based"):
        load_dataset(root)


def test_nnunet_v2_ignore_label_is_refused_not_learned_as_a_class(tmp_path: Path) -> None:
    root = _nnunet(tmp_path)
    doc = json.loads((root / "dataset.json").read_text())
    doc["labels"] = {"background": 0, "core": 1, "rim": 2, "ignore": 3}
    (root / "dataset.json").write_text(json.dumps(doc))
    with pytest.raises(ManifestError, match=r"label 'ignore' .3. marks unannotated voxels"):
        load_dataset(root)


def test_domain_folders_with_case_folders(tmp_path: Path) -> None:
    root = tmp_path / "sites"
    for site, n in [("siteB", 2), ("siteA", 1)]:
        for i in range(n):
            image, label = blob_case((10, 10, 10), seed=i)
            for ch in ("T1", "FLAIR"):
                write_nifti(root / site / f"s{site}{i}" / f"{ch}.nii.gz", image)
            write_nifti(root / site / f"s{site}{i}" / "seg.nii.gz", label)
    m = load_dataset(root)
    assert m.domain_names == ["siteA", "siteB"]
    assert [c.name for c in m.channels] == ["FLAIR", "T1"]
    m2 = load_dataset(root, channels="T1,FLAIR")
    assert [c.name for c in m2.channels] == ["T1", "FLAIR"]
    assert m2.domains[1].cases[0].images == ("siteB/ssiteB0/T1.nii.gz", "siteB/ssiteB0/FLAIR.nii.gz")
    assert m2.domains[1].cases[0].label == "siteB/ssiteB0/seg.nii.gz"
    with pytest.raises(ManifestError, match="lacks channel file"):
        load_dataset(root, channels="T1,T2")


def _sites(root: Path, cases: int = 3) -> None:
    for site in ("siteA", "siteB"):
        for i in range(cases):
            image, label = blob_case((10, 10, 10), seed=i)
            for ch in ("T1", "FLAIR"):
                write_nifti(root / site / f"{site}{i}" / f"{ch}.nii.gz", image)
            write_nifti(root / site / f"{site}{i}" / "seg.nii.gz", label)


def test_an_incomplete_or_odd_case_folder_is_left_out_alone_and_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "sites"
    _sites(root)
    (root / "siteB" / "siteB2" / "FLAIR.nii.gz").unlink()  # one case lacks a channel
    image, _ = blob_case((10, 10, 10), seed=9)
    write_nifti(root / "siteA" / "siteA0" / "T1_brain.nii.gz", image)  # one case holds an extra file
    with caplog.at_level("WARNING"):
        m = load_dataset(root)
    assert [c.name for c in m.channels] == ["FLAIR", "T1"]  # what most case folders hold
    assert [c.id for c in m.domains[0].cases] == ["siteA1", "siteA2"]
    assert [c.id for c in m.domains[1].cases] == ["siteB0", "siteB1"]
    assert "siteA0: case left out: it holds extra file(s) ['T1_brain']" in caplog.text
    assert "siteB2: case left out: it lacks channel file(s) ['FLAIR']" in caplog.text
    other = tmp_path / "other"
    _sites(other)
    (other / "siteB" / "siteB1" / "T1.nii").write_bytes(b"")  # beside T1.nii.gz: one channel in two files
    caplog.clear()
    with caplog.at_level("WARNING"):
        m = load_dataset(other)
    assert [c.id for c in m.domains[1].cases] == ["siteB0", "siteB2"]
    assert "siteB1: case left out: it holds ['T1.nii', 'T1.nii.gz'], one channel in two files" in caplog.text
    named = load_dataset(root, channels="T1,FLAIR")  # named channels: the extra file is simply not one of them
    assert [c.id for c in named.domains[0].cases] == ["siteA0", "siteA1", "siteA2"]
    assert [c.id for c in named.domains[1].cases] == ["siteB0", "siteB1"]


def test_case_folders_without_a_majority_channel_set_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "sites"
    _sites(root, cases=2)
    image, _ = blob_case((10, 10, 10), seed=9)
    write_nifti(root / "siteA" / "siteA0" / "T2.nii.gz", image)
    with pytest.raises(ManifestError, match=r"no set is held by most of them.*--channels"):
        load_dataset(root)


def test_hidden_files_and_medattn_outputs_inside_a_dataset_are_not_data(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "sites"
    _sites(root)
    for junk in (root / "siteA" / "siteA1" / "._T1.nii.gz", root / "siteB" / "._siteB9.nii.gz"):
        junk.write_bytes(b"\x00\x05\x16\x07junk")  # macOS AppleDouble files
    preds = root / "preds"  # `medattn predict DATA DATA/preds`: masks, not a new domain
    image, _ = blob_case((10, 10, 10), seed=1)
    write_nifti(preds / "siteA0.nii.gz", image)
    (preds / "predictions.json").write_text("{}")
    run = root / "siteA" / "run1"  # a k-fold run inside a domain folder
    write_nifti(run / "crossval" / "siteA0.nii.gz", image)
    (run / "fold_0").mkdir()
    (run / "fold_0" / "model.pt").write_bytes(b"x")
    with caplog.at_level("WARNING"):
        m = load_dataset(root)
    assert m.domain_names == ["siteA", "siteB"]
    assert [c.id for c in m.domains[0].cases] == ["siteA0", "siteA1", "siteA2"]
    assert all(not Path(p).name.startswith(".") for _, c in m.iter_cases() for p in c.images)
    assert "a medattn output folder (it holds predictions.json), not data: skipped" in caplog.text
    assert "(it holds fold_0/model.pt)" in caplog.text
    assert "1 hidden file(s) skipped (._T1.nii.gz)" in caplog.text


def test_brats_sites_real(shared_data: Path) -> None:
    m = load_dataset(shared_data / "BraTS2018_sites")
    assert m.domain_names == ["CBICA", "TCIA"]
    assert [len(d.cases) for d in m.domains] == [7, 3]
    assert [c.name for c in m.channels] == ["FLAIR", "T1"]
    for _, case in m.iter_cases():
        assert case.label is not None and case.label.endswith("GT_W.nii.gz")
        assert [Path(p).name for p in case.images] == ["FLAIR.nii.gz", "T1.nii.gz"]
    tcia = load_dataset(f"{shared_data / 'BraTS2018_sites'}:TCIA")
    assert tcia.domain_names == ["TCIA"]


def test_bids_real_sidecars_and_domains(shared_data: Path) -> None:
    root = shared_data / "SpinalCord_contrasts"
    by_suffix = load_dataset(root, domain_from="suffix")
    assert by_suffix.domain_names == ["T1w", "T2star", "T2w"]
    case = by_suffix.domain("T1w").cases[0]
    assert case.metadata["Manufacturer"] == "Siemens"
    assert case.metadata["MagneticFieldStrength"] == 3
    assert case.metadata["ManufacturersModelName"] == "Prisma_fit"
    assert case.label == "derivatives/labels/sub-unf01/anat/sub-unf01_T1w_seg-manual.nii.gz"
    by_maker = load_dataset(root, domain_from="Manufacturer")
    assert by_maker.domain_names == ["Siemens"] and by_maker.num_cases == 3
    with pytest.raises(ManifestError, match="--domain-from 'Colour'"):
        load_dataset(root, domain_from="Colour")


def test_bids_synthetic_multichannel(tmp_path: Path) -> None:
    root = tmp_path / "bids"
    (root).mkdir()
    (root / "dataset_description.json").write_text('{"Name": "Toy BIDS"}')
    for sub, maker in [("01", "GE"), ("02", "Philips")]:
        image, label = blob_case((8, 8, 8), seed=int(sub))
        for suffix in ("T1w", "T2w"):
            write_nifti(root / f"sub-{sub}" / "anat" / f"sub-{sub}_{suffix}.nii.gz", image)
            (root / f"sub-{sub}" / "anat" / f"sub-{sub}_{suffix}.json").write_text(json.dumps({"Manufacturer": maker}))
        write_nifti(root / "derivatives" / "labels" / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w_dseg.nii.gz", label)
    m = load_dataset(root, channels="T1w,T2w", domain_from="Manufacturer")
    assert m.name == "Toy BIDS"
    assert m.domain_names == ["GE", "Philips"]
    assert [c.name for c in m.channels] == ["T1w", "T2w"]
    c = m.domain("GE").cases[0]
    assert c.images == ("sub-01/anat/sub-01_T1w.nii.gz", "sub-01/anat/sub-01_T2w.nii.gz")
    assert c.label.endswith("sub-01_T1w_dseg.nii.gz")


def test_bids_takes_the_segmentation_over_a_brain_mask_and_names_the_choice(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """derivatives/ with a brain mask and a lesion segmentation of one image: the shortest name was the brain mask
    (every case got an all-ones label); the segmentation is taken, the choice is named, --label-name decides."""
    root = tmp_path / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text('{"Name": "Toy BIDS"}')
    image, label = blob_case((8, 8, 8), seed=1)
    write_nifti(root / "sub-01" / "anat" / "sub-01_FLAIR.nii.gz", image)
    deriv = root / "derivatives" / "labels" / "sub-01" / "anat"
    write_nifti(deriv / "sub-01_FLAIR_desc-brain_mask.nii.gz", np.ones_like(label))
    write_nifti(deriv / "sub-01_FLAIR_desc-lesion_dseg.nii.gz", label)
    write_nifti(deriv / "sub-01_FLAIR_desc-core_dseg.nii.gz", (label == 1).astype(label.dtype))
    with caplog.at_level("WARNING"):
        m = load_dataset(root)
    case = m.domains[0].cases[0]
    assert case.label is not None and case.label.endswith("desc-core_dseg.nii.gz")  # the shortest segmentation
    assert "several label files" in caplog.text and "--label-name" in caplog.text
    chosen = load_dataset(root, label_name="desc-lesion_dseg").domains[0].cases[0]
    assert chosen.label is not None and chosen.label.endswith("desc-lesion_dseg.nii.gz")


def test_bids_domain_from_an_entity_one_image_lacks_leaves_that_case_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``--domain-from ses`` where one subject has no session: that case is left out, named; the others import.
    When no image has it, the import is refused."""
    root = tmp_path / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text('{"Name": "Toy BIDS"}')
    image, label = blob_case((8, 8, 8), seed=1)
    for sub, ses in (("01", "pre"), ("02", "post"), ("03", None)):
        name = f"sub-{sub}_ses-{ses}_T1w" if ses else f"sub-{sub}_T1w"
        folder = f"sub-{sub}/ses-{ses}/anat" if ses else f"sub-{sub}/anat"
        write_nifti(root / folder / f"{name}.nii.gz", image)
        write_nifti(root / "derivatives" / "labels" / folder / f"{name}_dseg.nii.gz", label)
    with caplog.at_level("WARNING"):
        m = load_dataset(root, domain_from="ses")
    assert m.domain_names == ["post", "pre"]
    assert "case left out, --domain-from 'ses' names no domain for it: sub-03_T1w.nii.gz" in caplog.text
    with pytest.raises(ManifestError, match="--domain-from 'acq'"):
        load_dataset(root, domain_from="acq")


def test_label_stem_and_bids_name_parsing() -> None:
    assert all(is_label_stem(s) for s in ["GT_W", "t2_seg-manual", "mt1_gmseg_goldstandard", "x_dseg", "mask"])
    assert not any(is_label_stem(s) for s in ["FLAIR", "T1", "t2s_uncropped", "sub-01_T2star"])
    assert parse_bids_name("sub-01_ses-2_acq-fast_T1w.nii.gz") == ({"sub": "01", "ses": "2", "acq": "fast"}, "T1w")
    assert split_spec("/no/such/path:siteA,siteB") == (Path("/no/such/path"), ["siteA", "siteB"])


def test_manifest_command_writes_relative_manifest(make_msd, tmp_path: Path) -> None:
    root = make_msd(n=2)
    out = tmp_path / "out" / "manifest.json"
    assert main(["manifest", str(root), "-o", str(out), "--quiet"]) == 0
    doc = json.loads(out.read_text())
    assert doc["root"] == "../Task99_Blobs"
    assert str(tmp_path) not in out.read_text()
    img = np.asarray(
        __import__("nibabel").load(str(out.parent / doc["root"] / doc["domains"][0]["cases"][0]["images"][0])).dataobj
    )
    assert img.shape == (16, 18, 20)


# ---- paths stay inside the dataset folder; symbolic links are read as found ------------------------------------


@pytest.mark.parametrize(
    ("entry", "value", "message"),
    [
        ("training[0].image", "./../outside/blob_000.nii.gz", "climbs out of the dataset folder with '..'"),
        ("training[0].label", "labelsTr/../../outside/blob_000.nii.gz", "climbs out of the dataset folder"),
        ("training[0].image[1]", ["imagesTr/blob_000.nii.gz", "../x.nii.gz"], "climbs out of the dataset folder"),
        ("training[0].image", "/srv/data/blob_000.nii.gz", "is absolute"),
    ],
)
def test_msd_entry_leaving_the_folder_is_refused(make_msd, entry: str, value: object, message: str) -> None:
    root = make_msd(n=2)
    doc = json.loads((root / "dataset.json").read_text())
    if isinstance(value, list):
        doc["modality"] = {"0": "T1", "1": "T2"}
    doc["training"][0][entry.split(".")[1].split("[")[0]] = value
    (root / "dataset.json").write_text(json.dumps(doc))
    with pytest.raises(ManifestError) as err:
        load_dataset(root)
    assert str(err.value).startswith(f"{root / 'dataset.json'}: {entry}: path ")
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"images": ["../outside/case0_0000.nii.gz"], "label": "labelsTr/case0.nii.gz"}, "images[0]: path '../"),
        ({"images": ["imagesTr/case0_0000.nii.gz"], "label": "/abs/case0.nii.gz"}, "label: path '/abs/case0.nii.gz'"),
        ({"label": "labelsTr/case0.nii.gz"}, "must be an object with 'images'"),
    ],
)
def test_nnunet_dataset_entry_leaving_the_folder_is_refused(tmp_path: Path, entry: dict, message: str) -> None:
    root = _nnunet(tmp_path, channels=1)
    doc = json.loads((root / "dataset.json").read_text())
    doc["channel_names"] = {"0": "T2"}
    doc["dataset"] = {"case0": entry}
    (root / "dataset.json").write_text(json.dumps(doc))
    with pytest.raises(ManifestError) as err:
        load_dataset(root)
    assert str(err.value).startswith(f"{root / 'dataset.json'}: dataset['case0']")
    assert message in str(err.value)


def _stored(store: Path, name: str, seed: int) -> tuple[Path, Path]:
    """A real image and binary mask in ``store`` (the 'shared storage' the dataset folders link to)."""
    image, label = blob_case((8, 9, 10), seed=seed)
    return (
        write_nifti(store / f"{name}_img.nii.gz", image),
        write_nifti(store / f"{name}_msk.nii.gz", (label > 0).astype(np.uint8)),
    )


def _link(link: Path, target: Path) -> Path:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target, target_is_directory=target.is_dir())
    return link


def _linked_layout(layout: str, root: Path, store: Path) -> dict[str, tuple[tuple[str, ...], str]]:
    """Build ``layout`` in ``root`` out of links into ``store``: files that are links and folders that are links.

    Returns the expected case id -> (image paths, label path), as the links' own paths relative to ``root``.
    """
    img0, msk0 = _stored(store, "a", 0)
    img1, msk1 = _stored(store, "b", 1)
    if layout == "case_folders":  # siteA: case folder of file links; siteB: the case folder is a link
        _link(root / "siteA" / "a0" / "T1.nii.gz", img0)
        _link(root / "siteA" / "a0" / "seg.nii.gz", msk0)
        write_nifti(store / "b1" / "T1.nii.gz", blob_case((8, 9, 10), seed=1)[0])  # a real file in a linked folder
        _link(store / "b1" / "seg.nii.gz", msk1)  # a link inside a linked folder
        _link(root / "siteB" / "b1", store / "b1")
        return {
            "a0": (("siteA/a0/T1.nii.gz",), "siteA/a0/seg.nii.gz"),
            "b1": (("siteB/b1/T1.nii.gz",), "siteB/b1/seg.nii.gz"),
        }
    if layout == "flat_pairs":
        _link(root / "siteA" / "x.nii.gz", img0)
        _link(root / "siteA" / "x_seg.nii.gz", msk0)
        _link(root / "siteB" / "y.nii.gz", img1)
        _link(root / "siteB" / "y_seg.nii.gz", msk1)
        return {
            "siteA_x": (("siteA/x.nii.gz",), "siteA/x_seg.nii.gz"),
            "siteB_y": (("siteB/y.nii.gz",), "siteB/y_seg.nii.gz"),
        }
    if layout == "imagesTr":  # file links in imagesTr; labelsTr is a linked folder
        for name, img, msk in [("x", img0, msk0), ("y", img1, msk1)]:
            _link(root / "siteA" / "imagesTr" / f"{name}.nii.gz", img)
            _link(store / "labels" / f"{name}.nii.gz", msk)
        _link(root / "siteA" / "labelsTr", store / "labels")
        return {n: ((f"siteA/imagesTr/{n}.nii.gz",), f"siteA/labelsTr/{n}.nii.gz") for n in ("x", "y")}
    if layout == "bids":  # sub-01: file links; sub-02: anat/ is a linked folder; derivatives/labels: linked folder
        root.mkdir(parents=True)
        (root / "dataset_description.json").write_text('{"Name": "Linked BIDS"}')
        _link(root / "sub-01" / "anat" / "sub-01_T1w.nii.gz", img0)
        _link(store / "anat02" / "sub-02_T1w.nii.gz", img1)
        _link(root / "sub-02" / "anat", store / "anat02")
        _link(store / "labels" / "sub-01" / "anat" / "sub-01_T1w_seg-manual.nii.gz", msk0)
        _link(store / "labels" / "sub-02" / "anat" / "sub-02_T1w_seg-manual.nii.gz", msk1)
        _link(store / "labels" / "sub-02" / "anat" / "loop", store / "labels")  # a cycle is not followed
        _link(root / "derivatives" / "labels", store / "labels")
        return {
            f"sub-0{i}_T1w": (
                (f"sub-0{i}/anat/sub-0{i}_T1w.nii.gz",),
                f"derivatives/labels/sub-0{i}/anat/sub-0{i}_T1w_seg-manual.nii.gz",
            )
            for i in (1, 2)
        }
    if layout in ("msd", "nnunet"):  # imagesTr is a linked folder; labelsTr holds file links
        ch = "_0000" if layout == "nnunet" else ""
        for name, img, msk in [("x", img0, msk0), ("y", img1, msk1)]:
            _link(store / "images" / f"{name}{ch}.nii.gz", img)
            _link(root / "labelsTr" / f"{name}.nii.gz", msk)
        _link(root / "imagesTr", store / "images")
        doc: dict = {"name": "Linked", "labels": {"0": "background", "1": "blob"}}
        if layout == "msd":
            training = [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in "xy"]
            doc |= {"modality": {"0": "MRI"}, "training": training}
        else:
            doc |= {"channel_names": {"0": "MRI"}, "file_ending": ".nii.gz"}
        (root / "dataset.json").write_text(json.dumps(doc))
        return {n: ((f"imagesTr/{n}{ch}.nii.gz",), f"labelsTr/{n}.nii.gz") for n in ("x", "y")}
    raise AssertionError(layout)


@pytest.mark.parametrize("through_link", [False, True], ids=["root", "linked_root"])
@pytest.mark.parametrize("layout", ["case_folders", "flat_pairs", "imagesTr", "bids", "msd", "nnunet"])
def test_symlinked_files_and_folders_are_imported(tmp_path: Path, layout: str, through_link: bool) -> None:
    """Case files and folders that are links to storage outside the dataset folder are imported by every layout,
    listed by the links' own paths, read through the links, and `medattn validate` / `manifest` pass on them."""
    real_root = tmp_path / "dataset"
    expected = _linked_layout(layout, real_root, tmp_path / "store")
    root = _link(tmp_path / "linked_dataset", real_root) if through_link else real_root
    m = load_dataset(root)
    cases = {c.id: (c.images, c.label) for _, c in m.iter_cases()}
    assert cases == expected
    for item in m.datalist():
        for f in [*item["image"], item["label"]]:
            assert Path(f).is_file(), f
            assert "store" not in Path(f).relative_to(m.data_root()).parts
    first = m.datalist()[0]
    assert nib.load(first["label"]).get_fdata().max() == 1  # the mask, read through the link
    assert main(["validate", str(root), "-o", str(tmp_path / "report.json"), "--quiet"]) == 0
    assert main(["manifest", str(root), "-o", str(tmp_path / "out" / "m.json"), "--quiet"]) == 0
    saved = Manifest.load(tmp_path / "out" / "m.json")
    assert {c.id: (c.images, c.label) for _, c in saved.iter_cases()} == expected
    assert [i["image"] for i in saved.datalist()] == [i["image"] for i in m.datalist()]


def test_dangling_link_is_a_missing_file_in_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A link whose target is gone is listed, and `medattn validate` names it per case as a missing file."""
    root = tmp_path / "sites"
    store = tmp_path / "store"
    img, msk = _stored(store, "a", 0)
    _link(root / "siteA" / "ok" / "T1.nii.gz", img)
    _link(root / "siteA" / "ok" / "seg.nii.gz", msk)
    _link(root / "siteA" / "gone" / "T1.nii.gz", store / "deleted.nii.gz")
    _link(root / "siteA" / "gone" / "seg.nii.gz", msk)
    _link(root / "siteB" / "x.nii.gz", img)
    _link(root / "siteB" / "x_seg.nii.gz", store / "deleted_seg.nii.gz")  # flat pair whose label link dangles
    m = load_dataset(root, channels="T1")
    assert m.domain("siteA").case("gone").images == ("siteA/gone/T1.nii.gz",)
    assert m.domain("siteB").case("siteB_x").label == "siteB/x_seg.nii.gz"
    capsys.readouterr()
    assert main(["validate", str(root), "--channels", "T1", "-o", str(tmp_path / "report.json"), "--quiet"]) == 1
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "report.json").read_text())
    problems = {(p["case"], p["file"], p["check"]) for p in report["problems"]}
    assert problems == {("gone", "siteA/gone/T1.nii.gz", "exists"), ("siteB_x", "siteB/x_seg.nii.gz", "exists")}
    assert "file not found" in out and "Traceback" not in out


def test_validate_refuses_manifest_climbing_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A manifest entry ``../../outside/img.nii.gz`` is refused (exit 3, one line naming it), though the file exists."""
    image, label = blob_case((8, 8, 8), seed=0)
    write_nifti(tmp_path / "outside" / "img.nii.gz", image)
    write_nifti(tmp_path / "data" / "sub" / "seg.nii.gz", (label > 0).astype(np.uint8))
    doc = {
        "name": "Escape",
        "channels": ["T1"],
        "labels": {"0": "background", "1": "blob"},
        "domains": [{"name": "d", "cases": [{"id": "c1", "images": ["../../outside/img.nii.gz"], "label": "seg"}]}],
    }
    path = tmp_path / "data" / "sub" / "manifest.json"
    path.write_text(json.dumps(doc))
    assert (path.parent / "../../outside/img.nii.gz").is_file()
    capsys.readouterr()
    assert main(["validate", str(path), "-o", str(tmp_path / "report.json"), "--quiet"]) == 3
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f"medattn validate: error: {path}: case 'c1', images[0]: path '../../outside/img.nii.gz' climbs out of "
        "the data root with '..'; paths must stay inside it (put the file, or a symbolic link to it, under the "
        "data root; a manifest written by an earlier `medattn synth --from` is fixed by running that command again)"
    ]
    assert not (tmp_path / "report.json").exists()


def test_labels_option_declares_the_classes_of_a_folder_dataset(tmp_path: Path, make_msd) -> None:
    """A folder layout declares 0 and 1 only; a three-class label (blob cases hold 0, 1, 2) is refused until
    ``--labels`` declares the classes. A manifest or dataset.json declares its own, and other ones are refused."""
    from medattn.cli import main
    from medattn.data.importers import parse_labels

    root = tmp_path / "sites"
    _sites(root, cases=2)
    assert load_dataset(root).labels == {0: "background", 1: "foreground"}
    m = load_dataset(root, labels="1=core,2=rim")
    assert m.labels == {0: "background", 1: "core", 2: "rim"}
    assert main(["validate", str(root), "-o", "", "--quiet"]) == 1
    assert main(["validate", str(root), "-o", "", "--quiet", "--labels", "1=core,2=rim"]) == 0
    assert parse_labels({0: "bg", 3: "x"}) == {0: "bg", 3: "x"}
    for bad, why in (("1", "is not VALUE=NAME"), ("a=b", "is not a whole number"), ("1=a,1=b", "named twice")):
        with pytest.raises(ManifestError, match=why):
            parse_labels(bad)
    msd = make_msd(n=2)  # its dataset.json declares 0, 1, 2
    assert load_dataset(msd, labels="1=core,2=rim").labels == {0: "background", 1: "core", 2: "rim"}
    with pytest.raises(ManifestError, match="declares its own labels"):
        load_dataset(msd, labels="1=tumour")
