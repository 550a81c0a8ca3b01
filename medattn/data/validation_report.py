"""What ``medattn validate`` finds, as data: :class:`Problem`, :class:`CaseResult`, :class:`ValidationReport`, and
:func:`format_report`, the table the command prints.

``ValidationReport.to_dict`` is the JSON report (format ``medattn-validation``, version 1): a summary, one entry per
case (status and stats) and the flat list of problems.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medattn.data.checks import CHECKS, DEFAULT_TOLERANCES, Tolerances
from medattn.text import plural, table_lines
from medattn.typing import Severity

REPORT_FORMAT = "medattn-validation"
REPORT_VERSION = 1


@dataclass(frozen=True)
class Problem:
    """One finding. ``file`` is the path as the manifest lists it (relative to the data root), or None."""

    case: str
    domain: str
    file: str | None
    check: str
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        where = f"case {self.case!r} (domain {self.domain!r})" + (f", file {self.file}" if self.file else "")
        return f"{where}: [{self.check}] {self.severity}: {self.message}"


class _BySeverity:
    """``errors`` and ``warnings`` views of a ``problems`` list (shared by a case and a whole report)."""

    if TYPE_CHECKING:  # a field on CaseResult, a derived property on ValidationReport

        @property
        def problems(self) -> list[Problem]: ...

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]


@dataclass
class CaseResult(_BySeverity):
    """The outcome of :func:`validate_case`.

    Attributes:
        case, domain: identifiers from the manifest.
        images, label: relative paths as listed in the manifest.
        problems: what was found, errors and warnings.
        stats: facts gathered on the way, JSON-serialisable: ``shape`` (spatial, voxels), ``channels``,
            ``spacing`` (mm), ``image_dtype`` (one per file), ``intensity`` (per channel ``{"min", "max"}`` over
            finite voxels), ``nonfinite`` (NaN + Inf voxels over all image files), ``label_dtype``,
            ``label_counts`` (label value as a string -> voxel count). Missing when the file could not be read.
        seconds: wall time spent on the case.
    """

    case: str
    domain: str
    images: tuple[str, ...]
    label: str | None
    problems: list[Problem] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "case": self.case,
            "domain": self.domain,
            "ok": self.ok,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "images": list(self.images),
            "label": self.label,
            "stats": self.stats,
            "seconds": round(self.seconds, 4),
        }


@dataclass
class ValidationReport(_BySeverity):
    """All case results of one validation run.

    ``ok`` is True when no case has an error (warnings do not fail). ``to_dict`` gives the JSON report: a summary,
    one entry per case (status and stats) and the flat list of problems.
    """

    dataset: str
    data_root: str
    cases: list[CaseResult]
    checks: tuple[str, ...] = CHECKS
    tolerances: Tolerances = DEFAULT_TOLERANCES
    seconds: float = 0.0

    @property
    def problems(self) -> list[Problem]:
        return [p for c in self.cases for p in c.problems]

    @property
    def failed(self) -> list[CaseResult]:
        return [c for c in self.cases if not c.ok]

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        """``"208 cases checked, 0 failed, 2 warnings"`` (the error count is added when cases failed)."""
        n, k, e, w = len(self.cases), len(self.failed), len(self.errors), len(self.warnings)
        failed = f"{k} failed" + (f" ({plural(e, 'error')})" if e else "")
        return f"{plural(n, 'case')} checked, {failed}, {plural(w, 'warning')}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": REPORT_FORMAT,
            "version": REPORT_VERSION,
            "dataset": self.dataset,
            "data_root": self.data_root,
            "checks": list(self.checks),
            "tolerances": asdict(self.tolerances),
            "summary": {
                "ok": self.ok,
                "cases": len(self.cases),
                "failed": len(self.failed),
                "errors": len(self.errors),
                "warnings": len(self.warnings),
                "failed_cases": [c.case for c in self.failed],
                "seconds": round(self.seconds, 3),
            },
            "cases": [c.to_dict() for c in self.cases],
            "problems": [asdict(p) for p in self.problems],
        }

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON atomically (``OSError`` when it cannot be written)."""
        from medattn.data.io import atomic_write_text
        from medattn.jsonio import dumps

        return atomic_write_text(path, dumps(self.to_dict()))


def format_report(report: ValidationReport, max_rows: int | None = 50) -> str:
    """A plain-text table of problems (errors first), one row per problem, then the summary line.

    Columns: case | domain | file | check | level | problem. At most ``max_rows`` rows are shown (None: all); a
    last line says how many more are in the JSON report.
    """
    problems = report.errors + report.warnings
    lines = []
    if problems:
        shown = problems if max_rows is None else problems[: max(max_rows, 0)]
        header = ("case", "domain", "file", "check", "level", "problem")
        rows = [(p.case, p.domain, p.file or "-", p.check, p.severity, p.message) for p in shown]
        if rows:
            lines += table_lines(header, rows, rule=False)
        hidden = problems[len(shown) :]
        if hidden:
            n_err = sum(p.severity == "error" for p in hidden)
            lines.append(
                f"... {plural(len(hidden), 'more problem')} not shown "
                f"({plural(n_err, 'error')}, {plural(len(hidden) - n_err, 'warning')}); see the JSON report"
            )
    lines.append(report.summary())
    return "\n".join(lines)
