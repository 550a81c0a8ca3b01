"""``medattn demo`` end to end with tiny settings: the report, the predictions' geometry, repeatability, errors."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medattn.cli import main

REPO = Path(__file__).resolve().parents[1]
#: Three scanners (A reference; B int16 with a scale slope, LPS; C thick slices, permuted axes) of four 24^3 cases,
#: four training steps and one adaptation epoch: every step of the story runs, in seconds.
TINY = [
    "--cases",
    "4",
    "--size",
    "24",
    "--scanners",
    "A,B,C",
    "--widths",
    "4,8,16",
    "--steps",
    "4",
    "--epochs",
    "2",
    "--adapt-epochs",
    "1",
    "--figure-cases",
    "2",
    "--threads",
    "1",
    "--quiet",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """Two demo runs with the same seed in different folders, and the first run's terminal output."""
    import contextlib
    import io

    root = tmp_path_factory.mktemp("demo")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["demo", "--out", str(root / "a"), *TINY]) == 0
    assert main(["demo", "--out", str(root / "b"), *TINY]) == 0
    return root / "a", root / "b", buf.getvalue()


def test_terminal_shows_every_step_then_the_summary_and_the_report(runs: tuple[Path, Path, str]) -> None:
    out, _, text = runs
    assert [int(k) for k in re.findall(r"^\[(\d)/8\]", text, flags=re.M)] == list(range(1, 9))
    assert "Trained on scanner A: held-out Dice" in text
    assert re.search(r"^\s+B\s+(DRIFT|no drift)\s", text, flags=re.M)
    assert re.search(r"^\s+replay\s", text, flags=re.M) and re.search(r"^\s+naive\s", text, flags=re.M)
    assert text.rstrip().endswith(str((out / "report.html").resolve()))


def test_report_is_self_contained_with_valid_images(runs: tuple[Path, Path, str]) -> None:
    out = runs[0]
    page = (out / "report.html").read_text()
    sources = re.findall(r'src="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), "the report must not fetch anything"
    assert "<script" not in page and "@import" not in page
    hrefs = re.findall(r'href="([^"]*)"', page)
    assert hrefs and all((out / h).is_file() for h in hrefs), "links point at the predictions beside the report"
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert {"training_curves.png", "dice_matrix_replay.png", "dice_matrix_naive.png", "dice_matrix_joint.png"} <= set(
        pngs
    )
    outcomes = json.loads((out / "summary.json").read_text())["outcomes"]
    sentences = [*outcomes["scanners"].values(), outcomes["average"]]
    assert all(html.escape(t) in page for t in sentences), "the sentences are shown"
    assert {"drift_B_pca.png", "drift_B_scores.png", "drift_C_pca.png", "drift_C_scores.png"} <= set(pngs)
    assert len([p for p in pngs if p.startswith("slices_")]) == 2
    import matplotlib.image as mpimg

    for name in pngs:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = mpimg.imread(out / name)
        assert img.ndim == 3 and min(img.shape[:2]) > 100
    assert len(sources) == len(pngs), "every figure is embedded"


def test_predictions_have_the_shape_and_affine_of_their_inputs(runs: tuple[Path, Path, str]) -> None:
    out = runs[0]
    doc = json.loads((out / "heldout.json").read_text())
    root = (out / (doc.get("root") or ".")).resolve()
    cases = [c for d in doc["domains"] for c in d["cases"]]
    assert len(cases) == 3  # one held-out case per scanner
    for case in cases:
        src = nib.load(str(root / case["images"][0]))
        pred = nib.load(str(out / "predictions" / f"{case['id']}.nii.gz"))
        assert pred.shape == src.shape
        np.testing.assert_allclose(pred.affine, src.affine, atol=1e-4)
        assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2}


