"""Reading and writing volumes with their geometry, and atomic file output.

Header and voxel access here uses nibabel (NIfTI) and SimpleITK (NRRD, MHA/MHD, GIPL and other ITK formats)
directly, without importing MONAI or torch, so ``validate``, ``manifest`` and ``plan`` start fast. The MONAI
pipelines read the same files through :mod:`medattn.data.readers`, whose ``SimpleITKReader`` uses
:func:`sitk_to_array` below, so both paths agree on voxels and geometry.

Geometry convention (MONAI's): arrays are indexed (X, Y, Z) = (i, j, k) in voxel order as stored, and ``affine``
maps voxel indices to RAS world coordinates in mm. SimpleITK stores LPS; the reader converts.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import tempfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medattn.errors import DataError
from medattn.typing import PathLike

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd", ".gipl", ".gipl.gz", ".hdr", ".img", ".vtk", ".mnc")
IMAGE_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def has_suffix(path: PathLike, suffixes: Iterable[str]) -> bool:
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
    """A SimpleITK image as an array indexed (X, Y, Z[, C]) plus MONAI-style metadata (``affine`` in RAS)."""
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
    if path.is_dir():
        return _series_header(series_info(path))
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
        raise DataError(f"cannot read image header ({reader_error(e)})", path) from e


def series_info(folder: str | Path) -> Any:
    """The checked DICOM series of ``folder`` (:func:`medattn.data.dicom.scan_series`), remembered while none of its
    files changes: every command reads a case's header several times (gate, plan, loader)."""
    folder = Path(folder)
    stamp = tuple((e.name, e.stat().st_mtime_ns, e.stat().st_size) for e in sorted(folder.iterdir()) if e.is_file())
    # Keyed on the spelling given (made absolute), not the resolved path: SeriesInfo keeps the caller's paths, and
    # a series reached through a link must report the link's names.
    key = (str(folder.absolute()), stamp)
    if key not in _SERIES_CACHE:
        from medattn.data.dicom import scan_series

        if len(_SERIES_CACHE) > 256:
            _SERIES_CACHE.clear()
        _SERIES_CACHE[key] = scan_series(folder)
    return _SERIES_CACHE[key]


_SERIES_CACHE: dict[tuple[str, tuple[Any, ...]], Any] = {}


def _series_header(info: Any) -> VolumeHeader:
    return VolumeHeader(tuple(info.shape), info.affine.copy(), info.spacing, info.stored_dtype)


#: What SimpleITK puts before the error itself: where it was thrown (C++ file and line), the level, the object.
_ITK_PREFIX = re.compile(
    r"^(?:Exception thrown in SimpleITK \S+: \S+:\d+:\s*)?(?:s?itk::ERROR:\s*)?(?:\w+\(0x[0-9a-f]+\):\s*)?"
)


def reader_error(e: BaseException) -> str:
    """A reader's exception as one readable line: ``Type: message``.

    SimpleITK's messages start with the C++ source file and line and an object address, then ITK's chain of
    causes one per line (NRRD's reader: ``trouble reading`` ... ``parsed 2 values, but dimension is 3``); what a
    user needs is the first line's error and the last line's cause.
    """
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    if lines[0].startswith("Exception thrown in SimpleITK"):
        body = [_ITK_PREFIX.sub("", " ".join(lines[:2]) if lines[0].endswith(":") else lines[0])]
        rest = lines[2:] if lines[0].endswith(":") else lines[1:]
        if rest:
            body.append(re.sub(r"^\[\w+\]\s*\w+:\s*", "", rest[-1]))
        return "SimpleITK: " + "; ".join(b.rstrip(":") for b in body if b)
    return f"{type(e).__name__}: {' '.join(lines)}"


