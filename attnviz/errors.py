"""Errors raised by attnviz with messages meant for the person at the keyboard."""

from __future__ import annotations


class AttnvizError(Exception):
    """Base class of attnviz's own errors."""


class NoAttentionSitesError(AttnvizError, ValueError):
    """The model holds no attention module that any registered adapter can read."""


class BadImageError(AttnvizError):
    """An image was skipped while a run was strict (``strict=True`` / ``--strict``)."""


class CheckpointError(AttnvizError):
    """A checkpoint cannot be used: another run's, corrupt, or in the way of a new run."""


class OutputError(AttnvizError):
    """An output folder cannot be used (not writable, a file, inside the images, locked)."""


class Interrupted(AttnvizError):
    """A run was interrupted (Ctrl-C); its checkpoint, if any, was kept."""

    def __init__(self, message: str, checkpoint: str | None = None):
        super().__init__(message)
        self.checkpoint = checkpoint
