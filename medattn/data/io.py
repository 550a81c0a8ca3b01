"""Reading and writing volumes with their geometry, and atomic file output.

Header and voxel access here uses nibabel (NIfTI) and SimpleITK (NRRD, MHA/MHD, GIPL and other ITK formats)
directly, without importing MONAI or torch, so ``validate``, ``manifest`` and ``plan`` start fast. The MONAI
pipelines read the same files through :mod:`medattn.data.readers`, whose ``SimpleITKReader`` uses
:func:`sitk_to_array` below, so both paths agree on voxels and geometry.

Geometry convention (MONAI's): arrays are indexed (x, y, z) = (i, j, k) in voxel order as stored, and ``affine``
maps voxel indices to RAS world coordinates in mm. SimpleITK stores LPS; the reader converts.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medattn.errors import DataError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd", ".gipl", ".gipl.gz", ".hdr", ".img", ".vtk", ".mnc")
IMAGE_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

PathLike = str | os.PathLike


def has_suffix(path: str | os.PathLike, suffixes: Iterable[str]) -> bool:
    name = str(path).lower()
    return any(name.endswith(s) for s in suffixes)


def strip_suffix(name: str) -> str:
    """``case_001.nii.gz`` -> ``case_001`` (any known image suffix)."""
    low = name.lower()
    for s in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if low.endswith(s):
            return name[: -len(s)]
    return Path(name).stem


def sitk_to_array(im: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """A SimpleITK image as an array indexed (x, y, z[, c]) plus MONAI-style metadata (``affine`` in RAS)."""
    import SimpleITK as sitk

    arr = sitk.GetArrayFromImage(im)  # (z, y, x[, c])
    ncomp = im.GetNumberOfComponentsPerPixel()
    spatial = arr.ndim - (1 if ncomp > 1 else 0)
    order = tuple(reversed(range(spatial))) + ((spatial,) if ncomp > 1 else ())
    arr = np.transpose(arr, order)
    affine = sitk_affine_ras(im)
    header = {
        "affine": affine,
        "original_affine": affine.copy(),
        "spatial_shape": np.asarray(arr.shape[:spatial]),
        "original_channel_dim": -1 if ncomp > 1 else float("nan"),
        "space": "RAS",
        "spacing": np.asarray(im.GetSpacing()),
    }
    return arr, header


def sitk_affine_ras(im: Any) -> np.ndarray:
    """4x4 voxel-to-RAS affine of a 3D SimpleITK image (index order x, y, z)."""
    dim = im.GetDimension()
    direction = np.asarray(im.GetDirection(), dtype=float).reshape(dim, dim)
    spacing = np.asarray(im.GetSpacing(), dtype=float)
    origin = np.asarray(im.GetOrigin(), dtype=float)
    affine = np.eye(4)
    d = min(dim, 3)
    affine[:d, :d] = (direction * spacing[None, :])[:d, :d]
    affine[:d, 3] = origin[:d]
    return _LPS_TO_RAS @ affine


@dataclass(frozen=True)
class VolumeHeader:
    """Geometry and storage facts of a volume, read without loading its voxels where the format allows.

    Attributes:
        shape: full array shape as stored (spatial axes first, then channels for 4D).
        affine: 4x4 voxel-to-RAS affine (mm).
        spacing: voxel size in mm along the first three axes.
        dtype: stored voxel dtype (before any scaling).
    """

    shape: tuple[int, ...]
    affine: np.ndarray
    spacing: tuple[float, ...]
    dtype: str

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return self.shape[:3]


def read_header(path: str | Path) -> VolumeHeader:
    """Geometry of an image file. Raises DataError naming the file when it cannot be opened."""
    path = Path(path)
    if not path.exists():
        raise DataError("file does not exist", path)
    try:
        if has_suffix(path, NIFTI_SUFFIXES):
            img: Any = nib.load(str(path))
            hdr: Any = img.header
            zooms = tuple(float(z) for z in hdr.get_zooms()[:3])
            return VolumeHeader(
                tuple(int(s) for s in img.shape), np.asarray(img.affine), zooms, str(hdr.get_data_dtype())
            )
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        size = tuple(int(s) for s in reader.GetSize())
        ncomp = reader.GetNumberOfComponents()
        shape = size + ((ncomp,) if ncomp > 1 else ())
        im = sitk.Image([1] * reader.GetDimension(), sitk.sitkUInt8)
        im.SetDirection(reader.GetDirection())
        im.SetSpacing(reader.GetSpacing())
        im.SetOrigin(reader.GetOrigin())
        dtype = sitk.GetPixelIDValueAsString(reader.GetPixelID())
        return VolumeHeader(shape, sitk_affine_ras(im), tuple(float(s) for s in reader.GetSpacing()[:3]), dtype)
    except DataError:
        raise
    except Exception as e:  # nibabel/SimpleITK raise many types for unreadable files
        raise DataError(f"cannot read image header ({type(e).__name__}: {e})", path) from e


def read_volume(path: str | Path, dtype: Any = np.float32) -> tuple[np.ndarray, VolumeHeader]:
    """Load voxels (as stored, axes x, y, z[, c]) and header. Raises DataError naming the file on any failure.

    Decompression errors (a truncated ``.nii.gz``) surface here, not in :func:`read_header`.
    """
    header = read_header(path)
    try:
        if has_suffix(path, NIFTI_SUFFIXES):
            nii: Any = nib.load(str(path))
            arr = np.asanyarray(nii.dataobj)  # applies scl_slope/scl_inter
            if dtype is not None:
                arr = arr.astype(dtype, copy=False)
        else:
            import SimpleITK as sitk

            arr, _ = sitk_to_array(sitk.ReadImage(str(path)))
            if dtype is not None:
                arr = arr.astype(dtype, copy=False)
    except (EOFError, OSError, zlib.error, ValueError, RuntimeError) as e:
        raise DataError(f"cannot read voxel data ({type(e).__name__}: {e}); the file may be truncated", path) from e
    return arr, header


# ---- writing ---------------------------------------------------------------------------------------------------


def _ensure_not_input(path: Path, protected: Iterable[str | Path]) -> None:
    target = path.resolve()
    for p in protected:
        if Path(p).resolve() == target:
            raise DataError("refusing to overwrite an input file; choose another output path", path)


@contextlib.contextmanager
def atomic_path(path: str | Path, protected: Iterable[str | Path] = ()) -> Any:
    """Yield a temporary path in the destination's folder; on success rename it onto ``path``.

    The temporary name keeps the destination's suffix so writers that infer the format from it (nibabel,
    SimpleITK) behave the same. On failure the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    _ensure_not_input(path, protected)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.lower().endswith(".gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600 files; outputs should get the permissions any new file gets (0666 less the umask).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_text(path: str | Path, text: str, protected: Iterable[str | Path] = ()) -> Path:
    with atomic_path(path, protected) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_with(path: str | Path, writer: Callable[[Path], Any], protected: Iterable[str | Path] = ()) -> Path:
    """Call ``writer(tmp_path)`` then move the result to ``path`` atomically."""
    with atomic_path(path, protected) as tmp:
        writer(tmp)
    return Path(path)


def write_volume(
    array: np.ndarray,
    affine: np.ndarray,
    path: str | Path,
    *,
    dtype: Any = None,
    like: str | Path | None = None,
    protected: Iterable[str | Path] = (),
) -> Path:
    """Write ``array`` (axes x, y, z[, c]) with a voxel-to-RAS ``affine``, atomically.

    NIfTI files are written with nibabel; when ``like`` is a NIfTI file its header (qform/sform codes, units,
    intent) is reused so the output overlays the source in any viewer. Other suffixes go through SimpleITK.
    ``like`` is always protected from being overwritten.

    Args:
        array: voxel data; integer arrays are stored as their own dtype unless ``dtype`` says otherwise.
        affine: 4x4 voxel-to-RAS (mm).
        path: destination; its suffix picks the format.
        dtype: on-disk dtype (e.g. ``np.uint8`` for masks).
        like: source image whose header to copy.
        protected: further paths that must not be overwritten (the inputs of the run).
    """
    path = Path(path)
    prot = [*protected, *([like] if like is not None else [])]
    arr = np.asarray(array if dtype is None else np.asarray(array).astype(dtype))
    affine = np.asarray(affine, dtype=float)

    if has_suffix(path, NIFTI_SUFFIXES):
        header: Any = None
        if like is not None and has_suffix(like, NIFTI_SUFFIXES):
            src: Any = nib.load(str(like))
            header = src.header.copy()
        img = nib.Nifti1Image(arr, affine, header=header)
        img.set_data_dtype(arr.dtype)
        if header is not None:
            # Keep the source's qform/sform codes but with the affine we were given.
            qcode = int(header["qform_code"]) or 1
            scode = int(header["sform_code"]) or 1
            img.set_qform(affine, code=qcode)
            img.set_sform(affine, code=scode)
            img.header["scl_slope"] = np.nan  # we store data unscaled
            img.header["scl_inter"] = np.nan
        else:
            img.set_qform(affine, code=1)
            img.set_sform(affine, code=1)
        return atomic_write_with(path, lambda tmp: nib.save(img, str(tmp)), prot)

    import SimpleITK as sitk

    spatial = 3
    vector = arr.ndim > spatial
    im = sitk.GetImageFromArray(np.transpose(arr, (2, 1, 0, *range(3, arr.ndim))), isVector=vector)
    lps = _LPS_TO_RAS @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    im.SetSpacing([float(s) for s in spacing])
    im.SetDirection([float(v) for v in (lps[:3, :3] / spacing[None, :]).ravel()])
    im.SetOrigin([float(v) for v in lps[:3, 3]])
    return atomic_write_with(path, lambda tmp: sitk.WriteImage(im, str(tmp), useCompression=True), prot)


def spacing_from_affine(affine: np.ndarray) -> np.ndarray:
    """Voxel size (mm) along each of the three index axes."""
    return np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
