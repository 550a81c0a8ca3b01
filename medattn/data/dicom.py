"""DICOM series as volumes: a folder of DICOM files is an image input wherever a NIfTI file is.

A series folder holds the files of one image series (one ``SeriesInstanceUID``). :func:`scan_series` reads every
file's header with pydicom (no pixels), checks that the files make one regular 3D volume and works out its geometry;
:func:`read_series` then reads the voxels with SimpleITK's GDCM series reader, in the slice order found here, and
checks that SimpleITK places the grid where the headers say.

Why these two libraries: GDCM (through SimpleITK, already a dependency) decodes the transfer syntaxes scanners write
(JPEG lossless, JPEG 2000, RLE) and applies each slice's rescale slope and intercept, which pydicom alone would need
extra codec packages for; MONAI's ``ITKReader`` would need the ``itk`` package, and its ``PydicomReader`` those
codecs. But GDCM's series reader orders files and builds the grid without saying when the files do not make one
volume: it stacks two interleaved series, skips over a missing slice (the grid is then wrong beyond it), keeps a
duplicated one, and treats a tilted stack as if it were not. Those checks are what this module adds, on the headers,
before any voxel is read:

* every file is DICOM and an image (a segmentation, structured report or presentation state is not);
* one series (several are listed with their number, description and file count);
* single-frame slices of one size, pixel spacing and orientation (enhanced multi-frame files are refused for now);
* one volume: no slice position repeated (several echoes or time points at the same positions are named as such,
  by the attribute that tells them apart; an exact repeat is a duplicated slice), at least two slices;
* slices evenly spaced along the slice normal (a gap of twice the others is a missing slice) and stacked along the
  normal (a gantry tilt or a sheared stack is refused: the voxel grid would not be a parallelepiped);
* one kind of image: a derived or secondary slice (ImageType) among the acquired ones is refused, even where it
  fits the spacing.

After reading, the middle slice is compared with pydicom's own decoding, rescaled as the headers say (an
independent reader), where pydicom can decode its transfer syntax: GDCM inverts MONOCHROME1 pixels (a display
convention: the stored values times the rescale slope plus the intercept are still the real values), and any other
disagreement between the two readers is refused rather than trained on. A MONOCHROME1 series is read by pydicom
slice by slice, and a warning says so; one pydicom cannot decode is refused.

Files are found by their DICOM marker, a ``.dcm`` name, or, for the bare data sets some scanners and PACS exports
write (no 128-byte preamble, no ``DICM``, names like ``IM0001``), by a forced header read that finds a DICOM SOP
class. A Modality LUT Sequence, which GDCM does not apply, is refused.

Geometry follows DICOM (and dcm2niix): index i runs along the row direction (the first three values of
ImageOrientationPatient) by the column spacing (PixelSpacing[1]), j along the column direction by PixelSpacing[0],
k from the first slice's ImagePositionPatient to the last's, slices sorted by their position along the normal.
The slice spacing comes from those positions, never from SliceThickness. LPS is turned to RAS as elsewhere
(:mod:`medattn.data.io`).

Header attributes that describe the acquisition (scanner, field strength, site, sequence, timing) become the
case's metadata (:data:`METADATA_KEYS`), so datasets of DICOM series split into domains by Manufacturer and
``medattn drift`` reports changes in them.
"""

from __future__ import annotations

import logging
import math
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medattn.errors import DataError

log = logging.getLogger(__name__)

