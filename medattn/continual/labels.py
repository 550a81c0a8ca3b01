"""A label budget for the new domains: ``medattn adapt --labelled N`` trains on N labelled cases of each new domain.

A site with a new scanner rarely labels all of its cases. With a budget, each domain after the first (the one the
model was trained on) keeps the labels of ``N`` of its training cases; its other training cases lose their label in
the manifest the run works from, before anything is read, so their label files are never opened (not by the input
gate either). Their images stay, as the domain's unlabelled pool that label-free methods read
(:mod:`medattn.continual.methods.selftrain`); the supervised methods do not see them. The test split keeps every
label: it is what each method is scored on, and it never chooses which cases are labelled.

Which N: the first N of the domain's training cases in ``--label-order FILE`` (for example the ``ranking.csv`` that
``medattn drift`` writes, which ranks target volumes by how much labelling them should help; cases the file does
not name come after the named ones, in id order), else N drawn at random with the run's seed (the same N for every
method of the run; a smaller N's cases are among a larger N's with the same seed, so a label-budget study adds
cases rather than redraws them). The choice is written to ``RUN/labels.json`` and logged.

``N = 0`` leaves the new domains without training labels: the supervised methods then skip them (the comparison
table says so) and only a label-free method adapts.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from medattn.data.manifest import Manifest
from medattn.errors import ConfigError

log = logging.getLogger(__name__)

#: ``RUN/labels.json``: per domain, which training cases kept their labels and why.
LABELS_NAME = "labels.json"
#: Column names a ``--label-order`` CSV may give its case ids under (``medattn drift``'s ranking uses ``case_id``).
ID_COLUMNS = ("case_id", "case", "id")


def read_label_order(path: str | Path) -> list[str]:
    """Case ids in labelling order from a CSV (a ``case_id``/``case``/``id`` column, sorted by a ``rank`` column
    when there is one), a JSON list (of ids, or of objects with one of those keys), or a text file (one id a line).

    Raises:
        ConfigError: the file is missing, unreadable, or names no case.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"--label-order {path}: cannot read it ({e.strerror or e})") from e
    if path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        ids = _ids_of_rows(rows, path)
    elif path.suffix.lower() == ".json":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--label-order {path}: not JSON ({e})") from e
        if isinstance(doc, dict):
            doc = doc.get("ranking", doc.get("cases"))
        if not isinstance(doc, list):
            raise ConfigError(f"--label-order {path}: expected a list of case ids or of ranking rows")
        ids = [str(d) for d in doc] if all(isinstance(d, str) for d in doc) else _ids_of_rows(doc, path)
    else:
        ids = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if not ids:
        raise ConfigError(f"--label-order {path}: names no case")
    return ids


def _ids_of_rows(rows: Sequence[Any], path: Path) -> list[str]:
    if not rows or not all(isinstance(r, dict) for r in rows):
        raise ConfigError(f"--label-order {path}: expected rows with a {' or '.join(ID_COLUMNS)} column")
    key = next((k for k in ID_COLUMNS if k in rows[0]), None)
    if key is None:
        raise ConfigError(f"--label-order {path}: no {' or '.join(ID_COLUMNS)} column (columns: {sorted(rows[0])})")
    if "rank" in rows[0]:
        try:
            rows = sorted(rows, key=lambda r: float(r["rank"]))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"--label-order {path}: the rank column is not numeric ({e})") from e
    return [str(r[key]) for r in rows]


def apply_label_budget(
    manifest: Manifest,
    labelled: int,
    *,
    order: Sequence[str] | None = None,
    seed: int = 0,
    test_fraction: float = 0.25,
    domains: Sequence[str] | None = None,
) -> tuple[Manifest, list[dict[str, Any]]]:
    """The manifest with only ``labelled`` labelled training cases in each domain after the first.

    Args:
        manifest: the dataset (stream order: ``domains`` or its domain order).
        labelled: labelled training cases kept per new domain (>= 0).
        order: case ids in labelling order (:func:`read_label_order`); None: a random draw with ``seed``.
        seed: seed of the draw (per domain, combined with its position in the stream).
        test_fraction: the test share of a domain without fixed splits (as the scenario splits it).
        domains: the stream order; None: the manifest's.

    Returns:
        (the new manifest, with fixed ``train``/``test`` splits for the budgeted domains, and one record per
        budgeted domain: ``domain``, ``labelled`` ids, ``unlabelled`` ids, ``rule``).
    """
    from medattn.continual.scenario import domain_split

    if isinstance(labelled, bool) or not isinstance(labelled, int) or labelled < 0:
        raise ConfigError(f"--labelled: expected a number of cases >= 0, got {labelled!r}")
    names = list(domains) if domains else manifest.domain_names
    rank = {cid: i for i, cid in enumerate(order or ())}
    records: list[dict[str, Any]] = []
    new_domains = {d.name: d for d in manifest.domains}
    for position, name in enumerate(names[1:], start=1):
        d = manifest.domain(name)
        train, test = domain_split(manifest, name, test_fraction=test_fraction)
        if order is not None:
            ranked = sorted(train, key=lambda cid: (rank.get(cid, len(rank)), cid))
            rule = "the first in --label-order"
            unnamed = [cid for cid in ranked[:labelled] if cid not in rank]
            if unnamed:
                log.warning("--label-order names none of %s in domain %r; labelling them in id order", unnamed, name)
        else:
            rng = np.random.default_rng([seed, position])
            ranked = [train[i] for i in rng.permutation(len(train))]
            rule = f"a random draw (seed {seed})"
        keep = set(ranked[:labelled])
        if labelled > len(train):
            log.warning("--labelled %d: domain %r has only %d labelled training case(s)", labelled, name, len(train))
        bare = [cid for cid in train if cid not in keep]
        cases = tuple(replace(c, label=None) if c.id in bare else c for c in d.cases)
        splits = {**d.splits, "train": tuple(train), "test": tuple(test)}
        new_domains[name] = replace(d, cases=cases, splits=splits)
        kept = [cid for cid in ranked if cid in keep]
        records.append({"domain": name, "labelled": kept, "unlabelled": sorted(bare), "rule": rule})
        log.info(
            "domain %r: training on the labels of %d of %d case(s) (%s): %s",
            name,
            len(kept),
            len(train),
            rule,
            ", ".join(kept) or "none",
        )
    out = replace(manifest, domains=tuple(new_domains[d.name] for d in manifest.domains))
    return out, records
