"""The typed, JSON-round-tripping configuration of an :class:`~medattn.models.unet.AttentionGatedUNet`.

A model file stores ``model.config`` (the dict written by :meth:`UNetConfig.to_dict`) next to its weights, so
``build_from_config(doc["config"])`` rebuilds the same network without any other file. Per-stage fields left empty
(``()``) are derived from ``channels`` when the config is created, so the saved dict is always fully explicit.

Stage ``i`` works at ``prod(strides[: i + 1])`` times the input spacing. The defaults (chosen by
``bench/bench_models.py``, see the module docstring of :mod:`medattn.models.unet`) use a strided stem: stage 0 at
1/2, each further stage halves the grid except the bottleneck, which stays at the grid of the stage before it, so
five stages downsample 16 times in all, like MONAI's UNet and AttentionUnet with five widths.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from medattn.errors import ConfigError
from medattn.typing import Triple

NormName = Literal["instance", "group", "batch"]
ActName = Literal["relu", "leakyrelu", "gelu", "silu"]
AttentionName = Literal["none", "scse", "cbam", "mhsa", "wsa"]
FusionName = Literal["add", "concat"]
UpsampleName = Literal["transposed", "trilinear"]
PosEncodingName = Literal["conv", "sincos", "none"]

ARCH = "attention_gated_unet"
FORMAT_VERSION = 1


class ModelConfigError(ConfigError, ValueError):
    """An invalid model configuration or override (also a ``ValueError`` for library callers)."""


def as_triple(value: int | Sequence[int], what: str) -> Triple:
    """``3`` -> ``(3, 3, 3)``; ``(1, 3, 3)`` stays; anything else raises :class:`ModelConfigError` naming ``what``."""
    if isinstance(value, bool):
        raise ModelConfigError(f"{what}: expected an int or three ints, got {value!r}")
    if isinstance(value, int):
        return (value, value, value)
    if (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        return (int(value[0]), int(value[1]), int(value[2]))
    raise ModelConfigError(f"{what}: expected an int or three ints (X, Y, Z), got {value!r}")


def _per_stage(value: Any, n: int, default: Sequence[Any], what: str) -> tuple[Any, ...]:
    """A per-stage sequence of length ``n``: ``()``/``None`` -> ``default``; a scalar is repeated."""
    if value is None or (isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 0):
        return tuple(default)
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        return (value,) * n
    if not isinstance(value, Sequence):
        raise ModelConfigError(f"{what}: expected one value per stage ({n}), got {value!r}")
    if len(value) != n:
        raise ModelConfigError(f"{what}: expected {n} values (one per stage), got {len(value)}: {list(value)!r}")
    return tuple(value)


def _check_choice(value: Any, allowed: Any, what: str) -> None:
    choices = get_args(allowed)
    if value not in choices:
        raise ModelConfigError(f"{what}: {value!r} is not one of {', '.join(map(repr, choices))}")


def _check_int(value: Any, what: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ModelConfigError(f"{what}: expected an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class UNetConfig:
    """Everything that defines an attention-gated 3D U-Net; frozen, validated on creation, JSON round-trip safe.

    Args:
        in_channels: image channels (modalities) of the input.
        out_channels: output classes, background included (logits, no softmax).
        channels: feature width of each stage, finest first; ``len(channels)`` is the number of stages (>= 2).
        strides: per stage, the (X, Y, Z) downsampling of its first convolution relative to the previous stage;
            stage 0's stride applies to the input (``(1, 1, 1)`` keeps the stem at full resolution with a 1x1x1
            head; a larger one gives a strided stem and a transposed-convolution head with kernel = that stride).
            Default: 2 everywhere except the last stage (1). A scalar repeats for every stage. Anisotropic
            strides such as ``(1, 2, 2)`` are allowed.
        kernel_sizes: per stage, the odd (X, Y, Z) kernel of its convolutions (encoder and decoder). Default 3.
        encoder_convs: per stage, the number of convolutions of the encoder block (>= 1). Default 2.
        decoder_convs: per decoder stage (stage 0 .. L-2), convolutions after fusing skip and upsampled features
            (>= 0; 0 sends the fused features on unchanged, e.g. a full-resolution stage 0 straight to the head).
            Default 1.
        fusion: ``"concat"`` (channel concatenation, as in Oktay et al.; the default) or ``"add"`` (upsampled +
            skip: the first decoder convolution has half the input channels).
        upsample: ``"trilinear"`` (1x1x1 convolution at the coarse scale, then trilinear interpolation, as in
            Oktay et al.; the two commute exactly; the default, measured up to 7% faster) or ``"transposed"``
            (transposed convolution with kernel = stride). A strided stem's head is always a transposed
            convolution.
        norm: ``"instance"`` (affine; the default because batch statistics drift across scanners), ``"group"`` or
            ``"batch"``; used by every convolution block.
        norm_groups: groups of ``norm="group"`` (the largest divisor of the width not above it is used).
        act: activation of every block: ``"relu"``, ``"leakyrelu"`` (slope 0.01), ``"gelu"`` or ``"silu"``.
        residual: wrap every encoder and decoder block in a residual shortcut (1x1x1 projection when needed).
        gates: additive attention gates (Oktay et al. 2018) on the skip connections.
        gate_reduction: the gate's intermediate width is ``max(1, skip_width // gate_reduction)``.
        encoder_attention: per stage, a block applied after the encoder block: ``"none"``, ``"scse"``,
            ``"cbam"``, ``"mhsa"`` (global multi-head self-attention) or ``"wsa"`` (windowed self-attention).
        decoder_attention: the same per decoder stage (stage 0 .. L-2), applied after the decoder block.
        attention_reduction: channel reduction of the scSE and CBAM channel MLPs.
        attention_heads: heads of ``"mhsa"``/``"wsa"``; must divide the stage width.
        attention_window: (X, Y, Z) window of ``"wsa"`` in voxels of that stage.
        mlp_ratio: hidden width of the transformer MLP in ``"mhsa"``/``"wsa"``, as a multiple of the stage width.
        pos_encoding: positional encoding of ``"mhsa"``/``"wsa"``: ``"conv"`` (learned depth-wise 3x3x3
            convolution, size-agnostic), ``"sincos"`` (fixed 3D sine-cosine) or ``"none"``.
        deep_supervision: number of extra, lower-resolution outputs in training mode (0 disables; at most L-2).
        dropout: channel dropout probability applied to the bottleneck output in training mode.
        pad_input: pad inputs whose size is not a multiple of :attr:`required_multiple` (at the high end of each
            axis, replicating the border) and crop the outputs back; ``False`` raises a ``ValueError`` instead.
        channels_last: run the network in ``torch.channels_last_3d`` memory format (faster oneDNN convolutions on
            CPU); inputs and outputs are ordinary contiguous tensors either way.
    """

    in_channels: int = 1
    out_channels: int = 2
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    strides: tuple[Triple, ...] = ()
    kernel_sizes: tuple[Triple, ...] = ()
    encoder_convs: tuple[int, ...] = ()
    decoder_convs: tuple[int, ...] = ()
    fusion: FusionName = "concat"
    upsample: UpsampleName = "trilinear"
    norm: NormName = "instance"
    norm_groups: int = 8
    act: ActName = "leakyrelu"
    residual: bool = False
    gates: bool = True
    gate_reduction: int = 2
    encoder_attention: tuple[AttentionName, ...] = ()
    decoder_attention: tuple[AttentionName, ...] = ()
    attention_reduction: int = 2
    attention_heads: int = 4
    attention_window: Triple = (4, 4, 4)
    mlp_ratio: int = 2
    pos_encoding: PosEncodingName = "conv"
    deep_supervision: int = 0
    dropout: float = 0.0
    pad_input: bool = True
    channels_last: bool = True

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        _check_int(self.in_channels, "in_channels", 1)
        _check_int(self.out_channels, "out_channels", 1)
        if isinstance(self.channels, (int, str)) or not isinstance(self.channels, Sequence) or len(self.channels) < 2:
            raise ModelConfigError(f"channels: expected at least two stage widths, got {self.channels!r}")
        for c in self.channels:
            _check_int(c, f"channels {list(self.channels)}", 1)
        set_(self, "channels", tuple(self.channels))
        n = len(self.channels)
        strides = _per_stage(self.strides, n, [(2, 2, 2)] * (n - 1) + [(1, 1, 1)], "strides")
        set_(self, "strides", tuple(as_triple(s, f"strides[{i}]") for i, s in enumerate(strides)))
        for i, s in enumerate(self.strides):
            if min(s) < 1:
                raise ModelConfigError(f"strides[{i}]: every stride must be >= 1, got {s}")
        kernels = _per_stage(self.kernel_sizes, n, [(3, 3, 3)] * n, "kernel_sizes")
        set_(self, "kernel_sizes", tuple(as_triple(k, f"kernel_sizes[{i}]") for i, k in enumerate(kernels)))
        for i, k in enumerate(self.kernel_sizes):
            if min(k) < 1 or any(v % 2 == 0 for v in k):
                raise ModelConfigError(f"kernel_sizes[{i}]: kernels must be odd and >= 1, got {k}")
        set_(self, "encoder_convs", _per_stage(self.encoder_convs, n, [2] * n, "encoder_convs"))
        for i, v in enumerate(self.encoder_convs):
            _check_int(v, f"encoder_convs[{i}]", 1)
        set_(self, "decoder_convs", _per_stage(self.decoder_convs, n - 1, [1] * (n - 1), "decoder_convs"))
        for i, v in enumerate(self.decoder_convs):
            _check_int(v, f"decoder_convs[{i}]", 0)
        _check_choice(self.fusion, FusionName, "fusion")
        _check_choice(self.upsample, UpsampleName, "upsample")
        _check_choice(self.norm, NormName, "norm")
        _check_int(self.norm_groups, "norm_groups", 1)
        _check_choice(self.act, ActName, "act")
        for name in ("residual", "gates", "pad_input", "channels_last"):
            if not isinstance(getattr(self, name), bool):
                raise ModelConfigError(f"{name}: expected true or false, got {getattr(self, name)!r}")
        _check_int(self.gate_reduction, "gate_reduction", 1)
        enc_att = _per_stage(self.encoder_attention, n, ["none"] * n, "encoder_attention")
        dec_att = _per_stage(self.decoder_attention, n - 1, ["none"] * (n - 1), "decoder_attention")
        set_(self, "encoder_attention", enc_att)
        set_(self, "decoder_attention", dec_att)
        _check_int(self.attention_reduction, "attention_reduction", 1)
        _check_int(self.attention_heads, "attention_heads", 1)
        set_(self, "attention_window", as_triple(self.attention_window, "attention_window"))
        if min(self.attention_window) < 1:
            raise ModelConfigError(f"attention_window: expected edges >= 1, got {self.attention_window}")
        _check_int(self.mlp_ratio, "mlp_ratio", 1)
        _check_choice(self.pos_encoding, PosEncodingName, "pos_encoding")
        for where, kinds, widths in (
            ("encoder_attention", enc_att, self.channels),
            ("decoder_attention", dec_att, self.channels[:-1]),
        ):
            for i, (kind, width) in enumerate(zip(kinds, widths)):
                _check_choice(kind, AttentionName, f"{where}[{i}]")
                if kind in ("mhsa", "wsa") and width % self.attention_heads:
                    raise ModelConfigError(
                        f"{where}[{i}]={kind!r}: attention_heads={self.attention_heads} must divide the stage "
                        f"width {width}"
                    )
        _check_int(self.deep_supervision, "deep_supervision", 0)
        if self.deep_supervision > n - 2:
            raise ModelConfigError(
                f"deep_supervision: at most {n - 2} extra outputs with {n} stages, got {self.deep_supervision}"
            )
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ModelConfigError(f"dropout: expected a probability in [0, 1), got {self.dropout!r}")
        set_(self, "dropout", float(self.dropout))

    @property
    def num_stages(self) -> int:
        return len(self.channels)

    @property
    def required_multiple(self) -> Triple:
        """Per axis (X, Y, Z), the multiple of voxels the input must have (the product of all strides)."""
        return (
            math.prod(s[0] for s in self.strides),
            math.prod(s[1] for s in self.strides),
            math.prod(s[2] for s in self.strides),
        )

    def stage_scale(self, stage: int) -> Triple:
        """Per axis, how many input voxels one voxel of ``stage`` spans."""
        strides = self.strides[: stage + 1]
        return (
            math.prod(s[0] for s in strides),
            math.prod(s[1] for s in strides),
            math.prod(s[2] for s in strides),
        )

    def replace(self, **changes: Any) -> UNetConfig:
        """A copy with ``changes`` applied (validated like a new config)."""
        return self.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: every field explicit, tuples as lists, plus ``arch`` and ``format_version``."""
        doc: dict[str, Any] = {"arch": ARCH, "format_version": FORMAT_VERSION}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            doc[f.name] = [list(v) if isinstance(v, tuple) else v for v in value] if isinstance(value, tuple) else value
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> UNetConfig:
        """Inverse of :meth:`to_dict`; lists become tuples; an unknown key raises :class:`ModelConfigError`."""
        if not isinstance(doc, Mapping):
            raise ModelConfigError(f"model config: expected a mapping, got {type(doc).__name__}")
        body = dict(doc)
        arch = body.pop("arch", ARCH)
        if arch != ARCH:
            raise ModelConfigError(f"model config: arch {arch!r} is not {ARCH!r}")
        version = body.pop("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ModelConfigError(f"model config: format_version {version!r} is not supported (expected 1)")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(body) - known)
        if unknown:
            raise ModelConfigError(f"unknown model options {unknown}; known options: {sorted(known)}")
        for key in ("channels", "strides", "kernel_sizes", "encoder_convs", "decoder_convs"):
            if isinstance(body.get(key), list):
                body[key] = tuple(tuple(v) if isinstance(v, list) else v for v in body[key])
        for key in ("encoder_attention", "decoder_attention", "attention_window"):
            if isinstance(body.get(key), list):
                body[key] = tuple(body[key])
        return cls(**body)
