"""Masks as DICOM Segmentation objects (``medattn predict --format dicom-seg``), written with highdicom.

A hospital sends results back to PACS, 3D Slicer or OHIF as DICOM. A DICOM-SEG made here is a BINARY
Segmentation with one segment per foreground label of the model (its name from the model's label names), one
frame per source slice that holds the segment, each frame referencing its source instance (SOP Instance UID) of
the series the mask was predicted from, in that series' Frame of Reference, study and patient. The algorithm is
recorded in every segment's identification: ``medattn``, its version, and the model file (name and SHA-256), so a
mask can be traced to the exact weights that made it.

highdicom builds the object (module layout, functional groups, referenced series, the SEG IOD's checks); what it
lacks is the link to medattn's own grid: the mask arrives on the series' voxel grid (axes X, Y, Z as
:mod:`medattn.data.dicom` reads the series, slice k from ``SeriesInfo.files[k]``), and frame k is that slice's
transpose (rows, columns). A model's labels carry names, not SNOMED codes, so every segment's category and type
are the generic "Anatomical Structure"; the segment label says which structure it is, and the label value on
disk is kept as its tracking id (``label 2``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medattn.data.io import file_sha256
from medattn.errors import DataError

#: The SEG's series number (scanners number their series; derived objects conventionally take a high one).
SERIES_NUMBER = 9901


@dataclass(frozen=True)
class SegWriter:
    """What every DICOM-SEG of one predict run records: the model's label names and the model file.

    Attributes:
        labels: label value -> name (the plan's), background (0) included.
        model_name: the model file's name.
        model_sha256: its SHA-256.
        architecture: the network class, as the equipment's model name.
    """

    labels: Mapping[int, str]
    model_name: str
    model_sha256: str
    architecture: str

    @classmethod
    def for_model(
        cls, model_path: str | Path | Sequence[str | Path], labels: Mapping[int, str], architecture: str
    ) -> SegWriter:
        """The writer for one model file, or an ensemble's (names and SHA-256 of every member, ``;``-joined)."""
        paths = [Path(model_path)] if isinstance(model_path, (str, Path)) else [Path(p) for p in model_path]
        names = ";".join(str(p.name if len(paths) == 1 else p) for p in paths)
        return cls(dict(labels), names, ";".join(file_sha256(p) for p in paths), architecture)

    def write(self, mask: np.ndarray, series_folder: Path, path: Path, protected: Sequence[Path] = ()) -> Path:
        """Write ``mask`` (label values on the series' grid, X, Y, Z) as a DICOM-SEG at ``path``, atomically.

        Raises:
            DataError: the mask is not on the series' grid, or the series' files cannot be read again.
        """
        import highdicom as hd
        import pydicom
        from pydicom.sr.codedict import codes

        from medattn import __version__
        from medattn.data.io import atomic_write_with, series_info

        info = series_info(series_folder)
        if tuple(mask.shape) != tuple(info.shape):
            raise DataError(f"mask shape {mask.shape} is not the series' {info.shape}", series_folder)
        sources = [_with_type2(pydicom.dcmread(f, stop_before_pixels=True)) for f in info.files]
        values = [v for v in sorted(int(k) for k in self.labels) if v != 0]
        algorithm = hd.AlgorithmIdentificationSequence(
            name="medattn",
            family=codes.DCM.ArtificialIntelligence,
            version=__version__,
            parameters={"model_file": self.model_name, "model_sha256": self.model_sha256},
        )
        segments = [
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=str(self.labels[value])[:64],
                segmented_property_category=codes.SCT.AnatomicalStructure,
                segmented_property_type=codes.SCT.AnatomicalStructure,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                tracking_id=f"label {value}",
                tracking_uid=hd.UID(),
            )
            for number, value in enumerate(values, start=1)
        ]
        # Label value -> segment number (1..n in label order); anything else (background) -> 0.
        lut = np.zeros(max([*values, int(mask.max()), 0]) + 1, dtype=np.uint16)
        for number, value in enumerate(values, start=1):
            lut[value] = number
        frames = np.ascontiguousarray(np.transpose(lut[mask.astype(np.int64)], (2, 1, 0)))  # (slices, rows, columns)
        with warnings.catch_warnings():  # a one-part PatientName ("JANCT000") is the source's, not ours to fix
            warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
            seg = self._build(hd, sources, frames, segments)
        return atomic_write_with(path, lambda tmp: seg.save_as(tmp), protected)

    def _build(self, hd: Any, sources: list[Any], frames: np.ndarray, segments: list[Any]) -> Any:
        from medattn import __version__

        return hd.seg.Segmentation(
            source_images=sources,
            pixel_array=frames,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=segments,
            series_instance_uid=hd.UID(),
            series_number=SERIES_NUMBER,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="medattn",
            manufacturer_model_name=self.architecture[:64],
            software_versions=__version__,
            device_serial_number=self.model_sha256[:16],
            series_description=f"medattn {self.model_name}"[:64],
            content_description="medattn automatic segmentation",
            content_label="MEDATTN",
            # an empty mask keeps every frame (highdicom would revert to that, with a warning --quiet cannot hush)
            omit_empty_frames=bool(frames.any()),
        )


#: Patient and study attributes a SEG copies from its source (type 2: present, possibly empty). De-identified
#: exports often drop them; highdicom then fails with an AttributeError, so the in-memory source headers get them
#: empty (the input files are never changed).
_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def _with_type2(ds: Any) -> Any:
    for key in _TYPE2:
        if key not in ds:
            setattr(ds, key, "")
    if "SpecificCharacterSet" in ds and not str(ds.SpecificCharacterSet or "").strip():
        del ds.SpecificCharacterSet  # empty (the GE CT of the test data): the default repertoire, which it means
    return ds


def read_dicom_seg(path: str | Path, series_folder: str | Path) -> np.ndarray:
    """A DICOM-SEG read back with highdicom onto its source series' grid (X, Y, Z): each voxel's label value (the
    segment's tracking id ``label V``), 0 elsewhere. For checking what :class:`SegWriter` wrote."""
    import highdicom as hd

    from medattn.data.io import series_info

    info = series_info(series_folder)
    seg: Any = hd.seg.segread(str(path))
    import pydicom

    uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in info.files]
    numbers = seg.get_segment_numbers()
    values = {n: int(str(seg.get_segment_description(n).tracking_id).split()[-1]) for n in numbers}
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=numbers, combine_segments=True, relabel=False
    )  # (slices, rows, columns): segment numbers
    lut = np.zeros(max(numbers) + 1, dtype=np.int64)
    for n, v in values.items():
        lut[n] = v
    return np.transpose(lut[np.asarray(pixels, dtype=np.int64)], (2, 1, 0))
