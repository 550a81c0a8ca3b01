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
    from medattn.data.validate import validate_manifest
    from medattn.data.validation_report import format_report

    report = validate_manifest(Manifest.load("manifest.json"), progress=True)
    print(format_report(report))
    if not report.ok:
        ...

The pieces: :mod:`medattn.data.checks` (check names, tolerances), :mod:`medattn.data.case_checker` (the checks
of one case) and :mod:`medattn.data.validation_report` (problems, results, the report and its table).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from medattn.data.case_checker import CaseChecker
from medattn.data.checks import CHECKS, DEFAULT_TOLERANCES, Tolerances, select_checks
from medattn.data.manifest import Case, Domain, Manifest
from medattn.data.validation_report import CaseResult, ValidationReport
from medattn.typing import NonFiniteVoxels

log = logging.getLogger(__name__)


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
    nonfinite: NonFiniteVoxels = "error",
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
    nonfinite: NonFiniteVoxels = "error",
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
    checker = CaseChecker(
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
