"""The checks of one case, run in order over its image and label files: :class:`CaseChecker`.

What each check looks at, and its severity, is listed in :mod:`medattn.data.validate`; a failed check adds a
:class:`~medattn.data.validation_report.Problem` naming the file, the check, what was found and what was expected,
and the next check still runs. Facts gathered on the way (shape, spacing, intensity range, label counts) go into
the case's ``stats``. Each file's voxels are read at most once, and only when a voxel check is selected.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medattn.data.checks import VOXEL_CHECKS, Tolerances
from medattn.data.geometry import axcodes
from medattn.data.io import VolumeHeader, read_header, read_volume, spacing_from_affine
from medattn.data.validation_report import CaseResult, Problem
from medattn.errors import ConfigError, DataError
from medattn.text import plural
from medattn.typing import NonFiniteVoxels, Severity

log = logging.getLogger(__name__)

_MAX_LISTED = 10  # values listed in one message


@dataclass
class _File:
    rel: str
    path: Path
    header: VolumeHeader | None = None
    spatial: tuple[int, ...] | None = None  # spatial shape once the dimensionality is understood
    volumes: int = 1  # size of the non-spatial axis (channels in one file)


class CaseChecker:
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
        nonfinite: NonFiniteVoxels = "error",
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
            return f"{what} has shape {shape}: more than one non-spatial axis; expected 3D, or 4D (X, Y, Z, channel)"
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
            if why and _same_world_grid(ref, f, self.tol):
                why = (
                    f"it covers the same voxels stored in another orientation ({axcodes(f.header.affine)}, image "
                    f"{axcodes(ref.header.affine)}), which medattn does not reorient: store it in the image's "
                    "orientation (e.g. nibabel's as_reoriented, or the tool that made it)"
                )
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
            stored = str(f.header.dtype) if f.header else ""
            if "complex" in stored or stored.startswith(("[", "(", "{")):  # complex, or RGB / structured voxels
                if self.on("voxels"):
                    self.error(
                        f,
                        "voxels",
                        f"voxels stored as {stored}: not one real intensity each (a complex image would be read as"
                        " its real part only); store the magnitude (or each channel) as real numbers",
                    )
                continue
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
                if self.on("finite") and lo is not None and hi is not None and max(-lo, hi) > MAX_PLAUSIBLE_INTENSITY:
                    which = f" channel {k}" if len(vols) > 1 else ""
                    self.error(
                        f,
                        "finite",
                        f"image{which} holds values up to {max(-lo, hi):.3g} (range {lo:.3g} .. {hi:.3g}): beyond "
                        f"{MAX_PLAUSIBLE_INTENSITY:.0e}, no scan's intensities, and normalising them overflows "
                        "float32 to NaN; byte-swapped or damaged data?",
                    )
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
                        f"{plural(int(frac.sum()), 'voxel')} with non-integer values ({_list(odd)}); "
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
            found = ", ".join(f"{int(v)} ({plural(int(n), 'voxel')})" for v, n in undeclared[:_MAX_LISTED])
            more = f" and {len(undeclared) - _MAX_LISTED} more" if len(undeclared) > _MAX_LISTED else ""
            self.error(
                f,
                "labels",
                f"label value(s) {found}{more} not declared; declared labels: "
                + ", ".join(f"{k} ({v})" for k, v in declared.items())
                + " (a folder, BIDS or DICOM dataset declares more with --labels 1=NAME,2=NAME; a manifest or "
                "dataset.json in its 'labels')",
            )
        elif len(values) and set(int(v) for v in values) == {0}:
            self.warn(f, "labels", "label holds only background (0): a negative case, or the wrong file?")


# ---- helpers ---------------------------------------------------------------------------------------------------


def _same_world_grid(ref: _File, f: _File, tol: Tolerances) -> bool:
    """Whether ``f``'s voxel centres are ``ref``'s, listed in another axis order or direction (a flipped or
    permuted copy of the same grid): each corner voxel of one lies on a corner voxel of the other."""
    if ref.header is None or f.header is None or ref.spatial is None or f.spatial is None:
        return False
    if len(ref.spatial) < 3 or len(f.spatial) < 3 or sorted(ref.spatial[:3]) != sorted(f.spatial[:3]):
        return False

    def corners(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        idx = np.array([[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
        return idx @ np.asarray(affine, float)[:3, :3].T + np.asarray(affine, float)[:3, 3]

    a, b = corners(ref.header.affine, ref.spatial), corners(f.header.affine, f.spatial)
    dist = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)
    return bool(np.all(dist.min(axis=1) <= tol.origin_atol_mm) and np.all(dist.min(axis=0) <= tol.origin_atol_mm))


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


#: Largest intensity magnitude taken as a scan's (CT: Hounsfield units within +-32768; MR and PET far below this).
#: Beyond it the squares of a z-score's variance overflow float32 over a volume's voxels and normalising gives NaN.
MAX_PLAUSIBLE_INTENSITY = 1e12


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
    """``e.g. 1.0000001, 2.5, ...``: each value as its shortest exact form in its own dtype (``%g`` would show a
    float32 1.0000001 as the integer it is not)."""
    shown = ", ".join(
        np.format_float_positional(v, trim="-") if values.dtype.kind == "f" else f"{float(v):g}"
        for v in values[:_MAX_LISTED]
    )
    return f"e.g. {shown}" + (", ..." if len(values) > _MAX_LISTED else "")
