"""The continual CSV logs hold the values of the run: Dice, whole-volume eval loss, forgetting; no constant columns."""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from tests.continual.conftest import PATCH, tiny_config

#: Dice R[i][j] fed to the logger: 3 training experiences x 3 domains. Column 0's forgetting after step 2 is the
#: drop from the best earlier Dice (0.8), not from the last one (0.6); column 2 starts undefined (NaN).
R = [[0.8, 0.1, math.nan], [0.6, 0.7, 0.5], [0.7, 0.3, 0.4]]
BEFORE = [0.5, 0.05, 0.2]


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _expected_forgetting(i: int, j: int) -> float | None:
    """Independent: for a domain trained on before step i (j < i), max over l < i of R[l][j] (NaN skipped) minus
    R[i][j]; None where undefined (a domain not yet trained on, or no finite earlier Dice)."""
    earlier = [R[step][j] for step in range(i) if not math.isnan(R[step][j])]
    return max(earlier) - R[i][j] if j < i and earlier and not math.isnan(R[i][j]) else None


class _Driver:
    """Calls a logger's hooks in the order Avalanche's evaluator does, with given metric values."""

    def __init__(self, logger: Any) -> None:
        self.logger = logger
        self.strategy = SimpleNamespace(experience=None, clock=SimpleNamespace(train_exp_epochs=0))

    def value(self, name: str, v: float) -> Any:
        from avalanche.evaluation.metric_results import MetricValue

        return MetricValue(None, name, v, 0)

    def train(self, exp: int, epochs: list[tuple[float, float]]) -> None:
        self.strategy.experience = SimpleNamespace(current_experience=exp)
        self.logger.before_training(self.strategy, [])
        self.logger.before_training_exp(self.strategy, [])
        for epoch, (dice, loss) in enumerate(epochs):
            self.strategy.clock.train_exp_epochs = epoch  # Avalanche's clock: epochs finished before this one
            values = [
                self.value("Dice_Epoch/train_phase/train_stream/Task000", dice),
                self.value("Loss_Epoch/train_phase/train_stream/Task000", loss),
            ]
            self.logger.after_training_epoch(self.strategy, values)
        self.logger.after_training(self.strategy, [])

    def evaluate(self, dice: list[float], loss: list[float]) -> None:
        self.logger.before_eval(self.strategy, [])
        for j, (d, lo) in enumerate(zip(dice, loss)):
            self.strategy.experience = SimpleNamespace(current_experience=j)
            name = f"Task000/Exp{j:03d}"
            values = [
                self.value(f"Dice_Exp/eval_phase/test_stream/{name}", d),
                self.value(f"Dice_Exp[left]/eval_phase/test_stream/{name}", 0.0),  # per class: not the mean
                self.value(f"Loss_Exp/eval_phase/test_stream/{name}", lo),
                self.value("Dice_Stream/eval_phase/test_stream/Task000", 0.0),
            ]
            self.logger.after_eval_exp(self.strategy, values)


def _loss(i: int, j: int) -> float:
    return 1.0 + 0.1 * i + 0.01 * j


def _check_eval_rows(rows: list[dict[str, str]]) -> None:
    assert list(rows[0]) == ["eval_exp", "training_exp", "eval_dice", "eval_loss", "forgetting"]
    assert [(r["training_exp"], r["eval_exp"]) for r in rows[:3]] == [("before", "0"), ("before", "1"), ("before", "2")]
    for row, d in zip(rows[:3], BEFORE):
        assert float(row["eval_dice"]) == pytest.approx(d, abs=1e-6)
        assert float(row["eval_loss"]) == pytest.approx(0.5, abs=1e-6) and row["forgetting"] == ""
    trained = rows[3:]
    assert [(int(r["training_exp"]), int(r["eval_exp"])) for r in trained] == [
        (i, j) for i in range(3) for j in range(3)
    ]
    for row in trained:
        i, j = int(row["training_exp"]), int(row["eval_exp"])
        assert row["eval_dice"] == ("" if math.isnan(R[i][j]) else f"{R[i][j]:.6f}")
        assert float(row["eval_loss"]) == pytest.approx(_loss(i, j), abs=1e-6)
        expected = _expected_forgetting(i, j)
        if expected is None:
            assert row["forgetting"] == "", (i, j)
        else:
            assert float(row["forgetting"]) == pytest.approx(expected, abs=1e-6), (i, j)
    forgetting = {(int(r["training_exp"]), int(r["eval_exp"])): r["forgetting"] for r in trained}
    assert float(forgetting[2, 0]) == pytest.approx(0.1) and float(forgetting[2, 1]) == pytest.approx(0.4)
    assert forgetting[1, 2] == ""  # domain 2 is not trained on yet
    assert forgetting[1, 1] == "" and forgetting[2, 2] == ""  # nor, at its own step, is a domain "forgotten"


