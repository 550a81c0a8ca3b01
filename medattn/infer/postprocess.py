"""Postprocessing learned on cross-validation: per class, keep the largest connected component, or remove
components below a volume, only where that raised the out-of-fold Dice.

nnU-Net's ``determine_postprocessing`` idea on medattn's own out-of-fold predictions (``medattn crossval``): for
each foreground class, the Dice over the cross-validation cases is measured for the raw masks and for each candidate
operation applied to that class alone, and the best candidate is kept only if its mean Dice is higher than the raw
masks' by more than :data:`MIN_GAIN`. Operations on different classes touch different voxels (a removed component
becomes background), so the classes are decided independently. The test split never takes part: the masks are
predictions of each fold's validation cases.

Candidates per class:

* ``largest_component``: keep the largest connected component of the class (26-connectivity), the rest becomes
  background; what a single organ or structure per case calls for.
* ``min_volume``: remove components smaller than a volume in mm3 (so one rule fits any voxel size); the thresholds
  tried are the volumes of the out-of-fold masks' own components of that class that do not overlap the reference
  (spurious islands), from which :data:`VOLUME_QUANTILES` are tried.

Component labelling is scikit-image's (``skimage.measure.label``). The rule is a small JSON document
(:func:`save_rule`, :func:`load_rule`), applied by ``medattn predict`` to each mask in its input geometry
(:func:`apply_rule`), and by ``medattn evaluate --postprocessing`` beside the raw scores.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medattn.dice import defined_mean, dice_per_class
from medattn.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FORMAT = "medattn-postprocessing"
#: Where ``medattn crossval`` saves the rule in a run folder, and where ``medattn predict RUN`` looks for it.
RULE_NAME = "postprocessing.json"
#: A candidate is kept only when it raises the mean out-of-fold Dice of its class by more than this.
MIN_GAIN = 1e-4
#: Quantiles of the spurious components' volumes tried as ``min_volume`` thresholds (just above each).
VOLUME_QUANTILES = (0.25, 0.5, 0.75, 0.9, 1.0)
#: 26-connectivity in 3D.
CONNECTIVITY = 3


@dataclass(frozen=True)
class ClassRule:
    """What is done to one class: ``"none"``, ``"largest_component"`` or ``"min_volume"`` (``min_volume_mm3``)."""

    op: str = "none"
    min_volume_mm3: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op} | ({"min_volume_mm3": self.min_volume_mm3} if self.op == "min_volume" else {})


@dataclass
class Rule:
    """The postprocessing of a model or ensemble: a :class:`ClassRule` per label value (absent: none)."""

    classes: dict[int, ClassRule] = field(default_factory=dict)
    evidence: dict[str, Any] = field(default_factory=dict)  # how it was chosen: per class Dice of each candidate

    @property
    def active(self) -> dict[int, ClassRule]:
        return {k: r for k, r in self.classes.items() if r.op != "none"}

    def describe(self) -> str:
        if not self.active:
            return "none (no operation raised the cross-validation Dice)"
        parts = []
        for value, r in sorted(self.active.items()):
            what = (
                "largest component" if r.op == "largest_component" else f"remove components < {r.min_volume_mm3:g} mm3"
            )
            parts.append(f"label {value}: {what}")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": 1,
            "classes": {str(k): r.to_dict() for k, r in sorted(self.classes.items())},
            "evidence": self.evidence,
        }


def _components(binary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(component labels, voxel count of each component 1..n) of a boolean volume."""
    from skimage.measure import label

    comp = label(binary, connectivity=CONNECTIVITY)
    sizes = np.bincount(comp.ravel())[1:]
    return comp, sizes


def apply_class(mask: np.ndarray, value: int, rule: ClassRule, voxel_mm3: float) -> np.ndarray:
    """``mask`` (label values) with ``rule`` applied to class ``value``; removed voxels become 0. A new array when
    something changes, else ``mask`` itself."""
    if rule.op == "none":
        return mask
    binary = mask == value
    if not binary.any():
        return mask
    comp, sizes = _components(binary)
    if rule.op == "largest_component":
        keep = np.zeros(sizes.size + 1, dtype=bool)
        keep[1 + int(np.argmax(sizes))] = True
    elif rule.op == "min_volume":
        assert rule.min_volume_mm3 is not None
        keep = np.concatenate([[False], sizes * voxel_mm3 >= rule.min_volume_mm3])
    else:
        raise ConfigError(f"unknown postprocessing operation {rule.op!r}")
    drop = binary & ~keep[comp]
    if not drop.any():
        return mask
    out = mask.copy()
    out[drop] = 0
    return out


def apply_rule(mask: np.ndarray, rule: Rule | None, spacing: Sequence[float]) -> np.ndarray:
    """``mask`` (label values, X, Y, Z) with every class's operation applied; ``spacing`` in mm gives volumes."""
    if rule is None:
        return mask
    voxel = float(np.prod([abs(float(s)) for s in spacing]))
    for value, r in sorted(rule.active.items()):
        mask = apply_class(mask, value, r, voxel)
    return mask


