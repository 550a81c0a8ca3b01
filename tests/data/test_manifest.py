"""Manifest schema: round trip, path resolution, and clear errors for malformed documents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medattn.data.manifest import Manifest
from medattn.errors import ManifestError


def _doc(**over: object) -> dict:
    doc = {
        "format": "medattn-manifest",
        "version": 1,
        "name": "Toy",
        "channels": [{"name": "T1", "modality": "MRI"}],
        "labels": {"0": "background", "1": "organ"},
        "domains": [
            {
                "name": "siteA",
                "metadata": {"Manufacturer": "Siemens"},
                "cases": [
                    {"id": "a1", "images": ["a/a1.nii.gz"], "label": "a/a1_seg.nii.gz"},
                    {"id": "a2", "images": ["a/a2.nii.gz"], "label": "a/a2_seg.nii.gz", "metadata": {"x": 1}},
                ],
                "splits": {"train": ["a1"], "test": ["a2"]},
            },
            {"name": "siteB", "cases": [{"id": "b1", "images": "b/b1.nii.gz"}]},
        ],
    }
    doc.update(over)
    return doc


def test_round_trip_and_queries(tmp_path: Path) -> None:
    m = Manifest.from_dict(_doc(), base_dir=tmp_path)
    assert m.channels[0].modality == "MR"  # "MRI" normalised
    assert m.domain_names == ["siteA", "siteB"]
    assert m.num_cases == 3
    assert m.foreground_labels == {1: "organ"}
    again = Manifest.from_dict(json.loads(json.dumps(m.to_dict())), base_dir=tmp_path)
    assert again == m


def test_datalist_resolves_against_root_and_override(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    m = Manifest.from_dict(_doc(root="../data"), base_dir=tmp_path / "sub")
    items = m.datalist(domain="siteA", split="test")
    assert [i["case_id"] for i in items] == ["a2"]
    assert items[0]["image"] == [str((tmp_path / "data" / "a" / "a2.nii.gz").resolve())]
    assert items[0]["domain"] == "siteA" and items[0]["metadata"] == {"x": 1}
    other = m.datalist(domain="siteB", data_root=tmp_path / "elsewhere")
    assert other[0]["image"] == [str(tmp_path / "elsewhere" / "b" / "b1.nii.gz")]
    assert "label" not in other[0]


def test_save_rewrites_root_relative_to_new_location(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    m = Manifest.from_dict(_doc(), base_dir=data)
    out = tmp_path / "manifests" / "toy.json"
    m.save(out)
    doc = json.loads(out.read_text())
    assert doc["root"] == "../data"
    assert not any(str(tmp_path) in json.dumps(doc) for _ in [0]), "a saved manifest holds no absolute path"
    loaded = Manifest.load(out)
    assert loaded.datalist()[0]["image"][0] == str(data.resolve() / "a" / "a1.nii.gz")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("domains"), "missing required key 'domains'"),
        (lambda d: d["domains"][0]["cases"][0].update(images=["/abs/a1.nii.gz"]), "is absolute"),
        (lambda d: d["domains"][1]["cases"][0].update(id="a1"), "case id 'a1' appears twice (in domains 'siteA' and"),
        (lambda d: d["domains"][1]["cases"][0].update(images="a/a1.nii.gz"), "cases 'a1' and 'b1' list the same"),
        (lambda d: d["domains"][0]["splits"].update(val=["zz"]), "names unknown cases ['zz']"),
        (lambda d: d["domains"][0]["cases"][0].update(images=["x", "y"]), "lists 2 image files"),
        (lambda d: d.update(labels={"one": "organ"}), "label entry 'one'"),
        (lambda d: d.update(version=99), "newer than this medattn"),
        (lambda d: d["domains"][1].update(name="siteA"), "domain name 'siteA' appears twice"),
        # names become output paths (RUN/<method>/<ii>_<domain>/, OUT/<case>.nii.gz): one component, no climbing
        (lambda d: d["domains"][1].update(name="x/../../../run"), "domain name 'x/../../../run': contains '/'"),
        (lambda d: d["domains"][1].update(name="GE\\1.5T"), "contains '\\\\'"),
        (lambda d: d["domains"][1].update(name=".."), "starts with '.'"),
        (lambda d: d["domains"][0]["cases"][0].update(id="../../labelsTr/x"), "case id '../../labelsTr/x'"),
        (lambda d: d["domains"][0]["cases"][0].update(id=""), "is empty"),
        (lambda d: d["domains"][0]["cases"][0].update(id="a\n1"), "control character"),
        # a split medattn does not read would be trained on: refused, with the name it means
        (lambda d: d["domains"][0].update(splits={"training": ["a1"], "testing": []}), "rename it 'train'"),
        (lambda d: d["domains"][0].update(splits={"train": ["a1"], "holdout": []}), "rename it 'test'"),
        (lambda d: d["domains"][0].update(splits={"external": []}), "split 'external' is not a split medattn"),
    ],
)
def test_malformed_manifests_name_the_problem(mutate, message: str, tmp_path: Path) -> None:
    doc = _doc()
    mutate(doc)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ManifestError) as err:
        Manifest.load(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_nnunet_fold_splits_and_validation_are_read() -> None:
    doc = _doc()
    doc["domains"][0]["splits"] = {"fold0_train": ["a1"], "fold0_val": [], "validation": [], "test": []}
    assert set(Manifest.from_dict(doc).domains[0].splits) == {"fold0_train", "fold0_val", "validation", "test"}


def test_invalid_json_reports_line(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text('{"name": "x",\n "channels": [}')
    with pytest.raises(ManifestError, match=r"line 2"):
        Manifest.load(path)


def test_shipped_manifests_load_and_resolve(shared_data: Path) -> None:
    """Every manifest in data_manifests/ loads and points at files that exist in ../shared/data."""
    from tests.conftest import REPO

    paths = sorted((REPO / "data_manifests").glob("*.json"))
    assert {p.name for p in paths} >= {"hippocampus.json", "brats_sites.json", "spinalcord.json", "spleen_ct.json"}
    for p in paths:
        m = Manifest.load(p)
        for item in m.datalist():
            for f in [*item["image"], item["label"]]:
                assert Path(f).is_file(), f"{p.name}: {f} missing"


def test_config_file_fills_options_and_flags_win(make_msd, tmp_path: Path) -> None:
    """`--config` YAML keys fill options; a flag given on the command line (by any spelling) wins."""
    from medattn.cli import main

    root = make_msd(n=2)
    cfg = tmp_path / "plan.yaml"
    cfg.write_text("plan:\n  memory_mb: 64\n  out: " + str(tmp_path / "from_yaml.json") + "\n")
    assert main(["plan", str(root), "--config", str(cfg), "--quiet"]) == 0
    assert json.loads((tmp_path / "from_yaml.json").read_text())["memory_budget_mb"] == 64
    assert main(["plan", str(root), "--config", str(cfg), "-o", str(tmp_path / "flag.json"), "--quiet"]) == 0
    assert (tmp_path / "flag.json").is_file()
    bad = tmp_path / "bad.yaml"
    bad.write_text("memory_megabytes: 3\n")
    assert main(["plan", str(root), "--config", str(bad), "--quiet"]) == 2


def test_config_file_cannot_win_over_the_command_line_or_drop_its_own_keys(make_msd, tmp_path: Path, capsys) -> None:
    """An abbreviated flag (``--memory 32`` for ``--memory-mb``) lost to the file's value; a key named after a
    positional argument (``data``) replaced the dataset given; a section named after the command made the file's
    other keys silently ignored; a repeated key let the last one win; an empty file meant every default."""
    from medattn.cli import main

    root, other = make_msd(n=2), tmp_path / "other"
    out = tmp_path / "p.json"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"memory_mb: 64\nout: {out}\n")
    assert main(["plan", str(root), "--config", str(cfg), "--memory", "32", "--quiet"]) == 0
    assert json.loads(out.read_text())["memory_budget_mb"] == 32  # the command line's abbreviation wins
    cfg.write_text(f"max_cases: 1\nplan:\n  memory_mb: 48\n  out: {out}\n")  # shared key + the command's section
    assert main(["plan", str(root), "--config", str(cfg), "--quiet"]) == 0
    doc = json.loads(out.read_text())
    assert doc["memory_budget_mb"] == 48 and doc["fingerprint"]["cases_used"] == 1
    cfg.write_text(f"plan:\n  <<: {{memory_mb: 40}}\n  out: {out}\n")  # a YAML merge key, read as PyYAML does
    assert main(["plan", str(root), "--config", str(cfg), "--quiet"]) == 0
    assert json.loads(out.read_text())["memory_budget_mb"] == 40
    # train's option `plan:` is that option, not the plan command's section
    from medattn.configdoc import config_section

    assert config_section({"plan": "p.json", "epochs": 3}, "train", ["train", "plan"], {"plan", "epochs"}) == {
        "plan": "p.json",
        "epochs": 3,
    }
    for text, said in (
        (f"data: {other}\n", "'data' is an argument of the command line"),
        ("memory_mb: 64\nmemory_mb: 32\n", "option 'memory_mb' is given twice (line 2)"),
        ("# nothing here\n", "the config holds no options (an empty file)"),
        ("- memory_mb\n", "expected a mapping of option names to values, got a list"),
    ):
        cfg.write_text(text)
        capsys.readouterr()
        assert main(["plan", str(root), "--config", str(cfg), "-o", str(out), "--quiet"]) == 2, text
        assert said in capsys.readouterr().err, text


@pytest.mark.parametrize(
    ("entry", "path", "message"),
    [
        ("images[0]", "../../outside/img.nii.gz", "climbs out of the data root with '..'"),
        ("images[0]", "a/../../outside/img.nii.gz", "climbs out of the data root with '..'"),
        ("images[0]", "a/../a1.nii.gz", "climbs out of the data root with '..'"),  # any '..' is refused
        ("label", "../a/a1_seg.nii.gz", "climbs out of the data root with '..'"),
        ("images[0]", "..\\outside\\img.nii.gz", "climbs out of the data root with '..'"),
        ("label", "C:\\data\\a1_seg.nii.gz", "is absolute"),
        ("images[0]", "\\\\server\\share\\a1.nii.gz", "is absolute"),
        ("images[0]", "a\\a1.nii.gz", "holds a backslash"),
    ],
)
def test_case_paths_stay_inside_the_data_root(entry: str, path: str, message: str, tmp_path: Path) -> None:
    """A case path that leaves the data root is refused, naming the file, case, entry and path; the manifest's own
    ``root`` may climb (the shipped manifests use ``"root": "../../shared/data"``)."""
    doc = _doc(root="../../shared/data")
    case = doc["domains"][0]["cases"][0]
    if entry == "label":
        case["label"] = path
    else:
        case["images"] = [path]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(ManifestError) as err:
        Manifest.load(bad)
    assert str(err.value).startswith(f"{bad}: case 'a1', {entry}: path {path!r} ")
    assert message in str(err.value)
    good = tmp_path / "deep" / "er" / "good.json"
    good.parent.mkdir(parents=True)
    good.write_text(json.dumps(_doc(root="../../shared/data")))
    m = Manifest.load(good)
    assert m.data_root() == (tmp_path / "shared" / "data").resolve()
    assert m.datalist()[0]["image"] == [str((tmp_path / "shared" / "data" / "a" / "a1.nii.gz").resolve())]


def test_second_channel_and_root_are_named(tmp_path: Path) -> None:
    """The error names which image of a multi-channel case is wrong; a bad 'root' is named as 'root'."""
    doc = _doc(channels=["T1", "T2"])
    doc["domains"][0]["cases"][0]["images"] = ["a/a1_t1.nii.gz", "../a1_t2.nii.gz"]
    with pytest.raises(ManifestError, match=r"case 'a1', images\[1\]: path '../a1_t2.nii.gz' climbs out"):
        Manifest.from_dict(doc, base_dir=tmp_path)
    with pytest.raises(ManifestError, match=r"'root': path '/srv/data' is absolute"):
        Manifest.from_dict(_doc(root="/srv/data"), base_dir=tmp_path)


def test_a_binary_file_given_as_a_manifest_is_a_clear_error(tmp_path: Path, capsys) -> None:
    """An image passed where a dataset is expected (``medattn validate scan.nii.gz``) used to end in an internal
    UnicodeDecodeError."""
    from medattn.cli import main

    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(b"\x1f\x8b\x08\x00\xff\xfe binary")
    assert main(["validate", str(scan), "-o", ""]) == 3
    err = capsys.readouterr().err
    assert "not a manifest: the file is binary" in err and err.count("\n") == 1
