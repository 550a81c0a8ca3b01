"""Header geometry: where each reader puts a file's voxels, and which headers medattn refuses.

medattn reads NIfTI headers with nibabel (``validate``, ``plan``, the grid check of ``predict``) and NIfTI voxels
through MONAI's ``NibabelReader`` (the training and prediction pipelines); people look at inputs and masks in
ITK-based viewers (3D Slicer, ITK-SNAP), which read like SimpleITK. For a clean header all three agree. For the
irregular headers below they do not, and nibabel repairs several of them silently on load.
:func:`header_problems` reports each irregularity as an ``(severity, message)`` pair naming the value found, what
each reader makes of it and what was expected; ``validate`` shows them.

Policy (``error``: refused, ``validate`` reports an error and the input checks built on it refuse the case;
``warning``: handled):

=============================================  ========  ===================================================
header (NIfTI)                                 severity  what the readers do
=============================================  ========  ===================================================
pixdim[1..3] NaN or Inf                        error     nibabel keeps it (uses the sform); SimpleITK: 1 mm
pixdim[1..3] zero                              error     nibabel and SimpleITK: 1 mm; MONAI then switches to
                                                         the qform, so the pipeline and nibabel disagree
pixdim magnitude != the affine's voxel size    error     nibabel: the sform's size; SimpleITK: pixdim; MONAI:
                                                         the qform (built from pixdim)
affine (the sform, else the qform) NaN/Inf,    error     unusable; MONAI and SimpleITK fall back to the qform
singular (parallel or zero axes)                         or refuse the file
MONAI's affine != nibabel's (any other cause)  error     ``predict`` would find its output off the input grid
SimpleITK refuses the header                   error     no orthonormal transform; masks could not be opened
                                                         in 3D Slicer either
pixdim[1..3] negative (magnitude right)        warning   nibabel/MONAI: abs(pixdim); SimpleITK reverses the
                                                         axis: the image looks mirrored in ITK viewers
qform and sform coded but different            warning   nibabel/MONAI: the sform; SimpleITK: the sform when
                                                         sform_code is 1 (scanner) or the two are close in
                                                         its sense, else the qform
sheared sform (SimpleITK can use the qform)    warning   SimpleITK cannot represent shear: uses the qform
neither transform (both codes 0)               warning   nibabel: pixdim with x reversed, centred; SimpleITK:
                                                         LPS axes, origin 0
qfac (pixdim[0]) not 1 or -1                   warning   read as 1 by both
xyzt_units metres or micrometres               warning   SimpleITK scales spacing and origin to mm, nibabel
                                                         ignores the units
invalid qform_code/sform_code                  warning   nibabel ignores that transform
NIfTI-2                                        warning   SimpleITK 2.x does not open it at all
only a qform, or only an sform                 (none)    all readers agree
=============================================  ========  ===================================================

Other formats (NRRD, MHA, ... through SimpleITK): a non-finite, zero or negative spacing and a singular direction
matrix are errors (SimpleITK refuses the voxels, or medattn's header reader refuses the file); a non-orthonormal
(sheared) direction is a warning, because a NIfTI mask cannot carry it for SimpleITK (write ``--format input``).

Handled means: the readers may place the *input* differently, but each reader places every mask medattn writes
exactly where it places the input, because :func:`medattn.data.io.write_volume` copies the input's geometry
fields as stored (before nibabel's repairs) when the mask lies on the input's grid. Refused means medattn's own
readers disagree, or the geometry has no usable meaning.

What SimpleITK does is modelled from ITK 5.4's ``NiftiImageIO`` (sform or qform choice, pixdim as spacing with 0
and non-finite read as 1, a negative spacing reversing its axis, units scaling) without loading ITK; for the one
step that model cannot reproduce (ITK's SVD comparison of a qform and an sform that differ, used when sform_code
is not 1) SimpleITK reads the header. MONAI is modelled from ``correct_nifti_header_if_necessary`` (MONAI 1.x).
The tests check both models against the real readers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medattn.data.io import ITK_SUFFIXES, NIFTI_SUFFIXES, has_suffix, nifti_headers, sitk_header_geometry
from medattn.errors import DataError

#: Two readers agree on an affine when every entry of column j of the linear parts differs by at most this times
#: the voxel size along j and the origins by at most :data:`ORIGIN_ATOL_MM` (``validate``'s default tolerances).
AFFINE_RTOL = 1e-3
ORIGIN_ATOL_MM = 1e-2
#: MONAI's affine must match nibabel's this closely (mm, every entry): the tolerance of ``predict``'s grid check.
PIPELINE_ATOL_MM = 1e-3

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_UNIT_TO_MM = {1: 1000.0, 2: 1.0, 3: 1e-3}  # NIfTI xyzt_units & 7: metre, mm, micrometre (ITK scales, nibabel not)
_UNIT_NAME = {1: "metres", 3: "micrometres"}
_AXES = "ijk"
_SIMPLEITK = "SimpleITK (and so 3D Slicer, ITK-SNAP)"


@dataclass(frozen=True)
class NiftiReadings:
    """The voxel-to-RAS affine (4x4, mm, index order i, j, k) each reader gives one NIfTI file.

    Attributes:
        nibabel: ``nibabel.load(path).affine`` (``validate``, ``plan``, ``predict``'s grid check).
        monai: the affine of MONAI's ``NibabelReader`` (medattn's training and prediction pipelines).
        sitk: the affine of ``SimpleITK.ReadImage`` (origin, spacing, direction, LPS turned to RAS); None when
            SimpleITK refuses the header.
        sitk_transform: what SimpleITK builds it from: ``"sform"``, ``"qform"``, ``"none"`` (both codes 0: LPS
            axes, origin 0), ``"refused"``, or ``"unsupported"`` (a NIfTI-2 file, which SimpleITK does not open).
    """

    nibabel: np.ndarray
    monai: np.ndarray
    sitk: np.ndarray | None
    sitk_transform: str


def header_problems(path: str | Path) -> list[tuple[str, str]]:
    """Geometry problems of an image header, as ``(severity, message)`` pairs, severity ``"error"`` or ``"warning"``.

    Reads the header only. The policy is in the module docstring. An empty list means every reader maps the voxels
    to the same place and the header is regular. Other suffixes than images give an empty list.

    Raises:
        DataError: the file is missing or its header cannot be read at all.

    Example::

        for severity, message in header_problems("case_001.nii.gz"):
            print(severity, message)
        # warning pixdim (voxel size) in the header is (-1, 1, 1): a negative voxel size along axis i; ...
    """
    path = Path(path)
    if not path.exists():
        raise DataError("file does not exist", path)
    if has_suffix(path, NIFTI_SUFFIXES):
        raw, fixed = nifti_headers(path)
        return _nifti_problems(path, raw, fixed)
    if has_suffix(path, ITK_SUFFIXES):
        return _itk_problems(path)
    return []


def nifti_readings(path: str | Path) -> NiftiReadings:
    """What nibabel, MONAI's NIfTI reader and SimpleITK make of a NIfTI header (see :class:`NiftiReadings`)."""
    path = Path(path)
    raw, fixed = nifti_headers(path)
    return _readings(path, raw, fixed)


