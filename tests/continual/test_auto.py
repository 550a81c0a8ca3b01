"""``medattn adapt --auto``: adapt to a domain only when it has drifted, and record why.

The designed stream: A (the phantom's contrast), A2 (another sample of the same scanner: same contrast, other
anatomies and noise) and B (A's contrast inverted). A model trained on A must skip A2 and adapt to B. The start
model is the session's ``model_a`` (trained on the first cases of A, which this stream's A shares), so the run
needs only a few epochs.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.continual.conftest import tiny_config, write_shift_dataset

CASES = 8  # per domain: 6 train, 2 test
DOMAINS = {"A": (0, False), "A2": (500, False), "B": (1000, True)}


@pytest.fixture(scope="module")
def stream_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shift_dataset(
        tmp_path_factory.mktemp("auto"),
        DOMAINS,
        cases=CASES,
        name="same scanner, then inverted contrast",
        metadata=False,
    )


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]  # type: ignore[no-any-return]


def test_auto_skips_the_same_scanner_and_adapts_to_the_inverted_one(
    stream_manifest: Path, model_a: Path, tmp_path: Path
) -> None:
    from medattn.continual.adapt import adapt
    from medattn.data.importers import load_dataset

    manifest = load_dataset(str(stream_manifest))
    cfg = tiny_config(epochs=7, auto=True, drift_permutations=500, drift_max_reference=4, eval_before=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = adapt(model_a, manifest, tmp_path / "run", cfg, quiet=True)
    run = result.runs["naive"]
    decisions = run.decisions
    assert [(d["domain"], d["decision"]) for d in decisions] == [("A", "adapt"), ("A2", "skip"), ("B", "adapt")]
    a2, b = decisions[1], decisions[2]
    # The evidence: both tests' p-values and effect sizes, against a bounded, domain-balanced reference.
    assert a2["reference_domains"] == ["A"] and b["reference_domains"] == ["A"]  # A2 was skipped: not a reference
    assert a2["n_reference"] == 4 and a2["n_target"] == 6
    assert min(t["p_value"] for t in b["tests"].values()) < 0.025 <= min(t["p_value"] for t in a2["tests"].values())
    assert b["tests"]["mmd"]["effect_size"] > a2["tests"]["mmd"]["effect_size"]
    assert "flagged" in b["volume_level"] and b["dice"]["drop"] is not None
    assert b["dice_test"]["drop"] > 0.5 and abs(a2["dice_test"]["drop"]) < 0.2  # B costs the model A's Dice
    # Skipped means untouched, but still evaluated: its Dice matrix row exists and equals the previous one.
    m = run.matrix.matrix()
    assert run.matrix.rows == ["A", "A2", "B"]
    np.testing.assert_allclose(m[1], m[0])
    for key, value in _weights(run.folder / "00_A" / "model.pt").items():
        torch.testing.assert_close(_weights(run.folder / "01_A2" / "model.pt")[key], value)
    assert m[2, 2] > m[1, 2] + 0.2  # adapting to B taught it B
    saved = json.loads((run.folder / "decisions.json").read_text())
    assert saved == decisions
    meta = torch.load(run.folder / "02_B" / "model.pt", weights_only=True)["meta"]["adapt"]
    assert meta["trained_on"] == ["A", "B"] and meta["decision"] == "adapt"
    row = result.comparison[0]
    assert row["adapted"] == "A,B" and row["skipped"] == "A2"
    assert "skipped" in (tmp_path / "run" / "comparison.md").read_text()


class _SkipAll:
    """A gate that skips every domain (no drift test): the runner's bookkeeping without the features."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def __call__(self, model: Any, plan: Any, incoming: Any, trained: Any, dice_row: Any) -> dict[str, Any]:
        self.calls.append((incoming.domain, [e.domain for e in trained]))
        assert set(dice_row) == {"A", "A2", "B"}
        return {"domain": incoming.domain, "adapt": False, "decision": "skip", "reason": "test", "p": np.float64(0.5)}


