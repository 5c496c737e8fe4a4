"""Data: the generated multi-scale shapes dataset, tolerant image loading, image sources
(folder / paths / Dataset / DataLoader) in batches, and the paper's scale views."""

from __future__ import annotations

from .images import list_images, load_image
from .shapes import SHAPE_CLASSES, ShapeRecord, ShapesDataset, write_image_folder
from .sources import Batch, ImageSource, image_source, iter_batches
from .views import scale_views

__all__ = [
    "SHAPE_CLASSES",
    "Batch",
    "ImageSource",
    "ShapeRecord",
    "ShapesDataset",
    "image_source",
    "iter_batches",
    "list_images",
    "load_image",
    "scale_views",
    "write_image_folder",
]
