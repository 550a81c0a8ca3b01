"""Synaptic intelligence: Avalanche's ``SynapticIntelligencePlugin``, used as is, with resumable state.

Importance is the path integral of gradient times update along training, so it costs no extra pass over the data
and works with any loss, deep supervision included. Every trainable parameter takes part, the affine scale and
shift of medattn's instance norm included (it is a ``GroupNorm`` with one group per channel, so Avalanche's
``_NormBase`` check does not apply; the norm holds no running statistics either way). Avalanche reads the gradients
after the optimiser step: the template unscales them first under fp16, so the integral sees true gradients.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from avalanche.training.plugins import SynapticIntelligencePlugin

from medattn.continual.methods import Method, MethodContext, MethodSpec, Param
from medattn.continual.methods._params import params_from_state, params_state
from medattn.errors import ConfigError


class ResumableSIPlugin(SynapticIntelligencePlugin):
    """``SynapticIntelligencePlugin`` plus ``state_dict``/``load_state_dict`` (its parameter tables, on the CPU)."""

    def state_dict(self) -> dict[str, Any]:
        return {
            "ewc_data": [params_state(self.ewc_data[0]), params_state(self.ewc_data[1])],
            "syn_data": {k: params_state(v) for k, v in self.syn_data.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.ewc_data = (params_from_state(state["ewc_data"][0]), params_from_state(state["ewc_data"][1]))
        self.syn_data = {k: params_from_state(v) for k, v in state["syn_data"].items()}


def build(params: Mapping[str, Any], context: MethodContext) -> MethodSpec:
    lam = float(params["si_lambda"])
    if lam < 0:
        raise ConfigError(f"si: si_lambda must be >= 0, got {lam}")
    plugin = ResumableSIPlugin(si_lambda=lam, eps=float(params["eps"]))
    return MethodSpec(name="si", plugins=[plugin], params=dict(params))


METHOD = Method(
    name="si",
    description="synaptic intelligence (Avalanche SynapticIntelligencePlugin)",
    params=(
        Param("si_lambda", 1.0e3, "penalty weight; Avalanche clips each importance at 1e-3, hence the large weight"),
        Param("eps", 1e-7, "damping of the importance's denominator (Avalanche's eps)"),
    ),
    build=build,
)
