"""Analyses, one per file: each is an :class:`~attnviz.analysis.runner.Analysis` run by the
one runner, with a function that takes a model and images and returns a result object."""

# Re-exports: one import line per analysis.
# ruff: noqa: F401

from .ablation import AblationResult, ablation
from .attribution import (
    AttentionVsAttributionResult,
    GradCamComparisonResult,
    attention_vs_attribution,
    gradcam_comparison,
)
from .excitation import ExcitationProfileResult, excitation_profile
from .query_independence import QueryIndependenceResult, query_independence
from .query_maps import QueryMapsResult, query_maps
from .rollout import RolloutResult, rollout
from .runner import Analysis, RunInfo, State, run
from .scale_sweep import ScaleSweepResult, scale_sweep