def read_volume(path: str | Path, dtype: Any = np.float32) -> tuple[np.ndarray, VolumeHeader]:
    """Load voxels (as stored, axes X, Y, Z[, C]) and header. Raises DataError naming the file on any failure.

    Decompression errors (a truncated ``.nii.gz``) surface here, not in :func:`read_header`. A folder is read as a
    DICOM series (:mod:`medattn.data.dicom`).
    """
    if Path(path).is_dir():
        from medattn.data.dicom import read_series

        info = series_info(path)
        arr, _ = read_series(info)
        return (arr if dtype is None else arr.astype(dtype, copy=False)), _series_header(info)
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
        raise DataError(f"cannot read voxel data ({reader_error(e)}); the file may be truncated", path) from e
    return arr, header


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex), read in 1 MiB blocks: what identifies a model file in drift caches,
    DICOM-SEG objects and exports."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---- writing ---------------------------------------------------------------------------------------------------


def _ensure_not_input(path: Path, protected: Iterable[str | Path]) -> None:
    target = path.resolve()
    for p in protected:
        if Path(p).resolve() == target:
            raise DataError("refusing to overwrite an input file; choose another output path", path)


#: Marks the temporary files of :func:`atomic_path` (``.<name>.medattn-tmp-<host>-<pid>-<random>.tmp<suffix>``).
TEMP_TAG = "medattn-tmp-"


def host_tag() -> str:
    """Eight hex digits naming this host and its process-id namespace, part of every temporary file's name.

    Containers may share a host name but not their process ids, so the namespace is part of the tag: a process id
    in a temporary file's name is only compared with the processes it can refer to.
    """
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:  # not Linux
        namespace = 0
    return f"{zlib.crc32(f'{socket.gethostname()}:{namespace}'.encode()) & 0xFFFFFFFF:08x}"


@contextlib.contextmanager
def atomic_path(path: str | Path, protected: Iterable[str | Path] = ()) -> Any:
    """Yield a temporary path in the destination's folder; on success rename it onto ``path``.

    The temporary name keeps the destination's suffix so writers that infer the format from it (nibabel,
    SimpleITK) behave the same, and names its host and process (see :data:`TEMP_TAG`). On failure the temporary
    file is removed and ``path`` is untouched; after a ``kill -9`` it stays until
    :func:`medattn.data.guard.clean_orphans` removes it at the next run's start.
    """
    path = Path(path)
    _ensure_not_input(path, protected)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.lower().endswith(".gz") else path.suffix
    # The name says who writes it, so medattn.data.guard.clean_orphans can tell a killed writer's leftovers.
    owner = f"{TEMP_TAG}{host_tag()}-{os.getpid()}-"
    # a file name holds at most 255 bytes: a long case name is shortened here (the destination keeps it whole)
    room = 255 - len(f"..{owner}") - len((".tmp" + suffix).encode()) - 16  # 16: mkstemp's random part, and spare
    stem = path.name.encode()[: max(room, 1)].decode(errors="ignore") or "x"
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.{owner}", suffix=".tmp" + suffix, dir=path.parent)
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


#: An array lies on ``like``'s grid when it has ``like``'s spatial shape and its affine is within this of the one
#: medattn reads for ``like`` (mm, every entry; as ``predict``'s grid check). Then ``write_volume`` copies ``like``'s
#: geometry exactly as stored instead of rebuilding it from the affine.
GRID_ATOL_MM = 1e-3

#: The NIfTI header fields that place voxels in the world, besides ``pixdim[0:4]`` (qfac and voxel size).
_NIFTI_GEOMETRY_FIELDS = (
    "qform_code",
    "sform_code",
    "quatern_b",
    "quatern_c",
    "quatern_d",
    "qoffset_x",
    "qoffset_y",
    "qoffset_z",
    "srow_x",
    "srow_y",
    "srow_z",
    "xyzt_units",
)