# ---- what each reader makes of a header ------------------------------------------------------------------------------


def _readings(path: Path, raw: Any, fixed: Any) -> NiftiReadings:
    with np.errstate(all="ignore"):
        nib_affine = np.asarray(fixed.get_best_affine(), dtype=float)
        monai = _monai_affine(fixed, nib_affine)
        sitk, transform = _sitk_nifti(raw)
        if isinstance(raw, nib.Nifti2Header):  # ITK 5.4's NiftiImageIO opens NIfTI-1 only
            sitk, transform = None, "unsupported"
        elif transform == "ask":
            sitk, transform = _sitk_read(path, raw)
    return NiftiReadings(nib_affine, monai, sitk, transform)


# ---- MONAI's NibabelReader (monai.data.utils.correct_nifti_header_if_necessary) --------------------------------------


def _monai_spacing(affine: np.ndarray, r: int) -> np.ndarray:
    sp = np.sqrt(np.sum(np.asarray(affine)[:r, :r] ** 2, axis=0))
    sp[sp == 0] = 1.0
    return sp


def _monai_affine(fixed: Any, nib_affine: np.ndarray) -> np.ndarray:
    """MONAI keeps nibabel's affine unless pixdim disagrees with it; then it swaps in the transform that agrees."""
    dim = int(fixed["dim"][0])
    if dim >= 5:
        return nib_affine
    zooms = np.asarray(fixed.get_zooms(), dtype=float)[:dim]
    if np.allclose(zooms, _monai_spacing(nib_affine, dim)):
        return nib_affine
    sform, qform = fixed.get_sform(), fixed.get_qform()
    sform_ok = np.allclose(_monai_spacing(sform, dim), zooms)
    qform_ok = np.allclose(_monai_spacing(qform, dim), zooms)
    if int(fixed["sform_code"]) != 0:
        if sform_ok:
            return nib_affine
        if qform_ok:
            return np.asarray(qform, dtype=float)  # MONAI copies the qform into the sform
    if int(fixed["qform_code"]) != 0:
        if qform_ok:
            return nib_affine
        if sform_ok:  # MONAI copies the sform into the qform (sform_code is 0 here)
            hdr = fixed.copy()
            hdr.set_qform(sform)
            return np.asarray(hdr.get_best_affine(), dtype=float)
    return nib_affine  # MONAI only rewrites pixdim


