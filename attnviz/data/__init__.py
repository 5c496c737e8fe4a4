"""Data: the generated multi-scale shapes dataset (and, later, image loading and views)."""

from __future__ import annotations

from .shapes import SHAPE_CLASSES, ShapeRecord, ShapesDataset, write_image_folder

__all__ = ["SHAPE_CLASSES", "ShapeRecord", "ShapesDataset", "write_image_folder"]