#: Header attributes copied into a case's metadata (when present and not empty), under their DICOM keyword (but
#: ManufacturerModelName as BIDS's ``ManufacturersModelName``, see :data:`_BIDS_NAMES`); values as DICOM stores
#: them (times in ms, where a BIDS sidecar has seconds).
METADATA_KEYS = (
    "Modality",
    "Manufacturer",
    "ManufacturerModelName",
    "MagneticFieldStrength",
    "InstitutionName",
    "StationName",
    "SoftwareVersions",
    "SeriesDescription",
    "ProtocolName",
    "SeriesNumber",
    "BodyPartExamined",
    "ScanningSequence",
    "SequenceVariant",
    "SequenceName",
    "MRAcquisitionType",
    "RepetitionTime",
    "EchoTime",
    "InversionTime",
    "FlipAngle",
    "SliceThickness",
    "KVP",
    "ConvolutionKernel",
    "ContrastBolusAgent",
)
#: What tells apart several volumes stored at the same slice positions of one series.
_VOLUME_KEYS = (
    "EchoNumbers",
    "EchoTime",
    "TemporalPositionIdentifier",
    "TriggerTime",
    "AcquisitionNumber",
    "DiffusionBValue",
    "InversionTime",
    "ImageType",
)
#: Files a DICOM export puts beside the series that are not slices (the media directory), and hidden files.
_IGNORED_NAMES = ("DICOMDIR",)
#: Suffixes of files that are not DICOM slices (an export's notes and thumbnails, converted volumes): never parsed.
_NOT_DICOM_SUFFIXES = (
    ".txt", ".json", ".xml", ".csv", ".tsv", ".pdf", ".html", ".htm", ".md", ".log", ".ini", ".jpg", ".jpeg",
    ".png", ".bmp", ".gif", ".nii", ".gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".raw", ".zip", ".bval", ".bvec",
    ".pt", ".pth", ".ckpt", ".onnx", ".ts", ".npy", ".npz", ".pkl", ".h5", ".hdf5", ".mat", ".tar", ".bz2", ".xz",
    ".7z", ".yaml", ".yml", ".py", ".sh", ".tif", ".tiff", ".svg", ".mp4", ".avi",
)  # fmt: skip


class NotDicomError(ValueError):
    """A file that a forced header read finds no DICOM data set in."""


#: What reading a header of a file that is not DICOM (or is damaged) raises: pydicom's errors for truncated or
#: garbled data sets, and :class:`NotDicomError`.
_NOT_READABLE = (OSError, ValueError, EOFError, AttributeError, KeyError, TypeError, IndexError, struct.error,
                 NotImplementedError, OverflowError)  # fmt: skip
#: How many files without a DICOM marker or ``.dcm`` name :func:`is_series_folder` looks at before it gives up.
_PARSED_AT_MOST = 16
#: Positions closer than this along the normal (mm) are the same slice position.
SAME_POSITION_MM = 1e-3
#: A gap may differ from the median gap by this share of it (DICOM stores positions as decimal strings; a missing
#: slice makes a gap of 2x).
GAP_TOLERANCE = 0.01
#: The largest angle (degrees) between the line through the slice positions and the slice normal.
TILT_TOLERANCE_DEG = 0.1
#: Orientation cosines of two slices may differ by this much.
ORIENTATION_ATOL = 1e-4
#: The row and column cosines must be unit vectors and perpendicular within this (they are stored rounded).
ORTHONORMAL_ATOL = 1e-3
#: SimpleITK's grid and the headers' grid must agree within this (mm) at the volume's corners.
GRID_AGREEMENT_MM = 0.02

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class SeriesInfo:
    """One checked series: its files in slice order, its geometry and its metadata.

    Attributes:
        folder: the series folder.
        files: the slice files, sorted by position along the slice normal (first = index 0 of the k axis).
        shape: (columns, rows, slices): the array shape with axes (i, j, k) = (X, Y, Z).
        affine: voxel-to-RAS affine (mm) from the headers.
        series_uid: SeriesInstanceUID.
        metadata: :data:`METADATA_KEYS` found in the first slice's header.
        slope_varies: the slices have different rescale slopes or intercepts (voxels are read as float).
        stored_dtype: the stored pixel type, for the header (``uint16``, ``int16``...).
        photometric: PhotometricInterpretation (``MONOCHROME2``; ``MONOCHROME1`` is read by pydicom).
        instance_uids: the slices' SOPInstanceUIDs (a copy of a series in another folder shares them).
    """

    folder: Path
    files: tuple[Path, ...]
    shape: tuple[int, int, int]
    affine: np.ndarray
    series_uid: str
    metadata: dict[str, Any] = field(default_factory=dict)
    slope_varies: bool = False
    stored_dtype: str = "uint16"
    photometric: str = "MONOCHROME2"
    instance_uids: frozenset[str] = frozenset()

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]


