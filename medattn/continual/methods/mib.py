"""MiB-style background-aware distillation (Cermelli et al., CVPR 2020), on Avalanche's ``LwFPlugin``.

MiB's unbiased knowledge distillation compares the teacher's probabilities over the classes it knew ("old": the
background and every class annotated in an earlier domain) with the student's probabilities in which background
absorbs the classes the teacher never learned: for a voxel,

    loss = -(1 / |old|) * [ q_bg * log(p_bg + sum_{c new} p_c) + sum_{c old, c != 0} q_c * log p_c ]

with ``q = softmax(alpha * teacher logits over the old classes)`` and ``p = softmax(student logits)``, averaged
over batch and voxels (MiB averages over classes too, hence the ``1 / |old|``). A voxel the old model called
background may thus be a new class without being penalised. The classes a domain annotates are read from its
training labels as they stream past; when every domain annotates every class (the usual scanner shift), nothing is
new and this is a plain per-voxel distillation over all classes at temperature ``1 / alpha``.

MiB's second half, the unbiased cross-entropy for partially annotated new data, changes the segmentation loss
itself and is left to the injected criterion.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from medattn.continual.methods import Method, MethodContext, MethodSpec, Param
from medattn.continual.methods.lwf import SegmentationLwFPlugin, VoxelDistillation, check_weight


def unbiased_kd(student: torch.Tensor, teacher: torch.Tensor, old: list[int], alpha: float = 1.0) -> torch.Tensor:
    """MiB's unbiased distillation (see the module docstring) for logits (B, K, ...) and sorted old classes with 0.

    Raises:
        ValueError: when ``old`` does not start with the background class 0.
    """
    if not old or old[0] != 0:
        raise ValueError(f"old classes must include the background 0 first, got {old}")
    k = student.shape[1]
    new_or_bg = [0] + [c for c in range(k) if c not in old]
    s = student.float()
    den = torch.logsumexp(s, dim=1)
    log_bg = torch.logsumexp(s[:, new_or_bg], dim=1) - den
    log_old = s[:, old[1:]] - den[:, None]
    q = torch.softmax(alpha * teacher[:, old].float(), dim=1)
    per_voxel = q[:, 0] * log_bg + (q[:, 1:] * log_old).sum(1)
    return -(per_voxel / len(old)).mean()


class UnbiasedDistillation(VoxelDistillation):
    """``LearningWithoutForgetting`` with MiB's unbiased distillation over the classes seen in earlier domains."""

    def __init__(self, lambda_kd: float | list[float], alpha: float, num_classes: int) -> None:
        super().__init__(alpha=lambda_kd, temperature=1.0, num_classes=num_classes)
        self.logit_scale = float(alpha)
        self.seen: set[int] = {0}

    def _distillation_loss(self, out: torch.Tensor, prev_out: torch.Tensor, active_units: Any) -> torch.Tensor:
        return unbiased_kd(out, prev_out, sorted(active_units), self.logit_scale)

    def post_adapt(self, agent: Any, exp: Any) -> None:
        self.expcount += 1
        self.set_teacher(agent.model)
        self.prev_classes_by_task[0] = set(self.seen)


class MiBPlugin(SegmentationLwFPlugin):
    """Avalanche's ``LwFPlugin`` with :class:`UnbiasedDistillation`; records the classes each domain annotates."""

    def __init__(self, lambda_kd: float | list[float], alpha: float, num_classes: int) -> None:
        super().__init__(num_classes=num_classes, distillation=UnbiasedDistillation(lambda_kd, alpha, num_classes))

    @torch.no_grad()
    def after_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        self.lwf.seen.update(int(c) for c in torch.unique(strategy.mb_y).tolist())

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "seen": sorted(self.lwf.seen)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.lwf.seen = set(int(c) for c in state["seen"])


def build(params: Mapping[str, Any], context: MethodContext) -> MethodSpec:
    lambda_kd = check_weight(params["lambda_kd"], "mib: lambda_kd")
    alpha = float(check_weight(params["alpha"], "mib: alpha"))  # type: ignore[arg-type]
    plugin = MiBPlugin(lambda_kd=lambda_kd, alpha=alpha, num_classes=context.num_classes)
    return MethodSpec(name="mib", plugins=[plugin], params=dict(params))


METHOD = Method(
    name="mib",
    description="MiB background-aware (unbiased) distillation (Avalanche LwFPlugin)",
    params=(
        Param("lambda_kd", 1.0, "weight of the unbiased distillation (MiB's default: 10)"),
        Param("alpha", 1.0, "scale of the teacher's logits (MiB's alpha)"),
    ),
    build=build,
)
