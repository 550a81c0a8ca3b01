"""Few labels and none: ``medattn adapt --labelled N`` and the label-free ``selftrain`` method."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.continual.conftest import bias_case, stored_dark_case, tiny_config, write_shift_dataset


def _adapt(model: Path, manifest_path: str, out: Path, **overrides: object):  # type: ignore[no-untyped-def]
    from medattn.continual.adapt import adapt
    from medattn.data.importers import load_dataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return adapt(model, load_dataset(manifest_path), out, tiny_config(**overrides), quiet=True)


def test_the_budget_keeps_n_labels_per_new_domain_and_every_test_label(shift_manifest: Path) -> None:
    from medattn.continual.labels import apply_label_budget
    from medattn.data.importers import load_dataset

    manifest = load_dataset(str(shift_manifest))
    picks = {}
    for n in (0, 1, 3, 4, 9):
        out, records = apply_label_budget(manifest, n, seed=3)
        a, b = out.domain("A"), out.domain("B")
        assert [c.label for c in a.cases] == [c.label for c in manifest.domain("A").cases]  # the first stays whole
        labelled_train = [c.id for c in b.cases if c.label is not None and c.id in b.splits["train"]]
        assert len(labelled_train) == min(n, 4) and set(labelled_train) == set(records[0]["labelled"])
        assert all(b.case(i).label is not None for i in b.splits["test"])  # scored on every test label
        assert sorted(records[0]["labelled"] + records[0]["unlabelled"]) == sorted(b.splits["train"])
        picks[n] = records[0]["labelled"]
    assert set(picks[1]) <= set(picks[3]) <= set(picks[4])  # a larger budget adds cases, it does not redraw
    ordered, records = apply_label_budget(manifest, 2, order=["B_3", "B_0", "B_1"])
    assert records[0]["labelled"] == ["B_3", "B_0"] and records[0]["rule"].startswith("the first in")
    kept = {c.id for c in ordered.domain("B").cases if c.label is not None}
    assert kept == {"B_3", "B_0", *ordered.domain("B").splits["test"]}


def test_label_order_reads_drift_rankings_json_lists_and_text(tmp_path: Path) -> None:
    from medattn.continual.labels import read_label_order
    from medattn.errors import ConfigError

    (tmp_path / "ranking.csv").write_text("rank,case_id,score\n2,B_1,0.5\n1,B_7,0.9\n3,B_0,0.1\n")
    assert read_label_order(tmp_path / "ranking.csv") == ["B_7", "B_1", "B_0"]
    (tmp_path / "r.json").write_text(json.dumps([{"case": "x", "rank": 2}, {"case": "y", "rank": 1}]))
    assert read_label_order(tmp_path / "r.json") == ["y", "x"]
    (tmp_path / "ids.txt").write_text("# most useful first\nc\n\na\n")
    assert read_label_order(tmp_path / "ids.txt") == ["c", "a"]
    (tmp_path / "bad.csv").write_text("name,score\nq,1\n")
    with pytest.raises(ConfigError, match="no case_id or case or id column"):
        read_label_order(tmp_path / "bad.csv")
    with pytest.raises(ConfigError, match="cannot read"):
        read_label_order(tmp_path / "missing.txt")


def test_only_the_budgeted_labels_are_ever_read(shift_manifest: Path, model_a: Path, tmp_path: Path) -> None:
    """The label files of B's unchosen training cases are replaced by garbage: the budgeted run never opens them
    (the input gate would refuse them, as the unbudgeted run shows), and lists what it used."""
    import shutil

    from medattn.errors import DataError

    data = tmp_path / "data"
    shutil.copytree(shift_manifest.parent, data)
    from medattn.continual.labels import apply_label_budget
    from medattn.data.importers import load_dataset

    chosen = apply_label_budget(load_dataset(str(data / "manifest.json")), 1, seed=0)[1][0]["labelled"]
    for cid in sorted(set(load_dataset(str(data / "manifest.json")).domain("B").splits["train"]) - set(chosen)):
        (data / "B" / f"{cid}_seg.nii.gz").write_bytes(b"not a NIfTI file")
    with pytest.raises(DataError, match="B_"):
        _adapt(model_a, str(data / "manifest.json"), tmp_path / "all", epochs=1, eval_before=False)
    result = _adapt(model_a, str(data / "manifest.json"), tmp_path / "run", epochs=1, labelled=1, eval_before=False)
    assert result.runs["naive"].finished
    saved = json.loads((tmp_path / "run" / "labels.json").read_text())
    assert saved[0]["domain"] == "B" and saved[0]["labelled"] == chosen and len(saved[0]["unlabelled"]) == 3
    assert json.loads((tmp_path / "run" / "config.json").read_text())["labelled"] == 1


def test_without_labels_a_supervised_method_skips_the_domain_and_says_so(
    shift_manifest: Path, model_a: Path, tmp_path: Path
) -> None:
    result = _adapt(model_a, str(shift_manifest), tmp_path / "run", epochs=1, labelled=0)
    run = result.runs["naive"]
    assert [d["domain"] for d in run.decisions] == ["B"] and not run.decisions[0]["adapt"]
    assert "no labelled training case" in run.decisions[0]["reason"]
    grid = run.matrix.matrix()
    np.testing.assert_array_equal(grid[1], grid[0])  # B left the model as A left it
    assert result.comparison[0]["skipped"] == "B"


def _selftrain_against_replay(model: Path, manifest: Path, tmp_path: Path, forget: float, **schedule: Any) -> Any:
    """selftrain on the stream with no label of B (its pseudo-labels alone, ``style_share: 0``, with replay's memory
    share), then replay with every label of B on the same schedule. Asserts the issue's goal against that replay: B
    gains at least half of what the labels give, and A ends no more than ``forget`` below replay's A. Returns
    selftrain's result."""
    # replay's own memory share (mem_batch null) on both sides: the comparison is of pseudo-labels against labels
    pseudo_only = {"selftrain": {"style_share": 0.0, "mem_batch": None}}
    result = _adapt(
        model, str(manifest), tmp_path / "run", strategies="selftrain", labelled=0, methods=pseudo_only, **schedule
    )
    grid = result.runs["selftrain"].matrix.matrix()
    supervised = _adapt(model, str(manifest), tmp_path / "labels", strategies="replay", **schedule)
    labels = supervised.runs["replay"].matrix.matrix()
    np.testing.assert_allclose(grid[0], labels[0], atol=1e-6)  # the same model after A: the streams part at B
    gain, full = grid[1, 1] - grid[0, 1], labels[1, 1] - labels[0, 1]
    assert full > 0.05 and gain >= 0.5 * full, (
        f"B: {grid[0, 1]:.3f} after A, {grid[1, 1]:.3f} after selftrain, {labels[1, 1]:.3f} with labels"
    )
    assert grid[1, 0] >= labels[1, 0] - forget, f"A: {grid[1, 0]:.3f} after selftrain, {labels[1, 0]:.3f} after replay"
    return result


