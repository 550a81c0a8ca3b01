"""Exceptions that carry what a user needs to fix a problem: the file, the case and the reason."""

from __future__ import annotations

from pathlib import Path


class MedattnError(Exception):
    """Base class of every error medattn raises on purpose (the CLI turns these into a message and exit code)."""


class DataError(MedattnError):
    """A problem with one input file or case.

    Args:
        problem: what is wrong, with the value found and what was expected.
        path: the offending file, if there is one.
        case: the case identifier, if known.
    """

    def __init__(self, problem: str, path: str | Path | None = None, case: str | None = None) -> None:
        self.problem = problem
        self.path = str(path) if path is not None else None
        self.case = case
        parts = []
        if case is not None:
            parts.append(f"case {case!r}")
        if self.path is not None:
            parts.append(f"{'folder' if Path(self.path).is_dir() else 'file'} {self.path}")  # a DICOM series: a folder
        prefix = ", ".join(parts)
        super().__init__(f"{prefix}: {problem}" if prefix else problem)


class ManifestError(MedattnError):
    """A manifest or dataset description (dataset.json, folder layout) that cannot be understood."""

    def __init__(self, problem: str, path: str | Path | None = None) -> None:
        self.problem = problem
        self.path = str(path) if path is not None else None
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class ConfigError(MedattnError):
    """An invalid option or configuration file."""
