"""Shared handling of the versioned JSON documents that run configs are saved as (train, adapt)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
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