def is_series_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder that holds DICOM files: one with the 128-byte preamble and ``DICM`` marker or a
    ``.dcm`` name, or a bare data set (no preamble) in which a forced header read finds a DICOM SOP class (among the
    first :data:`_PARSED_AT_MOST` files of other names). Files with a suffix of :data:`_NOT_DICOM_SUFFIXES` are
    passed over, so notes or thumbnails beside the slices do not hide the series. A dataset folder (``manifest.json``,
    ``dataset.json``) is not a series folder."""
    p = Path(path)
    if not p.is_dir() or (p / "manifest.json").is_file() or (p / "dataset.json").is_file():
        return False
    parsed = 0
    for entry in sorted(p.iterdir()):
        if _passed_over(entry) or entry.suffix.lower() in _NOT_DICOM_SUFFIXES:
            continue
        if entry.suffix.lower() == ".dcm" or _has_dicm_marker(entry):
            return True
        parsed += 1
        if parsed > _PARSED_AT_MOST:
            break
        try:  # large values (of a file that is not DICOM) are not read
            ds = read_header(entry, ["SOPClassUID"], defer_size=1024)
        except _NOT_READABLE:
            continue
        if str(ds.get("SOPClassUID", "")).startswith("1.2.840.10008."):  # a DICOM SOP class, not parsed noise
            return True
    return False


def _passed_over(path: Path) -> bool:
    """Hidden files, the media directory and sub-folders: never a slice of the folder's series."""
    return path.name.startswith(".") or path.name.upper() in _IGNORED_NAMES or not path.is_file()


def read_header(path: Path, tags: list[str] | None = None, defer_size: int | None = None) -> Any:
    """The pydicom header of ``path`` (no pixels; only ``tags`` if given), also of a bare data set without the
    preamble and marker, which pydicom reads only when forced. A forced read that finds neither a SOP class nor an
    image size is not DICOM (a text file parses as an empty data set).

    Raises:
        NotDicomError, or pydicom's error for a damaged file (one of ``_NOT_READABLE``).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    wanted = None if tags is None else [*tags, "SOPClassUID", "Rows", "Columns"]
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=wanted, defer_size=defer_size)
    except InvalidDicomError as e:
        raise NotDicomError(str(e)) from None
    if "SOPClassUID" not in ds and not ("Rows" in ds and "Columns" in ds):
        raise NotDicomError("no SOP class and no image size: not a DICOM data set")
    return ds


def series_modality(folder: str | Path) -> str | None:
    """The Modality (``CT``, ``MR``...) of the first readable DICOM file in ``folder`` (one header, no pixels), or
    None. The series' own checks (one series, one modality) are :func:`scan_series`'s."""
    for path in sorted(Path(folder).iterdir()):
        if _passed_over(path):
            continue
        try:
            value = read_header(path, ["Modality"]).get("Modality")
        except _NOT_READABLE:
            continue
        return str(value) if value else None
    return None


def _check_no_slice_skipped(folder: Path, headers: list[tuple[Path, Any]], gap: float) -> None:
    """Refuse evenly spaced slices that are what is left of a series with every gap missing a slice: the uneven-gap
    check cannot see it (two slices left of three, or every other slice). Two signs together: the instance numbers
    skip at every step (they count the slices the scanner made), and the slices lie at least 1.5 slice thicknesses
    apart. A gapped acquisition (thin slices, consecutive numbers) passes; SpacingBetweenSlices is not used, since
    vendors disagree on what it holds."""
    numbers = [_number(ds.get("InstanceNumber")) for _, ds in headers]
    thickness = _number(headers[0][1].get("SliceThickness"))
    if not all(isinstance(n, int) for n in numbers) or not isinstance(thickness, (int, float)) or thickness <= 0:
        return
    steps = np.abs(np.diff(np.asarray(numbers)))
    if steps.size and int(steps.min()) > 1 and gap >= 1.5 * float(thickness):
        shown = ", ".join(str(n) for n in numbers[:6]) + (", ..." if len(numbers) > 6 else "")
        raise DataError(
            f"the slices lie {gap:.3f} mm apart, {gap / float(thickness):.1f} times their thickness "
            f"({float(thickness):g} mm), and their instance numbers skip at every step ({shown}): slices are "
            "missing from the series (an export of part of it?)",
            folder,
        )


def _has_dicm_marker(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _number(value: Any) -> Any:
    """A DICOM value as JSON: numbers as float or int, multi-values as lists, text as text."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [_number(v) for v in value]
    if isinstance(value, bool):
        return value
    if isinstance(value, int):  # pydicom's IS is an int subclass
        return int(value)
    if isinstance(value, float) or type(value).__name__ == "DSdecimal":  # DS: a float (or Decimal) subclass
        return float(value)
    text = str(value).strip()
    return text or None


