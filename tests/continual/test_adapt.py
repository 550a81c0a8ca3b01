"""``medattn adapt`` end to end: forgetting under a designed shift, resuming, the command line."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.continual.conftest import tiny_config


def test_naive_forgets_the_old_scanner_and_replay_keeps_it(shift_manifest: Path, model_a: Path, tmp_path: Path) -> None:
    """Domain B inverts A's contrast. Starting from a model trained on A, fine-tuning on B alone loses A; replaying
    a small memory of A's foreground patches keeps most of it, at the same Dice on B."""
    from medattn.continual.adapt import adapt
    from medattn.data.importers import load_dataset

    manifest = load_dataset(f"{shift_manifest}:A,B")
    cfg = tiny_config(strategies="naive,replay", epochs=10, methods={"replay": {"mem_size": 8}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = adapt(model_a, manifest, tmp_path / "run", cfg, quiet=True)
    naive, replay = result.runs["naive"].matrix, result.runs["replay"].matrix
    before_a = naive.baseline()[0]
    assert before_a > 0.7  # the start model knows A ...
    assert naive.baseline()[1] < 0.1  # ... and nothing of B
    # rows: after A, after B; columns: A, B
    assert naive.matrix()[0, 0] > 0.7
    assert naive.matrix()[1, 0] < before_a - 0.3, "naive fine-tuning on B should forget A"
    assert replay.matrix()[1, 0] > naive.matrix()[1, 0] + 0.2, "replay should keep more of A"
    assert replay.matrix()[1, 1] > 0.2 and naive.matrix()[1, 1] > 0.2  # both learned B
    s_naive, s_replay = naive.summary()["overall"], replay.summary(naive)["overall"]
    assert s_naive["bwt"] < -0.3 and s_replay["bwt"] > s_naive["bwt"] + 0.2
    assert 0 < result.runs["replay"].extras["stored_fraction"] <= 0.6
    rows = {r["method"]: r for r in result.comparison}
    assert rows["replay"]["average_dice"] > rows["naive"]["average_dice"]
    assert (tmp_path / "run" / "comparison.md").read_text().startswith("| method |")


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]  # type: ignore[no-any-return]


def test_a_run_interrupted_between_experiences_resumes_to_the_same_result(
    shift_manifest: Path, start_model: Path, tmp_path: Path
) -> None:
    from medattn.continual.runner import run_method
    from medattn.continual.scenario import ScenarioOptions, domain_scenario
    from medattn.data.importers import load_dataset
    from medattn.errors import ConfigError
    from medattn.models.model_file import load_model

    start = load_model(start_model)
    cfg = tiny_config(epochs=2, methods={"replay": {"mem_size": 4}}, augment="default")
    opts = ScenarioOptions(patch_size=(16, 16, 16), samples_per_volume=2, augment=cfg.augment_config())  # type: ignore[attr-defined]

    bench = domain_scenario(load_dataset(str(shift_manifest)), start.plan, opts)
    whole = run_method("replay", start, bench, cfg, tmp_path / "whole")
    assert whole.finished
    part = run_method("replay", start, bench, cfg, tmp_path / "cut", stop_after=1)
    assert not part.finished and part.matrix.rows == ["A"]
    state = torch.load(tmp_path / "cut" / "state.pt", weights_only=True)  # a weights-only checkpoint
    assert state["done"] == 1 and state["method"] == "replay"
    with pytest.raises(ConfigError, match="--resume"):
        run_method("replay", start, bench, cfg, tmp_path / "cut")
    resumed = run_method("replay", start, bench, cfg, tmp_path / "cut", resume=True)
    assert resumed.finished
    np.testing.assert_allclose(resumed.matrix.values, whole.matrix.values, atol=1e-6)
    for key, value in _weights(tmp_path / "whole" / "01_B" / "model.pt").items():
        torch.testing.assert_close(_weights(tmp_path / "cut" / "01_B" / "model.pt")[key], value)


def test_command_line_runs_several_strategies_and_writes_everything(
    shift_manifest: Path, start_model: Path, tmp_path: Path
) -> None:
    from medattn.cli import main

    out = tmp_path / "run"
    argv = [
        "adapt",
        str(start_model),
        f"{shift_manifest}:B,A",
        "--strategies",
        "naive,replay",
        "--out",
        str(out),
        "--config",
        str(Path(__file__).resolve().parents[2] / "pipelines" / "adapt.yaml"),
        "--epochs",
        "1",
        "--patch-size",
        "16,16,16",
        "--augment",
        "none",
        "--methods",
        "{replay: {mem_size: 2}}",
        "--loggers",
        "text,csv,tensorboard",
        "--device",
        "cpu",
        "--quiet",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["strategies"] == ["naive", "replay"] and config["methods"]["replay"]["mem_size"] == 2
    assert config["methods"]["ewc"]["ewc_lambda"] == 1.0e6  # the rest of the YAML's methods section
    for method in ("naive", "replay"):
        folder = out / method
        doc = json.loads((folder / "metrics.json").read_text())
        assert doc["domains"] == ["B", "A"] and doc["rows"] == ["B", "A"] and doc["classes"] == ["left", "right"]
        assert len(doc["before"]["overall"]) == 2
        assert (folder / "00_B" / "model.pt").is_file() and (folder / "01_A" / "model.pt").is_file()
        assert (folder / "matrix.png").stat().st_size > 1000
        assert (folder / "matrix.csv").read_text().startswith("after,evaluated_on,class,dice")
        eval_csv = (folder / "csv" / "eval_results.csv").read_text().splitlines()
        assert eval_csv[0] == "eval_exp,training_exp,eval_dice,eval_loss,forgetting" and len(eval_csv) > 2
        assert any((folder / "tensorboard").iterdir())
        assert "Dice_Exp" in (folder / "log.txt").read_text()
    adapted = torch.load(out / "replay" / "01_A" / "model.pt", weights_only=True)
    assert adapted["meta"]["adapt"]["trained_on"] == ["B", "A"]
    table = json.loads((out / "comparison.json").read_text())
    assert [r["method"] for r in table] == ["naive", "replay"]
    assert table[1]["plasticity"] is not None  # against naive, run alongside
    # the same out again without --resume is refused with a usage error; a wrong method name too
    assert main([*argv[:-1], "--quiet"]) == 2
    assert (
        main(["adapt", str(start_model), str(shift_manifest), "--strategy", "gem", "--out", str(tmp_path / "x")]) == 2
    )


def test_resume_refuses_another_start_model_or_edited_cases(
    shift_manifest: Path, start_model: Path, model_a: Path, tmp_path: Path
) -> None:
    """A run records the digests of its start model and of every case's files (``RUN/inputs.json``); ``--resume``
    with another start model, or after a label was edited in place, is refused naming it."""
    import shutil

    import nibabel as nib

    from medattn.continual.adapt import INPUTS_NAME, _check_same_inputs
    from medattn.data.importers import load_dataset
    from medattn.errors import DataError

    data = tmp_path / "data"
    shutil.copytree(shift_manifest.parent, data)
    manifest = load_dataset(data / shift_manifest.name)
    out = tmp_path / "run"
    out.mkdir()
    _check_same_inputs(out, start_model, manifest, None, resume=False)
    recorded = json.loads((out / INPUTS_NAME).read_text())
    assert sorted(recorded["cases"]) == sorted(c.id for _, c in manifest.iter_cases())
    _check_same_inputs(out, start_model, manifest, None, resume=True)  # the same inputs: resumes
    with pytest.raises(DataError, match="not the file the run started from"):
        _check_same_inputs(out, model_a, manifest, None, resume=True)
    case = next(c for _, c in manifest.iter_cases() if c.label is not None)
    path = manifest.resolve(str(case.label))
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine, img.header), str(path))
    with pytest.raises(DataError, match=rf"files of 1 case\(s\) differ .*{case.id}"):
        _check_same_inputs(out, start_model, manifest, None, resume=True)


