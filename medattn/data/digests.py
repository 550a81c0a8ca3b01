"""Digests of input files, so that a resumed run can tell it goes on with the inputs it started on.

``train --resume`` and ``adapt --resume`` would otherwise accept the same case ids in another dataset, a label edited
in place since the run started, or (``adapt``) another start model, and mix what they learned before with what they
learn now without a word. Reading the files costs about what loading them once does (hippocampus: 208 cases,
15 MB of images and labels, `du -cb` of imagesTr and labelsTr).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from medattn.data.manifest import Manifest


def _update(h: Any, path: Path) -> None:
    # a DICOM series is a folder: its files, by name, in order
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        h.update(file.relative_to(path).as_posix().encode() if file != path else b"")
        with open(file, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        h.update(b"\0")  # file boundary


def file_digest(path: str | Path) -> str:
    """A BLAKE2b digest (hex) of a file's bytes, or of a folder's files by name."""
    h = hashlib.blake2b(digest_size=16)
    _update(h, Path(path))
    return h.hexdigest()


def case_digests(manifest: Manifest, case_ids: Iterable[str], data_root: str | Path | None) -> dict[str, str]:
    """Per case of ``case_ids``, a BLAKE2b digest of its files' bytes (images, then label)."""
    out: dict[str, str] = {}
    wanted = set(case_ids)
    for _, case in manifest.iter_cases():
        if case.id not in wanted:
            continue
        h = hashlib.blake2b(digest_size=16)
        for rel in (*case.images, *([case.label] if case.label else [])):
            _update(h, manifest.resolve(rel, data_root))
        out[case.id] = h.hexdigest()
    return out


def changed_cases(recorded: dict[str, str], now: dict[str, str]) -> list[str]:
    """The cases recorded before whose digest differs now (cases absent from either side are not compared)."""
    return sorted(i for i, d in recorded.items() if i in now and now[i] != d)