def test_summary_has_the_dice_matrix_and_repeats_exactly(runs: tuple[Path, Path, str]) -> None:
    a, b, _ = runs
    summary = json.loads((a / "summary.json").read_text())
    assert summary["first_scanner"] == "A"
    assert list(summary["adapt"]) == ["replay", "naive", "joint"]
    for method in ("replay", "naive"):
        m = summary["adapt"][method]
        assert m["domains"] == ["A", "B", "C"] and m["rows"] == ["A", "B", "C"]
        assert np.asarray(m["matrix"], dtype=float).shape == (3, 3) and len(m["before"]) == 3
        for key in ("average_dice", "bwt", "forgetting"):
            assert m[key] is not None
    joint = summary["adapt"]["joint"]  # the reference row: one training on every scanner at once
    assert joint["rows"] == ["joint"] and np.asarray(joint["matrix"], dtype=float).shape == (1, 3)
    assert joint["average_dice"] == pytest.approx(np.mean(joint["matrix"][-1]), abs=1e-5) and joint["bwt"] is None
    assert set(summary["drift"]) == {"B", "C"} and set(summary["heldout"]) == {"A", "B", "C"}
    assert summary["predictions"] == sorted(f"predictions/{c}_003.nii.gz" for c in "ABC")
    assert (a / "summary.json").read_bytes() == (b / "summary.json").read_bytes()
    timings = json.loads((a / "timings.json").read_text())
    assert list(timings) == ["data", "validate", "plan", "train", "predict", "drift", "adapt", "report"]


def test_each_scanner_gets_a_sentence_quoting_its_matrix(runs: tuple[Path, Path, str]) -> None:
    """The per-scanner sentences are made from the Dice matrices: before, own step and end for replay, joint's
    final Dice and naive's, in that order; the terminal prints them."""
    out, _, text = runs
    summary = json.loads((out / "summary.json").read_text())
    adapt, sentences = summary["adapt"], summary["outcomes"]["scanners"]
    assert list(sentences) == ["A", "B", "C"]
    for j, name in enumerate(["A", "B", "C"]):
        sentence = sentences[name]
        described = next(s["description"] for s in summary["dataset"]["scanners"] if s["name"] == name)
        assert sentence.startswith(f"{name} ({described.split(': ')[0]}): ")
        replay = adapt["replay"]
        expected = [
            replay["before"][j],
            replay["matrix"][j][j],
            adapt["joint"]["matrix"][-1][j],
            replay["matrix"][-1][j],
            adapt["naive"]["matrix"][-1][j],
        ]
        assert re.findall(r"\d+\.\d{3}", sentence) == [f"{v:.3f}" for v in expected], sentence
        assert f"  {sentence}" in text
    average = summary["outcomes"]["average"]
    assert re.findall(r"\d+\.\d{3}", average)[:3] == [f"{adapt[m]['average_dice']:.3f}" for m in adapt]


def test_sentences_name_what_the_step_did_and_do_without_the_reference() -> None:
    from medattn.report.demo_summary import scanner_outcomes

    def run(matrix: list[list[float]]) -> dict[str, object]:
        return {"domains": ["A", "B"], "rows": ["A", "B"], "before": [0.8, 0.3], "matrix": matrix, "average_dice": 0.5}

    doc = {
        "first_scanner": "A",
        "dataset": {"scanners": [{"name": "A", "description": "reference: 1 mm"}, {"name": "B", "description": ""}]},
        "adapt": {"replay": run([[0.79, 0.1], [0.7, 0.65]]), "joint": {**run([[0.75, 0.6]]), "rows": ["joint"]}},
    }
    out = scanner_outcomes(doc)
    assert out["scanners"]["A"] == (
        "A (reference): the model trained on it scored 0.800; replay's step on it gave 0.790 (joint training 0.750) "
        "and it ended at 0.700."
    )
    assert out["scanners"]["B"] == (
        "B: the model trained on A scored 0.300; replay's adaptation step raised it to 0.650 (joint training 0.600) "
        "and it ended at 0.650."
    )
    assert (
        out["average"]
        == "Final average Dice over the scanners: replay 0.500, joint 0.500 (replay +0.000 against joint training)."
    )
    doc["adapt"] = {"naive": run([[0.79, 0.1], [0.7, 0.2]])}
    assert "step lowered it to 0.200 and it ended at 0.200." in scanner_outcomes(doc)["scanners"]["B"]
    assert scanner_outcomes({**doc, "adapt": {}}) == {}


