"""
SKNet scale sweep: per-stage bars, paired ΔD, Fig. 3 and Fig. 4
================================================================

The bundled ``sk_tiny`` sees 20 generated scenes, each rendered natively with the object at
1.0x, 1.5x and 2.0x its size (:class:`attnviz.ShapeScenes`). At every SK site the selection
weights of the 3x3 branch (*a*) and the dilated branch (*b*) give D = mean_c(b_c) - mean_c(a_c)
(SKNet, Li et al. 2019, Eq. 5-6). The measurement on 100 scenes with the content controls,
and its command, is in the :doc:`scale sweep guide </guide/scale_sweep>`.
"""

from attnviz import load_model, scale_sweep
from attnviz.data.shapes import ShapeScenes, train_object_size_range
from attnviz.plot import (
    plot_class_delta,
    plot_d_heatmap,
    plot_delta_bars,
    plot_image_views,
    plot_stage_bars,
)

model, config = load_model("sk_tiny")
scenes = ShapeScenes(20, object_range=train_object_size_range("sk_tiny"))
result = scale_sweep(model, scenes, preprocess=config, per_image=True, progress=False)
frame = result.to_frame()
columns = ["site", "scale", "D", "delta_D", "delta_D_se", "delta_D_z"]
print(frame[frame["class"] == "all"][columns].round(3).to_string(index=False))

# %%
# D of the last site of each stage at every scale (SKNet Fig. 3, right).
plot_stage_bars(result)

# %%
# The paired change ΔD = D(s) - D(1.0x) per site, with its paired standard error.
plot_delta_bars(result)

# %%
# D per site and scale as one heatmap (a difference: RdBu_r centred on 0).
plot_d_heatmap(result)

# %%
# Per-class D at 1.0x against the larger renderings (SKNet Fig. 4).
plot_class_delta(result)

# %%
# One scene's three renderings and its per-channel a_large - a_small (SKNet Fig. 3, left).
plot_image_views(result, scenes.views(0), 0)
