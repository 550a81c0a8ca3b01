"""Importers for the layouts users have: MSD, nnU-Net v2, BIDS, one folder per domain."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medattn.cli import main
from medattn.data.importers import is_label_stem, load_dataset, parse_bids_name, split_spec
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
