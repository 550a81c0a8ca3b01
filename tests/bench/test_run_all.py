"""The benchmark suite runs end to end at its smoke sizes and writes the JSON ``bench/run_all.py`` promises.

Timings are not checked here (they live in ``bench/``): only that every script ran, that the document names the
machine, the versions and the commit, and that every headline is a finite ratio with a well-formed goal.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path

import pytest
import torch

QUESTIONS = {"inference", "training", "memory", "loading"}


def run_smoke(*argv: str) -> int:
    """``run_all --smoke --in-process`` on one thread (tiny networks are quickest so on a busy machine), then the
    test process's thread setting restored."""
    import torch

    from bench import run_all

    threads = torch.get_num_threads()
    try:
        return run_all.main(["--smoke", "--in-process", "--threads", "1", *argv])
    finally:
        torch.set_num_threads(threads)


def test_smoke_suite_writes_machine_versions_commit_and_finite_ratios(tmp_path: Path) -> None:
    out = tmp_path / "run_all.json"
    assert run_smoke("--out", str(out)) == 0

    doc = json.loads(out.read_text())
    assert doc["format"] == "medattn-bench-suite" and doc["version"] == 1 and doc["mode"] == "smoke"
    time.strptime(doc["date"][:19], "%Y-%m-%dT%H:%M:%S")
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?|unknown", doc["git_commit"])
    assert isinstance(doc["machine"]["cpu"], str) and doc["machine"]["cpu_count"] >= 1
    assert doc["machine"]["ram_gib"] is None or doc["machine"]["ram_gib"] > 0
    for lib in ("python", "torch", "monai", "avalanche", "numpy"):
        assert re.match(r"\d+\.\d+", doc["versions"][lib]), lib

    assert set(doc["scripts"]) == QUESTIONS
    for question, entry in doc["scripts"].items():
        assert entry["exit_status"] == 0 and "error" not in entry, (question, entry.get("error"))
        assert entry["seconds"] > 0 and entry["results"]["mode"] == "smoke"

    step = doc["scripts"]["training"]["results"]["training_step"]
    assert len(step["losses_now"]) == len(step["losses_before"]) >= 2  # the step before and now: the same numerics
    assert step["max_loss_difference"] <= 1e-4 * max(step["losses_now"])

    # per convolution of the step's network, its FLOPs as torch's flop counter counts the same network (eval mode:
    # no deep-supervision heads), and finite times
    from bench.bench_train import CLASSES, STEP_SETTINGS
    from medattn.models import build_model
    from medattn.models.flops import count_flops

    cfg = STEP_SETTINGS["smoke"]
    net = build_model("ag_unet_fullres", 1, len(CLASSES), channels=cfg["channels"], deep_supervision=1)
    layers = step["layers"]["layers"]
    convs = [n for n, m in net.named_modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))]
    assert sorted(r["layer"] for r in layers) == sorted(convs)  # each once, in the order the forward pass runs them
    counted = sum(r["gflop_forward"] for r in layers if not r["layer"].startswith("ds_heads")) * 1e9
    assert counted == pytest.approx(count_flops(net, (cfg["batch"], 1, *cfg["patch"])), rel=1e-6)
    assert all(r["forward_ms"] > 0 and r["backward_ms"] > 0 and r["forward_gflops"] > 0 for r in layers)
    assert step["layers"]["convolutions_ms"] > 0 and step["layers"]["step_ms"] > 0

    as_run = step["as_run"]  # in fresh processes; the test session keeps glibc's defaults (tests/conftest.py)
    assert as_run["rounds"] >= 1 and set(as_run["ms_per_step"]) == {"before", "now"}
    assert as_run["retained"] == 0 and os.environ["MEDATTN_RETAIN_MEMORY"] == "0"

    heads = doc["headlines"]
    # bench_train answers three: the loop overhead, the step in-process (code) and the step as run
    assert {h["question"] for h in heads} == QUESTIONS | {"training step", "training step as run"}
    for h in heads:
        assert all(math.isfinite(h[k]) and h[k] > 0 for k in ("median", "q1", "q3")), h
        assert h["q1"] <= h["median"] <= h["q3"], h
        if h["goal"] is None:
            assert h["met"] is None, h
        else:
            assert re.fullmatch(r"(>=|<=) \d+(\.\d+)?", h["goal"]) and isinstance(h["met"], bool), h
    assert (tmp_path / "run_all_parts" / "bench_inference.json").is_file()


def test_a_failing_script_is_reported_and_the_others_still_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import bench_loading

    def broken(argv: list[str] | None = None) -> int:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(bench_loading, "main", broken)
    out = tmp_path / "run_all.json"
    assert run_smoke("--only", "training", "loading", "--out", str(out)) == 1
    doc = json.loads(out.read_text())
    assert doc["scripts"]["loading"]["error"] == "RuntimeError: disk on fire"
    assert doc["scripts"]["training"]["exit_status"] == 0
    assert [h["question"] for h in doc["headlines"]] == ["training", "training step", "training step as run"]