def test_selftrain_learns_a_bias_field_from_unlabelled_images(model_a: Path, tmp_path: Path) -> None:
    """B lies under a strong bias field: the model of A gets most of it right. With no label of B at all,
    self-training on its confident pseudo-labels recovers at least half of what replay with every label of B gains
    there (the issue's goal), and forgets A no more than that supervised replay does. Measured on nine streams (three
    start models, three seeds, Intel Xeon): B from 0.79-0.87 after A to 0.93-0.95, against 0.95-0.97 for replay with
    all of B's labels; both lose A (0.94 after A to 0.77-0.91 for selftrain, 0.77-0.86 for replay: the tiny model
    trades the unbiased images for the biased ones), selftrain never more than replay by over 0.002."""
    manifest = write_shift_dataset(tmp_path / "data", {"A": (0, False), "B": (1000, True)}, make_case=bias_case)
    # the pseudo-labels alone, as measured on the nine streams
    result = _selftrain_against_replay(model_a, manifest, tmp_path, forget=0.02, epochs=20, lr=3e-3)
    run = result.runs["selftrain"]
    assert not run.decisions  # B was trained on, although it has no label
    passes = [r for r in run.extras["pseudo_labels"] if r["domain"] == "B"]
    # the check's pass, the pass with the volume prior, then a fresh pass before every later epoch of B
    assert [r["epoch"] for r in passes] == [0, *range(20)]
    assert passes[0]["used"] and all(0.5 <= v <= 2.0 for v in passes[0]["volume_ratio"])
    assert "weights" not in passes[0] and all(0.25 <= w <= 4.0 for w in passes[1]["weights"])
    assert all(0.5 < r["confident"] < 1.0 for r in passes)
    saved = json.loads((tmp_path / "run" / "selftrain" / "pseudo_labels.json").read_text())
    assert saved == run.extras["pseudo_labels"]