# ---- SimpleITK (ITK 5.4 NiftiImageIO + ImageFileReader) --------------------------------------------------------------


def _good(x: float) -> float:
    return float(x) if math.isfinite(float(x)) else 0.0  # nifti_io's FIXED_FLOAT


def _itk_voxel_sizes(raw: Any) -> np.ndarray:
    d = np.asarray(raw["pixdim"][1:4], dtype=float).copy()
    d[~np.isfinite(d) | (d == 0)] = 1.0  # nifti_io: "pixdim[i] == 0 or not finite -> 1"
    return d


def _qto_xyz(raw: Any) -> np.ndarray:
    """nifti_io's ``nifti_quatern_to_mat44`` (voxel sizes <= 0 taken as 1, the sign of qfac flips k)."""
    b, c, d = (_good(raw[k]) for k in ("quatern_b", "quatern_c", "quatern_d"))
    a = 1.0 - (b * b + c * c + d * d)
    if a < 1e-7:
        s = 1.0 / math.sqrt(b * b + c * c + d * d)
        b, c, d, a = b * s, c * s, d * s, 0.0
    else:
        a = math.sqrt(a)
    xd, yd, zd = (v if v > 0 else 1.0 for v in _itk_voxel_sizes(raw))
    if float(raw["pixdim"][0]) < 0:
        zd = -zd
    m = np.eye(4)
    m[:3, :3] = np.array(
        [
            [(a * a + b * b - c * c - d * d) * xd, 2 * (b * c - a * d) * yd, 2 * (b * d + a * c) * zd],
            [2 * (b * c + a * d) * xd, (a * a + c * c - b * b - d * d) * yd, 2 * (c * d - a * b) * zd],
            [2 * (b * d - a * c) * xd, 2 * (c * d + a * b) * yd, (a * a + d * d - c * c - b * b) * zd],
        ]
    )
    m[:3, 3] = [_good(raw[k]) for k in ("qoffset_x", "qoffset_y", "qoffset_z")]
    return m


def _sto_xyz(raw: Any) -> np.ndarray:
    m = np.eye(4)
    m[:3] = np.stack([np.asarray(raw[k], dtype=float) for k in ("srow_x", "srow_y", "srow_z")])
    return m


def _decomposable(m: np.ndarray) -> bool:
    """ITK's test of an sform: an invertible affine whose normalised axes are orthonormal (1e-4)."""
    if not np.all(np.isfinite(m)):
        return False
    if abs(m[3, 3] - 1.0) + np.abs(m[3, :3]).sum() > np.finfo(np.float32).eps:
        return False
    s = np.linalg.svd(m, compute_uv=False)
    if not s[-1] / s[0] > np.finfo(float).eps:
        return False
    cols = m[:3, :3]
    norms = np.linalg.norm(cols, axis=0)
    r = cols / np.where(norms == 0, 1.0, norms)
    return bool(np.abs(r @ r.T - np.eye(3)).max() <= 1e-4)


