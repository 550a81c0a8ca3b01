"""Shared handling of run configs (train, adapt, demo): the versioned JSON documents they are saved as, and the
checks of their values that every config makes the same way."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medattn.errors import ConfigError


def config_fields(cls: Any, doc: Mapping[str, Any], *, fmt: str, version: int, what: str) -> dict[str, Any]:
    """The dataclass fields of ``doc`` after checking its ``format``, ``version`` and keys.

    Raises:
        ConfigError: another format, a newer version, or unknown keys (listing the known ones).
    """
    body = dict(doc)
    if body.pop("format", fmt) != fmt:
        raise ConfigError(f"not a medattn {what} config (format {doc.get('format')!r})")
    found = body.pop("version", version)
    if not isinstance(found, int) or found > version:
        raise ConfigError(f"{what} config version {found!r} is newer than this medattn ({version})")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(body) - known)
    if unknown:
        raise ConfigError(f"unknown {what} option(s) {unknown}; known: {sorted(known)}")
    return body


def save_config(path: str | Path, doc: Mapping[str, Any]) -> Path:
    """Write a config document as indented JSON, atomically."""
    from medattn.data.io import atomic_write_text

    return atomic_write_text(path, json.dumps(doc, indent=2) + "\n")


# ---- value checks ------------------------------------------------------------------------------------------------


def check_int(value: Any, what: str, minimum: int) -> None:
    """Raise a :class:`ConfigError` unless ``value`` is an integer (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{what}: expected an integer >= {minimum}, got {value!r}")


def names(value: Any, what: str) -> tuple[str, ...]:
    """``"a, b"`` or ``["a", "b"]`` -> ``("a", "b")`` (blanks dropped)."""
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, Sequence):
        return tuple(str(v).strip() for v in value)
    raise ConfigError(f"{what}: expected comma-separated names, got {value!r}")


def int_tuple(value: Any, what: str) -> tuple[int, ...]:
    """``"8,16,32"``, ``"8x16x32"``, ``[8, 16, 32]`` or ``(8, 16, 32)`` -> ``(8, 16, 32)``."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.replace("x", ",").split(",") if p.strip()]
    elif isinstance(value, Sequence):
        parts = list(value)
    else:
        raise ConfigError(f"{what}: expected comma-separated integers, got {value!r}")
    try:
        out = tuple(int(p) for p in parts)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{what}: expected comma-separated integers, got {value!r}") from e
    if any(isinstance(p, float) and p != int(p) for p in parts):
        raise ConfigError(f"{what}: expected integers, got {value!r}")
    return out
