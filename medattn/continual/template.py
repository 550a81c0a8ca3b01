"""The segmentation strategy: Avalanche's ``SupervisedTemplate`` made right for dense 3D output.

One training loop serves every method; a method is a set of Avalanche plugins (``medattn.continual.methods``).
What changes against the classification template:

* **Loss.** The injected ``criterion`` receives the network's output as is: a list of deep-supervision logits in
  training (finest first) and the target (B, 1, X, Y, Z) (default:
  :class:`~medattn.train.losses.DeepSupervisionLoss`, Dice + CE with halving weights).
* **Mixed precision where supported** (:mod:`medattn.train.precision`, shared with ``medattn train``):
  ``precision="auto"`` runs the forward pass under CUDA autocast (bf16 where the GPU has it, else fp16 with
  gradient scaling) and in float32 on a CPU; ``"bf16"`` on a CPU is accepted only with native bf16 instructions.
* **Evaluation on whole volumes.** In eval mode ``forward`` runs sliding-window inference
  (:class:`~medattn.infer.sliding.SlidingWindowPredictor`, the training patch as window) and returns label maps
  (B, 1, X, Y, Z) int64, which the Dice metrics read (:mod:`medattn.continual.plugin_metrics`). The eval loss is
  the injected ``criterion`` on the whole volume: on the log of the blended softmax probabilities, logits whose
  softmax is the prediction. It costs the predictor's one full-volume per-class buffer, (K, X, Y, Z) float32 per
  volume on the stitch device, freed once the loss is computed.
* **Gradient clipping** (norm ``grad_clip``, after unscaling).
* **Resumable state.** :meth:`state_dict` gathers the weights, optimiser, gradient scaler, Avalanche clock and the
  state of every plugin that has ``state_dict``/``load_state_dict``, as tensors and plain containers only, so it
  loads with ``torch.load(..., weights_only=True)``; :meth:`load_state_dict` restores it (the optimiser state is
  applied after Avalanche's per-experience optimiser set-up, which would otherwise reset it).

Norm layers: the default network uses instance norm, which normalises each volume with its own statistics, so a
scanner's intensity profile is not baked into running averages that the last domain would overwrite (as batch norm's
are). A batch-norm model still works here, but its running statistics drift to the latest scanner; ``medattn adapt``
warns when :func:`batch_norm_layers` finds any (``norm: batch`` in a medattn config, or a network such as
``monai_attention_unet`` whose batch norm is hard-coded).
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.templates import SupervisedTemplate
from torch import nn

from medattn.errors import ConfigError, MedattnError
from medattn.typing import DeviceLike

if TYPE_CHECKING:
    from medattn.infer.sliding import SlidingWindowResult

log = logging.getLogger(__name__)

_CLOCK_FIELDS = (
    "train_iterations",
    "train_exp_counter",
    "train_exp_epochs",
    "train_exp_iterations",
    "train_epoch_iterations",
    "total_iterations",
)


def batch_norm_layers(model: nn.Module) -> list[str]:
    """Names of the batch-norm modules of ``model`` (whose running statistics follow the latest training data)."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def segmentation_evaluator(class_names: Sequence[str], loggers: Sequence[Any] = ()) -> EvaluationPlugin:
    """Avalanche's ``EvaluationPlugin`` with Dice metrics (per experience, stream and training epoch) and the
    loss (per training epoch and per evaluated experience), in place of the classification default (accuracy)."""
    from avalanche.evaluation.metrics import loss_metrics

    from medattn.continual.plugin_metrics import dice_metrics

    with warnings.catch_warnings():  # Avalanche warns when there are no loggers; a library caller may want none
        warnings.filterwarnings("ignore", message="No loggers specified")
        return EvaluationPlugin(
            *dice_metrics(class_names), loss_metrics(epoch=True, experience=True), loggers=list(loggers)
        )


