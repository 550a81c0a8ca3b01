"""The input gate: every command checks each case with ``medattn validate``'s checks before heavy work.

``train``, ``adapt``, ``predict``, ``drift`` and ``evaluate`` all pass their cases through
:func:`medattn.data.validate.check_files` (the same code ``validate`` runs), so a case that ``validate`` rejects
is refused everywhere, by name and with the same reason, instead of becoming a wrong mask, a NaN loss or a
traceback deep inside MONAI:

* ``predict`` and ``drift`` check each case just before reading it; a refused case is recorded as failed with
  its file and reason, the others run, and the exit code says something failed.
* ``train`` and ``adapt`` check every case they will read before the first step (:func:`gate_manifest`); by
  default one refused case stops the run before it starts, listing every refused case. With
  ``--exclude-invalid`` the refused cases are left out, and the run's log and summary list them.
* ``evaluate`` checks each label (and the prediction against it) before scoring.

Channels are matched by name (:func:`channel_mismatch`): a model records its channel names and order, and an input
whose channels are named in another order, or named otherwise, is refused naming both.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medattn.data.manifest import Manifest
from medattn.data.validate import check_files, validate_case
from medattn.data.validation_report import CaseResult, Problem
from medattn.errors import DataError
from medattn.typing import NonFiniteVoxels

log = logging.getLogger(__name__)

#: The channel name importers give when a layout names nothing (a flat folder of files): not a name to match.
UNNAMED_CHANNEL = "image"

#: The option that lets ``train`` and ``adapt`` leave refused cases out instead of stopping.
EXCLUDE_OPTION = "--exclude-invalid"


@dataclass
class GateReport:
    """The gate's verdict on a set of cases: one :class:`~medattn.data.validation_report.CaseResult` each."""

    results: list[CaseResult] = field(default_factory=list)

    @property
    def refused(self) -> list[CaseResult]:
        return [r for r in self.results if not r.ok]

    @property
    def refused_ids(self) -> set[str]:
        return {r.case for r in self.refused}

    @property
    def warnings(self) -> list[Problem]:
        return [p for r in self.results for p in r.warnings]

    def lines(self) -> list[str]:
        """One line per refused case: ``case 'x' (domain d): <file>: [check] reason; ...``."""
        return [refusal_line(r) for r in self.refused]

    def to_list(self) -> list[dict[str, Any]]:
        """The refused cases as JSON records (``case``, ``domain``, ``file``, ``reason``), for run summaries."""
        return [
            {"case": r.case, "domain": r.domain, "file": first_file(r), "reason": refusal_reason(r)}
            for r in self.refused
        ]


def refusal_reason(result: CaseResult) -> str:
    """Every error of a refused case on one line: ``[check] message; [check] message``."""
    return "; ".join(f"[{p.check}] {p.message}" for p in result.errors)


def first_file(result: CaseResult) -> str | None:
    """The file of the case's first error (None when the error concerns the case, not a file)."""
    return next((p.file for p in result.errors if p.file), None)


def refusal_line(result: CaseResult) -> str:
    where = f"case {result.case!r}" + (f" (domain {result.domain!r})" if result.domain != "-" else "")
    file = first_file(result)
    return f"{where}" + (f", file {file}" if file else "") + f": {refusal_reason(result)}"


def gate_manifest(
    manifest: Manifest,
    case_ids: Iterable[str] | None = None,
    *,
    data_root: str | Path | None = None,
    progress: bool = False,
    desc: str = "check",
    share: tuple[int, int] = (0, 1),
) -> GateReport:
    """Check the cases ``case_ids`` of ``manifest`` (default: all) with every check, labels included.

    The cases are read one at a time (each file's voxels once), so the memory cost is one case. ``share`` =
    ``(rank, world_size)`` checks only every ``world_size``-th case from ``rank`` (processes of a distributed run
    split the work and gather the results: :func:`admit`).
    """
    from tqdm import tqdm

    wanted = None if case_ids is None else set(case_ids)
    todo = [(d, c) for d, c in manifest.iter_cases() if wanted is None or c.id in wanted]
    todo = todo[share[0] :: share[1]]
    report = GateReport()
    with tqdm(total=len(todo), desc=desc, unit="case", disable=not progress, leave=False) as bar:
        for domain, case in todo:
            report.results.append(validate_case(manifest, domain, case, data_root=data_root))
            bar.update(1)
    for p in report.warnings:
        log.debug("%s", p)
    return report