def test_decisions_survive_a_resume(stream_manifest: Path, start_model: Path, tmp_path: Path) -> None:
    from medattn.continual.runner import run_method
    from medattn.continual.scenario import ScenarioOptions, domain_scenario
    from medattn.data.importers import load_dataset
    from medattn.models.model_file import load_model

    start = load_model(start_model)
    cfg = tiny_config(epochs=1, eval_before=False)
    bench = domain_scenario(load_dataset(str(stream_manifest)), start.plan, ScenarioOptions(patch_size=(16, 16, 16)))
    gate = _SkipAll()
    part = run_method("naive", start, bench, cfg, tmp_path / "m", stop_after=2, gate=gate)
    assert [d["decision"] for d in part.decisions] == ["adapt", "skip"]
    assert torch.load(tmp_path / "m" / "state.pt", weights_only=True)["decisions"] == part.decisions
    resumed = run_method("naive", start, bench, cfg, tmp_path / "m", resume=True, gate=gate)
    assert [d["domain"] for d in resumed.decisions] == ["A", "A2", "B"]
    assert gate.calls == [("A2", ["A"]), ("B", ["A"])]  # the skipped A2 is no reference for B
    assert resumed.decisions[1]["p"] == 0.5 and isinstance(resumed.decisions[1]["p"], float)
    assert json.loads((tmp_path / "m" / "decisions.json").read_text()) == resumed.decisions


def test_command_line_auto_options_and_exit_code(stream_manifest: Path, start_model: Path, tmp_path: Path) -> None:
    from medattn.cli import main

    out = tmp_path / "run"
    argv = ["adapt", str(start_model), f"{stream_manifest}:A,B", "--out", str(out), "--epochs", "1"]
    argv += ["--patch-size", "16,16,16", "--augment", "none", "--loggers", "csv", "--device", "cpu", "--quiet"]
    argv += ["--no-eval-before"]
    argv += ["--auto", "--drift-alpha", "0.1", "--drift-max-reference", "4", "--drift-permutations", "200"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 0  # a finished run succeeds whatever it decided
    config = json.loads((out / "config.json").read_text())
    assert config["auto"] is True and config["drift_alpha"] == 0.1 and config["drift_max_reference"] == 4
    decisions = json.loads((out / "naive" / "decisions.json").read_text())
    assert [d["domain"] for d in decisions] == ["A", "B"]
    assert decisions[1]["alpha"] == 0.1 and decisions[1]["n_reference"] == 4
    assert decisions[1]["tests"]["mmd"]["n_permutations"] == 200
    rows = json.loads((out / "comparison.json").read_text())
    assert rows[0]["adapted"] == ("A,B" if decisions[1]["adapt"] else "A")  # the comparison names what was trained


def test_without_auto_the_comparison_has_no_decision_columns(tmp_path: Path) -> None:
    from medattn.continual.adapt import comparison_rows
    from medattn.continual.metrics import DiceMatrix
    from medattn.continual.runner import MethodRun

    values = np.full((2, 2, 1), 0.5)
    matrix = DiceMatrix(method="naive", domains=["A", "B"], classes=["c"], rows=["A", "B"], values=values)
    plain = comparison_rows({"naive": MethodRun("naive", tmp_path, matrix, True)}, None)[0]
    assert "adapted" not in plain and "skipped" not in plain
    gated = MethodRun("naive", tmp_path, matrix, True, decisions=[{"domain": "A", "adapt": True}])
    gated.decisions.append({"domain": "B", "adapt": False})
    row = comparison_rows({"naive": gated}, None)[0]
    assert row["adapted"] == "A" and row["skipped"] == "B"


def test_auto_options_are_validated_and_the_reference_is_balanced() -> None:
    from medattn.continual.config import AdaptConfig
    from medattn.drift.gate import reference_sample
    from medattn.errors import ConfigError

    with pytest.raises(ConfigError, match="drift_alpha"):
        AdaptConfig(drift_alpha=1.5)
    with pytest.raises(ConfigError, match="drift_max_reference"):
        AdaptConfig(drift_max_reference=3)
    with pytest.raises(ConfigError, match="auto"):
        AdaptConfig(auto="yes")  # type: ignore[arg-type]
    items = {"A": [{"case_id": f"a{i}"} for i in range(10)], "B": [{"case_id": f"b{i}"} for i in range(2)]}
    picked = [d["case_id"] for d in reference_sample(items, 6, seed=1)]
    assert len(picked) == len(set(picked)) == 6
    assert sum(c.startswith("b") for c in picked) == 2  # the small domain is not crowded out
    assert picked == [d["case_id"] for d in reference_sample(items, 6, seed=1)]
    assert len(reference_sample(items, 40)) == 12
