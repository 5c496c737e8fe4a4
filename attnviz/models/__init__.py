"""Models: tiny networks built from the reference blocks, their bundled checkpoints, and
loading of timm / torchvision / user models with local or hub weights."""

from __future__ import annotations

from .loading import (
    LOADERS,
    PreprocessConfig,
    PretrainedUnavailableError,
    WeightsError,
    assets_dir,
    bundled_models,
    load_model,
    load_weights_file,
    read_manifest,
)
from .zoo import TINY_MODELS, TinyResNet, create_tiny

__all__ = [
    "LOADERS",
    "TINY_MODELS",
    "PreprocessConfig",
    "PretrainedUnavailableError",
    "TinyResNet",
    "WeightsError",
    "assets_dir",
    "bundled_models",
    "create_tiny",
    "load_model",
    "load_weights_file",
    "read_manifest",
]