def write_volume(
    array: np.ndarray,
    affine: np.ndarray,
    path: str | Path,
    *,
    dtype: Any = None,
    like: str | Path | None = None,
    protected: Iterable[str | Path] = (),
) -> Path:
    """Write ``array`` (axes X, Y, Z[, C]) with a voxel-to-RAS ``affine``, atomically.

    NIfTI files are written with nibabel, other suffixes through SimpleITK. When ``array`` lies on the grid of
    ``like`` (same spatial shape, ``affine`` within :data:`GRID_ATOL_MM` of the affine medattn reads for ``like``),
    the output carries ``like``'s geometry exactly as stored, so every reader places it where it places ``like``,
    even where readers disagree about ``like`` (see :mod:`medattn.data.geometry`):

    - NIfTI from a NIfTI ``like``: its header (units, intent, description) with the geometry fields as stored
      (qform/sform codes, quaternion, qoffset, srow, pixdim[0:4] with qfac), not as nibabel repairs them on load
      (a negative pixdim made positive would flip the output along that axis in SimpleITK).
    - Other formats: the spacing, origin and direction SimpleITK reads for ``like``.

    Otherwise the geometry is built from ``affine`` (qform and sform, codes from a NIfTI ``like`` or 1).
    ``like`` is always protected from being overwritten.

    Args:
        array: voxel data; integer arrays are stored as their own dtype unless ``dtype`` says otherwise.
        affine: 4x4 voxel-to-RAS (mm).
        path: destination; its suffix picks the format.
        dtype: on-disk dtype (e.g. ``np.uint8`` for masks).
        like: source image whose header to copy.
        protected: further paths that must not be overwritten (the inputs of the run).

    Raises:
        DataError: ``affine`` holds NaN or Inf (and the array is not on ``like``'s grid), naming ``path``.
    """
    path = Path(path)
    prot = [*protected, *([like] if like is not None else [])]
    arr = np.asarray(array if dtype is None else np.asarray(array).astype(dtype))
    affine = np.asarray(affine, dtype=float)

    if has_suffix(path, NIFTI_SUFFIXES):
        img = _nifti_image(arr, affine, like, path)
        return atomic_write_with(path, lambda tmp: nib.save(img, str(tmp)), prot)

    import SimpleITK as sitk

    spatial = 3
    vector = arr.ndim > spatial
    im = sitk.GetImageFromArray(np.transpose(arr, (2, 1, 0, *range(3, arr.ndim))), isVector=vector)
    geometry = _sitk_geometry_of(like, arr.shape, affine) if like is not None else None
    if geometry is None:
        _require_finite(affine, path)
        lps = _LPS_TO_RAS @ affine
        spacing = np.linalg.norm(lps[:3, :3], axis=0)
        geometry = spacing, lps[:3, :3] / spacing[None, :], lps[:3, 3]
    spacing, direction, origin = geometry
    im.SetSpacing([float(s) for s in spacing])
    im.SetDirection([float(v) for v in direction.ravel()])
    im.SetOrigin([float(v) for v in origin])
    return atomic_write_with(path, lambda tmp: sitk.WriteImage(im, str(tmp), useCompression=True), prot)


def _on_grid(shape: tuple[int, ...], affine: np.ndarray, like_shape: tuple[int, ...], like_affine: Any) -> bool:
    like_affine = np.asarray(like_affine, dtype=float)
    return (
        tuple(shape[:3]) == tuple(like_shape[:3])
        and bool(np.all(np.isfinite(affine)))
        and bool(np.abs(affine[:3] - like_affine[:3]).max() <= GRID_ATOL_MM)
    )


def _require_finite(affine: np.ndarray, path: Path) -> None:
    if not np.all(np.isfinite(affine)):
        raise DataError(f"cannot write: the affine holds NaN or Inf ({affine[:3].round(4).tolist()})", path)