def test_the_strategy_the_command_line_gives_wins_over_the_config_files(tmp_path: Path) -> None:
    """``--strategy lwf`` with a config file listing ``strategies: naive,replay`` ran naive and replay."""
    from medattn.cli import _apply_config, build_parser
    from medattn.commands.adapt import adapt_config
    from medattn.errors import ConfigError

    cfg = tmp_path / "a.yaml"
    cfg.write_text("strategies: naive,replay\nepochs: 1\n")
    parser = build_parser()
    for given, want in ((["--strategy", "lwf"], ("lwf",)), ([], ("naive", "replay"))):
        argv = ["adapt", "m.pt", "data.json", "--out", str(tmp_path / "o"), "--config", str(cfg), *given]
        args = parser.parse_args(argv)
        _apply_config(parser, argv, args)
        assert adapt_config(args).strategies == want
    cfg.write_text("strategies: naive,replay\nstrategy: lwf\n")  # both in the file: which was meant?
    argv = ["adapt", "m.pt", "data.json", "--out", str(tmp_path / "o"), "--config", str(cfg)]
    args = parser.parse_args(argv)
    _apply_config(parser, argv, args)
    with pytest.raises(ConfigError, match="gives both strategy and strategies"):
        adapt_config(args)


def test_a_loss_that_is_not_finite_stops_adapt_before_a_nan_model_is_written(
    shift_manifest: Path, start_model: Path, tmp_path: Path
) -> None:
    """``lr: 1e30`` wrote all-NaN models and an all-zero Dice matrix with exit 0; a NaN method weight (or any
    non-finite number) is refused when the config is read."""
    from medattn.continual.adapt import adapt
    from medattn.data.importers import load_dataset
    from medattn.errors import ConfigError, MedattnError

    with pytest.raises(ConfigError, match="method ewc: ewc_lambda: expected a finite number, got nan"):
        tiny_config(methods={"ewc": {"ewc_lambda": float("nan")}})
    with pytest.raises(ConfigError, match="grad_clip: expected a finite number"):
        tiny_config(grad_clip=float("nan"))
    out = tmp_path / "run"
    with warnings.catch_warnings(), pytest.raises(MedattnError, match=r"the training loss became (nan|inf)"):
        warnings.simplefilter("ignore")
        adapt(start_model, load_dataset(f"{shift_manifest}:B"), out, tiny_config(lr=1e30, epochs=3), quiet=True)
    assert not list(out.rglob("model.pt"))
