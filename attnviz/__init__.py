"""attnviz: see and measure what the attention modules of convolutional networks do.

Data flows one way: ``capture`` (hooks, cache) -> ``analysis`` (result objects) -> ``plot``
(matplotlib figures). The capture core is imported eagerly; analyses, models, data and plots
are re-exported lazily (PEP 562), so ``import attnviz`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .capture import (
    AttentionCache,
    Computed,
    Reading,
    Site,
    capture,
    find_sites,
    intervene,
    register_adapter,
)
from .errors import AttnvizError, NoAttentionSitesError

_LAZY: dict[str, str] = {
    # analyses
    "ablation": "attnviz.analysis",
    "AblationResult": "attnviz.analysis",
    "scale_patching": "attnviz.analysis.scale_patching",
    "scale_sweep": "attnviz.analysis",
    "ScaleSweepResult": "attnviz.analysis",
    "query_independence": "attnviz.analysis",
    "QueryIndependenceResult": "attnviz.analysis",
    "query_maps": "attnviz.analysis",
    "QueryMapsResult": "attnviz.analysis",
    "rollout": "attnviz.analysis",
    "RolloutResult": "attnviz.analysis",
    "excitation_profile": "attnviz.analysis",
    "ExcitationProfileResult": "attnviz.analysis",
    "attention_vs_attribution": "attnviz.analysis",
    "AttentionVsAttributionResult": "attnviz.analysis",
    "gradcam_comparison": "attnviz.analysis",
    "GradCamComparisonResult": "attnviz.analysis",
    "ShapeScenes": "attnviz.data",
    "Analysis": "attnviz.analysis",
    "run": "attnviz.analysis",
    "run_replicates": "attnviz.analysis.replicates",
    "ReplicatesResult": "attnviz.analysis.replicates",
    "Result": "attnviz.results",
    "preprocess_for": "attnviz.data",
    # models and data
    "load_model": "attnviz.models",
    "PreprocessConfig": "attnviz.models",
    "ShapesDataset": "attnviz.data",
    "write_image_folder": "attnviz.data",
    "image_source": "attnviz.data",
    "load_image": "attnviz.data",
    # reference blocks
    "create_attn": "attnviz.blocks",
    "SEBlock": "attnviz.blocks",
    "SKConv": "attnviz.blocks",
    "CBAM": "attnviz.blocks",
    "NonLocalBlock": "attnviz.blocks",
    "GCBlock": "attnviz.blocks",
    "SelfAttention2d": "attnviz.blocks",
    "DualAttention": "attnviz.blocks",
    "PositionAttention": "attnviz.blocks",
    "ChannelAttention": "attnviz.blocks",
    "SCSE": "attnviz.blocks",
    "BAM": "attnviz.blocks",
    "ResidualAttention": "attnviz.blocks",
    "SpatialTransformer": "attnviz.blocks",
}
_SUBMODULES = ("analysis", "blocks", "data", "models", "plot", "widgets")

__all__ = [  # the eager names, then the lazy re-exports of _LAZY
    "AttentionCache",
    "AttnvizError",
    "Computed",
    "NoAttentionSitesError",
    "Reading",
    "Site",
    "__version__",
    "capture",
    "find_sites",
    "intervene",
    "register_adapter",
    "AblationResult",
    "Analysis",
    "AttentionVsAttributionResult",
    "GradCamComparisonResult",
    "Result",
    "ShapeScenes",
    "ablation",
    "scale_patching",
    "gradcam_comparison",
    "preprocess_for",
    "run",
    "run_replicates",
    "ReplicatesResult",
    "BAM",
    "CBAM",
    "ChannelAttention",
    "DualAttention",
    "ExcitationProfileResult",
    "GCBlock",
    "NonLocalBlock",
    "PositionAttention",
    "PreprocessConfig",
    "QueryIndependenceResult",
    "QueryMapsResult",
    "ResidualAttention",
    "SCSE",
    "SEBlock",
    "SKConv",
    "ScaleSweepResult",
    "SelfAttention2d",
    "ShapesDataset",
    "SpatialTransformer",
    "attention_vs_attribution",
    "create_attn",
    "excitation_profile",
    "load_model",
    "query_independence",
    "query_maps",
    "rollout",
    "RolloutResult",
    "scale_sweep",
    "write_image_folder",
    "image_source",
    "load_image",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"attnviz.{name}")
    raise AttributeError(f"module 'attnviz' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from .analysis import (
        Analysis,
        AttentionVsAttributionResult,
        ExcitationProfileResult,
        GradCamComparisonResult,
        QueryIndependenceResult,
        QueryMapsResult,
        RolloutResult,
        ScaleSweepResult,
        attention_vs_attribution,
        excitation_profile,
        gradcam_comparison,
        query_independence,
        query_maps,
        rollout,
        run,
        scale_sweep,
    )
    from .analysis.replicates import ReplicatesResult, run_replicates
    from .blocks import (
        BAM,
        CBAM,
        SCSE,
        ChannelAttention,
        DualAttention,
        GCBlock,
        NonLocalBlock,
        PositionAttention,
        ResidualAttention,
        SEBlock,
        SelfAttention2d,
        SKConv,
        SpatialTransformer,
        create_attn,
    )
    from .data import (
        ShapeScenes,
        ShapesDataset,
        image_source,
        load_image,
        preprocess_for,
        write_image_folder,
    )
    from .models import PreprocessConfig, load_model
    from .results import Result
