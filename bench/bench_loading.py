"""Benchmark: reading a NIfTI volume (``.nii`` and ``.nii.gz``) into a float32 tensor: medattn's pipeline loader
against MONAI's ``LoadImage`` with its defaults and against the raw floor.

    .venv/bin/python bench/bench_loading.py            # sized for about 30 s
    .venv/bin/python bench/bench_loading.py --quick    # fewer rounds

The files: a real BraTS FLAIR scan (240x240x155, float32 on disk) and a real MSD hippocampus case (~35x50x35,
uint8 or float32) from ``../shared/data``, each as stored (``.nii.gz``) and decompressed into a temporary folder
(``.nii``, the same bytes); generated volumes of the same sizes when the data are absent. Nothing is copied into
the repository. The contenders, each returning a float32 tensor of the volume's voxels:

* ``medattn``: what every medattn pipeline runs first: :func:`medattn.data.readers.make_loader` (MONAI
  ``LoadImage`` with medattn's readers, float32) then ``EnsureChannelFirst`` (the pipeline's ``LoadImaged`` and
  ``EnsureChannelFirstd`` on one key);
* ``monai``: ``monai.transforms.LoadImage(image_only=True)`` with its defaults (reader chosen by suffix, float32);
* ``floor``: the least work that gives the same tensor in this process's memory, with the header parsed once
  outside the timing: the file gunzipped in one ``zlib.decompress`` call into a buffer of the known size
  (``.nii.gz``) or read into one buffer (``.nii``), viewed with ``np.frombuffer`` at the header's offset, cast to
  float32 only when stored otherwise, ``torch.from_numpy``. (A memory map of a ``.nii`` would cost less still, but
  it only maps the page cache; both contenders copy the voxels, and so does this floor.)

Every output is checked equal to the floor's, and every page of it is touched after the call (one element per
4 KiB), so a memory-mapped result pays for reading its data like the others. The files sit in the page cache
after the warm-up round: this measures decoding, not the disk. Interleaved rounds, wall clock; ratios per round.
The issue sets no goal here: the ratios say what medattn's loading costs against MONAI's and how far both are
from the floor.
"""

from __future__ import annotations

import gzip
import math
import os
import sys
import tempfile
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (
    SHARED_DATA,
    Headline,
    Stats,
    brats_flair_scans,
    common_parser,
    finish,
    format_stats,
    format_table,
    headline,
    paired_ratio,
    start,
    synchronizer,
    time_interleaved_clocks,
)

ROUNDS = {"full": 9, "quick": 5, "smoke": 1}


