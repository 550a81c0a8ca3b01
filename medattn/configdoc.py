"""Shared handling of run configs (train, adapt, demo): the versioned JSON documents they are saved as, and the
checks of their values that every config makes the same way."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Collection, Mapping, Sequence
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


# ---- --config files --------------------------------------------------------------------------------------------


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A ``--config`` YAML file as a mapping (``yaml.safe_load``, refusing a key given twice, which PyYAML would
    let the last one win silently).

    Raises:
        ConfigError: unreadable, not YAML, a repeated key, not a mapping, or empty (naming the file).
    """
    import yaml

    path = Path(path)
    try:
        doc = yaml.load(path.read_text(), Loader=_unique_key_loader())  # a SafeLoader subclass
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config: {e.strerror or e}") from e
    except _RepeatedKey as e:
        raise ConfigError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if doc is None:
        raise ConfigError(f"{path}: the config holds no options (an empty file)")
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping of option names to values, got a {type(doc).__name__}")
    return doc


def config_section(
    doc: Mapping[str, Any], command: str, commands: Sequence[str], options: Collection[str] = ()
) -> dict[str, Any]:
    """The options of ``command`` in a config file: its top-level keys, with a section named after the command
    (``train: {...}``) over them; the sections of other ``commands`` are theirs. (A section used to make the file's
    other keys silently ignored.) A key that is one of the command's ``options`` (``train``'s ``plan:``) is that
    option, never another command's section; a section is a mapping."""

    def is_section(key: str, value: Any) -> bool:
        return key in commands and isinstance(value, Mapping) and str(key).replace("-", "_") not in options

    shared = {k: v for k, v in doc.items() if not is_section(k, v)}
    own = doc.get(command)
    return {**shared, **(dict(own) if own is not None and is_section(command, own) else {})}


class _RepeatedKey(Exception):
    pass


def _unique_key_loader() -> Any:
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        pass

    def mapping(loader: Any, node: Any, deep: bool = False) -> Any:
        loader.flatten_mapping(node)  # YAML merge keys (<<: *anchor) first, as SafeLoader does
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            try:
                repeated = key in seen
            except TypeError:  # an unhashable key: SafeLoader's own error names it
                break
            if repeated:
                raise _RepeatedKey(f"option {key!r} is given twice (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return loader.construct_mapping(node, deep)

    UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return UniqueKeyLoader


# ---- value checks ------------------------------------------------------------------------------------------------


def check_int(value: Any, what: str, minimum: int) -> None:
    """Raise a :class:`ConfigError` unless ``value`` is an integer (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{what}: expected an integer >= {minimum}, got {value!r}")


def check_float(value: Any, what: str, lo: float, hi: float | None = None, *, strict: bool = False) -> float:
    """``value`` as a finite float of at least ``lo`` (above it when ``strict``) and at most ``hi``, else a
    :class:`ConfigError` naming ``what``. NaN passes every comparison, so it is refused by name (a NaN learning
    rate crashed the optimiser; a NaN clip or sampling ratio silently turned the feature off)."""
    if isinstance(value, str) and "e" in value.lower():
        try:
            float(value)
        except ValueError:
            pass
        else:  # YAML 1.1 (PyYAML) reads 1e-3 as text: it wants a dot, 1.0e-3
            raise ConfigError(f"{what}: expected a number, got the text {value!r} (in YAML write 1.0e-3, not 1e-3)")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{what}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{what}: expected a finite number, got {value!r}")
    if (value <= lo if strict else value < lo) or (hi is not None and value > hi):
        bound = f"> {lo}" if strict else f">= {lo}"
        raise ConfigError(
            f"{what}: expected a number {bound}" + (f" and <= {hi}" if hi is not None else "") + f", got {value!r}"
        )
    return float(value)


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
