"""Per-case dataset checks behind ``medattn validate``.

Every case of a manifest is checked on its own; a bad case is reported and the next one is checked, so one run
lists every problem in a dataset. Each problem names the case, its domain, the file (as the manifest spells it,
relative to the data root), the check and what was found against what was expected. Errors make the report fail;
warnings describe data that is legal but unusual and worth a look.

Checks (names as used in reports and in ``checks=``):

========== ======== ==========================================================================================
check      severity what
========== ======== ==========================================================================================
exists     error    every listed file is present (always run)
header     error    every file's header opens (always run)
voxels     error    the voxel data decodes: a truncated or corrupt ``.nii.gz`` only shows when it is read
dims       error    the image is 3D, or 4D whose last axis holds the declared channels when one file holds
                    them all (a 4D file whose last axis has size 1 counts as 3D); the label is 3D.
           warning  a spatial axis of size 1 (a single slice)
spacing    error    voxel sizes (column norms of the affine, mm) are finite, positive, within
                    ``Tolerances.plausible_spacing_mm`` and the affine is not singular
           warning  a voxel size outside ``Tolerances.usual_spacing_mm``
geometry   error    a header the readers cannot agree on: zero, non-finite or mismatched pixdim, a transform
                    MONAI or SimpleITK reads differently from nibabel, one SimpleITK refuses
           warning  a header the readers place differently but medattn handles (negative pixdim, qform and
                    sform that disagree, no transform at all, ...): see :mod:`medattn.data.geometry`
shape      error    every channel file and the label have the first image file's spatial shape
affine     error    every channel file and the label have the first image file's affine (see :class:`Tolerances`)
finite     error    no NaN or Inf voxel in an image or label
intensity  warning  an image channel has one constant value
labels     error    label values are integers among the manifest's declared labels
           warning  a label stored as floating point (its values are integral); a label holding only background
========== ======== ==========================================================================================

``voxels``, ``finite``, ``intensity`` and ``labels`` need the voxels; when none of them is selected no voxel is read
and validation only looks at headers (fast). Each file's voxels are read once, one file at a time.

A case without a label is fine (an inference set); it is simply not label-checked.

Example::

    from medattn.data.manifest import Manifest
    from medattn.data.validate import format_report, validate_manifest

    report = validate_manifest(Manifest.load("manifest.json"), progress=True)
    print(format_report(report))
    if not report.ok:
        ...
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from medattn.data.geometry import axcodes
from medattn.data.io import VolumeHeader, read_header, read_volume, spacing_from_affine
from medattn.data.manifest import Case, Domain, Manifest
from medattn.errors import ConfigError, DataError
from medattn.text import table_lines

log = logging.getLogger(__name__)

REPORT_FORMAT = "medattn-validation"
REPORT_VERSION = 1

Severity = Literal["error", "warning"]
#: What a check does with NaN/Inf image voxels: fail the case, or warn because the caller replaces them.
NonFinite = Literal["error", "replace"]

#: Every check, in the order they run. "exists" and "header" always run (everything else depends on them).
CHECKS: tuple[str, ...] = (
    "exists",
    "header",
    "voxels",
    "dims",
    "spacing",
    "geometry",
    "shape",
    "affine",
    "finite",
    "intensity",
    "labels",
)
ALWAYS_RUN = frozenset({"exists", "header"})
VOXEL_CHECKS = frozenset({"voxels", "finite", "intensity", "labels"})

_MAX_LISTED = 10  # values listed in one message


@dataclass(frozen=True)
class Tolerances:
    """Thresholds of the geometry checks (all lengths in mm).

    Two affines agree when, for each voxel axis ``j``, every entry of column ``j`` of their 3x3 linear parts
    (direction x voxel size) differs by at most ``affine_rtol`` times that axis's voxel size, and their origins
    differ by at most ``origin_atol_mm``. The defaults (0.1 % of a voxel; 0.01 mm) absorb the float32 rounding of
    NIfTI headers and of qform/sform conversions, and flag any shift, flip or resampling a user could see.

    Attributes:
        affine_rtol: tolerance on the linear part, relative to the voxel size along that axis.
        origin_atol_mm: tolerance on the origin (translation), in mm.
        plausible_spacing_mm: (low, high) voxel size range outside which the header is an error (wrong units).
        usual_spacing_mm: (low, high) range outside which a voxel size is reported as a warning.
    """

    affine_rtol: float = 1e-3
    origin_atol_mm: float = 1e-2
    plausible_spacing_mm: tuple[float, float] = (0.01, 50.0)
    usual_spacing_mm: tuple[float, float] = (0.1, 10.0)


DEFAULT_TOLERANCES = Tolerances()


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
        failed = f"{k} failed" + (f" ({_plural(e, 'error')})" if e else "")
        return f"{_plural(n, 'case')} checked, {failed}, {_plural(w, 'warning')}"

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


# ---- public API ------------------------------------------------------------------------------------------------


def validate_manifest(
    manifest: Manifest,
    data_root: str | Path | None = None,
    checks: Collection[str] | None = None,
    tolerances: Tolerances = DEFAULT_TOLERANCES,
    progress: bool = False,
) -> ValidationReport:
    """Check every case of ``manifest``; a bad case is recorded and the next one checked.

    Args:
        manifest: the dataset.
        data_root: folder the manifest's relative paths start from (default: the manifest's own root).
        checks: names from :data:`CHECKS` to run (default: all). "exists" and "header" always run.
        tolerances: geometry thresholds.
        progress: show a progress bar (tqdm, on stderr).

    Raises:
        ConfigError: an unknown check name.
    """
    from tqdm import tqdm

    selected = select_checks(checks)
    root = manifest.data_root(data_root)
    start = time.perf_counter()
    results = []
    with tqdm(total=manifest.num_cases, desc="validate", unit="case", disable=not progress, leave=False) as bar:
        for domain, case in manifest.iter_cases():
            results.append(
                validate_case(manifest, domain, case, data_root=root, checks=selected, tolerances=tolerances)
            )
            bar.update(1)
    report = ValidationReport(
        dataset=manifest.name,
        data_root=str(root),
        cases=results,
        checks=tuple(c for c in CHECKS if c in selected),
        tolerances=tolerances,
        seconds=time.perf_counter() - start,
    )
    log.debug("%s: %s (%.1f s)", manifest.name, report.summary(), report.seconds)
    return report


def validate_case(
    manifest: Manifest,
    domain: Domain | str,
    case: Case | str,
    data_root: str | Path | None = None,
    checks: Collection[str] | None = None,
    tolerances: Tolerances = DEFAULT_TOLERANCES,
    nonfinite: NonFinite = "error",
) -> CaseResult:
    """Check one case of a manifest (see the module docstring). Never raises for bad data: problems are recorded.

    Args:
        manifest: the dataset (declared channels and labels come from it).
        domain: the case's domain, or its name.
        case: the case, or its id within ``domain``.
        data_root: as in :func:`validate_manifest`.
        checks: as in :func:`validate_manifest`.
        tolerances: geometry thresholds.
        nonfinite: ``"error"`` (default) or ``"replace"``: NaN/Inf image voxels are a warning because the caller
            replaces them (``medattn predict --replace-nonfinite``). Non-finite label voxels are always an error.
    """
    dom = manifest.domain(domain) if isinstance(domain, str) else domain
    c = dom.case(case) if isinstance(case, str) else case
    root = manifest.data_root(data_root)
    return check_files(
        c.id,
        [(rel, root / rel) for rel in c.images],
        (c.label, root / c.label) if c.label is not None else None,
        channels=[ch.name for ch in manifest.channels],
        labels=manifest.labels,
        domain=dom.name,
        checks=checks,
        tolerances=tolerances,
        nonfinite=nonfinite,
    )


def check_files(
    case_id: str,
    images: Sequence[tuple[str, Path]],
    label: tuple[str, Path] | None = None,
    *,
    channels: Sequence[str],
    labels: Mapping[int, str] | None = None,
    domain: str = "-",
    checks: Collection[str] | None = None,
    tolerances: Tolerances = DEFAULT_TOLERANCES,
    nonfinite: NonFinite = "error",
) -> CaseResult:
    """Check one case given by its files: the gate every command passes a case through (``medattn.data.gate``).

    Args:
        case_id: names the case in every problem.
        images: ``(name as shown, path)`` per channel file, in channel order, or one file holding every channel.
        label: ``(name as shown, path)`` of the label map, or None (an inference case: no label checks).
        channels: the declared channel names, in order (their number is what the image files must hold).
        labels: declared label values; None skips the check of label values against them.
        domain: the case's domain, for the report.
        checks, tolerances, nonfinite: as in :func:`validate_case`.
    """
    checker = _CaseChecker(
        case_id, domain, images, label, tuple(channels), labels, select_checks(checks), tolerances, nonfinite
    )
    start = time.perf_counter()
    try:
        checker.run()
    except Exception as e:  # a bug or an exotic file must not stop the other cases; report it against this case
        log.debug("unexpected failure on case %s", case_id, exc_info=True)
        checker.error(None, "internal", f"validation stopped on this case: {type(e).__name__}: {e}")
    checker.result.seconds = time.perf_counter() - start
    return checker.result


def select_checks(checks: Collection[str] | None) -> frozenset[str]:
    """Normalise a selection of check names (None: all); "exists" and "header" are always included."""
    if checks is None:
        return frozenset(CHECKS)
    if isinstance(checks, str):
        checks = [checks]
    unknown = sorted(set(checks) - set(CHECKS))
    if unknown:
        raise ConfigError(f"unknown validation check(s) {unknown}; known checks: {', '.join(CHECKS)}")
    return frozenset(checks) | ALWAYS_RUN


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
                f"... {_plural(len(hidden), 'more problem')} not shown "
                f"({_plural(n_err, 'error')}, {_plural(len(hidden) - n_err, 'warning')}); see the JSON report"
            )
    lines.append(report.summary())
    return "\n".join(lines)


# ---- implementation --------------------------------------------------------------------------------------------


@dataclass
class _File:
    rel: str
    path: Path
    header: VolumeHeader | None = None
    spatial: tuple[int, ...] | None = None  # spatial shape once the dimensionality is understood
    volumes: int = 1  # size of the non-spatial axis (channels in one file)


class _CaseChecker:
    """Runs the checks of one case, accumulating problems and stats into ``self.result``."""

    def __init__(
        self,
        case_id: str,
        domain: str,
        images: Sequence[tuple[str, Path]],
        label: tuple[str, Path] | None,
        channels: tuple[str, ...],
        labels: Mapping[int, str] | None,
        checks: frozenset[str],
        tol: Tolerances,
        nonfinite: NonFinite = "error",
    ) -> None:
        if nonfinite not in ("error", "replace"):
            raise ConfigError(f"nonfinite: expected 'error' or 'replace', got {nonfinite!r}")
        self.channels = channels
        self.labels = labels
        self.checks = checks
        self.tol = tol
        self.nonfinite = nonfinite
        self.images = [_File(rel, Path(path)) for rel, path in images]
        self.label = _File(label[0], Path(label[1])) if label is not None else None
        self.result = CaseResult(case_id, domain, tuple(rel for rel, _ in images), label[0] if label else None)

    # -- recording --
    def error(self, f: _File | None, check: str, message: str) -> None:
        self._add(f, check, message, "error")

    def warn(self, f: _File | None, check: str, message: str) -> None:
        self._add(f, check, message, "warning")

    def _add(self, f: _File | None, check: str, message: str, severity: Severity) -> None:
        message = " ".join(str(message).split())  # one line: readers put newlines in their messages
        p = Problem(self.result.case, self.result.domain, f.rel if f else None, check, message, severity)
        log.debug("%s", p)
        self.result.problems.append(p)

    def on(self, check: str) -> bool:
        return check in self.checks

    # -- the checks --
    def run(self) -> None:
        if len(self.images) > 1 and len(self.images) != len(self.channels):
            self.error(
                None,
                "dims",
                f"{len(self.images)} channel files ({', '.join(f.rel for f in self.images)}) but "
                f"{len(self.channels)} channel(s) expected ({', '.join(self.channels)})",
            )
            return
        files = [*self.images, *([self.label] if self.label else [])]
        for f in files:
            self.open(f)
        for f in self.images:
            self.image_dims(f)
        if self.label is not None:
            self.label_dims(self.label)
        ref = next((f for f in self.images if f.spatial is not None), None)
        if ref is not None and ref.header is not None:
            self.result.stats.update(
                shape=list(ref.spatial or ()),
                channels=sum(f.volumes for f in self.images if f.spatial is not None),
                spacing=[_num(s) for s in spacing_from_affine(ref.header.affine)],
            )
            self.spacing(ref)  # the other files must match its affine, so their spacing follows
            for f in [*self.images[1:], *([self.label] if self.label else [])]:
                if f is not ref and f.spatial is not None:
                    self.same_grid(ref, f)
        for f in files:
            self.geometry(f)
        if self.checks & VOXEL_CHECKS:
            self.image_voxels()
            if self.label is not None and self.label.header is not None:
                self.label_voxels(self.label)

    def open(self, f: _File) -> None:
        if not f.path.exists():
            hint = "" if f.path.parent.is_dir() else f" (its folder {f.path.parent} does not exist either)"
            self.error(f, "exists", f"file not found at {f.path}{hint}")
            return
        try:
            f.header = read_header(f.path)
        except DataError as e:
            self.error(f, "header", e.problem)

    def _understand(self, f: _File, what: str) -> str | None:
        """Set ``f.spatial``/``f.volumes`` from the header shape; return why it is not a volume, or None."""
        if f.header is None:
            return None
        shape = f.header.shape
        if len(shape) < 3:
            return f"{what} is {len(shape)}D (shape {shape}); expected a 3D volume"
        extra = [s for s in shape[3:] if s != 1]
        if len(extra) > 1:
            return f"{what} has shape {shape}: more than one non-spatial axis; expected 3D, or 4D (x, y, z, channel)"
        f.spatial, f.volumes = tuple(shape[:3]), (extra[0] if extra else 1)
        if self.on("dims") and what == "image" and 1 in f.spatial:  # the label must match, so is not warned twice
            axis = f.spatial.index(1)
            self.warn(f, "dims", f"{what} has a single slice along axis {axis} (shape {shape}); is it a 2D image?")
        return None

    def image_dims(self, f: _File) -> None:
        why = self._understand(f, "image")
        n_ch = len(self.channels)
        names = ", ".join(self.channels)
        if why is None and f.spatial is not None:
            shape = f.header.shape if f.header else "?"
            if len(self.images) == 1 and n_ch > 1 and f.volumes != n_ch:
                why = (
                    f"image holds {f.volumes} volume(s) (shape {shape}) but {n_ch} channels ({names}) are expected "
                    f"in this one file; expected a 4D file with {n_ch} volumes along the last axis, or one file per "
                    "channel"
                )
            elif (len(self.images) > 1 or n_ch == 1) and f.volumes != 1:
                which = self.channels[self.images.index(f)] if len(self.images) > 1 else names
                why = (
                    f"image holds {f.volumes} volumes (shape {shape}) but it should hold the single channel "
                    f"{which!r}; expected a 3D volume"
                )
            if why is not None:
                f.spatial = None
        if why is not None and self.on("dims"):
            self.error(f, "dims", why)

    def label_dims(self, f: _File) -> None:
        why = self._understand(f, "label")
        if why is None and f.spatial is not None and f.volumes != 1:
            why = (
                f"label is 4D with {f.volumes} volumes (shape {f.header.shape if f.header else '?'}); expected one "
                "3D map of integer label values (one-hot labels are not supported)"
            )
            f.spatial = None
        if why is not None and self.on("dims"):
            self.error(f, "dims", why)

    def spacing(self, f: _File) -> None:
        if not self.on("spacing") or f.header is None or f.spatial is None:
            return
        affine = np.asarray(f.header.affine, dtype=float)
        sp = spacing_from_affine(affine)
        shown = _fmt(sp)
        lo, hi = self.tol.plausible_spacing_mm
        ulo, uhi = self.tol.usual_spacing_mm
        if not np.all(np.isfinite(affine)):
            self.error(f, "spacing", f"the affine holds NaN or Inf entries: {affine[:3].tolist()}")
        elif np.any(sp <= 0):
            self.error(f, "spacing", f"voxel size {shown} mm is not positive; the header's affine is degenerate")
        elif abs(np.linalg.det(affine[:3, :3])) < 1e-6 * float(np.prod(sp)):
            self.error(f, "spacing", f"the affine's axes are (nearly) parallel: it is singular ({affine[:3].tolist()})")
        elif np.any(sp < lo) or np.any(sp > hi):
            self.error(
                f,
                "spacing",
                f"voxel size {shown} mm is implausible (expected {lo:g} to {hi:g} mm per axis); "
                "check the header's units (metres or micrometres instead of mm?)",
            )
        elif np.any(sp < ulo) or np.any(sp > uhi):
            self.warn(f, "spacing", f"unusual voxel size {shown} mm (usual range {ulo:g} to {uhi:g} mm)")

    def geometry(self, f: _File) -> None:
        """The header's own consistency (pixdim, qform/sform, what each reader makes of it): see
        :func:`medattn.data.geometry.header_problems`. Skipped for a file whose spacing is already an error."""
        from medattn.data.geometry import header_problems

        if not self.on("geometry") or f.header is None:
            return
        if any(p.check == "spacing" and p.file == f.rel and p.severity == "error" for p in self.result.problems):
            return
        try:
            found = header_problems(f.path)
        except DataError as e:
            self.error(f, "geometry", e.problem)
            return
        for severity, message in found:
            self._add(f, "geometry", message, "error" if severity == "error" else "warning")

    def same_grid(self, ref: _File, f: _File) -> None:
        """Shape and affine of ``f`` against the reference image file."""
        if ref.header is None or f.header is None:
            return
        other = "label" if f is self.label else "channel file"
        if self.on("shape") and f.spatial != ref.spatial:
            self.error(
                f,
                "shape",
                f"{other} has spatial shape {f.spatial} but image {ref.rel} has {ref.spatial}; "
                "they must share one voxel grid",
            )
        if self.on("affine"):
            why = _affine_mismatch(ref.header.affine, f.header.affine, self.tol)
            if why:
                self.error(f, "affine", f"{other} is not on the grid of image {ref.rel}: {why}")

    def _read(self, f: _File) -> np.ndarray | None:
        try:
            arr, _ = read_volume(f.path, dtype=None)
        except DataError as e:
            if self.on("voxels"):
                self.error(f, "voxels", e.problem)
            return None
        except Exception as e:  # the readers raise many types on damaged files
            if self.on("voxels"):
                self.error(f, "voxels", f"cannot read voxel data ({type(e).__name__}: {e}); the file may be corrupt")
            return None
        return np.asarray(arr)

    def image_voxels(self) -> None:
        intensity: list[dict[str, float | None]] = []
        dtypes: list[str | None] = []
        nonfinite = 0
        for f in self.images:
            dtypes.append(f.header.dtype if f.header else None)
            arr = self._read(f) if f.header is not None else None
            if arr is None:
                continue
            bad = _nonfinite(arr)
            nonfinite += bad
            if bad and self.on("finite"):
                if self.nonfinite == "replace":
                    self.warn(f, "finite", _nonfinite_message(arr, "replaced by the channel's lowest finite value"))
                else:
                    self.error(f, "finite", _nonfinite_message(arr))
            vols = [arr] if arr.ndim <= 3 else list(np.moveaxis(arr.reshape(*arr.shape[:3], -1), -1, 0))
            for k, vol in enumerate(vols):
                lo, hi = _finite_range(vol, has_bad=bool(bad))
                intensity.append({"min": lo, "max": hi})
                if self.on("intensity") and lo is not None and lo == hi:
                    which = f" channel {k}" if len(vols) > 1 else ""
                    self.warn(f, "intensity", f"image{which} is constant (every finite voxel is {lo:g}): blank scan?")
        self.result.stats.update(image_dtype=dtypes, intensity=intensity, nonfinite=nonfinite)

    def label_voxels(self, f: _File) -> None:
        self.result.stats["label_dtype"] = f.header.dtype if f.header else None
        arr = self._read(f)
        if arr is None:
            return
        bad = _nonfinite(arr)
        if bad:
            if self.on("finite"):
                self.error(f, "finite", _nonfinite_message(arr, "a label map holds integer class values"))
            arr = arr[np.isfinite(arr)]
        if arr.dtype.kind == "f":
            frac = arr != np.round(arr)
            if frac.any():
                if self.on("labels"):
                    odd = np.unique(arr[frac])
                    self.error(
                        f,
                        "labels",
                        f"{_plural(int(frac.sum()), 'voxel')} with non-integer values ({_list(odd)}); "
                        "a label map holds integer class values (an image, or a label resampled with linear "
                        "interpolation?)",
                    )
                return
            if self.on("labels") and f.header is not None and _is_float_dtype(f.header.dtype):
                self.warn(
                    f,
                    "labels",
                    f"label stored as {f.header.dtype} (values are integral, so it reads correctly); "
                    "an integer type such as uint8 is smaller and unambiguous",
                )
        values, counts = _value_counts(arr)
        self.result.stats["label_counts"] = {str(int(v)): int(n) for v, n in zip(values, counts)}
        if not self.on("labels") or self.labels is None:
            return
        declared = self.labels
        undeclared = [(v, n) for v, n in zip(values, counts) if int(v) not in declared]
        if undeclared:
            found = ", ".join(f"{int(v)} ({_plural(int(n), 'voxel')})" for v, n in undeclared[:_MAX_LISTED])
            more = f" and {len(undeclared) - _MAX_LISTED} more" if len(undeclared) > _MAX_LISTED else ""
            self.error(
                f,
                "labels",
                f"label value(s) {found}{more} not declared; declared labels: "
                + ", ".join(f"{k} ({v})" for k, v in declared.items()),
            )
        elif len(values) and set(int(v) for v in values) == {0}:
            self.warn(f, "labels", "label holds only background (0): a negative case, or the wrong file?")


# ---- helpers ---------------------------------------------------------------------------------------------------


def _affine_mismatch(a: np.ndarray, b: np.ndarray, tol: Tolerances) -> str | None:
    """Describe how affine ``b`` differs from the reference ``a`` beyond ``tol``; None when they agree."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    parts = []
    lin_a, lin_b = a[:3, :3], b[:3, :3]
    scale = spacing_from_affine(a)
    d_lin = np.abs(lin_a - lin_b).max(axis=0)
    if np.any(~(d_lin <= tol.affine_rtol * scale)):
        sp_a, sp_b = spacing_from_affine(a), spacing_from_affine(b)
        if not np.allclose(sp_a, sp_b, rtol=tol.affine_rtol, atol=0):
            parts.append(f"voxel size {_fmt(sp_b)} mm, image {_fmt(sp_a)} mm")
        else:
            ax_a, ax_b = axcodes(a), axcodes(b)
            if ax_a != ax_b:
                parts.append(f"orientation {ax_b}, image {ax_a}")
            else:
                parts.append(f"direction cosines differ by up to {float(np.max(d_lin / scale)):.3g}")
    d_org = np.abs(a[:3, 3] - b[:3, 3])
    if np.any(~(d_org <= tol.origin_atol_mm)):
        parts.append(
            f"origin {_fmt(b[:3, 3])} mm, image {_fmt(a[:3, 3])} mm (off by {float(np.max(d_org)):.3g} mm, "
            f"tolerance {tol.origin_atol_mm:g} mm)"
        )
    if not parts:
        return None
    return "; ".join(parts) + ". Fix the header, or resample onto the image grid (nearest neighbour for labels)"


