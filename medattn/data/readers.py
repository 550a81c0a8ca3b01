"""MONAI image readers: the bridge between :mod:`medattn.data.io` and MONAI's ``LoadImage`` / ``LoadImaged``.

NIfTI goes through MONAI's ``NibabelReader``; NRRD, MHA/MHD, GIPL and the other ITK formats go through
:class:`SimpleITKReader`, a MONAI ``ImageReader`` written here because MONAI's own ``ITKReader`` needs the
``itk`` package (about 100 MB more) while SimpleITK is already a dependency.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from monai.data import ImageReader, NibabelReader
from monai.transforms import LoadImage

from medattn.data.io import ITK_SUFFIXES, PathLike, has_suffix, sitk_to_array


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


def make_readers() -> list[ImageReader]:
    """The readers every medattn pipeline uses, in the order MONAI tries them."""
    return [NibabelReader(), SimpleITKReader()]


def make_loader(image_only: bool = False, dtype: Any = np.float32) -> LoadImage:
    """A MONAI ``LoadImage`` that reads NIfTI with nibabel and ITK formats with SimpleITK."""
    return LoadImage(reader=make_readers(), image_only=image_only, dtype=dtype)