@dataclass(frozen=True)
class Case:
    """One out-of-fold prediction with its reference, both label values on the same grid."""

    case_id: str
    prediction: np.ndarray
    reference: np.ndarray
    spacing: tuple[float, float, float]


def _class_dice(cases: Sequence[Case], value: int, rule: ClassRule) -> float:
    """Mean Dice of class ``value`` over ``cases`` with ``rule`` applied (cases where it is absent from both left
    out, as everywhere in medattn: :mod:`medattn.dice`)."""
    per_case = []
    for c in cases:
        pred = apply_class(c.prediction, value, rule, float(np.prod(np.abs(c.spacing))))
        per_case.append(float(dice_per_class(pred, c.reference, [value])[0]))
    return defined_mean(per_case)[0]


def _volume_candidates(cases: Sequence[Case], value: int) -> list[float]:
    """``min_volume`` thresholds for class ``value``: just above quantiles of its spurious components' volumes."""
    volumes: list[float] = []
    for c in cases:
        comp, sizes = _components(c.prediction == value)
        if sizes.size < 2:
            continue
        hit = np.bincount(comp[c.reference == value].ravel(), minlength=sizes.size + 1)[1:] > 0
        voxel = float(np.prod(np.abs(c.spacing)))
        volumes.extend(float(s) * voxel for s, h in zip(sizes, hit) if not h)
    if not volumes:
        return []
    qs = np.quantile(np.asarray(volumes), VOLUME_QUANTILES)
    return sorted({float(np.ceil(q * 1000) / 1000 + 0.001) for q in qs})  # just above: that component goes too


def determine_rule(cases: Sequence[Case], classes: Iterable[int], min_gain: float = MIN_GAIN) -> Rule:
    """Choose each class's operation on ``cases`` (out-of-fold predictions): see the module docstring.

    Raises:
        DataError: no cases.
    """
    if not cases:
        raise DataError("postprocessing needs out-of-fold predictions; none were given")
    rule = Rule()
    evidence: dict[str, Any] = {"cases": len(cases), "min_gain": min_gain, "classes": {}}
    for value in sorted(int(v) for v in classes if int(v) != 0):
        raw = _class_dice(cases, value, ClassRule())
        tried = [ClassRule("largest_component")]
        tried += [ClassRule("min_volume", v) for v in _volume_candidates(cases, value)]
        scored = [(r, _class_dice(cases, value, r)) for r in tried]
        best, best_dice = max(scored, key=lambda t: (np.nan_to_num(t[1], nan=-1.0), t[0].op == "largest_component"))
        chosen = best if (np.isfinite(raw) and np.isfinite(best_dice) and best_dice > raw + min_gain) else ClassRule()
        rule.classes[value] = chosen
        evidence["classes"][str(value)] = {
            "raw": _finite(raw),
            "candidates": [{**r.to_dict(), "dice": _finite(d)} for r, d in scored],
            "chosen": chosen.to_dict(),
        }
        log.info("postprocessing, label %d: raw Dice %.4f; chosen %s", value, raw, chosen.to_dict())
    rule.evidence = evidence
    return rule


def _finite(v: float) -> float | None:
    return round(float(v), 6) if np.isfinite(v) else None


def save_rule(rule: Rule, path: str | Path, protected: Iterable[str | Path] = ()) -> Path:
    from medattn.data.io import atomic_write_text

    return atomic_write_text(Path(path), json.dumps(rule.to_dict(), indent=2) + "\n", protected=protected)


def load_rule(path: str | Path, labels: Mapping[int, str] | None = None) -> Rule:
    """Read a rule file; with ``labels`` (the model's), refuse a rule for label values the model does not have.

    Raises:
        DataError: unreadable, not a postprocessing rule, or for other labels.
    """
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read the postprocessing rule ({e})", p) from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise DataError(f"not a postprocessing rule (format is not {FORMAT!r})", p)
    classes: dict[int, ClassRule] = {}
    raw = doc.get("classes") or {}
    if not isinstance(raw, dict):
        raise DataError("'classes' must map label values to rules", p)
    for key, r in raw.items():
        if not str(key).isdigit():
            raise DataError(f"label {key!r}: not a label value (a whole number)", p)
        if not isinstance(r, dict):
            raise DataError(f"label {key}: expected a rule object with 'op', got {r!r}", p)
        op = r.get("op")
        if op not in ("none", "largest_component", "min_volume"):
            raise DataError(f"label {key}: unknown operation {op!r}", p)
        vol = r.get("min_volume_mm3")
        if op == "min_volume" and not (isinstance(vol, (int, float)) and vol >= 0):
            raise DataError(f"label {key}: min_volume needs a non-negative min_volume_mm3", p)
        classes[int(key)] = ClassRule(op, float(vol) if op == "min_volume" and vol is not None else None)
    if labels is not None:
        unknown = sorted(set(classes) - {int(k) for k in labels})
        if unknown:
            raise DataError(f"the rule is for label value(s) {unknown} the model does not have ({dict(labels)})", p)
    return Rule(classes, doc.get("evidence") or {})
