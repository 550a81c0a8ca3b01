"""Attention-gated 3D U-Nets, volumetric attention blocks, and the model registry.

Start with :func:`build_model` (a preset by name) or :class:`AttentionGatedUNet` (a config); a checkpoint stores
``model.config`` and rebuilds with :func:`build_from_config` / :func:`model_from_checkpoint`. A preset is one
:class:`Preset` (data) in :data:`PRESETS`; :func:`register_preset` adds one (see :mod:`medattn.models.registry`).
:mod:`medattn.models.from_plan` shapes a preset to a preprocessing plan (``build_network``), and
:mod:`medattn.models.model_file` writes and reads the self-contained ``model.pt`` that ``predict``, ``drift`` and
``adapt`` load (``save_model``, ``load_model``).
"""

from medattn.models.attention import (
    CBAM3d,
    GlobalSelfAttention3d,
    SqueezeExcitation3d,
    WindowSelfAttention3d,
    make_attention,
)
from medattn.models.blocks import AttentionGate, ConvBlock, Upsample
from medattn.models.config import ModelConfigError, UNetConfig
from medattn.models.monai_attention_unet import MonaiAttentionUNet
from medattn.models.registry import (
    PRESETS,
    Preset,
    build_from_config,
    build_model,
    list_models,
    model_from_checkpoint,
    models_table,
    register_preset,
)
from medattn.models.unet import AttentionGatedUNet

__all__ = [
    "PRESETS",
    "AttentionGate",
    "AttentionGatedUNet",
    "CBAM3d",
    "ConvBlock",
    "GlobalSelfAttention3d",
    "ModelConfigError",
    "MonaiAttentionUNet",
    "Preset",
    "SqueezeExcitation3d",
    "UNetConfig",
    "Upsample",
    "WindowSelfAttention3d",
    "build_from_config",
    "build_model",
    "list_models",
    "make_attention",
    "model_from_checkpoint",
    "models_table",
    "register_preset",
]