class SegmentationStrategy(SupervisedTemplate):
    """Avalanche strategy for 3D segmentation (see the module docstring).

    Args:
        model: the network; ``model(x)`` maps (B, C, X, Y, Z) to logits (B, K, X, Y, Z) or, in training with deep
            supervision, a list of them (finest first).
        optimizer: a torch optimiser over ``model``'s parameters.
        criterion: ``criterion(output, target)`` -> scalar; default :class:`~medattn.train.losses.DeepSupervisionLoss`.
        window: sliding-window size (X, Y, Z) for evaluation, normally the training patch.
        num_classes: K, background included (default: the model config's ``out_channels``).
        class_names: names of the K classes for metric names (default ``class1`` ...).
        overlap: sliding-window overlap fraction.
        window_batch: windows per forward pass in evaluation.
        precision: ``"auto"``, ``"fp32"``, ``"fp16"`` or ``"bf16"`` (:func:`medattn.train.precision.resolve_precision`).
        grad_clip: maximum gradient norm (0 disables).
        train_mb_size, train_epochs, eval_mb_size, device, plugins, evaluator, eval_every: as in Avalanche's
            ``SupervisedTemplate``; ``train_mb_size`` counts volumes (each gives ``samples_per_volume`` patches);
            ``evaluator`` defaults to :func:`segmentation_evaluator` without loggers.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        criterion: Callable[[Any, torch.Tensor], torch.Tensor] | None = None,
        window: Sequence[int],
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        overlap: float = 0.5,
        window_batch: int = 2,
        precision: str = "auto",
        grad_clip: float = 12.0,
        train_mb_size: int = 2,
        train_epochs: int = 1,
        eval_mb_size: int = 1,
        device: DeviceLike = "cpu",
        plugins: Sequence[Any] | None = None,
        evaluator: Any = None,
        eval_every: int = -1,
        **kwargs: Any,
    ) -> None:
        from medattn.infer.sliding import SlidingWindowPredictor
        from medattn.train.losses import DeepSupervisionLoss
        from medattn.train.precision import resolve_precision

        config = getattr(model, "config", None)
        k = num_classes if num_classes is not None else (config or {}).get("out_channels")
        if not isinstance(k, int) or k < 2:
            raise ConfigError(f"num_classes: expected the number of output classes (>= 2), got {k!r}")
        names = list(class_names) if class_names is not None else [f"class{i}" for i in range(k)]
        if len(names) != k:
            raise ConfigError(f"class_names: expected {k} names (background first), got {names}")
        if evaluator is None:
            evaluator = segmentation_evaluator(names)
        super().__init__(
            model=model,
            optimizer=optimizer,
            criterion=criterion if criterion is not None else DeepSupervisionLoss(),
            train_mb_size=train_mb_size,
            train_epochs=train_epochs,
            eval_mb_size=eval_mb_size,
            device=device,
            plugins=list(plugins or []),
            evaluator=evaluator,
            eval_every=eval_every,
            **kwargs,
        )
        self.num_classes = k
        self.class_names = names
        self.grad_clip = float(grad_clip)
        self.precision = resolve_precision(precision, self.device)
        self.scaler: torch.amp.GradScaler | None = self.precision.grad_scaler() if self.precision.scale_grads else None
        self.window = tuple(int(w) for w in window)
        self.predictor = SlidingWindowPredictor(
            self._network,
            self.window,
            overlap=overlap,
            window_batch=window_batch,
            sw_device=self.device,
            num_classes=k,
        )
        self._pending_optimizer_state: dict[str, Any] | None = None
        self._eval_log_probs: torch.Tensor | None = None

    # ---- precision -------------------------------------------------------------------------------------------

    def autocast(self) -> Any:
        """A context manager: autocast to the strategy's mixed-precision dtype (nothing in float32). Plugins that
        run the network (a distillation teacher) use it too."""
        return self.precision.autocast()

    def _network(self, x: torch.Tensor) -> Any:
        with self.autocast():
            return self.model(x)

    # ---- the loop's steps ------------------------------------------------------------------------------------

    def forward(self) -> Any:
        """Training: the network output (deep-supervision list or logits). Eval: label maps (B, 1, X, Y, Z); the
        whole-volume log-probabilities (B, K, X, Y, Z) float32 are kept for :meth:`criterion`."""
        if self.is_training:
            return self._network(self.mb_x)
        results = self._sliding_window(self.mb_x, probabilities=True)
        dev = results[0].stitch_device
        probs = torch.stack([cast(torch.Tensor, r.probabilities).to(dev, torch.float32) for r in results])
        # the log of the blend's softmax is a logit map with that softmax; a probability that underflowed to 0
        # gets a finite log
        self._eval_log_probs = probs.clamp_min_(torch.finfo(torch.float32).tiny).log_()
        return torch.stack([r.labels.to(self.device, torch.int64) for r in results])[:, None]

    @torch.no_grad()
    def predict_volumes(self, x: torch.Tensor) -> torch.Tensor:
        """Sliding-window labels (B, 1, X, Y, Z) int64 on the strategy's device for whole volumes (B, C, X, Y, Z)."""
        return torch.stack([r.labels.to(self.device, torch.int64) for r in self._sliding_window(x)])[:, None]

    @torch.no_grad()
    def _sliding_window(
        self, x: torch.Tensor, probabilities: bool = False, mirror_axes: Sequence[int] = ()
    ) -> list[SlidingWindowResult]:
        """Whole-volume predictions of ``x`` (B, C, X, Y, Z) in eval mode; ``mirror_axes``: the mean over those
        axes' mirrorings as well (test-time augmentation, e.g. for a label-free method's pseudo-labels)."""
        predictor = self.predictor
        if tuple(mirror_axes) != predictor.mirror_axes:
            predictor = copy.copy(predictor)  # the same network, window and blending weights
            predictor.mirror_axes = tuple(int(a) for a in mirror_axes)
        was_training = self.model.training
        self.model.eval()
        try:
            return [predictor(img, return_probabilities=probabilities) for img in x]
        finally:
            self.model.train(was_training)

    def criterion(self) -> torch.Tensor:
        """The injected loss: on the network output in training, on the whole-volume prediction in evaluation
        (see the module docstring), computed where the prediction was stitched."""
        if self.is_training:
            return self._criterion(self.mb_output, self.mb_y)
        log_probs, self._eval_log_probs = self._eval_log_probs, None  # free the (B, K, X, Y, Z) buffer
        if log_probs is None:
            raise RuntimeError("criterion() in evaluation needs forward()'s whole-volume prediction first")
        return self._criterion(log_probs, self.mb_y.to(log_probs.device))

    def backward(self) -> None:
        if self.scaler is not None:
            self.scaler.scale(self.loss).backward(retain_graph=self.retain_graph)
        else:
            super().backward()

    def optimizer_step(self) -> None:
        # as medattn train does: a loss that is not finite (a learning rate too high, a NaN penalty weight) stops
        # the run before the step, so no NaN weights reach a model file written with exit 0
        value = float(self.loss.detach())
        if not math.isfinite(value):
            experience = getattr(self.experience, "current_experience", "?")
            raise MedattnError(
                f"the training loss became {value} on experience {experience} (iteration"
                f" {self.clock.train_exp_iterations}); lower lr, or check the method's weights"
            )
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()

    def check_model_and_optimizer(self, reset_optimizer_state: bool = False, **kwargs: Any) -> None:
        super().check_model_and_optimizer(reset_optimizer_state=reset_optimizer_state, **kwargs)
        if self._pending_optimizer_state is not None:
            self.optimizer.load_state_dict(self._pending_optimizer_state)
            self._pending_optimizer_state = None

    # ---- resumable state -------------------------------------------------------------------------------------

    def stateful_plugins(self) -> dict[str, Any]:
        """Plugins with ``state_dict``/``load_state_dict``, keyed by class name (``"Name#2"`` for a second one)."""
        out: dict[str, Any] = {}
        for p in self.plugins:
            if callable(getattr(p, "state_dict", None)) and callable(getattr(p, "load_state_dict", None)):
                name = type(p).__name__
                n = sum(1 for k in out if k == name or k.startswith(name + "#"))
                out[name if n == 0 else f"{name}#{n + 1}"] = p
        return out

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue after the last finished experience (see the module docstring)."""
        return {
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "clock": {f: int(getattr(self.clock, f)) for f in _CLOCK_FIELDS},
            "plugins": {key: p.state_dict() for key, p in self.stateful_plugins().items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output into a strategy built the same way (same method, same model)."""
        self.model.load_state_dict(state["model"])
        self.model.to(self.device)
        self._pending_optimizer_state = state["optimizer"]
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        for f in _CLOCK_FIELDS:
            setattr(self.clock, f, int(state["clock"][f]))
        plugins = self.stateful_plugins()
        saved = state.get("plugins", {})
        if set(saved) != set(plugins):
            raise ConfigError(
                f"the checkpoint holds plugin state for {sorted(saved)}, this strategy has {sorted(plugins)}; "
                "resume with the same method and settings"
            )
        for key, p in plugins.items():
            p.load_state_dict(saved[key])