def test_eval_rows_hold_dice_loss_and_the_drop_from_the_best_earlier_dice(tmp_path: Path) -> None:
    from medattn.continual.loggers import DiceCSVLogger

    logger = DiceCSVLogger(tmp_path)
    drive = _Driver(logger)
    drive.evaluate(BEFORE, [0.5] * 3)
    for i, row in enumerate(R):
        drive.train(i, [(0.2 + 0.1 * i, 2.0 - 0.1 * i), (0.25 + 0.1 * i, 1.9 - 0.1 * i)])
        drive.evaluate(row, [_loss(i, j) for j in range(3)])
    logger.close()
    _check_eval_rows(_read(tmp_path / "eval_results.csv"))
    train = _read(tmp_path / "training_results.csv")
    assert list(train[0]) == ["training_exp", "epoch", "training_dice", "training_loss"]
    got = [(r["training_exp"], r["epoch"], float(r["training_dice"]), float(r["training_loss"])) for r in train]
    want = [(str(i), str(e + 1), 0.2 + 0.1 * i + 0.05 * e, 2.0 - 0.1 * i - 0.1 * e) for i in range(3) for e in range(2)]
    assert got == [pytest.approx(w) for w in want]


def test_a_resumed_log_continues_forgetting_and_fixes_an_old_header(tmp_path: Path) -> None:
    """A new logger on the folder of an interrupted run reads the Dice back (so forgetting after the restart is
    measured against the steps before it) and removes the rows the interrupted step wrote (it is trained again); a
    training log with the old always-zero validation columns is rewritten so that no row is misaligned."""
    from medattn.continual.loggers import DiceCSVLogger

    (tmp_path / "training_results.csv").write_text(
        "training_exp,epoch,training_dice,val_dice,training_loss,val_loss\n0,1,0.2000,0,2.0000,0\n"
    )
    first = DiceCSVLogger(tmp_path)
    drive = _Driver(first)
    drive.evaluate(BEFORE, [0.5] * 3)
    for i in range(2):
        drive.train(i, [(0.2 + 0.1 * i, 2.0 - 0.1 * i)])  # step 0 again: the old file's row of it goes
        drive.evaluate(R[i], [_loss(i, j) for j in range(3)])
    drive.train(2, [(0.4, 1.8)])
    drive.evaluate([0.0], [9.0])  # interrupted after one domain: a stale row of step 2
    first.close()

    second = DiceCSVLogger(tmp_path)
    drive = _Driver(second)
    drive.train(2, [(0.4, 1.8)])
    drive.evaluate(R[2], [_loss(2, j) for j in range(3)])
    second.close()
    rows = _read(tmp_path / "eval_results.csv")  # the interrupted step's stale row is gone
    assert not any((r["training_exp"], r["eval_dice"]) == ("2", "0.000000") for r in rows)
    _check_eval_rows(rows)
    lines = (tmp_path / "training_results.csv").read_text().splitlines()
    assert lines[0] == "training_exp,epoch,training_dice,training_loss"
    assert all(len(line.split(",")) == 4 for line in lines)  # the old zero columns dropped from every row
    # each step's epoch once: the old file's row of step 0 and the interrupted run's of step 2 were trained again
    assert lines[1:] == ["0,1,0.200000,2.000000", "1,1,0.300000,1.900000", "2,1,0.400000,1.800000"]


