"""Replay never silently becomes naive: the per-domain floor of stored patches, and where the counts are reported.

With a patch about the size of a volume (the hippocampus plan pads each volume to its 40x56x40 patch), 10% of a
seven-case site is 0.7 patches: before the floor the memory of such a site was empty and replay trained as naive
fine-tuning does. The buffer is driven directly here, with fake experiences holding cached ``volumes`` and a
``domain``, as :mod:`medattn.continual.scenario` builds them.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from tests.continual.conftest import PATCH, tiny_config

#: The replay defaults under test (the registry's, so a changed default shows here).
FLOOR = 16


def site(domain: str, cases: int = 7, with_foreground: int | None = None, seed: int = 0) -> SimpleNamespace:
    """A fake training experience: ``cases`` volumes exactly one patch in size, a foreground cube in the first
    ``with_foreground`` of them (default: all), as the scenario's cached volumes (image (1, X, Y, Z), label)."""
    g = torch.Generator().manual_seed(seed)
    volumes = []
    for i in range(cases):
        label = torch.zeros(1, *PATCH)
        if with_foreground is None or i < with_foreground:
            label[0, 4:9, 5:10, 6:11] = 1 + i % 2
        volumes.append({"image": torch.randn(1, *PATCH, generator=g), "label": label, "case_id": f"{domain}_{i}"})
    return SimpleNamespace(volumes=volumes, domain=domain)


def replay_buffer(**params: Any) -> Any:
    """The storage policy of the replay method built by the registry with ``params`` over its defaults."""
    from medattn.continual.methods import MethodContext, build_method

    ctx = MethodContext(num_classes=3, train_mb_size=2, samples_per_volume=2, patch_size=PATCH)
    spec = build_method("replay", params, ctx)
    return spec.plugins[0].storage_policy


def test_the_default_floor_is_the_registry_default() -> None:
    from medattn.continual.methods import defaults
    from medattn.continual.methods.replay import MIN_PATCHES_PER_DOMAIN

    assert defaults("replay")["min_patches_per_domain"] == MIN_PATCHES_PER_DOMAIN == FLOOR
    assert replay_buffer().min_patches_per_domain == FLOOR


def test_a_seven_case_old_site_keeps_the_floor_under_the_default_fraction(caplog: pytest.LogCaptureFixture) -> None:
    buffer = replay_buffer()  # memory_fraction 0.1, no mem_size
    assert buffer.memory_fraction == 0.1 and buffer.max_size == 0
    with caplog.at_level(logging.INFO, logger="medattn.continual.methods.replay"):
        buffer.post_adapt(None, site("A"))
    # 10% of 7 one-patch volumes is 0.7 patches: the fraction alone gives 0, the floor raises it
    assert "budget of 0 patch(es) (memory_fraction 0.1 of 28672 training voxels) is raised to 16" in caplog.text
    assert buffer.stored_per_domain == {"A": FLOOR}
    a_ids = list(buffer.buffer_groups[0].case_ids)
    assert sorted(set(a_ids)) == [f"A_{i}" for i in range(7)]  # round-robin over every case
    assert max(a_ids.count(c) for c in set(a_ids)) - min(a_ids.count(c) for c in set(a_ids)) <= 1
    assert len(buffer.buffer) == FLOOR  # what Avalanche's ReplayDataLoader draws from

    buffer.post_adapt(None, site("B", seed=1))
    assert buffer.max_size == 2 * FLOOR  # 1.4 patches of fraction, raised to 16 x 2 domains
    assert buffer.stored_per_domain == {"A": FLOOR, "B": FLOOR}
    assert list(buffer.buffer_groups[0].case_ids) == a_ids  # A kept its patches (a prefix of them)
    # stored share of the data: 32 patches of the 14 one-patch volumes seen (the floor's cost on small data)
    assert buffer.stored_fraction == pytest.approx(32 / 14)


def test_floor_zero_restores_the_plain_fraction_and_its_empty_memory(caplog: pytest.LogCaptureFixture) -> None:
    buffer = replay_buffer(min_patches_per_domain=0)
    with caplog.at_level(logging.WARNING, logger="medattn.continual.methods.replay"):
        buffer.post_adapt(None, site("A"))
    assert buffer.max_size == 0 and buffer.stored_per_domain == {"A": 0}  # replay == naive: what the floor fixes
    assert "leaves some domain without any" in caplog.text
    buffer.post_adapt(None, site("B", seed=1))
    # 1.4 patches after B: A's share is 1, but its volumes are gone, so A stays empty (and B's share is 0)
    assert buffer.max_size == 1 and buffer.stored_per_domain == {"A": 0, "B": 0}


def test_a_domain_with_few_foreground_cases_still_gets_the_floor() -> None:
    buffer = replay_buffer()
    buffer.post_adapt(None, site("A", cases=7, with_foreground=2))
    group = buffer.buffer_groups[0]
    assert len(group.case_ids) == FLOOR and sorted(set(group.case_ids)) == [f"A_{i}" for i in range(7)]
    with_fg = [int(lab.sum()) > 0 for lab in group.labels]
    from_fg_cases = [c in ("A_0", "A_1") for c in group.case_ids]
    assert with_fg == from_fg_cases  # the two cases with foreground give foreground-centred patches


