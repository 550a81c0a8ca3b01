"""The attention-gated 3D U-Net (Oktay et al. 2018) with pluggable volumetric attention per stage.

Layout (``L = len(channels)`` stages, stage 0 finest)::

    x ─ stem (stage 0) ─ stage 1 ─ ... ─ stage L-1 (bottleneck, optional dropout)
            │skip         │skip                │ g
            ▼             ▼                    ▼
    head ◄─ dec 0 ◄────── dec 1 ◄── ... ◄── upsample(g) ⊕ gate(skip, g)

Each decoder stage ``i`` upsamples the coarser decoder output ``g`` to stage ``i``'s grid, gates the skip
features with ``g`` taken at the coarser scale (the gate resamples its coefficients itself), fuses the two (sum or
concatenation) and runs ``decoder_convs[i]`` convolutions. Every block gets ``norm`` and ``act`` explicitly.

Why the defaults (``bench/bench_models.py``, 64^3 window, widths 16..256, measured on the 2-core dev machine):

* A strided stem. Stage 0 works at 1/2 resolution (as in MONAI's UNet) and a 2x2x2 transposed convolution maps
  it back to the input grid. Keeping a 16-channel stage at full resolution, even a lean one (one convolution,
  additive fusion, preset ``ag_unet_fullres``), costs 2.8x the FLOPs and 2.8x the time; a nnU-Net-like one
  (two plus two convolutions there) 9x the FLOPs and 8x the time. Whether full resolution earns its cost in Dice
  is for the training benchmarks to say; ``strides[0] = 1`` gives it.
* Two convolutions per encoder stage, one per decoder stage, concatenation as in Oktay et al.: 12 kFLOP per
  voxel, about MONAI UNet's (``num_res_units=2``) and an eighth of MONAI's AttentionUnet (93.5 kFLOP).
* Trilinear upsampling (a 1x1x1 convolution at the coarse scale, then interpolation): as in Oktay et al., and up
  to 7 % faster than transposed convolutions here. Additive fusion would be 23-28 % faster than concatenation
  (``fusion="add"``); it is not the default until it shows the same Dice.
* ``channels_last_3d``: 7-8 % faster than contiguous tensors with oneDNN.
* Convolutions through :mod:`medattn.models.conv`, which keeps batch-one windows on oneDNN (3x faster than
  PyTorch's own dispatch on this network, single-threaded).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import torch
from torch import nn

from medattn.models.attention import make_attention
from medattn.models.blocks import AttentionGate, ConvBlock, Upsample
from medattn.models.config import AttentionName, UNetConfig
from medattn.models.conv import Conv3d, ConvTranspose3d, contiguous_output
from medattn.models.norm import gated_add
from medattn.models.padding import (
    check_input,
    crop_to,
    downscaled_size,
    needs_padding,
    pad_to_multiple,
    padded_size,
)
from medattn.typing import ModelOutput, Triple


def full_resolution(output: Any) -> torch.Tensor:
    """The full-resolution logits of a network output: the output itself, or the first item of a deep-supervision
    list or tuple (see :class:`AttentionGatedUNet`)."""
    return output[0] if isinstance(output, (list, tuple)) else output


class AttentionGatedUNet(nn.Module):
    """3D encoder-decoder with additive attention gates on the skips, deep supervision and attention read-out.

    Build it from a :class:`~medattn.models.config.UNetConfig` or keyword overrides of one::

        net = AttentionGatedUNet(in_channels=1, out_channels=3, channels=(16, 32, 64, 128))
        logits = net(x)                                # x: float (B, 1, X, Y, Z), any X, Y, Z
        logits, maps = net(x, return_attention=True)   # maps[i]: (B, 1, X, Y, Z) in [0, 1], gate of stage i
        torch.save({"config": net.config, "state_dict": net.state_dict()}, path)

    ``forward`` returns logits (B, out_channels, X, Y, Z), float, same device and spatial size as ``x``, in
    training and in eval mode. With ``deep_supervision = k > 0`` *and* ``self.training``, it returns a list
    ``[full, stage1, ..., stage_k]`` instead (nnU-Net style): output ``j`` has spatial size
    ``ceil(size / output_scales[j])`` per axis, finest first, i.e. the logits of decoder stage ``j`` without
    upsampling; downsample the target to match. Inputs whose size is not a multiple of
    :attr:`required_multiple` (or is exactly one multiple, which would leave a single voxel at the bottleneck)
    are padded at the high end (replicating the border) and the outputs cropped back, unless
    ``pad_input=False``, in which case a ``ValueError`` names the size needed.
    """

    def __init__(self, config: UNetConfig | Mapping[str, Any] | None = None, **overrides: Any) -> None:
        super().__init__()
        if config is None:
            cfg = UNetConfig(**overrides) if overrides else UNetConfig()
        elif isinstance(config, UNetConfig):
            cfg = config.replace(**overrides) if overrides else config
        else:
            cfg = UNetConfig.from_dict({**config, **overrides})
        self.cfg = cfg
        widths = cfg.channels
        n = cfg.num_stages

        self.encoder = nn.ModuleList()
        self.encoder_attention = nn.ModuleList()
        for i in range(n):
            cin = cfg.in_channels if i == 0 else widths[i - 1]
            self.encoder.append(self._block(cin, widths[i], cfg.encoder_convs[i], i, cfg.strides[i]))
            self.encoder_attention.append(self._attention(cfg.encoder_attention[i], widths[i]))
        self.dropout = nn.Dropout3d(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

        # Decoder modules are indexed by stage (0 = finest); they run from stage n-2 down to 0.
        self.upsample = nn.ModuleList()
        self.gates = nn.ModuleList()
        self.decoder = nn.ModuleList()
        self.decoder_attention = nn.ModuleList()
        dec_widths = [0] * (n - 1) + [widths[-1]]
        for i in reversed(range(n - 1)):
            g_width = dec_widths[i + 1]
            self.upsample.insert(0, Upsample(g_width, widths[i], cfg.strides[i + 1], cfg.upsample))
            if cfg.gates:
                inter = max(1, widths[i] // cfg.gate_reduction)
                self.gates.insert(0, AttentionGate(widths[i], g_width, inter, cfg.strides[i + 1], cfg.act))
            fused = widths[i] * (2 if cfg.fusion == "concat" else 1)
            if cfg.decoder_convs[i] > 0:
                block: nn.Module = self._block(fused, widths[i], cfg.decoder_convs[i], i, (1, 1, 1))
                dec_widths[i] = widths[i]
            else:
                block = nn.Identity()
                dec_widths[i] = fused
            self.decoder.insert(0, block)
            self.decoder_attention.insert(0, self._attention(cfg.decoder_attention[i], dec_widths[i]))

        stem = cfg.strides[0]
        if stem == (1, 1, 1):
            self.head: nn.Module = Conv3d(dec_widths[0], cfg.out_channels, 1)
        else:  # a strided stem: the head brings stage 0 back to the input grid
            self.head = ConvTranspose3d(dec_widths[0], cfg.out_channels, stem, channels_last_output=False)
        self.ds_heads = nn.ModuleList(
            Conv3d(dec_widths[i], cfg.out_channels, 1) for i in range(1, cfg.deep_supervision + 1)
        )
        if cfg.channels_last:
            self.to(memory_format=torch.channels_last_3d)

    def _block(self, cin: int, cout: int, num_convs: int, stage: int, stride: Triple) -> ConvBlock:
        c = self.cfg
        return ConvBlock(cin, cout, num_convs, c.kernel_sizes[stage], stride, c.norm, c.act, c.residual, c.norm_groups)

    def _attention(self, kind: AttentionName, width: int) -> nn.Module:
        c = self.cfg
        return make_attention(
            kind,
            width,
            act=c.act,
            reduction=c.attention_reduction,
            heads=c.attention_heads,
            window=c.attention_window,
            mlp_ratio=c.mlp_ratio,
            pos_encoding=c.pos_encoding,
        )

    # ---- description -----------------------------------------------------------------------------------------

    @property
    def config(self) -> dict[str, Any]:
        """The JSON-ready config that rebuilds this network (``build_from_config(model.config)``)."""
        return self.cfg.to_dict()

    @property
    def required_multiple(self) -> Triple:
        """Per axis (X, Y, Z), the size multiple the network works on; other sizes are padded (or rejected)."""
        return self.cfg.required_multiple

    @property
    def output_scales(self) -> list[Triple]:
        """Per output of a deep-supervised forward pass, finest first, the (X, Y, Z) downsampling factor."""
        return [(1, 1, 1)] + [self.cfg.stage_scale(i) for i in range(1, self.cfg.deep_supervision + 1)]

    # ---- forward ---------------------------------------------------------------------------------------------

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> ModelOutput | tuple[ModelOutput, list[torch.Tensor]]:
        """Segment ``x``.

        Args:
            x: float tensor (B, in_channels, X, Y, Z), any spatial size (see :attr:`required_multiple`).
            return_attention: also return the attention coefficients of every gate, finest stage first, each
                (B, 1, X, Y, Z) in [0, 1] on the input grid (trilinear resampling of the gate's map).

        Returns:
            logits (B, out_channels, X, Y, Z) contiguous; a list of outputs under deep supervision in training
            mode (see the class docstring); with ``return_attention`` a tuple ``(that, maps)``.
        """
        cfg = self.cfg
        check_input(x, cfg.in_channels, type(self).__name__)
        size = tuple(int(s) for s in x.shape[2:])
        multiple = cfg.required_multiple
        if needs_padding(size, multiple):
            if not cfg.pad_input:
                raise ValueError(
                    f"{type(self).__name__}: input size {size} is not a multiple of {multiple} (X, Y, Z) spanning "
                    f"at least two multiples (the smallest size it accepts is {padded_size(size, multiple)}); pad "
                    "it or build the model with pad_input=True"
                )
            x = pad_to_multiple(x, multiple)
        padded = tuple(int(s) for s in x.shape[2:])
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)

        skips: list[torch.Tensor] = []
        h = x
        for block, attention in zip(self.encoder, self.encoder_attention):
            h = attention(block(h))
            skips.append(h)
        h = self.dropout(h)

        alphas: list[torch.Tensor] = []
        decoded: list[torch.Tensor] = [h] * len(skips)
        for i in reversed(range(len(skips) - 1)):
            skip = skips[i]
            up = self.upsample[i](h)  # a fresh tensor: fusing into it in place saves a full-size allocation
            if cfg.gates:
                alpha = cast(AttentionGate, self.gates[i]).coefficients(skip, h)
                alphas.append(alpha)
                if cfg.fusion == "add":
                    fused = gated_add(up, skip, alpha)
                else:
                    fused = torch.cat([up, skip * alpha], dim=1)
            else:
                fused = up.add_(skip) if cfg.fusion == "add" else torch.cat([up, skip], dim=1)
            h = self.decoder_attention[i](self.decoder[i](fused))
            decoded[i] = h

        logits = contiguous_output(crop_to(self.head(h), size))
        out: ModelOutput = logits
        if self.training and cfg.deep_supervision > 0:
            out = [logits]
            for j, head in enumerate(self.ds_heads, start=1):
                low = head(decoded[j])
                out.append(contiguous_output(crop_to(low, downscaled_size(size, cfg.stage_scale(j)))))
        if not return_attention:
            return out
        maps = [self._to_input_grid(a, padded, size) for a in reversed(alphas)]
        return out, maps

    @staticmethod
    def _to_input_grid(alpha: torch.Tensor, padded: tuple[int, ...], size: tuple[int, ...]) -> torch.Tensor:
        if tuple(alpha.shape[2:]) != padded:
            alpha = nn.functional.interpolate(alpha, size=padded, mode="trilinear", align_corners=False)
        return crop_to(alpha, size).contiguous()
