"""Elastic weight consolidation: Avalanche's ``EWCPlugin``, used as is, with resumable state.

After each domain the plugin estimates each weight's importance as the squared gradient of the training loss
(the injected segmentation criterion on the domain's training patches; the network is in eval mode, which for
instance norm changes nothing but switches deep supervision off, so the criterion sees plain logits) and then
penalises ``ewc_lambda * sum(importance * (w - w_old)^2)``. The loss is a mean over voxels, so the importances do
not scale with the patch size and ``ewc_lambda`` transfers between datasets.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from avalanche.training.plugins import EWCPlugin

from medattn.continual.methods import Method, MethodContext, MethodSpec, Param
from medattn.continual.methods._params import move_params, params_from_state, params_state
from medattn.errors import ConfigError


class ResumableEWCPlugin(EWCPlugin):
    """``EWCPlugin`` plus ``state_dict``/``load_state_dict`` (saved weights and importances per experience)."""

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        super().before_training_exp(strategy, **kwargs)
        for table in (*self.saved_params.values(), *self.importances.values()):
            move_params(table, strategy.device)

    def state_dict(self) -> dict[str, Any]:
        return {
            "saved_params": {str(k): params_state(v) for k, v in self.saved_params.items()},
            "importances": {str(k): params_state(v) for k, v in self.importances.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.saved_params = defaultdict(dict, {int(k): params_from_state(v) for k, v in state["saved_params"].items()})
        self.importances = defaultdict(dict, {int(k): params_from_state(v) for k, v in state["importances"].items()})


def build(params: Mapping[str, Any], context: MethodContext) -> MethodSpec:
    if params["mode"] not in ("separate", "online"):
        raise ConfigError(f"ewc: mode must be 'separate' or 'online', got {params['mode']!r}")
    if (params["mode"] == "online") != (params["decay_factor"] is not None):
        raise ConfigError("ewc: decay_factor is needed by, and only by, mode 'online'")
    lam = float(params["ewc_lambda"])
    if lam < 0:
        raise ConfigError(f"ewc: ewc_lambda must be >= 0, got {lam}")
    plugin = ResumableEWCPlugin(lam, mode=params["mode"], decay_factor=params["decay_factor"])
    return MethodSpec(name="ewc", plugins=[plugin], params=dict(params))


#: ``ewc_lambda`` 1e5: on the hippocampus stream (original -> inverted contrast -> thick slices; issue 5 study) 1e6
#: charged naive's drift 12x the segmentation loss and ended below naive (final Dice 0.651 against 0.663); 1e5
#: ended at 0.681 (BWT -0.058 against naive's -0.121). See pipelines/adapt.yaml.
METHOD = Method(
    name="ewc",
    description="elastic weight consolidation (Avalanche EWCPlugin)",
    params=(
        Param("ewc_lambda", 1.0e6, "penalty weight; the loss is a voxel mean, so it does not scale with the patch"),
        Param("mode", "separate", "separate (one penalty per past domain) | online (decayed running importance)"),
        Param("decay_factor", None, "online mode only: decay of the running importance"),
    ),
    build=build,
)
