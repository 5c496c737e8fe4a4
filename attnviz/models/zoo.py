"""The tiny zoo: every tiny model, from :mod:`attnviz.models.tiny` and
:mod:`attnviz.models.tiny_more`, in one registry.

``TINY_MODELS`` here is the very dict of :mod:`attnviz.models.tiny` (so
``attnviz.models.tiny.TINY_MODELS`` and ``create_tiny`` see every model once this module is
imported; :mod:`attnviz.models` imports it). Importing it adds :data:`~attnviz.models.tiny_more.
MORE_MODELS` (``sa_tiny``, ``danet_tiny``, ``mix_tiny``). The import graph is a tree:
``zoo -> tiny``, ``zoo -> tiny_more -> tiny``.
"""

from __future__ import annotations

from .tiny import IMAGE_SIZE, MEAN, STD, TINY_MODELS, TinyResNet, create_tiny
from .tiny_more import MORE_MODELS

TINY_MODELS.update(MORE_MODELS)

__all__ = ["IMAGE_SIZE", "MEAN", "STD", "TINY_MODELS", "TinyResNet", "create_tiny"]
