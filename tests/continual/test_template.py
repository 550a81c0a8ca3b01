"""The segmentation template's own arguments are honoured (without running a training loop)."""

from __future__ import annotations

import pytest
import torch


def _strategy(**kw: object):  # type: ignore[no-untyped-def]
    from medattn.continual.template import SegmentationStrategy
    from medattn.models.registry import build_model

    torch.manual_seed(0)
    model = build_model("unet", 1, 3, channels=(4, 8), deep_supervision=0)
    args: dict[str, object] = {"window": (16, 16, 16), "class_names": ["background", "a", "b"]}
    args.update(kw)
    return SegmentationStrategy(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), **args)


def test_window_overlap_and_batch_reach_the_sliding_window_predictor() -> None:
    s = _strategy(overlap=0.25, window_batch=3)
    assert s.predictor.window == (16, 16, 16)
    assert s.predictor.overlap == (0.25, 0.25, 0.25) and s.predictor.window_batch == 3
    s.model.train()
    labels = s.predict_volumes(torch.randn(2, 1, 20, 18, 22))
    assert labels.shape == (2, 1, 20, 18, 22) and labels.dtype == torch.int64 and int(labels.max()) < 3
    assert s.model.training  # the caller's mode is restored


def test_mirrored_whole_volume_probabilities_are_the_softmax_of_the_mean_flipped_logits() -> None:
    """What selftrain's ``mirror`` asks for: on a volume the size of the window (one window, so blending is a
    no-op), the probabilities are the softmax of the mean over every mirroring of the network's logits, each flipped
    back, computed here directly; without axes the plain prediction, and the strategy's own predictor is unchanged."""
    s = _strategy()
    x = torch.randn(1, 1, 16, 16, 16)
    s.model.eval()
    with torch.no_grad():
        plain = torch.softmax(s.model(x)[0], 0)
        flips = [(), (2,), (4,), (2, 4)]
        mean = sum(torch.flip(s.model(torch.flip(x, f)), f) if f else s.model(x) for f in flips) / len(flips)
    s.model.train()
    (mirrored,) = s._sliding_window(x, probabilities=True, mirror_axes=(0, 2))
    (unmirrored,) = s._sliding_window(x, probabilities=True)
    torch.testing.assert_close(mirrored.probabilities.float(), torch.softmax(mean[0], 0), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(unmirrored.probabilities.float(), plain, atol=1e-5, rtol=1e-4)
    assert (mirrored.probabilities - unmirrored.probabilities).abs().max() > 1e-3  # the flips did change it
    assert s.predictor.mirror_axes == () and s.model.training


def test_gradients_are_clipped_to_grad_clip() -> None:
    s = _strategy(grad_clip=0.5)
    s.loss = sum(p.sum() for p in s.model.parameters()) * 1e4
    s.optimizer.zero_grad()
    s.backward()
    s.optimizer_step()
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in s.model.parameters()]))
    assert float(norm) == pytest.approx(0.5, rel=1e-4)


def test_cpu_runs_in_float32_and_bad_arguments_are_refused() -> None:
    from medattn.errors import ConfigError

    s = _strategy(precision="auto")
    assert s.precision.dtype is None and s.scaler is None
    with pytest.raises(ConfigError, match="fp16"):
        _strategy(precision="fp16")
    with pytest.raises(ConfigError, match="class_names"):
        _strategy(class_names=["background", "a"])
    with pytest.raises(ConfigError, match="num_classes"):
        _strategy(num_classes=1)


def test_batch_norm_is_found_whether_configured_or_hard_coded(caplog: pytest.LogCaptureFixture) -> None:
    """The warning that batch-norm statistics follow the last scanner must not depend on a ``norm`` config field:
    MONAI's AttentionUnet (``monai_attention_unet``) hard-codes batch norm and has none."""
    import logging
    from types import SimpleNamespace

    from medattn.continual.config import AdaptConfig
    from medattn.continual.runner import build_strategy
    from medattn.continual.template import batch_norm_layers
    from medattn.models.registry import build_model

    assert batch_norm_layers(build_model("unet", 1, 3, channels=(4, 8), deep_supervision=0)) == []
    assert batch_norm_layers(build_model("unet", 1, 3, channels=(4, 8), deep_supervision=0, norm="batch"))
    monai = build_model("monai_attention_unet", 1, 3, channels=(4, 8))
    assert "norm" not in monai.config and batch_norm_layers(monai)

    plan = SimpleNamespace(patch_size=(16, 16, 16))  # build_strategy reads only the patch size of the plan
    for net, warned in ((monai, True), (build_model("unet", 1, 3, channels=(4, 8), deep_supervision=0), False)):
        start = SimpleNamespace(
            doc={"config": net.config, "state_dict": net.state_dict()}, labels={0: "bg", 1: "a", 2: "b"}, plan=plan
        )
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="medattn.continual.runner"):
            build_strategy("naive", start, AdaptConfig(device="cpu", loggers=()), (16, 16, 16))
        assert ("batch-norm" in caplog.text) is warned, caplog.text