def _itk_choice(raw: Any, qto: np.ndarray, sto: np.ndarray) -> str:
    """``"sform"``, ``"qform"``, ``"refused"``, or ``"ask"`` where ITK compares the two by SVD."""
    qcode, scode = int(raw["qform_code"]), int(raw["sform_code"])
    q_known, s_known = qcode > 0, scode > 0
    with np.errstate(invalid="ignore"):  # vnl's tests are "not above the tolerance": NaN passes them
        similar = not bool(
            np.any(np.abs(sto[:3, :3] - qto[:3, :3]) > 1e-5)
            or np.abs(sto[:, 3] - qto[:, 3]).sum() > 1e-7
            or np.abs(sto[3] - qto[3]).sum() > 1e-7
        )
    prefer_sform = similar
    if (not similar or s_known) and _decomposable(sto):
        if (not q_known and s_known) or scode == 1:
            prefer_sform = True
        elif q_known and s_known and not similar:
            return "ask"
    if prefer_sform:
        return "sform"
    return "qform" if q_known else "refused"


def _sitk_nifti(raw: Any, choice: str | None = None) -> tuple[np.ndarray | None, str]:
    """(RAS affine, transform) as SimpleITK reads NIfTI header ``raw``; ``choice`` forces the transform."""
    d = _itk_voxel_sizes(raw)
    if int(raw["qform_code"]) <= 0 and int(raw["sform_code"]) <= 0 and choice is None:
        direction, origin, transform = np.eye(3), np.zeros(3), "none"
    else:
        qto = _qto_xyz(raw) if int(raw["qform_code"]) > 0 else np.diag([*d, 1.0])
        sto = _sto_xyz(raw) if int(raw["sform_code"]) > 0 else np.zeros((4, 4))
        transform = choice or _itk_choice(raw, qto, sto)
        if transform in ("refused", "ask"):
            return None, transform
        m = sto if transform == "sform" else qto
        lps = _LPS_TO_RAS @ m
        norms = np.linalg.norm(lps[:3, :3], axis=0)
        direction = lps[:3, :3] / np.where(norms == 0, 1.0, norms)
        origin = lps[:3, 3]
    scale = _UNIT_TO_MM.get(int(raw["xyzt_units"]) & 7, 1.0)
    spacing, origin = d * scale, origin * scale
    # ImageFileReader: a negative spacing is made positive and its axis reversed.
    direction = direction * np.where(spacing < 0, -1.0, 1.0)[None, :]
    out = np.eye(4)
    out[:3, :3] = direction * np.abs(spacing)[None, :]
    out[:3, 3] = origin
    return _LPS_TO_RAS @ out, transform


def _sitk_read(path: Path, raw: Any) -> tuple[np.ndarray | None, str]:
    """Ask SimpleITK itself (header only) and name the transform it used."""
    got = _sitk_header_affine(path)
    if got is None:
        return None, "refused"
    for choice in ("sform", "qform"):
        candidate, _ = _sitk_nifti(raw, choice)
        if candidate is not None and np.allclose(candidate, got, atol=1e-4):
            return got, choice
    return got, "other"


def _sitk_header_affine(path: str | Path) -> np.ndarray | None:
    """The voxel-to-RAS affine (4x4, mm) of ``SimpleITK.ReadImage(path)``, from the header only; None if refused."""
    geometry = sitk_header_geometry(path)
    if geometry is None:
        return None
    spacing, direction, origin = geometry
    out = np.eye(4)
    out[:3, :3] = direction * spacing[None, :]
    out[:3, 3] = origin
    return _LPS_TO_RAS @ out


# ---- the NIfTI checks ------------------------------------------------------------------------------------------------


