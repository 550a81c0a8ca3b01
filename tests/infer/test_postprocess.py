"""Postprocessing learned on cross-validation: chosen only where it raises the out-of-fold Dice (constructed cases
where it must and where it must not), saved with the run, applied by ``predict``, scored by ``evaluate`` with and
without; ``medattn crossval`` predicts each fold's validation cases with that fold's model, never a test case."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from scipy import ndimage

from medattn.cli import main
from medattn.infer.postprocess import Case, ClassRule, Rule, apply_rule, determine_rule, load_rule, save_rule
from tests.train.test_train_generated import TINY, blob_dataset

SHAPE = (30, 30, 30)


def _ball(center: tuple[int, int, int], radius: float) -> np.ndarray:
    grid = np.indices(SHAPE)
    return ((grid - np.array(center)[:, None, None, None]) ** 2).sum(0) <= radius**2


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_a_spurious_island_is_removed_only_from_the_class_it_helps() -> None:
    """Class 1 is one structure, predicted with a small island far away in every case: removing it raises
    Dice, so a rule is chosen for class 1; class 2's prediction is exact: nothing is chosen for it."""
    cases = []
    for i in range(4):
        ref = np.zeros(SHAPE, np.int32)
        ref[_ball((10 + i, 12, 12), 5)] = 1
        ref[_ball((20, 22, 20), 3)] = 2
        pred = ref.copy()
        pred[26:28, 2:4, 2 + i : 4 + i] = 1  # an 8-voxel island of class 1
        cases.append(Case(f"c{i}", pred, ref, (1.0, 1.0, 1.0)))
    rule = determine_rule(cases, [1, 2])
    assert rule.classes[1].op in ("largest_component", "min_volume") and rule.classes[2].op == "none"
    ev = rule.evidence["classes"]["1"]
    chosen = max(c["dice"] for c in ev["candidates"])
    expected_raw = np.mean([_dice(c.prediction == 1, c.reference == 1) for c in cases])
    assert ev["raw"] == pytest.approx(expected_raw, abs=1e-6) and chosen == pytest.approx(1.0)
    cleaned = apply_rule(cases[0].prediction, rule, (1.0, 1.0, 1.0))
    np.testing.assert_array_equal(cleaned, cases[0].reference)


def test_a_structure_in_two_parts_keeps_both() -> None:
    """Class 1 is two separate parts (left and right) predicted exactly: keeping the largest component would drop
    one; no operation raises Dice, so none is chosen."""
    cases = []
    for i in range(3):
        ref = np.zeros(SHAPE, np.int32)
        ref[_ball((8, 15, 15), 4 + i % 2)] = 1
        ref[_ball((22, 15, 15), 3)] = 1
        cases.append(Case(f"c{i}", ref.copy(), ref, (1.0, 1.0, 1.0)))
    rule = determine_rule(cases, [1])
    assert rule.classes[1].op == "none" and not rule.active
    lcc = next(c for c in rule.evidence["classes"]["1"]["candidates"] if c["op"] == "largest_component")
    assert lcc["dice"] < 0.9  # it was tried, and it would have hurt


def test_min_volume_is_in_mm3_so_one_rule_fits_any_voxel_size(tmp_path: Path) -> None:
    mask = np.zeros(SHAPE, np.uint8)
    mask[_ball((15, 15, 15), 5)] = 1
    mask[1:3, 1:3, 1:3] = 1  # 8 voxels
    rule = Rule({1: ClassRule("min_volume", 20.0)})
    assert apply_rule(mask, rule, (1.0, 1.0, 1.0))[1, 1, 1] == 0  # 8 mm3 < 20: removed
    assert apply_rule(mask, rule, (1.5, 1.5, 1.5))[1, 1, 1] == 1  # 27 mm3: kept
    path = save_rule(rule, tmp_path / "rule.json")
    assert load_rule(path).classes[1] == ClassRule("min_volume", 20.0)
    with pytest.raises(Exception, match=r"label value\(s\) \[1\] the model does not have"):
        load_rule(path, {0: "background", 3: "other"})


