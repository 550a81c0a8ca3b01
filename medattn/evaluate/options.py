"""How ``medattn evaluate`` scores: :class:`EvaluateOptions` (saved in the metrics JSON) and ``--nsd-tolerance``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from medattn.errors import ConfigError
from medattn.evaluate.metrics import DEFAULT_NSD_TOLERANCE_MM


@dataclass(frozen=True)
class EvaluateOptions:
    """How ``medattn evaluate`` scores; saved in the JSON.

    Attributes:
        nsd_tolerance: NSD tolerance in mm, one for every class or per label value.
        resamples: bootstrap resamples for the confidence intervals.
        confidence: level of the intervals.
        seed: bootstrap seed.
        postprocessing: a postprocessing rule file (``medattn crossval``'s): the report then also scores the
            predictions with the rule applied, under ``postprocessed``.
    """

    nsd_tolerance: float | Mapping[int, float] = DEFAULT_NSD_TOLERANCE_MM
    resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0
    postprocessing: str | None = None

    def __post_init__(self) -> None:
        if self.resamples < 0 or not 0 < self.confidence < 1:
            raise ConfigError("--bootstrap must be >= 0 and --confidence in (0, 1)")


def parse_tolerance(value: Any) -> float | dict[int, float]:
    """``--nsd-tolerance``: ``2`` (every class) or ``1:1.5,2:3`` (label value: mm)."""
    if value is None or value == "":
        return DEFAULT_NSD_TOLERANCE_MM
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value)
    try:
        if ":" not in text:
            return float(text)
        out = {}
        for part in text.split(","):
            k, _, v = part.partition(":")
            out[int(k)] = float(v)
        return out
    except ValueError:
        raise ConfigError(f"--nsd-tolerance: expected MM or VALUE:MM[,VALUE:MM...], got {value!r}") from None