def test_selftrain_mirror_labels_through_the_mirrored_mean_and_decides_unmirrored(
    model_a: Path, tmp_path: Path
) -> None:
    """With ``mirror`` and a network trained on flipped images (here: this adaptation flips), the pseudo-labels
    trained on (the weighted pass and every epoch's refresh) average the mirrorings and say so in
    pseudo_labels.json; the pass that only checks the volumes runs once, unmirrored. An axis outside 0-2 is refused
    before anything runs."""
    import dataclasses

    from medattn.data.transforms import AugmentConfig
    from medattn.errors import ConfigError

    manifest = write_shift_dataset(tmp_path / "data", {"A": (0, False), "B": (1000, True)}, make_case=bias_case)
    methods = {"selftrain": {"mirror": [0, 1, 2], "style_share": 0.0}}
    flips = dataclasses.asdict(dataclasses.replace(AugmentConfig.none(), flip_prob=0.5))
    result = _adapt(
        model_a,
        str(manifest),
        tmp_path / "run",
        epochs=2,
        strategies="selftrain",
        labelled=0,
        methods=methods,
        augment=flips,
    )
    passes = [r for r in result.runs["selftrain"].extras["pseudo_labels"] if r["domain"] == "B"]
    assert [r["epoch"] for r in passes] == [0, 0, 1]
    assert "mirror" not in passes[0] and passes[0]["used"]
    assert [r.get("mirror") for r in passes[1:]] == [[0, 1, 2], [0, 1, 2]]
    for i, bad in enumerate(([3], [0, 0], "x")):
        with pytest.raises(ConfigError, match="mirror must be a list of distinct spatial axes"):
            _adapt(
                model_a,
                str(manifest),
                tmp_path / f"bad{i}",
                strategies="selftrain",
                labelled=0,
                methods={"selftrain": {"mirror": bad}},
            )
        assert not (tmp_path / f"bad{i}" / "selftrain").exists()


def test_the_model_files_training_record_decides_whether_mirroring_is_trusted() -> None:
    """``medattn train`` records its augmentation in the model file: that decides, whatever the adaptation does;
    a file without a training record (written by ``adapt``) falls back to the adaptation's own flips."""
    from medattn.continual.runner import mirrored_training

    def trained(p: float) -> dict[str, object]:
        return {"meta": {"run": {"augment": {"flip_prob": p}}}}

    flips, none = tiny_config(augment="default"), tiny_config(augment="none")
    assert mirrored_training(trained(0.5), none)[0] and not mirrored_training(trained(0.0), flips)[0]
    assert mirrored_training({"meta": {"adapt": {}}}, flips)[0] and not mirrored_training({}, none)[0]
    assert "probability 0.5" in mirrored_training(trained(0.5), none)[1]