def _nifti_problems(path: Path, raw: Any, fixed: Any) -> list[tuple[str, str]]:
    r = _readings(path, raw, fixed)
    errors: list[str] = []
    warnings: list[str] = []
    pix = np.asarray(raw["pixdim"][1:4], dtype=float)
    qcode, scode = int(raw["qform_code"]), int(raw["sform_code"])
    xform = "sform" if int(fixed["sform_code"]) > 0 else "qform" if int(fixed["qform_code"]) > 0 else "pixdim"
    aff = r.nibabel
    usable = bool(np.all(np.isfinite(aff)))
    aff_sp = np.linalg.norm(aff[:3, :3], axis=0) if usable else None
    found = f"pixdim (voxel size) in the header is {_fmt(pix)}"

    # The transforms as stored, and the affine nibabel builds from them.
    q_fields = [float(raw[k]) for k in ("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z")]
    if qcode > 0 and not all(math.isfinite(v) for v in q_fields):
        errors.append(
            f"the qform (qform_code {qcode}) holds NaN or Inf: quatern {_fmt(q_fields[:3])}, qoffset "
            f"{_fmt(q_fields[3:])}; expected finite numbers"
        )
    if not usable:
        errors.append(f"the {xform} holds NaN or Inf: {_rows(aff)}; expected finite numbers")
    elif aff_sp is not None and abs(np.linalg.det(aff[:3, :3])) < 1e-6 * float(np.prod(np.maximum(aff_sp, 1e-12))):
        errors.append(
            f"the {xform} is singular (its axes are parallel or zero: {_rows(aff)}): it maps the volume onto a plane; "
            "expected three independent axes"
        )
        usable = False

    # The voxel size as stored.
    if not np.all(np.isfinite(pix)):
        errors.append(
            f"{found}: not finite; nibabel uses the {xform}"
            + (f" ({_fmt(aff_sp)} mm)" if aff_sp is not None else "")
            + f", {_SIMPLEITK} reads {_fmt(_itk_voxel_sizes(raw))} mm; expected the voxel size in mm. "
            "Rewrite the header with the true voxel size"
        )
    elif np.any(pix == 0):
        errors.append(
            f"{found}: a zero voxel size; nibabel and {_SIMPLEITK} read it as 1 mm"
            + (f" while the {xform} says {_fmt(aff_sp)} mm" if xform == "sform" and aff_sp is not None else "")
            + "; expected the voxel size in mm. Rewrite the header with the true voxel size"
        )
    elif usable and aff_sp is not None and not np.allclose(np.abs(pix), aff_sp, rtol=AFFINE_RTOL, atol=0):
        monai = (
            ""
            if _close(r.monai, aff, PIPELINE_ATOL_MM)
            else ", and MONAI's NIfTI reader (medattn's training and prediction pipelines) switches to the qform"
        )
        errors.append(
            f"{found} but the {xform}'s voxel size is {_fmt(aff_sp)} mm: nibabel uses the {xform}'s, "
            f"{_SIMPLEITK} uses pixdim{monai}; expected them equal. Rewrite the header with one voxel size"
        )
    elif np.any(pix < 0):
        axes = ", ".join(_AXES[i] for i in np.flatnonzero(pix < 0))
        warnings.append(
            f"{found}: a negative voxel size along axis {axes}; nibabel and medattn use {_fmt(np.abs(pix))} mm and "
            f"the {xform}, {_SIMPLEITK} reverses axis {axes} instead, so ITK-based viewers show the image mirrored "
            "compared with medattn. Masks medattn writes copy this header and overlay the image in every viewer; "
            f"store the positive voxel size {_fmt(np.abs(pix))} to remove the ambiguity"
        )

    # What medattn's pipelines and SimpleITK make of it.
    if not errors and not _close(r.monai, aff, PIPELINE_ATOL_MM):
        errors.append(
            f"MONAI's NIfTI reader (medattn's training and prediction pipelines) places the voxels with "
            f"{_rows(r.monai)}, nibabel with {_rows(aff)} ({_difference(aff, r.monai)}); expected one geometry. "
            f"Make pixdim match the {xform}"
        )
    if r.sitk_transform == "unsupported":
        warnings.append(
            f"a NIfTI-2 file: {_SIMPLEITK} cannot open it (nibabel and medattn can); convert it to NIfTI-1 to view "
            "it and its masks there"
        )
    elif not errors and r.sitk is None:
        errors.append(
            f"{_SIMPLEITK} cannot read this header (no orthonormal transform: qform_code {qcode}, sform_code "
            f"{scode}, {xform} {_rows(aff)}); expected a qform, or an sform without shear"
        )
    elif not errors and int(fixed["sform_code"]) > 0 and not _decomposable(_sto_xyz(raw)):
        warnings.append(
            f"the sform is sheared ({_shear(aff)}); nibabel and medattn use it, {_SIMPLEITK} cannot and uses the "
            f"qform, which has {_difference(aff, r.sitk)}. Masks medattn writes copy this header and overlay the "
            "image in every viewer"
        )

    # The codes and the two transforms.
    for name, code in (("qform_code", qcode), ("sform_code", scode)):
        if code != int(fixed[name]):
            warnings.append(
                f"{name} {code} is not a NIfTI transform code (expected 0 to 5); nibabel ignores that transform"
            )
    if not errors and qcode > 0 and scode > 0 and int(fixed["qform_code"]) > 0 and int(fixed["sform_code"]) > 0:
        q, s = fixed.get_qform(), fixed.get_sform()
        if not _close(s, q):
            used = {"sform": "the sform too", "qform": "the qform"}.get(r.sitk_transform, "neither")
            warnings.append(
                f"the qform and the sform disagree (qform_code {qcode}, sform_code {scode}): the qform has "
                f"{_difference(s, q)}; nibabel and medattn use the sform, {_SIMPLEITK} uses {used}. Masks medattn "
                "writes keep both, so they overlay the image in every viewer; set the qform from the sform to "
                "remove the ambiguity"
            )
    qfac = float(raw["pixdim"][0])
    if qcode > 0 and qfac not in (-1.0, 1.0):
        warnings.append(f"qfac (pixdim[0]) is {qfac:g}: expected 1 or -1; nibabel and SimpleITK read it as 1")
    if qcode <= 0 and scode <= 0:
        warnings.append(
            "the header has neither a qform nor an sform (qform_code and sform_code 0), so the orientation is "
            f"unknown: nibabel and medattn assume {axcodes(aff)} axes centred on the volume, {_SIMPLEITK} LPS axes "
            "with origin 0. Masks medattn writes keep codes 0 and overlay the image in every viewer; a model "
            "trained on oriented scans may see this one mirrored"
        )
    unit = int(raw["xyzt_units"]) & 7
    if unit in _UNIT_NAME:
        warnings.append(
            f"xyzt_units says {_UNIT_NAME[unit]}: {_SIMPLEITK} scales voxel size and origin by "
            f"{_UNIT_TO_MM[unit]:g} (voxel size {_fmt(np.abs(_itk_voxel_sizes(raw)) * _UNIT_TO_MM[unit])} mm), "
            "nibabel and medattn ignore units"
            + (f" ({_fmt(aff_sp)} mm)" if aff_sp is not None else "")
            + "; set the units to mm (xyzt_units 2) if the numbers are in mm"
        )

    if not errors and not warnings and r.sitk is not None and not _close(aff, r.sitk):
        warnings.append(
            f"{_SIMPLEITK} places the voxels differently from nibabel and medattn: {_difference(aff, r.sitk)}"
        )
    return [("error", m) for m in errors] + [("warning", m) for m in warnings]