def test_data_option_simulates_scanners_from_a_one_domain_dataset(
    make_msd: Callable[..., Path], tmp_path: Path
) -> None:
    data = make_msd(n=4, shape=(16, 18, 20))
    args = ["--steps", "2", "--epochs", "1", "--adapt-epochs", "1", "--strategies", "naive", "--widths", "4,8"]
    args += ["--scanners", "B", "--figure-cases", "1", "--threads", "1", "--quiet"]
    assert main(["demo", "--data", str(data), "--out", str(tmp_path / "out"), *args]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [s["name"] for s in summary["dataset"]["scanners"]] == ["Blobs", "Blobs_B"]
    assert summary["adapt"]["naive"]["domains"] == ["Blobs", "Blobs_B"]
    assert list((tmp_path / "out" / "predictions").glob("*.nii.gz"))
    assert not list(data.rglob("*_B*")), "the simulated scanner is written under --out, never beside the input"


def test_a_missing_data_path_is_named_and_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no_such_dataset"
    assert main(["demo", "--data", str(missing), "--out", str(tmp_path / "out"), "--quiet"]) == 3
    err = capsys.readouterr().err
    assert str(missing) in err and "no such file or folder" in err


def test_a_non_empty_folder_that_is_not_a_demo_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["demo", "--out", str(tmp_path), "--quiet"]) == 2
    assert "not empty" in capsys.readouterr().err and (tmp_path / "keep.txt").read_text() == "mine"


def test_config_file_holds_the_defaults_and_flags_win() -> None:
    """pipelines/demo.yaml spells out every knob with the value the code uses; a flag overrides the file."""
    import dataclasses

    from medattn.cli import _apply_config, build_parser
    from medattn.commands.demo import demo_config
    from medattn.demo import DemoConfig

    parser = build_parser()
    argv = ["demo", "--config", str(REPO / "pipelines" / "demo.yaml"), "--steps", "7", "--strategies", "naive"]
    args = parser.parse_args(argv)
    _apply_config(parser, argv, args)
    cfg = demo_config(args)
    assert cfg == dataclasses.replace(DemoConfig(), steps=7, strategies=("naive",))
    import yaml

    keys = set(yaml.safe_load((REPO / "pipelines" / "demo.yaml").read_text()))
    assert keys == {f.name for f in dataclasses.fields(DemoConfig)}


def test_an_invalid_knob_is_named_before_writing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--out", str(tmp_path / "out"), "--steps", "0", "--quiet"]) == 2
    assert "steps: expected an integer >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_out_holding_the_data_through_data_root_is_refused_and_nothing_deleted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A manifest outside --out whose files --data-root places inside an earlier demo's folder: the demo cleared
    the folder and so deleted all 38 files of the dataset it was about to read."""
    earlier = tmp_path / "demo2"
    assert main(["synth", str(earlier / "data"), "--cases", "4", "--size", "24", "--scanners", "A", "--quiet"]) == 0
    (earlier / "demo_config.json").write_text("{}\n")  # an earlier demo's folder, which the demo may clear
    files = sorted(p for p in (earlier / "data").rglob("*") if p.is_file())
    ext = tmp_path / "ext"
    ext.mkdir()
    (ext / "manifest.json").write_text((earlier / "data" / "manifest.json").read_text())
    argv = ["demo", "--data", str(ext / "manifest.json"), "--data-root", str(earlier / "data"), "--out", str(earlier)]
    assert main([*argv, "--quiet"]) == 2
    assert "a file of the --data dataset" in capsys.readouterr().err
    assert sorted(p for p in (earlier / "data").rglob("*") if p.is_file()) == files
