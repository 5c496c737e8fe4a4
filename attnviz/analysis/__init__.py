"""Analyses, one per file: each takes a model and images and returns a result object."""

# Re-exports: one import line per analysis / figure module.
# ruff: noqa: F401

from .attribution import AttributionComparison, attention_vs_attribution
from .excitation import ExcitationResult, excitation_profile
from .query_independence import QueryIndependenceResult, query_independence
from .query_maps import QueryMapsResult, query_maps
from .scale_sweep import ScaleSweepResult, scale_sweep