def test_crossval_learns_on_out_of_fold_cases_and_predict_applies_it(tmp_path: Path, capsys) -> None:
    """Two folds trained for real (tiny); crossval predicts each fold's validation cases with its own model (the
    test split never), writes the rule; ``predict RUN`` is the two-fold ensemble with the rule applied, and
    ``evaluate --postprocessing`` scores the raw and the postprocessed masks."""
    data = blob_dataset(tmp_path / "blobs")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "epochs": 3}))
    assert main(["plan", str(data), "-o", str(tmp_path / "plan.json"), "--quiet"]) == 0
    run = tmp_path / "run"
    for k in (0, 1):
        args = ["--fold", str(k), "--folds", "2", "--plan", str(tmp_path / "plan.json")]
        assert (
            main(["train", str(data), "--out", str(run / f"fold_{k}"), "--config", str(config), *args, "--quiet"]) == 0
        )
    assert main(["crossval", str(run), str(data), "--quiet"]) == 0
    summary = json.loads((run / "crossval" / "summary.json").read_text())
    vals = {k: json.loads((run / f"fold_{k}" / "split.json").read_text())["val"] for k in (0, 1)}
    assert sorted(vals[0] + vals[1]) == [f"c{i}" for i in range(7)]  # train and val cases; c7, c8 are the test split
    assert sorted(p.name for p in (run / "crossval").glob("*.nii.gz")) == [f"c{i}.nii.gz" for i in range(7)]
    assert summary["cases"] == 7 and summary["folds"] == ["fold_0", "fold_1"]
    rule = load_rule(run / "postprocessing.json")

    # the crossval Dice is what evaluate computes on the same masks
    oof_args = ["evaluate", str(run / "crossval"), str(data), "-o", str(tmp_path / "oof.json"), "--quiet"]
    assert main(oof_args) == 1  # the test split has no out-of-fold prediction: listed, exit 1 unless accepted
    assert main([*oof_args, "--allow-missing"]) == 0
    oof = json.loads((tmp_path / "oof.json").read_text())
    assert summary["dice"]["all"]["raw"]["1"]["dice"] == pytest.approx(oof["summary"]["1"]["dice"]["mean"], abs=1e-3)

    out = tmp_path / "pred"
    assert main(["predict", str(run), str(data), str(out), "--split", "test", "--quiet"]) == 0
    doc = json.loads((out / "predictions.json").read_text())
    assert len(doc["models"]) == 2
    assert doc["postprocessing"]["rule"] == str(run / "postprocessing.json")
    assert doc["postprocessing"]["classes"] == {str(k): r.to_dict() for k, r in rule.classes.items()}
    for case in ("c7", "c8"):
        mask = np.asarray(nib.load(str(out / f"{case}.nii.gz")).dataobj)
        for value, r in rule.active.items():
            if r.op == "largest_component":
                assert ndimage.label(mask == value, structure=np.ones((3, 3, 3)))[1] <= 1
    assert (
        main(
            ["predict", str(run), str(data), str(tmp_path / "raw"), "--split", "test", "--no-postprocessing", "--quiet"]
        )
        == 0
    )
    assert json.loads((tmp_path / "raw" / "predictions.json").read_text())["postprocessing"] is None
    metrics = tmp_path / "m.json"
    assert (
        main(
            [
                "evaluate",
                str(tmp_path / "raw"),
                str(data),
                "--split",
                "test",
                "-o",
                str(metrics),
                "--postprocessing",
                str(run / "postprocessing.json"),
                "--quiet",
            ]
        )
        == 0
    )
    m = json.loads(metrics.read_text())
    assert set(m["postprocessed"]["summary"]) == set(m["summary"])
    assert main(["evaluate", str(out), str(data), "--split", "test", "-o", str(tmp_path / "pp.json"), "--quiet"]) == 0
    pp_doc = json.loads((tmp_path / "pp.json").read_text())
    assert m["postprocessed"]["summary"]["mean"]["dice"]["mean"] == pytest.approx(
        pp_doc["summary"]["mean"]["dice"]["mean"], abs=1e-6
    )  # evaluate's postprocessing of the raw masks = predict's postprocessed masks
    # the rule records the folds' models; a fold retrained since crossval is refused the stale rule
    assert sorted(rule.evidence["models"]) == ["fold_0", "fold_1"]
    from medattn.models import build_model
    from medattn.models.model_file import load_model, save_model

    old = load_model(run / "fold_1" / "model.pt")
    save_model(run / "fold_1" / "model.pt", build_model("ag_unet_fullres", 1, 3, channels=(4, 8)), old.plan)
    capsys.readouterr()
    assert main(["predict", str(run), str(data), str(tmp_path / "stale"), "--split", "test", "--quiet"]) != 0
    assert "learned on other models: fold_1/model.pt changed since crossval ran" in capsys.readouterr().err
    # a damaged rule file is named, never an internal error
    for damage in ({"1": "largest"}, {"head": {"op": "none"}}):
        bad = tmp_path / "bad_rule.json"
        bad.write_text(json.dumps({**json.loads((run / "postprocessing.json").read_text()), "classes": damage}))
        args = ["evaluate", str(tmp_path / "raw"), str(data), "--split", "test", "-o", str(tmp_path / "b.json")]
        assert main([*args, "--postprocessing", str(bad), "--quiet"]) != 0
        err = capsys.readouterr().err
        assert "bad_rule.json" in err and "internal error" not in err
    # crossval again: an earlier run's mask of a case no fold validates now does not stay beside the new records
    stale = run / "crossval" / "zz_old.nii.gz"
    stale.write_bytes((run / "crossval" / f"{vals[0][0]}.nii.gz").read_bytes())
    assert main(["crossval", str(run), str(data), "--quiet"]) == 0
    assert not stale.exists() and (run / "postprocessing.json").is_file()
    # crossval of the folds on data whose validation files changed since they trained: refused, naming the fold
    import shutil

    copy = tmp_path / "edited"
    shutil.copytree(data.parent, copy)
    val_case = vals[0][0]
    lab = copy / "labels" / f"{val_case}.nii.gz"
    img = nib.load(str(lab))
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine, img.header), str(lab))
    assert main(["crossval", str(run), str(copy / data.name), "--quiet"]) != 0
    err = capsys.readouterr().err
    assert "fold_0" in err and f"differ from those the fold trained with (e.g. ['{val_case}'])" in err