#: DICOM keywords stored under their BIDS sidecar name (:data:`medattn.data.importers.SIDECAR_KEYS`), so series and
#: their dcm2niix conversions give the same metadata keys.
_BIDS_NAMES = {"ManufacturerModelName": "ManufacturersModelName"}


def _header_metadata(ds: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in METADATA_KEYS:
        value = _number(ds.get(key))
        if value not in (None, [], ""):
            out[_BIDS_NAMES.get(key, key)] = value
    return out


def _describe(values: list[Any]) -> str:
    shown = sorted({str(v) for v in values})
    return ", ".join(shown[:4]) + (f" and {len(shown) - 4} more" if len(shown) > 4 else "")


def scan_series(folder: str | Path) -> SeriesInfo:
    """Check that ``folder`` holds one regular 3D image series and work out its geometry (see the module docstring).

    Raises:
        DataError: naming the folder and what is wrong (which files, which series, which positions); a header
            whose geometry values cannot be read as numbers (an ImagePositionPatient of two values, an empty
            RescaleSlope) is one too, never a raw exception.
    """
    try:
        return _scan_series(Path(folder))
    except DataError:
        raise
    except (ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise DataError(f"malformed DICOM header values ({type(e).__name__}: {e})", folder) from e


def _scan_series(folder: Path) -> SeriesInfo:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("not a folder of DICOM files", folder)
    headers: list[tuple[Path, Any]] = []
    unreadable: list[str] = []
    for path in sorted(folder.iterdir()):
        if _passed_over(path):
            continue
        try:
            headers.append((path, read_header(path)))
        except _NOT_READABLE as e:
            unreadable.append(f"{path.name} ({type(e).__name__})")
    if unreadable:
        raise DataError(
            f"{len(unreadable)} file(s) in the series folder are not readable DICOM: {', '.join(unreadable[:5])}"
            + (" ..." if len(unreadable) > 5 else "")
            + "; a series folder must hold only that series' files",
            folder,
        )
    if not headers:
        raise DataError("the folder holds no DICOM files", folder)

    not_images = [(p, ds) for p, ds in headers if not _is_image(ds)]
    if not_images:
        kinds = Counter(_sop_name(ds) for _, ds in not_images)
        raise DataError(
            "the folder holds non-image DICOM objects ("
            + "; ".join(f"{n} x {k}" for k, n in kinds.items())
            + f", e.g. {not_images[0][0].name}); a series folder must hold only the image slices of one series",
            folder,
        )
    frames = [(p, int(ds.get("NumberOfFrames", 1) or 1)) for p, ds in headers]
    multi = [p.name for p, n in frames if n > 1]
    if multi:
        raise DataError(
            f"multi-frame (enhanced) DICOM is not supported yet ({multi[0]}: {dict(frames)[folder / multi[0]]} frames);"
            " export the series as classic single-frame DICOM or convert it with dcm2niix",
            folder,
        )
    # An enhanced object of one frame keeps its geometry in per-frame sequences, not in the classic attributes.
    enhanced = [
        (p, ds) for p, ds in headers if "enhanced" in _sop_name(ds).lower() or "SharedFunctionalGroupsSequence" in ds
    ]
    if enhanced:
        p, ds = enhanced[0]
        raise DataError(
            f"enhanced DICOM objects are not supported yet ({len(enhanced)} file(s), e.g. {p.name}: {_sop_name(ds)},"
            " whose geometry is in its functional groups); export the series as classic single-frame DICOM or"
            " convert it with dcm2niix",
            folder,
        )
    no_geometry = [(p, [k for k in _GEOMETRY_KEYS if k not in ds]) for p, ds in headers]
    no_geometry = [(p, missing) for p, missing in no_geometry if missing]
    if no_geometry:
        p, missing = no_geometry[0]
        raise DataError(
            f"{len(no_geometry)} slice(s) lack the geometry a volume needs ({p.name} has no {', '.join(missing)});"
            " without it the voxels cannot be placed in the patient",
            folder,
        )
    series = Counter(str(ds.get("SeriesInstanceUID", "")) for _, ds in headers)
    if len(series) > 1:
        listed = []
        for uid, n in series.items():
            ds = next(d for _, d in headers if str(d.get("SeriesInstanceUID", "")) == uid)
            number, description = str(ds.get("SeriesNumber", "?")), str(ds.get("SeriesDescription", "")).strip()
            listed.append((number.zfill(8), description, f"series {number} {description!r}: {n} files (UID {uid})"))
        rows = [row for *_, row in sorted(listed)]
        raise DataError(
            f"the folder holds {len(series)} series, one is expected: "
            + "; ".join(rows)
            + "; put each series in a folder of its own",
            folder,
        )
    first = headers[0][1]
    lut = [p for p, ds in headers if "ModalityLUTSequence" in ds]
    if lut:  # GDCM reads the stored values without it: the voxels would not be the real values
        raise DataError(
            f"{len(lut)} slice(s) map their values through a Modality LUT Sequence (e.g. {lut[0].name}), which the"
            " voxel reader does not apply; convert the series with dcm2niix",
            folder,
        )
    # ORIGINAL or DERIVED (value 1) on every slice that says; PRIMARY or SECONDARY (value 2) where two slices say
    # both (anonymisers strip or shorten ImageType: a slice without it is not another kind)
    for position, word in ((0, "ORIGINAL or DERIVED"), (1, "PRIMARY or SECONDARY")):
        image_kinds = Counter(k[position] for k in map(_image_kind, (ds for _, ds in headers)) if len(k) > position)
        if len(image_kinds) > 1:
            rare = min(image_kinds, key=lambda k: image_kinds[k])
            odd = next(p for p, ds in headers if _image_kind(ds)[position : position + 1] == (rare,))
            raise DataError(
                f"slices of different kinds in one series (ImageType {word}: "
                + "; ".join(f"{k}: {n} file(s)" for k, n in image_kinds.most_common())
                + f", e.g. {odd.name}): a derived or secondary image among the acquired slices; remove it",
                folder,
            )
    for key in ("Rows", "Columns"):
        values = Counter(int(ds.get(key, 0)) for _, ds in headers)
        if len(values) > 1:
            raise DataError(f"slices of different sizes ({key}: {_describe(list(values))})", folder)
    if int(first.get("SamplesPerPixel", 1) or 1) != 1:
        raise DataError(
            f"colour images (SamplesPerPixel {first.SamplesPerPixel}, {first.get('PhotometricInterpretation')}) are"
            " not a scanner volume",
            folder,
        )
    spacings = np.array([[float(v) for v in ds.PixelSpacing] for _, ds in headers], dtype=float)
    if np.ptp(spacings, axis=0).max() > 1e-4:
        raise DataError(f"slices with different pixel spacings ({_describe([tuple(s) for s in spacings])})", folder)
    iops = np.array([[float(v) for v in ds.ImageOrientationPatient] for _, ds in headers], dtype=float)
    if np.ptp(iops, axis=0).max() > ORIENTATION_ATOL:
        raise DataError(
            f"slices with {len({tuple(np.round(i, 4)) for i in iops})} different orientations"
            " (ImageOrientationPatient; a localizer or a reformat among them?)",
            folder,
        )
    row, col = iops[0][:3], iops[0][3:]
    lengths, dot = (float(np.linalg.norm(row)), float(np.linalg.norm(col))), float(row @ col)
    if max(abs(n - 1.0) for n in lengths) > ORTHONORMAL_ATOL or abs(dot) > ORTHONORMAL_ATOL:
        raise DataError(
            f"ImageOrientationPatient {_describe([tuple(np.round(iops[0], 6))])} is not two perpendicular unit"
            f" vectors (lengths {lengths[0]:.4f} and {lengths[1]:.4f}, dot product {dot:.4f}): the slice"
            " orientation is undefined",
            folder,
        )
    # The stored cosines are decimal strings: normalise before taking the normal, or rounding reads as a tilt.
    row, col = row / lengths[0], col / lengths[1]
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for _, ds in headers], dtype=float)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    headers = [headers[i] for i in order]
    positions, along = positions[order], along[order]

    _check_one_volume(folder, headers, along)
    if len(headers) < 2:
        raise DataError("the series has a single slice: not a 3D volume", folder)
    gaps = np.diff(along)
    median = float(np.median(gaps))
    bad = np.flatnonzero(np.abs(gaps - median) > GAP_TOLERANCE * median)
    if bad.size:
        k = int(bad[np.argmax(np.abs(gaps[bad] - median))])
        hint = "a slice may be missing" if gaps[k] > median else "slices overlap"
        raise DataError(
            f"uneven slice spacing: {gaps[k]:.3f} mm between {headers[k][0].name} and {headers[k + 1][0].name}, "
            f"{median:.3f} mm elsewhere ({bad.size} uneven gap(s)); {hint}",
            folder,
        )
    _check_no_slice_skipped(folder, headers, median)
    stack = positions[-1] - positions[0]
    cos = float(np.clip(abs(stack @ normal) / max(np.linalg.norm(stack), 1e-12), 0.0, 1.0))
    tilt = math.degrees(math.acos(cos))
    # How far the last slice sits beside the line through the first along the normal: SimpleITK builds its grid
    # along the normal, so this is how far its grid and the headers' would part (read_series checks that too, but
    # only after reading every voxel, and with a less telling message).
    lateral = float(np.linalg.norm(stack - (stack @ normal) * normal))
    declared = _number(first.get("GantryDetectorTilt"))
    if tilt > TILT_TOLERANCE_DEG or lateral > GRID_AGREEMENT_MM / 2:
        raise DataError(
            f"the slices are not stacked along their normal: tilted by {tilt:.2f} degrees, the last slice"
            f" {lateral:.3f} mm beside the normal through the first"
            + (f" (GantryDetectorTilt {declared})" if declared else "")
            + "; a gantry-tilted or sheared stack does not make a regular voxel grid (resample it first, e.g. with"
            " dcm2niix, which corrects gantry tilt)",
            folder,
        )
    row_spacing, col_spacing = spacings[0]
    lps = np.eye(4)
    lps[:3, 0] = row * col_spacing
    lps[:3, 1] = col * row_spacing
    lps[:3, 2] = stack / (len(headers) - 1)
    lps[:3, 3] = positions[0]
    slopes = {_rescale(ds) for _, ds in headers}
    bits = int(first.get("BitsAllocated", 16) or 16)
    signed = int(first.get("PixelRepresentation", 0) or 0) == 1
    return SeriesInfo(
        folder=folder,
        files=tuple(p for p, _ in headers),
        shape=(int(first.Columns), int(first.Rows), len(headers)),
        affine=_LPS_TO_RAS @ lps,
        series_uid=str(first.get("SeriesInstanceUID", "")),
        metadata=_header_metadata(first),
        slope_varies=len(slopes) > 1,
        stored_dtype=f"{'int' if signed else 'uint'}{bits}",
        photometric=str(first.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").strip(),
        instance_uids=frozenset(str(ds.get("SOPInstanceUID", "")) for _, ds in headers) - {""},
    )


def _image_kind(ds: Any) -> tuple[str, ...]:
    """ImageType's first two values (ORIGINAL or DERIVED, PRIMARY or SECONDARY), upper case."""
    value = ds.get("ImageType")
    values = [value] if isinstance(value, str) else list(value or [])
    return tuple(str(v).strip().upper() for v in values[:2])


#: What places a slice in the patient (checked once the objects are known to be images).
_GEOMETRY_KEYS = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")


def _is_image(ds: Any) -> bool:
    """An object with pixels that is not a segmentation, report or presentation object."""
    name = _sop_name(ds).lower()
    if any(w in name for w in ("segmentation", "structured report", "presentation state", "key object", "rt struct")):
        return False
    return all(k in ds for k in ("Rows", "Columns"))


def _sop_name(ds: Any) -> str:
    uid = ds.get("SOPClassUID")
    if uid is None:
        return "no SOP class"
    name = getattr(uid, "name", "") or str(uid)
    return str(name)


def _check_one_volume(folder: Path, headers: list[tuple[Path, Any]], along: np.ndarray) -> None:
    """Refuse repeated slice positions: several volumes (echoes, time points) or duplicated slices."""
    groups: list[list[int]] = [[0]]
    for i in range(1, len(along)):
        if along[i] - along[groups[-1][0]] < SAME_POSITION_MM:
            groups[-1].append(i)
        else:
            groups.append([i])
    repeated = [g for g in groups if len(g) > 1]
    if not repeated:
        return
    sizes = Counter(len(g) for g in groups)
    for key in _VOLUME_KEYS:
        values = [_number(headers[i][1].get(key)) for i in repeated[0]]
        if len({str(v) for v in values}) > 1:
            if len(sizes) == 1:
                raise DataError(
                    f"the series holds {len(repeated[0])} volumes at the same {len(groups)} slice positions, told"
                    f" apart by {key} ({_describe(values)}): a multi-echo, multi-phase or time series; put each"
                    " volume's files in a folder of its own",
                    folder,
                )
            break
    g = repeated[0]
    same = [headers[i][0].name for i in g]
    raise DataError(
        f"{len(repeated)} slice position(s) hold more than one file, e.g. {' and '.join(same[:3])} at"
        f" {along[g[0]]:.3f} mm along the slice normal: a duplicated slice (or an incomplete extra volume)",
        folder,
    )


def read_series(info: SeriesInfo) -> tuple[np.ndarray, dict[str, Any]]:
    """The voxels of a checked series, (X, Y, Z), rescaled to their real values, with MONAI-style metadata.

    Read by SimpleITK's GDCM ``ImageSeriesReader`` in ``info.files`` order; its grid must agree with the headers'
    (:data:`GRID_AGREEMENT_MM` at every corner), else DataError (never seen on a regular series). The middle slice
    must equal pydicom's reading of it where pydicom can decode it (:func:`_pydicom_slice`); a MONOCHROME1 series
    is read by pydicom (see the module docstring).
    """
    import SimpleITK as sitk

    from medattn.data.io import reader_error, sitk_to_array

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in info.files])
    if info.slope_varies:
        reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        image = reader.Execute()
    except RuntimeError as e:
        raise DataError(
            f"cannot read the series' voxels ({_unreadable_slice(info) or reader_error(e)})", info.folder
        ) from e
    arr, meta = sitk_to_array(image)
    if arr.shape[:3] != info.shape:
        raise DataError(f"SimpleITK read {arr.shape[:3]} voxels where the headers give {info.shape}", info.folder)
    corners = np.array(
        [[i, j, k, 1] for i in (0, info.shape[0] - 1) for j in (0, info.shape[1] - 1) for k in (0, info.shape[2] - 1)],
        dtype=float,
    ).T
    offset = np.abs((meta["affine"] @ corners) - (info.affine @ corners))[:3].max()
    if offset > GRID_AGREEMENT_MM:
        raise DataError(
            f"SimpleITK places the series {offset:.3f} mm from where its headers do; refusing an ambiguous geometry",
            info.folder,
        )
    arr = _checked_against_pydicom(info, arr)
    meta = {
        **meta,
        "affine": info.affine.copy(),
        "original_affine": info.affine.copy(),
        "filename_or_obj": str(info.folder),
    }
    return arr, meta