def test_selftrain_does_not_mirror_for_a_network_never_trained_on_flipped_images(model_a: Path, tmp_path: Path) -> None:
    """The tests' phantom model was trained without flips, and its mean prediction over the eight mirrorings of
    B's images is far worse than its plain one (computed here on the preprocessed images: 0.61 against 0.81 mean
    Dice, AMD EPYC); so with the default
    ``mirror`` and an adaptation that does not flip either, selftrain labels unmirrored and each labelling pass that
    would have mirrored says why not."""
    from medattn.data.importers import load_dataset
    from medattn.data.transforms import eval_transforms
    from medattn.infer.sliding import SlidingWindowPredictor
    from medattn.models.model_file import load_model

    manifest = write_shift_dataset(tmp_path / "data", {"A": (0, False), "B": (1000, True)}, make_case=bias_case)
    start = load_model(model_a)
    prep = eval_transforms(start.plan)
    dice: dict[tuple[int, ...], list[float]] = {(): [], (0, 1, 2): []}
    for item in load_dataset(str(manifest)).datalist("B"):
        case = prep(item)
        image, label = torch.as_tensor(case["image"]), torch.as_tensor(case["label"])[0].long()
        for axes in dice:
            predictor = SlidingWindowPredictor(start.model, (16, 16, 16), num_classes=3, mirror_axes=axes)
            got = predictor(image).labels.long()
            per_class = [
                2 * float(((got == c) & (label == c)).sum()) / max(1, int((got == c).sum() + (label == c).sum()))
                for c in (1, 2)
            ]
            dice[axes].append(float(np.mean(per_class)))
    plain, mirrored = float(np.mean(dice[()])), float(np.mean(dice[(0, 1, 2)]))
    assert mirrored < plain - 0.05, f"plain {plain:.3f}, mirrored {mirrored:.3f}"

    result = _adapt(model_a, str(manifest), tmp_path / "run", epochs=2, strategies="selftrain", labelled=0)
    passes = [r for r in result.runs["selftrain"].extras["pseudo_labels"] if r["domain"] == "B"]
    assert all("mirror" not in r for r in passes)
    assert "mirror_refused" not in passes[0]  # the volume check never mirrors
    assert all("this adaptation flips at probability 0" in r["mirror_refused"] for r in passes[1:]) and len(passes) == 3


def test_selftrain_undoes_an_inverted_contrast_to_label_a_domain_its_model_is_lost_on(
    model_a: Path, tmp_path: Path
) -> None:
    """B inverts A's contrast inside the body and stores its air as zeros. As stored, the model of A predicts
    several times the structures' volume there, so those pseudo-labels are refused; with B's body intensities
    mapped onto A's through a decreasing curve the same model is plausible again, and that is how B is
    pseudo-labelled while the model trains on B as stored. With no label of B, B's Dice rises by at least half of
    what replay with every label of B gains (the issue's goal), and A is kept about as well as that replay keeps it.
    The pseudo-labels alone (``style_share: 0``): on this phantom the styled memory costs both scanners (below).

    Measured (AMD EPYC), seeds 0, 1, 2 at one thread, then at two: B 0.000-0.002 after A; after selftrain 0.733,
    0.705, 0.632, 0.677, 0.632, 0.678; after replay with every label 0.733, 0.702, 0.683, 0.722, 0.661, 0.689. A
    0.91-0.94 after A; after selftrain 0.859, 0.805, 0.827, 0.790, 0.766, 0.759; after replay 0.847, 0.809, 0.688,
    0.804, 0.773, 0.762 (the tiny network trades one contrast for the other). With the default ``style_share: 1``:
    B 0.528-0.655 and A 0.549-0.761, below the pseudo-labels alone on every one of those runs."""
    manifest = write_shift_dataset(tmp_path / "data", make_case=stored_dark_case)
    result = _selftrain_against_replay(model_a, manifest, tmp_path, forget=0.03, steps=80, lr=3e-3)
    run = result.runs["selftrain"]
    assert not run.decisions  # trained on, although B has no label and is lost as stored
    passes = [r for r in run.extras["pseudo_labels"] if r["domain"] == "B"]
    first = {r["teacher"]: r for r in passes[:3]}
    assert set(first) == {"as stored", "matched", "inverted"} and first["inverted"]["used"]
    assert not first["as stored"]["used"] and any(not 0.5 <= v <= 2.0 for v in first["as stored"]["volume_ratio"])
    assert all(0.5 <= v <= 2.0 for v in first["inverted"]["volume_ratio"])
    assert all(r["teacher"] == "inverted" for r in passes[3:]) and len(passes) > 3
    assert result.comparison[0]["pseudo_labels_through"] == "B: inverted"  # comparison.md says so