# ---- other formats ---------------------------------------------------------------------------------------------------


def _itk_problems(path: Path) -> list[tuple[str, str]]:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise DataError(f"cannot read image header ({str(e).strip().splitlines()[-1]})", path) from e
    dim = reader.GetDimension()
    spacing = np.asarray(reader.GetSpacing(), dtype=float)[:3]
    origin = np.asarray(reader.GetOrigin(), dtype=float)[:3]
    direction = np.asarray(reader.GetDirection(), dtype=float).reshape(dim, dim)[:3, :3]
    out: list[tuple[str, str]] = []
    found = f"spacing (voxel size) in the header is {_fmt(spacing)}"
    if not np.all(np.isfinite(spacing)):
        out.append(("error", f"{found}: not finite; expected the voxel size in mm"))
    elif np.any(spacing == 0):
        out.append(("error", f"{found}: a zero voxel size, which SimpleITK refuses; expected the voxel size in mm"))
    elif np.any(spacing < 0):
        out.append(
            (
                "error",
                f"{found}: a negative voxel size; SimpleITK loads it positive with the axis reversed, medattn's "
                "header reader refuses it; store the positive size and the reversed direction",
            )
        )
    if not np.all(np.isfinite(origin)) or not np.all(np.isfinite(direction)):
        out.append(("error", f"origin {_fmt(origin)} or direction {_rows(direction)} is not finite"))
    elif abs(np.linalg.det(direction)) < 1e-6:
        out.append(
            (
                "error",
                f"the direction matrix is singular ({_rows(direction)}): axes parallel or zero, SimpleITK "
                "refuses the voxels; expected three independent axes",
            )
        )
    elif np.abs(direction.T @ direction - np.eye(3)).max() > 1e-4:
        aff = np.eye(4)
        aff[:3, :3] = direction
        out.append(
            (
                "warning",
                f"the direction matrix is sheared ({_shear(aff)}); a NIfTI mask cannot store that for SimpleITK, "
                "so write masks in this file's format (predict --format input)",
            )
        )
    return out


