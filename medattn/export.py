"""Exported networks (``medattn export MODEL OUT --format torchscript|onnx``): the network of a model file for
runtimes without medattn, with its preprocessing plan beside it.

``OUT`` is the network file (``model.onnx``, ``model.ts``); ``OUT.plan.json`` beside it is the plan
(:class:`~medattn.data.plan.Plan`: spacing, orientation, normalisation, patch size, label values and names) plus
an ``export`` block: the format, the input (``image``: float32, batch 1, the channels and the plan's patch size:
one sliding window) and output (``logits``: the classes' logits, label order), the SHA-256 of the source model and
of the network file, and the largest absolute difference between the exported network and PyTorch on a random
window, measured at export time. An export whose difference exceeds :data:`MAX_ABS_DIFF` is refused.

The two files are each written atomically, the network first; a process killed between the two renames leaves a
new network beside the previous export's plan. The plan's ``network_sha256`` names the network it belongs to, and
:func:`load_exported` refuses a network whose plan records another one (a runtime without medattn can compare the
same digest).

What is exported is the network on one window; the sliding window, its blending, TTA and the mapping back to the
input grid stay with the caller (:func:`load_exported` gives a callable that :func:`medattn.infer.sliding.
sliding_window_predict` takes in place of the network). The shape is static (batch 1, the plan's patch), which is
what every ONNX runtime and TensorRT handle without dynamic-shape profiles; the sliding window feeds exactly that.

How: ONNX through PyTorch's ``torch.export``-based exporter (``torch.onnx.export(..., dynamo=True)``; the
TorchScript-based one cannot translate the channels-last layout the network uses), TorchScript by
``torch.jit.trace``. Both trace with oneDNN switched off, so the graph holds the portable ``aten::convolution``
rather than the CPU-only oneDNN call :mod:`medattn.models.conv` makes at run time. ONNX needs the ``export`` extra
(``pip install medattn[export]``: onnx, onnxscript, onnxruntime).
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medattn.errors import ConfigError, DataError

FORMATS = ("torchscript", "onnx")
#: The largest absolute logit difference an export may show against PyTorch on its check window.
MAX_ABS_DIFF = 1e-3


class _Logits(nn.Module):
    """The network's main output only (deep supervision heads and attention maps are training-time extras)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out[0] if isinstance(out, (list, tuple)) else out


def plan_path(out: str | Path) -> Path:
    """``model.onnx`` -> ``model.onnx.plan.json`` beside it (two formats of one model keep their own records)."""
    out = Path(out)
    return out.with_name(out.name + ".plan.json")


def export_model(model_path: str | Path, out: str | Path, fmt: str, seed: int = 0) -> dict[str, Any]:
    """Export ``model_path``'s network to ``out`` in ``fmt`` and write the plan beside it; returns the ``export``
    record (see the module docstring).

    Raises:
        ConfigError: an unknown format, a missing ONNX package, or an export that does not reproduce PyTorch.
    """
    from medattn.data.io import atomic_path, atomic_write_text, file_sha256
    from medattn.data.plan import normalisation_text
    from medattn.models.model_file import load_model

    if fmt not in FORMATS:
        raise ConfigError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    out = Path(out)
    loaded = load_model(model_path, "cpu")
    plan = loaded.plan
    net = _Logits(loaded.model).eval()
    shape = (1, plan.num_channels, *plan.patch_size)
    window = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        reference = net(window)
    with atomic_path(out, protected=[model_path]) as tmp:
        if fmt == "onnx":
            _to_onnx(net, window, Path(tmp))
        else:
            _to_torchscript(net, window, Path(tmp))
        got = _load_network(Path(tmp), fmt)(window)
        diff = float((got - reference).abs().max())
        if not diff <= MAX_ABS_DIFF:  # raised inside: the temporary file goes, a previous export at OUT stays
            raise ConfigError(f"the {fmt} export differs from PyTorch by {diff:.2e} (> {MAX_ABS_DIFF}); not kept")
        network_sha256 = file_sha256(tmp)
    record = {
        "format": fmt,
        "network_file": out.name,
        "input": {"name": "image", "dtype": "float32", "shape": list(shape)},
        "output": {"name": "logits", "dtype": "float32", "shape": [1, plan.num_classes, *plan.patch_size]},
        "labels": {str(k): v for k, v in sorted(plan.labels.items())},
        # a runtime without medattn must not apply the dataset statistics a z-score channel only records
        "normalisation": {
            ch.name: f"{ch.scheme}: {normalisation_text(ch)}"
            + (
                "; no clipping (the dataset statistics of this channel are recorded, not used)"
                if ch.scheme == "zscore"
                else ""
            )
            for ch in plan.channels
        },
        "source_model": str(model_path),
        "source_sha256": file_sha256(model_path),
        "network_sha256": network_sha256,
        "max_abs_diff_vs_pytorch": diff,
        "check_window_seed": seed,
    }
    doc = {**plan.to_dict(), "export": record}
    atomic_write_text(plan_path(out), json.dumps(doc, indent=2) + "\n", protected=[model_path])
    return record