def source_files(tmp: Path, small: bool) -> dict[str, Path]:
    """``{label: .nii.gz path}``: the real files, or generated ones of the same size and dtype in ``tmp``."""
    import nibabel as nib

    flair = brats_flair_scans()
    hippo = sorted(SHARED_DATA.glob("Task04_Hippocampus/imagesTr/*.nii.gz"))
    if flair and hippo and not small:
        return {f"BraTS FLAIR {flair[0].parent.name}": flair[0], f"hippocampus {hippo[0].name[:-7]}": hippo[0]}
    if not small:
        print(f"# no BraTS or hippocampus cases under {SHARED_DATA}: generated volumes of the same sizes")
    rng = np.random.default_rng(0)
    out = {}
    shape: tuple[int, ...]
    for label, shape, dtype in (
        ("generated 240x240x155", (240, 240, 155), np.float32),
        ("generated 35x51x35", (35, 51, 35), np.uint8),
    ):
        if small:
            shape = tuple(max(8, s // 8) for s in shape)
            label = f"generated {'x'.join(map(str, shape))}"
        data = (rng.gamma(2.0, 100.0, shape) * (rng.random(shape) > 0.3)).astype(dtype)
        path = tmp / f"{label.replace(' ', '_')}.nii.gz"
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
        out[label] = path
    return out


def uncompressed_copy(src: Path, tmp: Path) -> Path:
    """The same bytes, gunzipped, as ``tmp/<name>.nii``."""
    dst = tmp / src.name[: -len(".gz")]
    with gzip.open(src, "rb") as f:
        dst.write_bytes(f.read())
    return dst


def floor_reader(path: Path) -> Callable[[], torch.Tensor]:
    """The floor for one file (see the module docstring); the header is read here, once."""
    import nibabel as nib

    img: Any = nib.load(str(path))
    offset = int(img.dataobj.offset)
    dtype = np.dtype(img.get_data_dtype())
    shape = tuple(int(s) for s in img.shape)
    count = math.prod(shape)

    def tensor(arr: np.ndarray) -> torch.Tensor:
        arr = arr.reshape(shape, order="F")
        if dtype != np.float32:
            return torch.from_numpy(arr.astype(np.float32))
        with warnings.catch_warnings():  # a view of immutable bytes: nothing writes to it here
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(arr)

    if path.name.endswith(".gz"):

        def gunzip() -> torch.Tensor:
            # one call for the whole gzip member, into an output buffer of the known size
            raw = zlib.decompress(path.read_bytes(), wbits=31, bufsize=offset + count * dtype.itemsize)
            return tensor(np.frombuffer(raw, dtype=dtype, count=count, offset=offset))

        return gunzip

    def read() -> torch.Tensor:
        buf = np.empty(offset + count * dtype.itemsize, dtype=np.uint8)
        with open(path, "rb") as f:
            if f.readinto(memoryview(buf)) != buf.size:
                raise ValueError(f"{path}: shorter than its header says")
        return tensor(buf[offset:].view(dtype))

    return read


def touch_pages(t: torch.Tensor) -> None:
    """Read one element per 4 KiB page of ``t``'s memory (so a memory map pays for its reads), in storage order:
    ``reshape(-1)`` would copy the whole of a Fortran-ordered tensor first."""
    order = sorted(range(t.ndim), key=lambda d: -t.stride(d))
    flat = t.permute(order)
    flat = flat.view(-1) if flat.is_contiguous() else flat.reshape(-1)
    float(flat[:: max(1, 4096 // t.element_size())].sum())


def contenders(path: Path, device: torch.device) -> dict[str, Callable[[], torch.Tensor]]:
    from monai.transforms import EnsureChannelFirst, LoadImage

    from medattn.data.readers import make_loader, quiet_default_readers

    ours, to_channel_first = make_loader(image_only=True), EnsureChannelFirst()
    with quiet_default_readers():  # MONAI's own defaults, minus a CPU machine's nvImageCodec notice
        theirs = LoadImage(image_only=True)
    calls: dict[str, Callable[[], torch.Tensor]] = {
        "medattn": lambda: to_channel_first(ours(str(path)))[0],
        "monai": lambda: theirs(str(path)),
        "floor": floor_reader(path),
    }

    def materialised(fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            t = fn()
            t = t.as_tensor() if hasattr(t, "as_tensor") else t
            t = t.to(device)
            touch_pages(t)
            return t

        return call

    return {k: materialised(f) for k, f in calls.items()}


def measure(label: str, path: Path, rounds: int, device: torch.device) -> dict[str, Any]:
    """Time the contenders on one file, interleaved."""
    calls = contenders(path, device)
    outs = {k: f() for k, f in calls.items()}
    reference = outs["floor"].reshape(-1).cpu()
    equal = all(torch.equal(o.reshape(-1).cpu(), reference) for o in outs.values())
    kind = ".nii.gz" if path.name.endswith(".gz") else ".nii"
    print(f"{label} {kind}: {tuple(outs['floor'].shape)}, {rounds} interleaved rounds ...", flush=True)
    raw = time_interleaved_clocks(calls, rounds=rounds, sync=synchronizer(device), clocks=("wall",))["wall"]
    return {
        "file": label,
        "kind": kind,
        "bytes": path.stat().st_size,
        "shape": tuple(outs["floor"].shape),
        "outputs_equal": equal,
        "seconds": {k: Stats.of(v) for k, v in raw.items()},
        "medattn_over_monai": paired_ratio(raw, "medattn", "monai"),
        "medattn_over_floor": paired_ratio(raw, "medattn", "floor"),
        "monai_over_floor": paired_ratio(raw, "monai", "floor"),
    }


def main(argv: list[str] | None = None) -> int:
    p = common_parser(__doc__, "runs/bench/bench_loading.json")
    args = p.parse_args(argv)

    setup = start(args)
    rounds = args.rounds or ROUNDS[setup.mode]
    results: list[dict[str, Any]] = []
    heads: list[Headline] = []
    with tempfile.TemporaryDirectory(prefix="medattn-bench-") as tmpdir:
        tmp = Path(tmpdir)
        files = source_files(tmp, setup.mode == "smoke")
        headline_file = next(iter(files))  # the large volume gives the headline figures
        for label, gz in files.items():
            for path in (gz, uncompressed_copy(gz, tmp)):
                res = measure(label, path, rounds, setup.device)
                results.append(res)
                if label == headline_file:
                    floor = res["seconds"]["floor"].median
                    heads.append(
                        headline(
                            "loading",
                            f"medattn loader {res['kind']}",
                            "MONAI LoadImage",
                            "time ratio",
                            res["medattn_over_monai"],
                            None,
                            f"{label}; {res['medattn_over_floor'].median:.2f}x the floor (MONAI "
                            f"{res['monai_over_floor'].median:.2f}x); floor {floor * 1e3:.0f} ms",
                            setup.device_name,
                        )
                    )
    rows = [
        [
            f"{r['file']} {r['kind']}",
            f"{r['bytes'] / 2**20:.1f}",
            *(f"{r['seconds'][k].median * 1e3:.1f}" for k in ("medattn", "monai", "floor")),
            format_stats(r["medattn_over_monai"]),
            f"{r['medattn_over_floor'].median:.2f}",
            f"{r['monai_over_floor'].median:.2f}",
            "yes" if r["outputs_equal"] else "NO",
        ]
        for r in results
    ]
    print()
    header = ["file", "MiB", "medattn ms", "MONAI ms", "floor ms", "medattn/MONAI [IQR]", "medattn/floor"]
    print(format_table([*header, "MONAI/floor", "equal"], rows))
    print("(floor: .nii.gz gunzipped in one call, .nii read into one buffer; float32 tensors from both)")
    doc = {
        "environment": setup.env,
        "mode": setup.mode,
        "device": setup.device_name,
        "rounds": rounds,
        "results": results,
        "headlines": heads,
    }
    finish(args.out, doc)
    return 0 if all(r["outputs_equal"] for r in results) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
