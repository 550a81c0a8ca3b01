"""Each method runs through Avalanche's own plugin or strategy classes, and the dense-output adaptations are right."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.continual.conftest import PATCH, tiny_config

# ---- the dense-output adaptations, against independent computations ----------------------------------------------


def test_voxel_kl_is_a_per_voxel_mean_unlike_avalanches_batchmean() -> None:
    from avalanche.training.regularization import LearningWithoutForgetting

    from medattn.continual.methods.lwf import voxel_kl

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 3, 4, 4, 4, generator=g), torch.randn(2, 3, 4, 4, 4, generator=g)
    p = np.exp(s.numpy() / 2) / np.exp(s.numpy() / 2).sum(1, keepdims=True)
    q = np.exp(t.numpy() / 2) / np.exp(t.numpy() / 2).sum(1, keepdims=True)
    expected = float((q * (np.log(q) - np.log(p))).sum(1).mean())
    assert float(voxel_kl(s, t, 2.0)) == pytest.approx(expected, rel=1e-5)
    big_s, big_t = s.repeat(1, 1, 2, 2, 2), t.repeat(1, 1, 2, 2, 2)  # 8x the voxels, same distributions
    assert float(voxel_kl(big_s, big_t, 2.0)) == pytest.approx(expected, rel=1e-5)
    avalanche = LearningWithoutForgetting(temperature=2.0)
    small = float(avalanche._distillation_loss(s, t, [0, 1, 2]))
    large = float(avalanche._distillation_loss(big_s, big_t, [0, 1, 2]))
    assert large == pytest.approx(8 * small, rel=1e-4)  # what the override fixes: Avalanche's grows with voxels


def test_mib_unbiased_distillation_merges_new_classes_into_background() -> None:
    from medattn.continual.methods.lwf import voxel_kl
    from medattn.continual.methods.mib import unbiased_kd

    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 4, 3, 3, 3, generator=g), torch.randn(2, 4, 3, 3, 3, generator=g)
    old = [0, 1, 3]  # class 2 is new: the teacher never learned it
    p = torch.softmax(s, 1).numpy()
    q = torch.softmax(t[:, old], 1).numpy()
    per_voxel = q[:, 0] * np.log(p[:, 0] + p[:, 2]) + q[:, 1] * np.log(p[:, 1]) + q[:, 2] * np.log(p[:, 3])
    expected = -float((per_voxel / 3).mean())
    assert float(unbiased_kd(s, t, old)) == pytest.approx(expected, rel=1e-5)
    # nothing new: the cross-entropy form of the per-voxel distillation, divided by the number of classes
    every = [0, 1, 2, 3]
    q4 = torch.softmax(t, 1)
    entropy = float(-(q4 * torch.log(q4)).sum(1).mean())
    assert float(unbiased_kd(s, t, every)) == pytest.approx((float(voxel_kl(s, t)) + entropy) / 4, rel=1e-5)
    with pytest.raises(ValueError, match="background"):
        unbiased_kd(s, t, [1, 2])


def test_replay_patches_are_foreground_centred_and_spread_over_cases() -> None:
    from medattn.continual.methods.replay import extract_patches

    volumes = []
    for i in range(3):
        label = torch.zeros(1, 20, 20, 20)
        label[0, 2 + 4 * i : 5 + 4 * i, 3:6, 10:13] = 1 + (i % 2)
        volumes.append({"image": torch.randn(1, 20, 20, 20), "label": label, "case_id": f"c{i}"})
    images, labels, ids = extract_patches(volumes, 5, (8, 8, 8), 3, np.random.default_rng(0))
    assert images.shape == (5, 1, 8, 8, 8) and images.dtype == torch.float16
    assert labels.shape == (5, 1, 8, 8, 8) and labels.dtype == torch.uint8
    assert all(int(lab.sum()) > 0 for lab in labels)  # every patch holds foreground
    assert sorted(set(ids[:3])) == ["c0", "c1", "c2"]  # the first patches come from different cases
    assert sorted(ids) == sorted(["c0", "c1", "c2", ids[3], ids[4]]) and ids[3] != ids[4]


def test_method_options_are_validated() -> None:
    from medattn.continual.methods import MethodContext, build_method
    from medattn.errors import ConfigError

    ctx = MethodContext(num_classes=3, train_mb_size=2, samples_per_volume=1, patch_size=PATCH)
    with pytest.raises(ConfigError, match="unknown option"):
        build_method("ewc", {"lambda": 1.0}, ctx)
    with pytest.raises(ConfigError, match="decay_factor"):
        build_method("ewc", {"mode": "online"}, ctx)
    with pytest.raises(ConfigError, match="exactly one"):
        build_method("replay", {"mem_size": None, "memory_fraction": None}, ctx)
    with pytest.raises(ConfigError, match="unknown continual-learning method"):
        build_method("gem", {}, ctx)


# ---- every method, run through Avalanche ---------------------------------------------------------------------------


class Spy:
    """Records, per training epoch, the data loader Avalanche built and the size of the adapted dataset."""

    def __init__(self) -> None:
        self.loaders: list[str] = []
        self.sizes: list[int] = []

    def before_training_epoch(self, strategy: Any, **kwargs: Any) -> None:
        self.loaders.append(type(strategy.dataloader).__name__)
        self.sizes.append(len(strategy.adapted_dataset))


@pytest.fixture(scope="module")
def setup(shift_manifest: Path, start_model: Path):  # type: ignore[no-untyped-def]
    from medattn.continual.scenario import ScenarioOptions, domain_scenario
    from medattn.data.importers import load_dataset
    from medattn.models.model_file import load_model

    start = load_model(start_model)
    cfg = tiny_config(samples_per_volume=1, methods={"replay": {"mem_size": 4}})
    opts = ScenarioOptions(patch_size=PATCH, samples_per_volume=1, augment=cfg.augment_config())  # type: ignore[attr-defined]
    bench = domain_scenario(load_dataset(str(shift_manifest)), start.plan, opts)
    return start, cfg, bench


AVALANCHE_PIECES = {
    "naive": (None, None),
    "joint": ("avalanche.training", "JointTraining"),
    "cumulative": ("avalanche.training", "Cumulative"),
    "replay": ("avalanche.training.plugins", "ReplayPlugin"),
    "ewc": ("avalanche.training.plugins", "EWCPlugin"),
    "si": ("avalanche.training.plugins", "SynapticIntelligencePlugin"),
    "lwf": ("avalanche.training.plugins", "LwFPlugin"),
    "mib": ("avalanche.training.plugins", "LwFPlugin"),
}


@pytest.mark.parametrize("name", list(AVALANCHE_PIECES))
def test_method_runs_through_avalanche_and_resumes_from_its_state(name: str, setup) -> None:  # type: ignore[no-untyped-def]
    import importlib

    from avalanche.training.templates import SupervisedTemplate

    from medattn.continual.runner import build_strategy, evaluate
    from medattn.continual.template import SegmentationStrategy
    from medattn.runtime import seed_everything

    start, cfg, bench = setup
    seed_everything(0)
    strategy, spec = build_strategy(name, start, cfg, PATCH)
    assert isinstance(strategy, SegmentationStrategy) and isinstance(strategy, SupervisedTemplate)
    module, cls_name = AVALANCHE_PIECES[name]
    if cls_name is not None:
        cls = getattr(importlib.import_module(module), cls_name)
        holders = [strategy, *strategy.plugins]
        assert any(isinstance(h, cls) for h in holders), f"{name} does not use Avalanche's {cls_name}"
    spy = Spy()
    strategy.plugins.insert(0, spy)
    train = list(bench.train_stream)
    if spec.joint:
        strategy.train(train, eval_streams=[])
        assert spy.sizes == [8]  # JointTraining concatenated both domains
    else:
        for exp in train:
            exp.seed(0)
            strategy.train(exp, eval_streams=[])
    dice = evaluate(strategy, list(bench.test_stream))
    assert dice.shape == (2, 2) and np.all((dice >= 0) | np.isnan(dice)) and np.all((dice <= 1) | np.isnan(dice))

    if name == "cumulative":
        assert spy.sizes == [4, 8]
    if name == "replay":
        assert spy.loaders == ["TaskBalancedDataLoader", "ReplayDataLoader"]  # memory joins from domain 2 on
        policy = strategy.plugins[1].storage_policy
        assert [g.domain for g in policy.buffer_groups.values()] == ["A", "B"]
        assert sum(len(g.case_ids) for g in policy.buffer_groups.values()) == 4
    if name == "ewc":
        plugin = strategy.plugins[1]
        assert sorted(plugin.importances) == [0, 1]
        total = sum(float(v.data.sum()) for v in plugin.importances[0].values())
        assert total > 0 and math.isfinite(total)
    if name in ("lwf", "mib"):
        teacher = strategy.plugins[1].lwf.prev_model
        assert teacher is not None and not teacher.training
        assert all(not p.requires_grad for p in teacher.parameters())
    if name == "mib":
        assert strategy.plugins[1].lwf.prev_classes_by_task[0] == {0, 1, 2}

    # the state survives a weights-only round trip into a fresh strategy
    strategy.plugins.remove(spy)
    buf = io.BytesIO()
    torch.save(strategy.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    fresh, _ = build_strategy(name, start, cfg, PATCH)
    fresh.load_state_dict(state)
    for key, value in fresh.state_dict()["model"].items():
        torch.testing.assert_close(value, state["model"][key])
    assert fresh.clock.train_exp_counter == strategy.clock.train_exp_counter
    assert set(fresh.state_dict()["plugins"]) == set(state["plugins"])