def _to_onnx(net: nn.Module, window: torch.Tensor, path: Path) -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"ONNX export needs the export extra: pip install 'medattn[export]' ({e})") from None
    chatty = [logging.getLogger(n) for n in ("onnx_ir", "onnxscript", "torch.onnx")]
    levels = [lg.level for lg in chatty]
    for lg in chatty:
        lg.setLevel(logging.WARNING)
    with warnings.catch_warnings(), contextlib.ExitStack() as stack:
        warnings.simplefilter("ignore")  # the flags' TF32 notice, the exporter's progress
        stack.enter_context(torch.backends.mkldnn.flags(enabled=False))
        for lg, level in zip(chatty, levels):
            stack.callback(lg.setLevel, level)
        program = torch.onnx.export(
            net, (window,), dynamo=True, input_names=["image"], output_names=["logits"], verbose=False
        )
    if program is None:  # the exporter returns None only when given a file name
        raise ConfigError("the ONNX exporter returned no program")
    program.save(str(path))


def _to_torchscript(net: nn.Module, window: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # shape-dependent Python branches become constants (the shape is static);
        with torch.backends.mkldnn.flags(enabled=False), torch.no_grad():  # TorchScript's deprecation notices
            traced = torch.jit.trace(net, window, check_trace=False)
        torch.jit.save(traced, str(path))


def check_plan_matches(path: Path) -> None:
    """Refuse a network without its ``OUT.plan.json``, or whose plan records another network file's SHA-256."""
    from medattn.data.io import file_sha256

    plan = plan_path(path)
    if not path.is_file():
        return  # the reader names it
    if not plan.is_file():
        raise DataError(
            f"no {plan.name} beside the network: an export interrupted before its plan, or a network moved without"
            " it (its input size, labels and normalisation are in the plan); export the model again",
            path,
        )
    try:
        recorded = json.loads(plan.read_text()).get("export", {}).get("network_sha256")
    except (OSError, ValueError, AttributeError) as e:
        raise DataError(f"the export's plan {plan.name} cannot be read: {e}", path) from None
    if recorded is not None and recorded != file_sha256(path):
        raise DataError(
            f"this network is not the one its plan {plan.name} was written for (an export interrupted between its"
            " two files, or a file replaced by hand); export the model again",
            path,
        )


def load_exported(path: str | Path, fmt: str | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """An exported network as a callable on a batch of windows (B, C, *patch) -> logits (B, K, *patch), for
    :func:`medattn.infer.sliding.sliding_window_predict` (batches run one window at a time: the shape is static).
    ``fmt`` defaults from the suffix (``.onnx``: ONNX Runtime on the CPU; else TorchScript).

    Raises:
        DataError: no plan beside ``path``, or one that records another network (an export killed between its two
            writes).
    """
    path = Path(path)
    check_plan_matches(path)
    return _load_network(path, fmt)


def _load_network(path: Path, fmt: str | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """:func:`load_exported` without the plan check (the export's own check of its temporary file)."""
    fmt = fmt or ("onnx" if path.suffix == ".onnx" else "torchscript")
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ConfigError(
                f"running an ONNX network needs onnxruntime (pip install 'medattn[export]'): {e}"
            ) from None
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def run_onnx(x: torch.Tensor) -> torch.Tensor:
            outs = [
                session.run(None, {name: x[i : i + 1].detach().cpu().numpy().astype(np.float32)})[0]
                for i in range(x.shape[0])
            ]
            return torch.from_numpy(np.concatenate(outs, axis=0)).to(x.device)

        return run_onnx
    if not path.is_file():
        raise DataError("no such exported network", path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated in favour of torch.export
        module = torch.jit.load(str(path), map_location="cpu").eval()

    def run_ts(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            # The module was loaded on the CPU: windows go there and the logits come back to the caller's device.
            return torch.cat([module(x[i : i + 1].cpu()) for i in range(x.shape[0])], dim=0).to(x.device)

    return run_ts
