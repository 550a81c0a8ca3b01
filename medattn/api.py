"""medattn from Python: load a model file, segment images in memory or on disk, test two sets for drift.

    import medattn

    model = medattn.load_model("runs/mine/model.pt")
    model = medattn.load_model("runs/mine_cv")      # a run folder of folds: their ensemble, with its postprocessing
    model = medattn.load_model(["a/model.pt", "b/model.pt"])   # several model files: their ensemble
    mask = model.predict("scan.nii.gz")              # a nibabel image on the scan's grid
    mask = model.predict(nib.load("scan.nii.gz"))    # nibabel in, nibabel out
    mask = model.predict(sitk.ReadImage("scan.mha")) # SimpleITK in, SimpleITK out (same origin, spacing, direction)
    mask = model.predict(array, affine=affine)       # NumPy (X, Y, Z[, C]) with its voxel-to-RAS affine: NumPy out
    mask = model.predict("dicom/t1_axial")           # a DICOM series folder: a nibabel image on the series' grid
    probs = model.predict_proba(image)               # the same kinds, classes on the last axis (float32)
    report = model.drift(reference=[...], target=[...])   # lists of any of the above; a DriftReport

These run what ``medattn predict`` and ``medattn drift`` run, not a copy of it: each image passes the same input
gate (a NaN voxel, an unreadable file, a wrong channel count is refused with a :class:`~medattn.errors.DataError`
naming it), goes through the same preprocessing, sliding window and inversion, and the mask is written by the same
writer that puts a mask on its input's grid. In-memory images are handed to that path as files in a temporary
folder (nibabel images as NIfTI with their own header, SimpleITK images as MHA, arrays as NIfTI from their affine)
and the result is read back into the kind that came in; the temporary folder is removed afterwards. A path is read
where it is, and nothing is ever written next to it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import replace
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from medattn.errors import ConfigError, DataError

#: What :meth:`Model.predict` accepts: a path (image file or DICOM series folder), a nibabel image, a SimpleITK
#: image, or a NumPy array (with ``affine=``).
ImageLike = Any


class Model:
    """A loaded model file, or an ensemble of them (see :func:`load_model`).

    Attributes:
        path: the model file (an ensemble's first member).
        paths: every member's model file (one for a single model).
        plan: its preprocessing plan (:class:`~medattn.data.plan.Plan`): spacing, channels, labels.
        options: the prediction options every call uses (:class:`~medattn.infer.predict.PredictOptions`).
        postprocessing: the postprocessing rule applied to every mask (:class:`~medattn.infer.postprocess.Rule`),
            or None.
    """

    def __init__(self, paths: Sequence[Path], loaded: Any, options: Any, device: Any, rule: Any = None) -> None:
        from medattn.infer.predict import make_predictor

        self.paths = list(paths)
        self.path = self.paths[0]
        self.device = device
        self.plan = loaded.plan
        self.options = options
        self.postprocessing = rule
        self._predictor = make_predictor(loaded.model, loaded.plan, options, device, members=loaded.members)

    @property
    def labels(self) -> dict[int, str]:
        """Label value on disk -> name."""
        return dict(self.plan.labels)

    @property
    def channels(self) -> list[str]:
        """The input channels the model expects, in order."""
        return [ch.name for ch in self.plan.channels]

    def __repr__(self) -> str:
        shown = str(self.path) if len(self.paths) == 1 else [str(p) for p in self.paths]
        return f"medattn.Model({shown!r}, channels={self.channels}, labels={self.labels})"

    def predict(self, image: ImageLike, affine: np.ndarray | None = None) -> Any:
        """The label mask of ``image`` on its own grid, as the same kind of object (a path gives a nibabel image).

        Raises:
            DataError: the image is refused by the input gate or cannot be read, naming it and why.
        """
        return self._run(image, affine, probabilities=False)

    def predict_proba(self, image: ImageLike, affine: np.ndarray | None = None) -> Any:
        """Softmax probabilities of every class on ``image``'s grid (float32, classes last, in label order), as the
        same kind of object as the input."""
        return self._run(image, affine, probabilities=True)

    def drift(
        self,
        reference: Sequence[ImageLike],
        target: Sequence[ImageLike],
        *,
        options: Any = None,
        progress: bool = False,
    ) -> Any:
        """``medattn drift`` on two lists of images (each item anything :meth:`predict` accepts; arrays as
        ``(array, affine)`` pairs): a :class:`~medattn.drift.analysis.DriftReport` (``.drift``, ``.to_dict()``).

        Raises:
            TooFewVolumesError: fewer readable volumes than the tests need.
            ConfigError: an ensemble (drift reads one model's features; load one member for it).
        """
        from medattn.drift.run import run_drift

        if len(self.paths) > 1:
            raise ConfigError(
                f"drift tests one model's features; this is an ensemble of {len(self.paths)}: load one member "
                f"(medattn.load_model({str(self.paths[0])!r})) for drift"
            )

        with tempfile.TemporaryDirectory(prefix="medattn-api-") as tmp:
            folders = []
            for name, images in (("reference", reference), ("target", target)):
                folder = Path(tmp) / name
                folder.mkdir()
                for i, item in enumerate(images):
                    image, affine = item if isinstance(item, tuple) else (item, None)
                    _stage(image, affine, folder, f"{i:05d}")
                folders.append(str(folder))
            return run_drift(
                self.path,
                folders[0],
                folders[1],
                options=options,
                device=str(self.device),
                progress=progress,
            )

    def _run(self, image: ImageLike, affine: np.ndarray | None, *, probabilities: bool) -> Any:
        from medattn.infer.outputs import PROBABILITY_DIR
        from medattn.infer.predict import predict_cases
        from medattn.runtime import Rank

        with tempfile.TemporaryDirectory(prefix="medattn-api-") as tmp:
            case, kind = _stage(image, affine, Path(tmp) / "in", "image")
            out = Path(tmp) / "out"
            out.mkdir()
            fmt = "mha" if kind == "sitk" else "nii.gz"
            options = replace(self.options, output_format=fmt, save_probabilities="4d" if probabilities else None)
            (result,) = predict_cases(
                [case], self.plan, self._predictor, out, options, case.images, Rank(), postprocess=self.postprocessing
            )
            if result.status != "ok":
                raise DataError(result.reason or "prediction failed", _shown(image), None)
            path = Path(result.probabilities[0]) if probabilities else Path(result.output or "")
            if probabilities:
                assert path.parent.name == PROBABILITY_DIR
            return _read_back(path, kind)


def load_model(
    path: str | PathLike[str] | Sequence[str | PathLike[str]], device: str | None = None, **options: Any
) -> Model:
    """Load a model file written by ``medattn train`` (or ``adapt``), or an ensemble, for prediction from Python.

    The same models ``medattn predict`` takes: several model files, or a run folder of folds (``medattn train
    --fold all-folds``), are one ensemble whose probabilities are averaged window by window; a run folder's
    ``postprocessing.json`` (``medattn crossval``) is applied to every mask unless ``postprocessing="none"``.

    Args:
        path: a model file, a run folder (its ``fold_*/model.pt``, or its ``model.pt``), or a list of them
            (weights are loaded with ``weights_only=True``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``; ``None``: CUDA if available, else CPU.
        **options: :class:`~medattn.infer.predict.PredictOptions` fields (``mirror_axes=(0, 1, 2)`` for TTA,
            ``overlap``, ``window``...), the same as ``medattn predict``'s options.

    Raises:
        DataError: a file is missing or not a medattn model file, or an ensemble's members disagree (labels,
            channels, preprocessing), naming both files.
        ConfigError: an unknown or invalid option.
    """
    from medattn.infer.postprocess import load_rule
    from medattn.infer.predict import PredictOptions, rule_file
    from medattn.models.ensemble import load_models, model_paths
    from medattn.runtime import resolve_device

    unknown = sorted(set(options) - set(PredictOptions.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"unknown prediction option(s) {unknown}; see medattn.infer.predict.PredictOptions")
    opts = PredictOptions(**{"progress": False, **options, "device": device})
    resolved = resolve_device(device)
    if isinstance(path, (bytes, bytearray)):
        raise ConfigError(f"load_model: give the model path as a str or Path, not bytes ({path!r})")
    specs = [Path(path)] if isinstance(path, (str, PathLike)) else [Path(p) for p in path]
    if not specs:
        raise ConfigError("load_model: an empty list of models; give a model file, a run folder or a list of them")
    members = model_paths(specs)
    loaded = load_models(members, resolved)
    rule_path = rule_file(specs, opts.postprocessing)
    rule = None if rule_path is None else load_rule(rule_path, loaded.plan.labels)
    return Model(members, loaded, opts, resolved, rule)


# ---- staging inputs and reading outputs back -------------------------------------------------------------------------


def _stage(image: ImageLike, affine: np.ndarray | None, folder: Path, stem: str) -> tuple[Any, str]:
    """``image`` as an :class:`~medattn.infer.inputs.InputCase` on disk (in ``folder`` unless it is a path already)
    and its kind: ``"path"``, ``"nibabel"``, ``"sitk"`` or ``"numpy"``."""
    import nibabel as nib

    from medattn.infer.inputs import InputCase, case_name

    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(image, (str, Path)):
        p = Path(image)
        if not p.exists():
            raise DataError("no such image file or DICOM series folder", p)
        if folder.name in ("reference", "target"):  # drift reads a folder: link the input into it
            link = folder / f"{stem}_{p.name}"
            link.symlink_to(p.resolve(), target_is_directory=p.is_dir())
            return InputCase(case_name(link), (link,)), "path"
        return InputCase(case_name(p), (p.resolve(),)), "path"
    if affine is not None and not isinstance(image, np.ndarray):
        raise ConfigError("affine= is for NumPy arrays; nibabel and SimpleITK images carry their own geometry")
    if isinstance(image, nib.spatialimages.SpatialImage):
        path = folder / f"{stem}.nii.gz"
        data = np.asanyarray(image.dataobj)
        stored = _storable(data)
        header = image.header if stored.dtype == data.dtype else None
        nib.save(nib.Nifti1Image(stored, image.affine, header=header), str(path))
        return InputCase(stem, (path,)), "nibabel"
    if type(image).__module__.startswith("SimpleITK"):
        import SimpleITK as sitk

        path = folder / f"{stem}.mha"
        sitk.WriteImage(image, str(path))
        return InputCase(stem, (path,)), "sitk"
    if isinstance(image, np.ndarray):
        if affine is None:
            raise ConfigError("a NumPy image needs its voxel-to-RAS affine: model.predict(array, affine=affine)")
        from medattn.data.io import write_volume

        if image.ndim not in (3, 4) or image.dtype.kind not in "biufc":
            raise ConfigError(
                f"a NumPy image is (X, Y, Z) or (X, Y, Z, channels) of numbers; got shape {image.shape}, dtype"
                f" {image.dtype}"
            )
        path = write_volume(_storable(np.asarray(image)), _checked_affine(affine), folder / f"{stem}.nii.gz")
        return InputCase(stem, (path,)), "numpy"
    raise ConfigError(
        f"cannot segment a {type(image).__name__}: give a path, a nibabel or SimpleITK image, or a NumPy array"
        " with affine="
    )


def _checked_affine(affine: Any) -> np.ndarray:
    """``affine=`` as a 4x4 float array once it is a voxel-to-world transform: finite, last row 0 0 0 1, its 3x3
    part invertible (nibabel's own errors on these named neither the argument nor the fault)."""
    try:
        a = np.asarray(affine, dtype=float)
    except (TypeError, ValueError):
        raise ConfigError(f"affine= must be a 4x4 matrix of numbers, got {type(affine).__name__}") from None
    if a.shape != (4, 4):
        raise ConfigError(f"affine= must be the 4x4 voxel-to-RAS matrix, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ConfigError("affine= holds NaN or infinite values")
    if not np.allclose(a[3], [0.0, 0.0, 0.0, 1.0]):
        raise ConfigError(f"affine='s last row must be 0 0 0 1, got {a[3].tolist()}")
    if abs(float(np.linalg.det(a[:3, :3]))) < 1e-12:
        raise ConfigError("affine= is singular: its 3x3 part maps the voxel grid onto a plane or a line")
    return a


def _storable(array: np.ndarray) -> np.ndarray:
    """``array`` in a dtype NIfTI stores without loss where possible (nibabel refuses bool and float16, and int64
    without an explicit header type): bool as uint8, float16 as float32, 64-bit integers as int32 when their values
    fit, else float64. Voxel values are what the model sees, so no value changes."""
    if array.dtype == bool:
        return array.astype(np.uint8)
    if array.dtype == np.float16:
        return array.astype(np.float32)
    if array.dtype.kind in "iu" and array.dtype.itemsize == 8:
        info = np.iinfo(np.int32)
        lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
        return array.astype(np.int32 if info.min <= lo and hi <= info.max else np.float64)
    return array


def _read_back(path: Path, kind: str) -> Any:
    """The written mask or probability file as ``kind`` (fully in memory: the file is about to be removed)."""
    import nibabel as nib

    if kind == "sitk":
        import SimpleITK as sitk

        return sitk.ReadImage(str(path))
    img: Any = nib.load(str(path))
    data = np.asanyarray(img.dataobj)
    if kind == "numpy":
        return np.array(data)
    return nib.Nifti1Image(np.array(data), img.affine, header=img.header)


def _shown(image: ImageLike) -> str | None:
    return str(image) if isinstance(image, (str, Path)) else None
