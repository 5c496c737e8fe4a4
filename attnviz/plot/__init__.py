"""Figures (matplotlib) from analysis results, drawn to the conventions of :mod:`._style`."""

# Re-exports: one import line per analysis / figure module.

from .ablation import plot_ablation_bars, plot_ablation_heatmap, plot_patching
from .attribution import (
    plot_agreement,
    plot_attention_vs_gradcam,
    plot_gradcam_comparison,
    plot_localisation,
    plot_target_probability,
)
from .excitation import (
    plot_excitation_by_class,
    plot_excitation_heatmap,
    plot_excitation_std,
    plot_gate_stage_bars,
    plot_specificity,
)
from .overlay import overlay
from .queries import (
    plot_query_distances,
    plot_query_grid,
    plot_query_heads,
    plot_statistics_table,
    statistics_table,
    statistics_table_html,
)
from .rollout import plot_rollout
from .sweep import (
    plot_channel_attention,
    plot_class_d,
    plot_class_delta,
    plot_d_heatmap,
    plot_delta_bars,
    plot_image_views,
    plot_stage_bars,
)

__all__ = [
    "plot_ablation_bars",
    "plot_ablation_heatmap",
    "plot_patching",
    "plot_agreement",
    "plot_attention_vs_gradcam",
    "plot_gradcam_comparison",
    "plot_localisation",
    "plot_target_probability",
    "plot_excitation_by_class",
    "plot_excitation_heatmap",
    "plot_excitation_std",
    "plot_gate_stage_bars",
    "plot_specificity",
    "overlay",
    "plot_query_distances",
    "plot_query_grid",
    "plot_query_heads",
    "plot_statistics_table",
    "statistics_table",
    "statistics_table_html",
    "plot_rollout",
    "plot_channel_attention",
    "plot_class_d",
    "plot_class_delta",
    "plot_d_heatmap",
    "plot_delta_bars",
    "plot_image_views",
    "plot_stage_bars",
]
