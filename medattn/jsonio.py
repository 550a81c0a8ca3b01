"""JSON documents: the one encoder every JSON file medattn writes goes through.

:func:`to_json` turns a document into plain JSON values (NumPy scalars and arrays, paths, tuples and dataclasses
included); :func:`dumps` and :func:`write_json` write it indented, with a newline at the end, the latter atomically.
Documents differ in how they write numbers that are not finite, and each keeps its convention (``non_finite``):

- ``"keep"`` (default): ``NaN``, ``Infinity``, ``-Infinity`` as Python's ``json`` writes and reads them (not
  strict JSON; strict parsers refuse them);
- ``"null"``: every non-finite number as ``null`` (``predictions.json``);
- ``"inf_string"``: NaN as ``null``, infinities as the strings ``"inf"`` and ``"-inf"`` (``medattn evaluate``'s
  metrics, where an HD95 is infinite when a mask is empty).

Example::

    >>> dumps({"dice": np.float32(0.5), "hd95": float("inf")}, non_finite="inf_string")
    '{\\n  "dice": 0.5,\\n  "hd95": "inf"\\n}\\n'
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path, PurePath
from typing import Any, Literal

import numpy as np

NonFinite = Literal["keep", "null", "inf_string"]
NON_FINITE: tuple[NonFinite, ...] = ("keep", "null", "inf_string")


def to_json(obj: Any, *, non_finite: NonFinite = "keep", default: Callable[[Any], Any] | None = None) -> Any:
    """``obj`` as plain JSON values, recursively.

    Mappings become dicts (keys that JSON cannot hold, such as NumPy integers or paths, become strings), lists and
    tuples lists, NumPy scalars and arrays Python numbers and lists, paths strings and dataclass instances dicts;
    non-finite floats follow ``non_finite`` (see the module docstring).

    Args:
        obj: the document.
        non_finite: ``"keep"``, ``"null"`` or ``"inf_string"``.
        default: called on any other object, its result converted in turn; None: such an object is an error.

    Raises:
        TypeError: an object JSON cannot hold, without ``default``.
        ValueError: an unknown ``non_finite``.
    """
    if non_finite not in NON_FINITE:
        raise ValueError(f"non_finite: expected one of {', '.join(NON_FINITE)}, got {non_finite!r}")
    return _convert(obj, non_finite, default)


def dumps(obj: Any, *, non_finite: NonFinite = "keep", default: Callable[[Any], Any] | None = None) -> str:
    """``obj`` as indented JSON text (two spaces) with a newline at the end (see :func:`to_json`)."""
    return json.dumps(to_json(obj, non_finite=non_finite, default=default), indent=2) + "\n"


def write_json(
    path: str | Path, obj: Any, *, non_finite: NonFinite = "keep", protected: Iterable[str | Path] = ()
) -> Path:
    """Write ``obj`` as :func:`dumps` text atomically (temporary file in the same folder, then rename), never
    over one of the ``protected`` files (see :func:`medattn.data.io.atomic_write_text`); returns the path."""
    from medattn.data.io import atomic_write_text

    return atomic_write_text(path, dumps(obj, non_finite=non_finite), protected=protected)


def _convert(x: Any, non_finite: NonFinite, default: Callable[[Any], Any] | None) -> Any:
    if isinstance(x, np.generic):
        x = x.item()
    if x is None or isinstance(x, (str, bool, int)):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else _non_finite(x, non_finite)
    if isinstance(x, Mapping):
        return {_key(k): _convert(v, non_finite, default) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_convert(v, non_finite, default) for v in x]
    if isinstance(x, np.ndarray):
        return _convert(x.tolist(), non_finite, default)
    if isinstance(x, PurePath):
        return str(x)
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return _convert(dataclasses.asdict(x), non_finite, default)
    if default is not None:
        return _convert(default(x), non_finite, default)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def _non_finite(x: float, non_finite: NonFinite) -> float | str | None:
    if non_finite == "keep":
        return x
    if non_finite == "null" or math.isnan(x):
        return None
    return "inf" if x > 0 else "-inf"


def _key(k: Any) -> Any:
    if isinstance(k, np.generic):
        k = k.item()
    return k if k is None or isinstance(k, (str, bool, int, float)) else str(k)