def _pydicom_slice(path: Path) -> np.ndarray | None:
    """A slice's real values (stored values through the modality LUT: rescale slope and intercept), (columns, rows)
    as float64, decoded by pydicom; None where pydicom cannot decode it (a compressed transfer syntax without its
    codec package)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, force=True)
        pixels = np.asarray(ds.pixel_array, dtype=np.float64)
    except (*_NOT_READABLE, RuntimeError):  # no handler for the transfer syntax (or a bare data set without one)
        return None
    # the rescale as the headers are read here (each of slope and intercept on its own, an empty one as absent)
    slope, intercept = _rescale(ds)
    return (pixels * slope + intercept).T


def _rescale(ds: Any) -> tuple[float, float]:
    """RescaleSlope and RescaleIntercept of a header: 1 and 0 where absent or empty."""
    return float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)


def _checked_against_pydicom(info: SeriesInfo, arr: np.ndarray) -> np.ndarray:
    """``arr`` (SimpleITK's voxels) once its middle slice equals pydicom's; a MONOCHROME1 series as pydicom reads it."""
    k = len(info.files) // 2
    reference = _pydicom_slice(info.files[k])
    if info.photometric == "MONOCHROME1":
        slices = [reference if i == k else _pydicom_slice(p) for i, p in enumerate(info.files)]
        decoded = [s for s in slices if s is not None]
        if len(decoded) < len(slices):
            raise DataError(
                "a MONOCHROME1 series in a transfer syntax pydicom cannot decode here: SimpleITK would invert its"
                " values (MONOCHROME1 is a display convention), and they cannot be read otherwise; decompress it"
                " (e.g. gdcmconv --raw) or convert it with dcm2niix",
                info.folder,
            )
        log.warning(
            "%s: MONOCHROME1 series: its real values (stored values times the rescale slope plus the intercept) are"
            " read by pydicom, not inverted for display as SimpleITK would",
            info.folder,
        )
        return np.stack(decoded, axis=-1).astype(arr.dtype if arr.dtype.kind == "f" else np.float32)
    if reference is None:
        return arr
    got = arr[..., k] if arr.ndim == 3 else arr[:, :, k, 0]
    scale = float(np.abs(reference).max()) if reference.size else 0.0
    diff = np.abs(got.astype(np.float64) - reference)
    if reference.shape != got.shape or float(diff.max()) > 1e-5 * scale + 1e-3:
        worst = float(diff.max()) if reference.shape == got.shape else float("nan")
        raise DataError(
            f"SimpleITK and pydicom read different voxel values from {info.files[k].name} (largest difference"
            f" {worst:g}, values up to {scale:g}); refusing a series whose two readers disagree",
            info.folder,
        )
    return arr


def _unreadable_slice(info: SeriesInfo) -> str | None:
    """Which slice SimpleITK cannot read on its own (after the series reader failed), as a reason naming it."""
    import SimpleITK as sitk

    from medattn.data.io import reader_error

    for path in info.files:
        try:
            sitk.ReadImage(str(path))
        except RuntimeError as e:
            return f"{path.name}: {reader_error(e)}"
    return None