def test_the_drift_gate_tests_a_domain_without_labels_on_its_images(
    shift_manifest: Path, model_a: Path, tmp_path: Path
) -> None:
    """``--auto --labelled 0``: B has no labelled training case, yet the gate compares all four of its training
    images with A's and finds the inverted contrast; selftrain's own check then refuses its pseudo-labels there,
    and the record keeps both reasons."""
    result = _adapt(
        model_a,
        str(shift_manifest),
        tmp_path / "run",
        epochs=1,
        strategies="selftrain",
        labelled=0,
        auto=True,
        drift_permutations=200,
        drift_alpha=0.2,  # four volumes a side: the smallest permutation p-value is about 1/35
        eval_before=False,
    )
    decision = result.runs["selftrain"].decisions[-1]
    assert decision["domain"] == "B" and decision["n_target"] == 4 and not decision["adapt"], decision
    assert "pseudo-labels are not used" in decision["reason"] and "the drift gate: drift" in decision["reason"]
    assert decision["tests"]  # the drift evidence stays in the record


def test_steps_give_a_small_domain_the_training_length_of_a_large_one(
    shift_manifest: Path, model_a: Path, tmp_path: Path
) -> None:
    """``steps=5``: A (4 training volumes, 2 a step) and B (1 labelled volume) each get exactly 5 optimiser steps,
    where ``epochs=1`` would give them 2 and 1."""
    result = _adapt(
        model_a, str(shift_manifest), tmp_path / "run", steps=5, labelled=1, poly_power=0.9, eval_before=False
    )
    state = torch.load(tmp_path / "run" / "naive" / "state.pt", weights_only=True)
    assert state["strategy"]["clock"]["train_iterations"] == 10
    assert result.runs["naive"].finished
    joint = _adapt(model_a, str(shift_manifest), tmp_path / "joint", steps=5, strategies="joint", eval_before=False)
    assert joint.runs["joint"].finished  # one experience holding both domains: as many steps as the stream's
    state = torch.load(tmp_path / "joint" / "joint" / "state.pt", weights_only=True)
    assert state["strategy"]["clock"]["train_iterations"] == 10
    short = _adapt(model_a, str(shift_manifest), tmp_path / "epochs", epochs=1, labelled=1, eval_before=False)
    assert short.runs["naive"].finished
    state = torch.load(tmp_path / "epochs" / "naive" / "state.pt", weights_only=True)
    assert state["strategy"]["clock"]["train_iterations"] == 3


def test_selftrain_leaves_alone_a_domain_its_model_is_lost_on(
    shift_manifest: Path, model_a: Path, tmp_path: Path
) -> None:
    """B inverts A's contrast: the model of A segments the wrong tissue there (2-4 times the structures' volume), so
    its pseudo-labels would teach it the wrong thing. Self-training checks the predicted volumes against A's
    labelled ones, refuses, and without a label of B does not train on it: every domain ends where it was."""
    result = _adapt(model_a, str(shift_manifest), tmp_path / "run", epochs=2, strategies="selftrain", labelled=0)
    run = result.runs["selftrain"]
    (decision,) = run.decisions
    assert decision["domain"] == "B" and not decision["adapt"]
    assert "pseudo-labels are not used" in decision["reason"] and "class 1" in decision["reason"]
    grid = run.matrix.matrix()
    np.testing.assert_array_equal(grid[1], grid[0])
    passes = run.extras["pseudo_labels"]  # as stored, then translated each way: none plausible (the noisy air
    assert [r["teacher"] for r in passes] == ["as stored", "matched", "inverted"]  # counts as body: no curve helps)
    assert all(r["domain"] == "B" and r["used"] is False for r in passes)
    assert all(not 0.5 <= r <= 2.0 for r in passes[0]["volume_ratio"])
    assert "nor through its intensities translated" in decision["reason"]