def test_entry_forgetting_is_the_dice_matrix_definition() -> None:
    from medattn.continual.loggers import entry_forgetting
    from medattn.continual.metrics import forgetting

    assert math.isnan(entry_forgetting([0.7]))  # a first evaluation
    assert entry_forgetting([0.8, 0.6, 0.7]) == pytest.approx(0.1)
    assert entry_forgetting([math.nan, 0.6, 0.7]) == pytest.approx(-0.1)  # learnt more since: negative
    # the last row of a square matrix: the Dice matrix's forgetting of a single column
    r = np.array([[0.8, 0.0], [0.5, 0.9]])
    assert entry_forgetting(list(r[:, 0])) == pytest.approx(forgetting(r))


# ---- a tiny run: the values are the run's own -------------------------------------------------------------------


def _whole_volume_loss(model_file: Path, exp: Any, overlap: float) -> float:
    """Independent: MONAI's sliding-window inference and DiceCE loss (the default criterion's single-output form),
    per test case, averaged over the cases."""
    from monai.inferers import sliding_window_inference
    from monai.losses import DiceCELoss

    from medattn.models.model_file import load_model

    net = load_model(model_file).model
    loss = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)
    values = []
    with torch.no_grad():
        for i in range(len(exp.dataset)):
            case = exp.dataset[i]["samples"][0]  # a whole preprocessed test volume
            image, label = torch.as_tensor(case["image"])[None], torch.as_tensor(case["label"])[None]
            logits = sliding_window_inference(image, PATCH, 2, net, overlap=overlap, mode="gaussian")
            values.append(float(loss(logits, label)))
    return float(np.mean(values))


def test_a_tiny_run_logs_its_dice_matrix_its_eval_loss_and_no_constant_column(
    shift_manifest: Path, start_model: Path, tmp_path: Path
) -> None:
    from medattn.continual.loggers import DiceCSVLogger
    from medattn.continual.runner import run_method
    from medattn.continual.scenario import ScenarioOptions, domain_scenario
    from medattn.data.importers import load_dataset
    from medattn.models.model_file import load_model

    start = load_model(start_model)
    cfg = tiny_config(epochs=1, device="cpu")  # the reference below runs on the CPU too
    opts = ScenarioOptions(patch_size=PATCH, samples_per_volume=2, augment=cfg.augment_config())  # type: ignore[attr-defined]
    bench = domain_scenario(load_dataset(str(shift_manifest)), start.plan, opts)
    logger = DiceCSVLogger(tmp_path / "csv")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = run_method("naive", start, bench, cfg, tmp_path / "naive", loggers=[logger])
    logger.close()
    doc = run.matrix.to_dict()
    matrix, before = doc["matrix"]["overall"], doc["before"]["overall"]
    models = {
        "before": start_model,
        "0": tmp_path / "naive" / "00_A" / "model.pt",
        "1": tmp_path / "naive" / "01_B" / "model.pt",
    }

    rows = _read(tmp_path / "csv" / "eval_results.csv")
    assert [(r["training_exp"], r["eval_exp"]) for r in rows] == [(i, j) for i in ("before", "0", "1") for j in "01"]
    for row in rows:
        i, j = row["training_exp"], int(row["eval_exp"])
        dice = before[j] if i == "before" else matrix[int(i)][j]
        assert float(row["eval_dice"]) == pytest.approx(dice, abs=1e-5)
        expected = _whole_volume_loss(models[i], bench.test_stream[j], cfg.overlap)  # type: ignore[attr-defined]
        assert float(row["eval_loss"]) == pytest.approx(expected, rel=1e-4), (i, j)
        if i == "1" and j == 0:  # the first domain, after training on the second
            assert float(row["forgetting"]) == pytest.approx(matrix[0][j] - matrix[1][j], abs=1e-5)
        else:
            assert row["forgetting"] == ""
    train = _read(tmp_path / "csv" / "training_results.csv")
    assert [(r["training_exp"], r["epoch"]) for r in train] == [("0", "1"), ("1", "1")]
    for table in (rows, train):
        for column in table[0]:
            cells = [r[column] for r in table if r[column] != ""]
            assert cells, column
            numbers = {float(c) for c in cells if c != "before"}
            assert numbers != {0.0}, f"{column} is constant 0"
    assert len({r["training_loss"] for r in train}) == len(train) and all(float(r["training_loss"]) > 0 for r in train)