# ---- describing geometry ---------------------------------------------------------------------------------------------


def _close(a: np.ndarray | None, b: np.ndarray | None, atol: float | None = None) -> bool:
    """Whether two affines agree: ``atol`` on every entry, or validate's relative/origin tolerances."""
    if a is None or b is None:
        return False
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return False
    if atol is not None:
        return bool(np.abs(a[:3] - b[:3]).max() <= atol)
    scale = np.linalg.norm(a[:3, :3], axis=0)
    lin = np.abs(a[:3, :3] - b[:3, :3]).max(axis=0) <= AFFINE_RTOL * scale
    return bool(np.all(lin) and np.abs(a[:3, 3] - b[:3, 3]).max() <= ORIGIN_ATOL_MM)


def _difference(ref: np.ndarray, other: np.ndarray | None) -> str:
    """How affine ``other`` differs from ``ref``, in words (voxel size, orientation, rotation, origin)."""
    if other is None:
        return "no geometry"
    ref, other = np.asarray(ref, dtype=float), np.asarray(other, dtype=float)
    if not (np.all(np.isfinite(ref)) and np.all(np.isfinite(other))):
        return "NaN or Inf entries"
    parts = []
    sp_r, sp_o = np.linalg.norm(ref[:3, :3], axis=0), np.linalg.norm(other[:3, :3], axis=0)
    if not np.allclose(sp_r, sp_o, rtol=AFFINE_RTOL, atol=0):
        parts.append(f"voxel size {_fmt(sp_o)} mm instead of {_fmt(sp_r)}")
    else:
        ax_r, ax_o = axcodes(ref), axcodes(other)
        d_r, d_o = ref[:3, :3] / sp_r, other[:3, :3] / sp_o
        flipped = [_AXES[j] for j in range(3) if float(d_r[:, j] @ d_o[:, j]) < 0]
        if flipped:
            parts.append(f"axis {', '.join(flipped)} reversed ({ax_o} instead of {ax_r})")
        else:
            rel = d_o @ d_r.T
            angle = math.degrees(math.acos(max(-1.0, min(1.0, (float(np.trace(rel)) - 1.0) / 2.0))))
            if angle > 1e-3:
                parts.append(f"a rotation by {angle:.3g} degrees" + (f" ({ax_o} instead of {ax_r})" * (ax_o != ax_r)))
    shift = float(np.linalg.norm(other[:3, 3] - ref[:3, 3]))
    if shift > ORIGIN_ATOL_MM:
        parts.append(f"origin {_fmt(other[:3, 3])} mm instead of {_fmt(ref[:3, 3])} ({shift:.3g} mm away)")
    return "; ".join(parts) or "differences below the tolerance"


def _shear(affine: np.ndarray) -> str:
    cols = np.asarray(affine, dtype=float)[:3, :3]
    unit = cols / np.where(np.linalg.norm(cols, axis=0) == 0, 1.0, np.linalg.norm(cols, axis=0))
    worst, pair = 0.0, (0, 1)
    for i, j in ((0, 1), (0, 2), (1, 2)):
        off = abs(90.0 - math.degrees(math.acos(max(-1.0, min(1.0, float(unit[:, i] @ unit[:, j]))))))
        if off >= worst:
            worst, pair = off, (i, j)
    i, j = pair
    angle = math.degrees(math.acos(max(-1.0, min(1.0, float(unit[:, i] @ unit[:, j])))))
    return f"axes {_AXES[i]} and {_AXES[j]} at {angle:.4g} degrees instead of 90"


def axcodes(affine: np.ndarray) -> str:
    """Orientation letters of an affine (``"RAS"``, ``"LPS"``); ``"???"`` for a degenerate one."""
    try:
        return "".join(c or "?" for c in nib.aff2axcodes(affine))
    except Exception:  # a degenerate affine
        return "???"


def _fmt(values: Any) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in np.asarray(values).ravel()) + ")"


def _rows(affine: np.ndarray) -> str:
    a = np.asarray(affine, dtype=float)
    return "[" + ", ".join(_fmt(row) for row in a[: min(3, a.shape[0])]) + "]"
