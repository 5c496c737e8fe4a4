"""Errors raised by attnviz with messages meant for the person at the keyboard."""

from __future__ import annotations


class AttnvizError(Exception):
    """Base class of attnviz's own errors."""


class NoAttentionSitesError(AttnvizError, ValueError):
    """The model holds no attention module that any registered adapter can read."""