def admit(
    manifest: Manifest,
    case_ids: Iterable[str] | None = None,
    *,
    exclude: bool,
    command: str,
    data_root: str | Path | None = None,
    progress: bool = False,
    share: tuple[int, int] = (0, 1),
    gather: Callable[[list[CaseResult]], list[list[CaseResult]]] | None = None,
) -> tuple[Manifest, list[dict[str, Any]]]:
    """The gate of a run that trains (``train``, ``adapt``): check every case it will read before the first step.

    Returns the manifest without the refused cases and the refused cases as records (``case``, ``domain``,
    ``file``, ``reason``) for the run's summary. Every process of a distributed run calls this with its ``share``
    and a ``gather`` that collects every process's results (``torch.distributed.all_gather_object``), so each
    reads only its share of the files and all reach the same verdict.

    Raises:
        DataError: a case was refused and ``exclude`` is False (listing every refused case), or every case of a
            domain was refused.
    """
    report = gate_manifest(manifest, case_ids, data_root=data_root, progress=progress, desc="check cases", share=share)
    if gather is not None:
        report = GateReport([r for part in gather(report.results) for r in part])
    enforce(report, exclude=exclude, command=command)
    kept = manifest.without(report.refused_ids)
    gone = [d for d in manifest.domain_names if d not in kept.domain_names]
    if gone:
        raise DataError(f"every case of domain(s) {gone} was refused by the input checks")
    return kept, report.to_list()


def enforce(report: GateReport, *, exclude: bool, command: str) -> None:
    """Stop ``command`` when a case was refused, unless ``exclude`` (then warn and let the caller leave them out).

    Raises:
        DataError: listing every refused case with its reason, and how to proceed.
    """
    refused = report.refused
    if not refused:
        return
    listing = "\n  ".join(report.lines())
    if not exclude:
        raise DataError(
            f"{len(refused)} of {len(report.results)} case(s) failed the input checks, so {command} did not start "
            f"(`medattn validate` shows every problem; {EXCLUDE_OPTION} leaves these cases out):\n  {listing}"
        )
    log.warning("%s: leaving out %d refused case(s) (%s):\n  %s", command, len(refused), EXCLUDE_OPTION, listing)


def check_image_case(
    case_id: str,
    images: Sequence[Path],
    channels: Sequence[str],
    *,
    domain: str | None = None,
    label: Path | None = None,
    labels: Mapping[int, str] | None = None,
    nonfinite: NonFiniteVoxels = "error",
) -> CaseResult:
    """The gate for a case that is not (or not only) in a manifest: image files, optionally a label."""
    return check_files(
        case_id,
        [(str(p), Path(p)) for p in images],
        (str(label), Path(label)) if label is not None else None,
        channels=channels,
        labels=labels,
        domain=domain or "-",
        nonfinite=nonfinite,
    )


def raise_if_refused(result: CaseResult) -> None:
    """Turn a refused case into the :class:`DataError` per-case handlers record (file and every reason)."""
    if not result.ok:
        raise DataError(refusal_reason(result), first_file(result), result.case)


def check_input_case(
    case_id: str,
    images: Sequence[str | Path],
    channels: Sequence[str],
    *,
    input_channels: Sequence[str] | None = None,
    domain: str | None = None,
    label: str | Path | None = None,
    labels: Mapping[int, str] | None = None,
    nonfinite: NonFiniteVoxels = "error",
    modalities: Sequence[str | None] | None = None,
) -> CaseResult:
    """The gate of a case a model reads (``predict``, ``drift``): every check on its files, and its channels
    (``input_channels``, the names the input gives, or None) matched to the model's ``channels``, and with
    ``modalities`` (the model's per channel) a DICOM series' Modality matched to its channel's
    (:func:`modality_mismatch`).

    Returns:
        The check's result (its warnings, and stats such as ``nonfinite``), when the case passes.

    Raises:
        DataError: naming the file and every reason, when the case is refused.
    """
    checked = check_image_case(
        case_id,
        [Path(p) for p in images],
        channels,
        domain=domain,
        label=Path(label) if label else None,
        labels=labels,
        nonfinite=nonfinite,
    )
    raise_if_refused(checked)
    why = channel_mismatch(channels, input_channels, single_file=len(images) == 1)
    if why:
        raise DataError(why, images[0], case_id)
    if modalities is not None:
        for image, name, want in zip(images, channels, modalities):
            why = modality_mismatch(Path(image), name, want)
            if why:
                raise DataError(why, image, case_id)
        _warn_ct_without_air(checked, images, channels, modalities)
    return checked