def test_an_explicit_mem_size_is_a_hard_cap_that_the_floor_does_not_raise(caplog: pytest.LogCaptureFixture) -> None:
    buffer = replay_buffer(mem_size=6)
    assert buffer.memory_fraction is None  # an explicit patch count replaces the default fraction
    with caplog.at_level(logging.WARNING, logger="medattn.continual.methods.replay"):
        buffer.post_adapt(None, site("A"))
        buffer.post_adapt(None, site("B", seed=1))
    assert buffer.max_size == 6 and buffer.stored_per_domain == {"A": 3, "B": 3}
    assert "mem_size 6 is a hard cap, leaving 2 domain(s) 3 patch(es) each, below min_patches_per_domain 16" in (
        caplog.text
    )
    # a floor that an explicit budget meets says nothing
    caplog.clear()
    big = replay_buffer(mem_size=40)
    with caplog.at_level(logging.WARNING, logger="medattn.continual.methods.replay"):
        big.post_adapt(None, site("A"))
        big.post_adapt(None, site("B", seed=1))
    assert big.stored_per_domain == {"A": 20, "B": 20} and "hard cap" not in caplog.text


def test_the_floor_is_validated() -> None:
    from medattn.errors import ConfigError

    for bad in (-1, True, 1.5, "16"):
        with pytest.raises(ConfigError, match="min_patches_per_domain must be a number of patches >= 0"):
            replay_buffer(min_patches_per_domain=bad)


def test_a_resumed_memory_continues_as_the_uninterrupted_one() -> None:
    from medattn.continual.methods.replay import ForegroundPatchBuffer

    whole = replay_buffer()
    for exp in (site("A"), site("B", seed=1), site("C", cases=3, seed=2)):
        whole.post_adapt(None, exp)
    cut = replay_buffer()
    cut.post_adapt(None, site("A"))
    buf = io.BytesIO()
    torch.save(cut.state_dict(), buf)  # the weights-only checkpoint of state.pt
    buf.seek(0)
    fresh = replay_buffer()
    assert isinstance(fresh, ForegroundPatchBuffer)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert fresh.max_size == FLOOR and fresh.stored_per_domain == {"A": FLOOR}
    for exp in (site("B", seed=1), site("C", cases=3, seed=2)):
        fresh.post_adapt(None, exp)
    assert fresh.stored_per_domain == whole.stored_per_domain == {"A": FLOOR, "B": FLOOR, "C": FLOOR}
    for k, g in whole.buffer_groups.items():
        torch.testing.assert_close(fresh.buffer_groups[k].images, g.images)
        assert fresh.buffer_groups[k].case_ids == g.case_ids


# ---- where the counts are reported ---------------------------------------------------------------------------------


def test_comparison_rows_name_the_stored_patches_per_domain(tmp_path: Path) -> None:
    from medattn.continual.adapt import _write_comparison, comparison_rows, format_comparison
    from medattn.continual.metrics import DiceMatrix
    from medattn.continual.runner import MethodRun

    values = np.full((2, 2, 1), 0.5)

    def matrix(name: str) -> DiceMatrix:
        return DiceMatrix(method=name, domains=["A", "B"], classes=["c"], rows=["A", "B"], values=values)

    replay = MethodRun(
        "replay", tmp_path, matrix("replay"), True, extras={"stored_fraction": 0.5, "stored_per_domain": {"A": 16}}
    )
    runs = {"naive": MethodRun("naive", tmp_path, matrix("naive"), True), "replay": replay}
    rows = comparison_rows(runs, None)
    assert [(r["stored_A"], r["stored_B"]) for r in rows] == [(None, None), (16, 0)]  # B: nothing stored yet
    assert list(rows[0]) == list(rows[1])  # one table: the same columns in every row
    _write_comparison(tmp_path, rows)
    table = list(csv.DictReader(io.StringIO((tmp_path / "comparison.csv").read_text())))
    assert [(r["stored_A"], r["stored_B"]) for r in table] == [("", ""), ("16", "0")]
    assert json.loads((tmp_path / "comparison.json").read_text()) == rows
    md = format_comparison(rows).splitlines()
    header = [c.strip() for c in md[0].strip("|").split("|")]
    replay_cells = dict(zip(header, [c.strip() for c in md[3].strip("|").split("|")]))
    assert (replay_cells["stored_A"], replay_cells["stored_B"], replay_cells["memory_fraction"]) == (
        "16",
        "0",
        "0.5000",
    )
    # without any memory the table keeps its former columns
    plain = comparison_rows({"naive": MethodRun("naive", tmp_path, matrix("naive"), True)}, None)[0]
    assert not any(k.startswith("stored_") for k in plain)


def test_a_replay_run_reports_its_floor_in_extras_comparison_and_memory_log(
    shift_manifest: Path, start_model: Path, tmp_path: Path
) -> None:
    """Two tiny domains of four 24^3 training volumes: 10% of them is one 16^3 patch, the floor stores 16 each."""
    from medattn.continual.adapt import adapt
    from medattn.data.importers import load_dataset

    cfg = tiny_config(strategies="replay", loggers=("csv",), eval_before=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = adapt(start_model, load_dataset(str(shift_manifest)), tmp_path / "run", cfg, quiet=True)
    extras = result.runs["replay"].extras
    assert extras["stored_per_domain"] == {"A": FLOOR, "B": FLOOR} and extras["stored_patches"] == 2 * FLOOR
    row = result.comparison[0]
    assert (row["stored_A"], row["stored_B"]) == (FLOOR, FLOOR)
    saved = list(csv.DictReader(io.StringIO((tmp_path / "run" / "comparison.csv").read_text())))
    assert (saved[0]["stored_A"], saved[0]["stored_B"]) == ("16", "16")
    memory = (tmp_path / "run" / "replay" / "csv" / "memory.csv").read_text().splitlines()
    assert memory == ["training_exp,domain,stored_patches", "0,A,16", "1,A,16", "1,B,16"]