def _nifti_image(arr: np.ndarray, affine: np.ndarray, like: str | Path | None, path: Path) -> Any:
    """The nibabel image :func:`write_volume` saves (see there for the geometry rules)."""
    header: Any = None
    if like is not None and has_suffix(like, NIFTI_SUFFIXES):
        src: Any = nib.load(str(like))
        if _on_grid(arr.shape, affine, src.shape, src.affine):
            stored, _ = nifti_headers(like)
            img = type(src)(arr, None, header=src.header.copy())  # no affine: nibabel keeps the fields set below
            img.set_data_dtype(arr.dtype)
            out = img.header
            for k in _NIFTI_GEOMETRY_FIELDS:
                out[k] = stored[k]
            pixdim = np.array(out["pixdim"])
            pixdim[:4] = stored["pixdim"][:4]
            out["pixdim"] = pixdim
            out["scl_slope"] = np.nan  # we store data unscaled
            out["scl_inter"] = np.nan
            return img
        header = src.header.copy()
    _require_finite(affine, path)
    img = nib.Nifti1Image(arr, affine, header=header)
    img.set_data_dtype(arr.dtype)
    if header is not None:
        # Keep the source's qform/sform codes but with the affine we were given.
        img.set_qform(affine, code=int(header["qform_code"]) or 1)
        img.set_sform(affine, code=int(header["sform_code"]) or 1)
        img.header["scl_slope"] = np.nan
        img.header["scl_inter"] = np.nan
    else:
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
    return img


def _sitk_geometry_of(
    like: str | Path, shape: tuple[int, ...], affine: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(spacing, direction 3x3, origin) in LPS as ``SimpleITK.ReadImage(like)`` has them, if ``shape``/``affine``
    lie on ``like``'s grid; None otherwise or when SimpleITK cannot read ``like``."""
    try:
        header = read_header(like)
    except DataError:
        return None
    if not _on_grid(shape, affine, header.spatial_shape, header.affine):
        return None
    geometry = sitk_header_geometry(like)
    if geometry is None:
        return None
    spacing, direction, origin = geometry
    if not (np.all(spacing > 0) and np.all(np.isfinite(direction)) and np.all(np.isfinite(origin))):
        return None
    return geometry


def sitk_header_geometry(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(spacing, direction 3x3, origin) in LPS as ``SimpleITK.ReadImage(path)`` gives them, from the header only;
    None when SimpleITK refuses the header or the image is not 3D.

    Follows ``ImageFileReader``: a negative spacing becomes positive and reverses its axis.
    """
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    dim = reader.GetDimension()
    if dim < 3:
        return None
    spacing = np.asarray(reader.GetSpacing(), dtype=float)[:3]
    direction = np.asarray(reader.GetDirection(), dtype=float).reshape(dim, dim)[:3, :3]
    origin = np.asarray(reader.GetOrigin(), dtype=float)[:3]
    direction = direction * np.where(spacing < 0, -1.0, 1.0)[None, :]
    return np.abs(spacing), direction, origin


class _DiscardLog:
    """A logger for nibabel's header checks that keeps their messages to itself."""

    def log(self, *args: Any, **kwargs: Any) -> None:
        return None


def nifti_headers(path: str | Path) -> tuple[Any, Any]:
    """(the header as stored, the header as ``nibabel.load`` repairs it) of a NIfTI-1 or -2 file; reads the header
    bytes only.

    On load nibabel silently makes a negative pixdim positive, a zero pixdim 1, a qfac (pixdim[0]) other than
    1 or -1 into 1, and unknown qform/sform codes 0; SimpleITK reads the stored values. Raises DataError naming
    the file when the header cannot be read.
    """
    from nibabel.openers import ImageOpener

    try:
        with ImageOpener(str(path)) as f:
            block = f.read(540)
        klass: Any = nib.Nifti2Header if nib.Nifti2Header.may_contain_header(block) else nib.Nifti1Header
        size = klass.template_dtype.itemsize
        if len(block) < size:
            raise DataError(f"the NIfTI header is cut short ({len(block)} of {size} bytes)", path)
        stored = klass(block[:size], check=False)
        repaired = klass(stored.binaryblock, stored.endianness, check=False)
        repaired.check_fix(logger=_DiscardLog())  # what nibabel.load does, without its log lines
    except DataError:
        raise
    except Exception as e:  # nibabel and gzip raise many types for unreadable headers
        raise DataError(f"cannot read the NIfTI header ({type(e).__name__}: {e})", path) from e
    return stored, repaired


def spacing_from_affine(affine: np.ndarray) -> np.ndarray:
    """Voxel size (mm) along each of the three index axes."""
    return np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
