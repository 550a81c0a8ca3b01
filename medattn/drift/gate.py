"""Drift-gated adaptation (``medattn adapt --auto``): adapt to an incoming domain only when it has drifted.

Before each experience after the first, :class:`DriftGate` runs the current model once over the incoming domain's
training volumes and over a bounded, domain-balanced sample of the training volumes of the domains the model has
been trained on so far (:func:`reference_sample`), with :func:`~medattn.drift.extract.extract_features`, and
analyses them with :func:`~medattn.drift.analysis.analyse`: the decision rule of ``medattn drift`` (whitened MMD or
KS-on-PCA p-value on the model features below ``alpha / 2``). Drift: train on the domain. No drift: skip its
training (the domain is still evaluated, so its row of the Dice matrix exists). When the test cannot run (fewer
than 4 reference or 2 incoming volumes could be read) the gate adapts, and says why: not adapting to data the
model was never tested on is the riskier error.

Each decision is a JSON-ready record (:meth:`DriftGate.__call__`): the decision and its reason, the p-values and
effect sizes of both tests, the image-statistics tests, the volumes flagged by the Mahalanobis score, metadata
changes, the Dice of the current model on reference and incoming volumes (training volumes, where labels exist)
and, from the Dice matrix's latest row, on the test splits.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medattn.drift.analysis import analyse
from medattn.drift.extract import extract_features
from medattn.drift.options import DriftOptions
from medattn.errors import DataError

log = logging.getLogger(__name__)

#: Fewest reference volumes :func:`~medattn.drift.analysis.analyse` accepts (the volume threshold is cross-fitted).
MIN_REFERENCE = 4


def reference_sample(
    items: Mapping[str, Sequence[Mapping[str, Any]]], max_volumes: int, seed: int = 0
) -> list[Mapping[str, Any]]:
    """At most ``max_volumes`` items, balanced over domains: each domain's items shuffled, then taken round-robin.

    Args:
        items: domain name -> that domain's items (any order; the shuffle is seeded by ``seed`` and the domain).
        max_volumes: the bound (>= 1).
        seed: seed of the shuffles.
    """
    import zlib

    queues = []
    for name, its in items.items():
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        queues.append([its[i] for i in rng.permutation(len(its))])
    out: list[Mapping[str, Any]] = []
    depth = 0
    while len(out) < max_volumes and any(depth < len(q) for q in queues):
        out.extend(q[depth] for q in queues if depth < len(q))
        depth += 1
    return out[:max_volumes]


class DriftGate:
    """Decides, before an experience, whether to adapt to its domain (see the module docstring).

    Args:
        manifest: the dataset of the stream (its items give the volumes' files, labels and metadata).
        options: the decision's settings (``alpha``, permutations, feature groups, volume-level FPR, overlap).
        max_reference: bound on the reference sample (volumes over all known domains).
        data_root: overrides the manifest's data root.

    Example::

        gate = DriftGate(manifest, DriftOptions(alpha=0.05), max_reference=40)
        record = gate(model, plan, incoming_experience, trained_experiences, dice_row)
        if record["adapt"]:
            strategy.train(incoming_experience)
    """

    def __init__(
        self,
        manifest: Any,
        options: DriftOptions | None = None,
        *,
        max_reference: int = 40,
        data_root: str | Path | None = None,
    ) -> None:
        if max_reference < MIN_REFERENCE:
            raise ValueError(f"max_reference must be at least {MIN_REFERENCE}, got {max_reference}")
        self.manifest = manifest
        self.options = options or DriftOptions()
        self.max_reference = max_reference
        self.data_root = data_root

    def _items(self, exp: Any) -> list[Mapping[str, Any]]:
        by_id = {d["case_id"]: d for d in self.manifest.datalist(exp.domain, data_root=self.data_root)}
        # the unlabelled training cases count too: a domain with few labels or none is still tested on its images
        return [by_id[c] for c in (*exp.case_ids, *getattr(exp, "unlabelled_ids", ())) if c in by_id]

    def __call__(
        self,
        model: Any,
        plan: Any,
        incoming: Any,
        trained: Sequence[Any],
        dice_row: Mapping[str, float | None] | None = None,
    ) -> dict[str, Any]:
        """The decision record for ``incoming`` (a train experience with ``domain`` and ``case_ids``).

        Args:
            model: the current network (any device; put in eval mode for the pass, then restored).
            plan: the plan the volumes are preprocessed with.
            incoming: the experience to decide on.
            trained: the experiences the model has been trained on so far (the reference).
            dice_row: mean test Dice of the current model per domain (the Dice matrix's latest row), if known.

        Returns:
            A JSON-ready dict; ``adapt`` (bool) is the decision.
        """
        import torch

        from medattn.models.model_file import LoadedModel

        t0 = time.perf_counter()
        opts = self.options
        known = [e.domain for e in trained]
        ref_items = reference_sample({e.domain: self._items(e) for e in trained}, self.max_reference, opts.seed)
        tgt_items = self._items(incoming)
        device = str(next(model.parameters()).device)
        loaded = LoadedModel(model=model, plan=plan, labels=dict(plan.labels), meta={}, doc={})
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                ref, ref_fail = extract_features(loaded, ref_items, overlap=opts.overlap, device=device)
                tgt, tgt_fail = extract_features(loaded, tgt_items, overlap=opts.overlap, device=device)
        finally:
            model.train(was_training)
        failures = [{**f, "set": "reference"} for f in ref_fail] + [{**f, "set": "target"} for f in tgt_fail]
        record: dict[str, Any] = {
            "domain": incoming.domain,
            "reference_domains": known,
            "alpha": opts.alpha,
            "n_reference": len(ref),
            "n_target": len(tgt),
            "dice_test": _dice_test(dice_row, known, incoming.domain),
            "failures": failures,
        }
        try:
            report = analyse(ref, tgt, opts, failures)
        except DataError as e:
            record.update(adapt=True, decision="adapt", reason=f"not tested ({e.problem}); adapting to be safe")
        else:
            doc = report.to_dict()
            worst = min(report.tests.values(), key=lambda t: t.p_value)
            rule = f"{worst.name} p = {worst.p_value:.3g} {'<' if report.drift else '>='} alpha/2 = {opts.alpha / 2:g}"
            record.update(
                adapt=bool(report.drift),
                decision="adapt" if report.drift else "skip",
                reason=f"{'drift' if report.drift else 'no drift'}: {rule}",
                tests={k: _brief(v.to_dict()) for k, v in report.tests.items()},
                image_tests={k: _brief(v.to_dict()) for k, v in report.image_tests.items()},
                volume_level={k: v for k, v in doc["volume_level"].items() if k != "target_scores"},
                metadata_changes=doc["metadata_changes"],
                dice=doc["dice"],
            )
        record["seconds"] = round(time.perf_counter() - t0, 2)
        return record


def _brief(test: Mapping[str, Any]) -> dict[str, Any]:
    """A test's result without its bulky per-component lists."""
    keep = ("statistic", "p_value", "effect_size", "drift")
    out = {k: test[k] for k in keep}
    details = test.get("details", {})
    out.update({k: v for k, v in details.items() if not isinstance(v, list)})
    return out


def _dice_test(row: Mapping[str, float | None] | None, known: Sequence[str], incoming: str) -> dict[str, Any] | None:
    """Mean test Dice of the current model on the known domains and on the incoming one, and the drop."""
    if not row:
        return None
    vals = [row.get(d) for d in known]
    seen = [float(v) for v in vals if v is not None and v == v]
    inc = row.get(incoming)
    known_mean = float(np.mean(seen)) if seen else None
    inc_v = None if inc is None or inc != inc else float(inc)
    drop = known_mean - inc_v if known_mean is not None and inc_v is not None else None
    return {"known_mean": known_mean, "incoming": inc_v, "drop": drop, "note": "test splits, Dice matrix's latest row"}