def test_selftrain_state_keeps_the_intensity_curve_and_reads_older_states() -> None:
    """The labelled domains' body-intensity curve survives a save and resume; a state saved before the curve was
    kept resumes without one (translate then has nothing to map onto, and says so), and one of the first version
    with it divides its sum by every labelled volume, as that version did."""
    from medattn.continual.methods.selftrain import PseudoLabelPlugin

    plugin = PseudoLabelPlugin(0.9, translate=True)
    curve = np.array([[0.0, 1.0, 2.0]])
    plugin.reference = {"voxels": [10.0, 2.0], "volumes": 3, "quantiles": 2 * curve, "quantile_volumes": 2}
    again = PseudoLabelPlugin(0.9, translate=True)
    again.load_state_dict(plugin.state_dict())
    np.testing.assert_array_equal(again.reference["quantiles"] / again.reference["quantile_volumes"], curve)
    assert again.reference["voxels"] == [10.0, 2.0] and again.reference["volumes"] == 3

    old = PseudoLabelPlugin(0.9, translate=True)
    old.load_state_dict({"reference": {"voxels": [10.0, 2.0], "volumes": 3}})
    assert old.reference["quantiles"] is None and old.reference["quantile_volumes"] == 0
    first = PseudoLabelPlugin(0.9, translate=True)
    first.load_state_dict({"reference": {"voxels": [10.0, 2.0], "volumes": 3, "quantiles": (3 * curve).tolist()}})
    np.testing.assert_array_equal(first.reference["quantiles"] / first.reference["quantile_volumes"], curve)


def test_a_resumed_selftrain_run_keeps_every_pseudo_labelling_pass(model_a: Path, tmp_path: Path) -> None:
    """Interrupted after B, resumed for C: pseudo_labels.json lists B's passes as well as C's, as an uninterrupted
    run does, and the checkpoint loads with ``weights_only=True``."""
    from medattn.continual.labels import apply_label_budget
    from medattn.continual.runner import run_method
    from medattn.continual.scenario import ScenarioOptions, domain_scenario
    from medattn.data.importers import load_dataset
    from medattn.models.model_file import load_model

    domains = {"A": (0, False), "B": (1000, True), "C": (2000, True)}
    manifest, _ = apply_label_budget(
        load_dataset(str(write_shift_dataset(tmp_path / "d", domains, make_case=bias_case))), 0
    )
    start = load_model(model_a)
    bench = domain_scenario(manifest, start.plan, ScenarioOptions(patch_size=(16, 16, 16)))
    cfg = tiny_config(epochs=1, strategies="selftrain", labelled=0, eval_before=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = run_method("selftrain", start, bench, cfg, tmp_path / "whole")
        part = run_method("selftrain", start, bench, cfg, tmp_path / "cut", stop_after=2)
        state = torch.load(tmp_path / "cut" / "state.pt", weights_only=True)
        resumed = run_method("selftrain", start, bench, cfg, tmp_path / "cut", resume=True)
    assert part.extras["pseudo_labels"] and {r["domain"] for r in part.extras["pseudo_labels"]} == {"B"}
    held = state["strategy"]["plugins"]["PseudoLabelPlugin"]["history"]  # read back without pickle
    assert held == part.extras["pseudo_labels"] and resumed.finished
    saved = json.loads((tmp_path / "cut" / "pseudo_labels.json").read_text())
    assert [r["domain"] for r in saved] == [r["domain"] for r in whole.extras["pseudo_labels"]]
    assert {r["domain"] for r in saved} == {"B", "C"}
