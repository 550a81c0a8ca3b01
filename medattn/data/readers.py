"""MONAI image readers: the bridge between :mod:`medattn.data.io` and MONAI's ``LoadImage`` / ``LoadImaged``.

NIfTI goes through MONAI's ``NibabelReader``; NRRD, MHA/MHD, GIPL and the other ITK formats go through
:class:`SimpleITKReader`, a MONAI ``ImageReader`` written here because MONAI's own ``ITKReader`` needs the
``itk`` package (about 100 MB more) while SimpleITK is already a dependency; a folder holding a DICOM series goes
through :class:`DicomSeriesReader`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from monai.data import ImageReader, NibabelReader
from monai.transforms import LoadImage

from medattn.data.io import ITK_SUFFIXES, has_suffix, sitk_to_array
from medattn.errors import DataError
from medattn.typing import PathLike


class SimpleITKReader(ImageReader):
    """MONAI ``ImageReader`` for the formats SimpleITK reads (NRRD, MHA/MHD, GIPL, ...).

    Returns channel-last arrays for vector images, like MONAI's ITKReader, and sets ``affine`` in RAS.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.kwargs = kwargs

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        names = [filename] if isinstance(filename, (str, os.PathLike)) else filename
        return all(has_suffix(n, ITK_SUFFIXES) for n in names)

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any) -> Any:
        import SimpleITK as sitk

        names = [data] if isinstance(data, (str, os.PathLike)) else list(data)
        if not self.verify_suffix(names):
            raise ValueError(f"SimpleITKReader reads ITK formats ({', '.join(ITK_SUFFIXES)}), not {names}")
        imgs = [sitk.ReadImage(str(n)) for n in names]
        return imgs if len(imgs) > 1 else imgs[0]

    def get_data(self, img: Any) -> tuple[np.ndarray, dict[str, Any]]:
        imgs = img if isinstance(img, (list, tuple)) else [img]
        arrays: list[np.ndarray] = []
        header: dict[str, Any] = {}
        for im in imgs:
            arr, header = sitk_to_array(im)
            arrays.append(arr)
        if len(arrays) > 1:
            return np.stack(arrays, axis=0), {**header, "original_channel_dim": 0}
        return arrays[0], header


class DicomSeriesReader(ImageReader):
    """MONAI ``ImageReader`` for a folder holding one DICOM series (:mod:`medattn.data.dicom`: the headers are
    checked with pydicom, the voxels read by SimpleITK's GDCM series reader; why, there). Sets ``affine`` in RAS and
    the series' acquisition attributes under ``dicom``."""

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        from medattn.data.dicom import is_series_folder

        names = [filename] if isinstance(filename, (str, os.PathLike)) else filename
        return all(is_series_folder(os.fspath(n)) for n in names)

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any) -> Any:
        from medattn.data.io import series_info

        names = [data] if isinstance(data, (str, os.PathLike)) else list(data)
        try:
            infos = [series_info(os.fspath(n)) for n in names]
        except DataError as e:
            # LoadImage swallows what read() raises and tries its next reader: a refused series must not be read
            # by another one (MONAI's PydicomReader would stack a series with a missing slice). get_data's errors
            # reach the caller.
            return _Refused(e)
        return infos if len(infos) > 1 else infos[0]

    def get_data(self, img: Any) -> tuple[np.ndarray, dict[str, Any]]:
        from medattn.data.dicom import read_series

        if isinstance(img, _Refused):
            raise img.error
        infos = img if isinstance(img, (list, tuple)) else [img]
        arrays: list[np.ndarray] = []
        header: dict[str, Any] = {}
        for info in infos:
            arr, header = read_series(info)
            arrays.append(arr)
        header["original_channel_dim"] = 0 if len(arrays) > 1 else float("nan")
        return (np.stack(arrays, axis=0) if len(arrays) > 1 else arrays[0]), header


@dataclass(frozen=True)
class _Refused:
    """What :meth:`DicomSeriesReader.read` returns for a series its checks refuse."""

    error: DataError


class NiftiReader(NibabelReader):
    """MONAI's ``NibabelReader``, reading the 4th axis of a 4D NIfTI as channels.

    MSD stores multi-channel cases as one 4D NIfTI (X, Y, Z, C). MONAI 1.6's reader reports such a file's spatial
    shape as 4D with no channel axis, so ``EnsureChannelFirst`` adds a new axis and ``Orientation`` then fails
    ("axcodes must match data_array spatially"). Here the 4th axis becomes the channel axis.
    """

    def get_data(self, img: Any) -> tuple[np.ndarray, dict[str, Any]]:
        data, meta = super().get_data(img)
        shape = np.asarray(meta.get("spatial_shape", []))
        single = not isinstance(img, (list, tuple))
        if single and data.ndim == 4 and shape.size == 4:
            meta["spatial_shape"] = shape[:3]
            meta["original_channel_dim"] = -1
        return data, meta


def make_readers() -> list[ImageReader]:
    """The readers every medattn pipeline uses.

    MONAI's ``LoadImage`` tries an explicit reader list in *reverse* order and keeps the first that reads the file,
    so NIfTI's reader comes last here to be tried first; ``SimpleITKReader`` refuses NIfTI files outright (SimpleITK
    could read them, but nibabel keeps the NIfTI header details and is the reader this project specifies).
    """
    return [DicomSeriesReader(), SimpleITKReader(), NiftiReader()]


def make_loader(image_only: bool = False, dtype: Any = np.float32) -> LoadImage:
    """A MONAI ``LoadImage`` that reads NIfTI with nibabel, ITK formats with SimpleITK and DICOM series with
    :class:`DicomSeriesReader`, and nothing else (:func:`only_our_readers`)."""
    with quiet_default_readers():
        return only_our_readers(LoadImage(reader=make_readers(), image_only=image_only, dtype=dtype))


def only_our_readers(loader: LoadImage) -> LoadImage:
    """Drop the default readers ``LoadImage`` registers beside the explicit ones.

    When an explicit reader fails, ``LoadImage`` logs it and tries the next one, its defaults included (PIL,
    NumPy, pydicom): a file our readers cannot read would be read by another reader with other geometry rules.
    With only ours, it is an error.
    """
    loader.readers = make_readers()
    return loader


@contextlib.contextmanager
def quiet_default_readers() -> Iterator[None]:
    """Silence what MONAI says while ``LoadImage`` registers its default readers beside ours: with pydicom
    installed it builds ``NvImgCodecPydicomReader``, which warns on every CPU-only machine that the nvImageCodec
    plugin is missing (that reader is never used here: DICOM series go through :class:`DicomSeriesReader`)."""
    plugin_log = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    level = plugin_log.level
    plugin_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")
            yield
    finally:
        plugin_log.setLevel(level)
