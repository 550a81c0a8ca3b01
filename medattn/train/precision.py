"""Mixed precision: which autocast dtype a device gets, and whether gradients need scaling.

On CUDA, ``"auto"`` picks bfloat16 where the GPU supports it (no gradient scaling needed) and float16 with a
``GradScaler`` elsewhere. On the CPU, ``"auto"`` is float32: bfloat16 autocast is only fast on CPUs with native
bf16 arithmetic (AVX512-BF16 or AMX); elsewhere oneDNN emulates it and a training step runs orders of magnitude
slower, so an explicit ``"bf16"`` on such a CPU is refused.
"""

from __future__ import annotations

import contextlib
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medattn.errors import ConfigError


@dataclass(frozen=True)
class Precision:
    """An autocast setting: ``dtype`` None runs in float32; ``scale_grads`` needs a ``GradScaler`` (fp16)."""

    name: str
    device_type: str
    dtype: torch.dtype | None = None
    scale_grads: bool = False

    def autocast(self) -> Any:
        """A context manager: ``torch.autocast`` with this dtype, or nothing for float32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A ``GradScaler`` that is enabled only when gradients need scaling."""
        return torch.amp.GradScaler(self.device_type, enabled=self.scale_grads)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (x86 ``avx512_bf16`` or ``amx_bf16``; Linux flags only)."""
    if platform.system() != "Linux":
        return False
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags = set(line.split(":", 1)[1].split())
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    return False


def resolve_precision(request: str, device: torch.device | str) -> Precision:
    """The :class:`Precision` for ``request`` (``auto``, ``fp32``, ``fp16``, ``bf16``) on ``device``.

    Raises:
        ConfigError: fp16 on the CPU, bf16 on a CPU without native bf16, bf16 on a GPU without it.
    """
    dev = torch.device(device)
    kind = dev.type
    if request == "fp32":
        return Precision("fp32", kind)
    if kind == "cuda":
        bf16_ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        if request == "auto":
            request = "bf16" if bf16_ok else "fp16"
        if request == "bf16":
            if not bf16_ok:
                raise ConfigError("--precision bf16: this GPU does not support bfloat16; use fp16 or auto")
            return Precision("bf16", kind, torch.bfloat16)
        if request == "fp16":
            return Precision("fp16", kind, torch.float16, scale_grads=True)
    elif kind == "cpu":
        if request == "auto":
            return Precision("fp32", kind)
        if request == "bf16":
            if not cpu_has_native_bf16():
                raise ConfigError(
                    "--precision bf16: this CPU has no native bfloat16 (avx512_bf16 / amx_bf16), where emulated "
                    "bf16 training is far slower than fp32; use --precision fp32"
                )
            return Precision("bf16", kind, torch.bfloat16)
        if request == "fp16":
            raise ConfigError("--precision fp16 needs a CUDA device; on the CPU use fp32 (or bf16 where native)")
    else:
        if request == "auto":
            return Precision("fp32", kind)
    raise ConfigError(f"--precision {request!r} is not supported on device {dev}")