def _warn_ct_without_air(
    checked: CaseResult, images: Sequence[str | Path], channels: Sequence[str], modalities: Sequence[str | None]
) -> None:
    """A warning for a CT channel with no negative value: Hounsfield units put air at -1000 and fat near -100, so
    a CT scan without one is stored with an offset (unsigned, HU + 1024, no rescale intercept) or is no CT; the CT
    normalisation's clipping would then cut it wrongly, without a word (NIfTI carries no modality to check)."""
    ranges = checked.stats.get("intensity") or []
    if len(ranges) != len(channels):
        return
    for k, (name, want, rng) in enumerate(zip(channels, modalities, ranges)):
        lo = rng.get("min")
        if _MODALITY_KIND.get(str(want).upper()) == "CT" and lo is not None and lo >= 0:
            image = images[k] if len(images) == len(channels) else images[0]
            checked.problems.append(
                Problem(
                    checked.case,
                    checked.domain,
                    str(image),
                    "intensity",
                    f"channel {name} (CT) has no negative value (lowest {lo:g}): Hounsfield units put air at -1000;"
                    " stored without its -1024 offset (unsigned, no rescale intercept), or not a CT?",
                    "warning",
                )
            )


#: Modality names a plan or a header may give, by the imaging physics they stand for (what normalisation means).
_MODALITY_KIND = {"CT": "CT", "MR": "MR", "MRI": "MR", "PT": "PET", "PET": "PET"}


def modality_mismatch(image: Path, channel: str, expected: str | None) -> str | None:
    """Why the DICOM series ``image`` cannot be read by a model channel trained on ``expected`` images (the
    plan's modality), or None: its header's Modality says another kind of image (a CT's Hounsfield units through an
    MR model's normalisation give a meaningless mask). NIfTI files carry no modality and pass."""
    want = _MODALITY_KIND.get(str(expected or "").upper())
    if want is None or not image.is_dir():
        return None
    from medattn.data.dicom import is_series_folder, series_modality

    if not is_series_folder(image):
        return None
    found = series_modality(image)
    kind = _MODALITY_KIND.get(str(found or "").upper())
    if kind is None or kind == want:
        return None
    return (
        f"the series is {found} (DICOM Modality) but the model's channel {channel!r} was trained on {expected} "
        f"images; its intensities mean something else to the model. Use a model trained on {found}"
    )


def channel_mismatch(expected: Sequence[str], found: Sequence[str] | None, *, single_file: bool = False) -> str | None:
    """Why input channels ``found`` do not fit a model's ``expected`` channels, or None when they do.

    Names are compared case-insensitively and in order. ``found`` is None (or every name is
    :data:`UNNAMED_CHANNEL`) when the input names nothing: then only the count can be checked, which is enough for
    a one-channel model or for files numbered by channel (nnU-Net's ``_0000``, ``_0001``); a single file that holds
    several unnamed channels is refused, because nothing says which volume is which.

    Args:
        expected: the model's channel names, in network order.
        found: the input's channel names in the order it gives them, or None.
        single_file: the input is one (4D) file holding every channel.
    """
    want = [str(n) for n in expected]
    unnamed = found is None or all(str(n) == UNNAMED_CHANNEL for n in found)
    if unnamed:
        n = len(found) if found is not None else None
        if len(want) > 1 and single_file:
            return (
                f"the model expects {len(want)} channels ({', '.join(want)}) and this single file names none of "
                "them; give a dataset whose channels are named (a manifest or dataset.json) or one file per channel "
                "(case_0000, case_0001, ... in the model's order)"
            )
        if n is not None and n != len(want):
            return f"the input has {n} channel(s), the model expects {len(want)} ({', '.join(want)})"
        return None
    assert found is not None
    have = [str(n) for n in found]
    if [n.lower() for n in have] == [n.lower() for n in want]:
        return None
    order = " in another order" if sorted(n.lower() for n in have) == sorted(n.lower() for n in want) else ""
    return (
        f"the input's channels are {', '.join(have)}{order}; the model expects {', '.join(want)} (in this order). "
        "Name and order the input's channels as the model's (--channels for a folder, 'channels' in a manifest)"
    )