def _is_float_dtype(name: str) -> bool:
    """True for a stored dtype name such as ``float32`` (nibabel) or ``32-bit float`` (SimpleITK)."""
    try:
        return np.dtype(name).kind == "f"
    except TypeError:
        return "float" in name.lower()


def _nonfinite(arr: np.ndarray) -> int:
    if arr.dtype.kind not in "fc":
        return 0
    return int(arr.size - np.count_nonzero(np.isfinite(arr)))


def _nonfinite_message(arr: np.ndarray, tail: str = "expected finite values") -> str:
    n_nan = int(np.count_nonzero(np.isnan(arr)))
    n_inf = _nonfinite(arr) - n_nan
    first = tuple(int(i) for i in np.unravel_index(int(np.flatnonzero(~np.isfinite(arr))[0]), arr.shape))
    return f"{n_nan} NaN and {n_inf} Inf voxels out of {arr.size} (first at index {first}); {tail}"


def _finite_range(vol: np.ndarray, has_bad: bool) -> tuple[float | None, float | None]:
    if has_bad:
        vol = vol[np.isfinite(vol)]
    if vol.size == 0:
        return None, None
    return _num(vol.min()), _num(vol.max())


def _value_counts(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values and their counts; a bincount for small non-negative integer ranges (much faster than sort)."""
    if arr.size == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    flat = arr.ravel()
    if flat.dtype.kind in "ui" or (flat.dtype.kind == "f" and np.abs(flat).max() < 2**31):
        lo, hi = int(flat.min()), int(flat.max())
        if lo >= 0 and hi < 2**16:
            counts = np.bincount(flat.astype(np.int64, copy=False), minlength=hi + 1)
            values = np.flatnonzero(counts)
            return values, counts[values]
    values, counts = np.unique(flat, return_counts=True)
    return values, counts


def _num(x: Any) -> float | None:
    v = float(x)
    return v if np.isfinite(v) else None


def _fmt(values: Iterable[float]) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


def _list(values: np.ndarray) -> str:
    shown = ", ".join(f"{float(v):g}" for v in values[:_MAX_LISTED])
    return f"e.g. {shown}" + (", ..." if len(values) > _MAX_LISTED else "")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")