def test_crossval_refuses_a_fold_that_validates_on_a_test_case(tmp_path: Path, capsys) -> None:
    from medattn.models import build_model
    from medattn.models.model_file import save_model
    from tests.infer.conftest import small_plan

    data = blob_dataset(tmp_path / "blobs")
    for k, val in ((0, ["c0", "c1"]), (1, ["c2", "c7"])):  # c7 is in the test split
        save_model(
            tmp_path / "run" / f"fold_{k}" / "model.pt", build_model("ag_unet", 1, 3, channels=(4, 8, 16)), small_plan()
        )
        (tmp_path / "run" / f"fold_{k}" / "split.json").write_text(json.dumps({"train": [], "val": val}))
    assert main(["crossval", str(tmp_path / "run"), str(data), "--quiet"]) != 0
    assert "validation case 'c7' is in the dataset's test split" in capsys.readouterr().err
    assert not (tmp_path / "run" / "postprocessing.json").exists()


def test_crossval_refuses_a_k_fold_run_missing_a_fold(tmp_path: Path, capsys) -> None:
    """Folds 0 and 2 of a 3-fold run: fold 1's validation cases would have no out-of-fold prediction, and the
    scores and the rule would cover part of the cases while saying "all"; refused, naming the fold."""
    from medattn.models import build_model
    from medattn.models.model_file import save_model
    from tests.infer.conftest import small_plan

    data = blob_dataset(tmp_path / "blobs")
    for k, val in ((0, ["c0", "c1"]), (2, ["c4", "c5"])):
        fold = tmp_path / "run" / f"fold_{k}"
        save_model(fold / "model.pt", build_model("ag_unet", 1, 3, channels=(4, 8, 16)), small_plan())
        (fold / "split.json").write_text(json.dumps({"train": [], "val": val}))
        (fold / "config.json").write_text(json.dumps({"folds": 3, "fold": str(k)}))
        (fold / "summary.json").write_text("{}")
    assert main(["crossval", str(tmp_path / "run"), str(data), "--quiet"]) != 0
    assert "3-fold split but fold_1 is missing" in capsys.readouterr().err
    assert not (tmp_path / "run" / "postprocessing.json").exists() and not (tmp_path / "run" / "crossval").exists()
    # predict RUN would ensemble the folds left under a rule learned on all of them: refused the same way
    assert main(["predict", str(tmp_path / "run"), str(data), str(tmp_path / "pred"), "--quiet"]) != 0
    assert "3-fold split but fold_1 is missing" in capsys.readouterr().err
    # a fold still training (config.json, model.pt of its best epoch so far, no summary.json)
    (tmp_path / "run" / "fold_1").mkdir()
    for name in ("model.pt", "split.json", "config.json"):
        (tmp_path / "run" / "fold_1" / name).write_bytes((tmp_path / "run" / "fold_0" / name).read_bytes())
    assert main(["predict", str(tmp_path / "run"), str(data), str(tmp_path / "pred"), "--quiet"]) != 0
    assert "fold_1: the fold has not finished training" in capsys.readouterr().err


def test_crossval_of_a_single_run_uses_its_val_cases_only(tmp_path: Path, capsys) -> None:
    """A dataset too small for folds: ``crossval RUN`` on one ``--fold fixed`` run predicts the manifest's val
    cases (never train, never test) and writes ``RUN/postprocessing.json``, which ``predict RUN`` applies; a run
    folder with a single fold folder is refused."""
    data = blob_dataset(tmp_path / "blobs")
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), "--config", str(_tiny(tmp_path)), "--quiet"]) == 0
    assert main(["crossval", str(run), str(data), "--quiet"]) == 0
    summary = json.loads((run / "crossval" / "summary.json").read_text())
    assert summary["cases"] == 2 and summary["folds"] == ["run"]
    assert sorted(p.name for p in (run / "crossval").glob("*.nii.gz")) == ["c5.nii.gz", "c6.nii.gz"]  # the val split
    load_rule(run / "postprocessing.json")
    out = tmp_path / "pred"
    assert main(["predict", str(run), str(data), str(out), "--split", "test", "--quiet"]) == 0
    assert json.loads((out / "predictions.json").read_text())["postprocessing"]["rule"] == str(
        run / "postprocessing.json"
    )
    (tmp_path / "one" / "fold_0").mkdir(parents=True)
    for name in ("model.pt", "split.json"):
        (tmp_path / "one" / "fold_0" / name).write_bytes((run / name).read_bytes())
    capsys.readouterr()
    assert main(["crossval", str(tmp_path / "one"), str(data), "--quiet"]) != 0
    assert "two folds or more" in capsys.readouterr().err


def _tiny(tmp_path: Path) -> Path:
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "epochs": 3}))
    return config
