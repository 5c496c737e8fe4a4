"""Data: the generated multi-scale shapes dataset, tolerant image loading, image sources
(folder / paths / Dataset / DataLoader) in batches, and the paper's scale views."""

from __future__ import annotations

from . import scene_controls  # noqa: F401  registers ShapeScenes' content controls
from .images import list_images, load_image
from .preprocess import EvalTransform, PreprocessError, preprocess_for
from .shapes import SHAPE_CLASSES, ShapeRecord, ShapeScenes, ShapesDataset, write_image_folder
from .sources import Batch, ImageSource, Record, image_source, iter_batches
from .views import resolution_control, scale_views, zoom_views

__all__ = [
    "SHAPE_CLASSES",
    "Batch",
    "EvalTransform",
    "PreprocessError",
    "Record",
    "ImageSource",
    "ShapeRecord",
    "ShapeScenes",
    "ShapesDataset",
    "image_source",
    "iter_batches",
    "list_images",
    "load_image",
    "preprocess_for",
    "resolution_control",
    "scale_views",
    "write_image_folder",
    "zoom_views",
]
