"""
SENet excitation: per class, within a class, per stage, against depth
=====================================================================

The excitation s = σ(W2 δ(W1 z)) of every SE gate of the bundled ``se_tiny`` (Hu et al.,
TPAMI 2019, Eq. 3), per class on 30 generated images, with the controls a reading needs: the
class specificity of the squeeze input z = GAP(x) and a label-permutation null. The
measurement on 100 images, across seeds and against the untrained network, with its
commands, is in the :doc:`excitation guide </guide/excitation>`.
"""

from attnviz import ShapesDataset, excitation_profile, load_model
from attnviz.plot import (
    plot_excitation_by_class,
    plot_excitation_heatmap,
    plot_excitation_std,
    plot_gate_stage_bars,
    plot_specificity,
)

model, config = load_model("se_tiny")
images = ShapesDataset(3, seed=30_000)  # 3 images per class, not seen in training
result = excitation_profile(model, images, preprocess=config, permutations=50, progress=False)
print(result.specificity().round(3).to_string())

# %%
# Mean excitation per channel for a few classes (SENet Fig. 6).
plot_excitation_by_class(result, ["disc", "ring", "star"])

# %%
# The same for every class at once: class x channel per site.
plot_excitation_heatmap(result)

# %%
# Within one class: mean ± std over its images (SENet Fig. 7).
plot_excitation_std(result, "star")

# %%
# The gate per stage: the mean gate with the std over images, and one dot per class.
plot_gate_stage_bars(result)

# %%
# Class specificity against depth: the gate, its squeeze input and the null's 5-95 % band.
plot_specificity(result)

# %%
# Per-stage bars of another channel kind: CBAM's channel gate (``cbam_channel``) in the bundled
# ``cbam_tiny``, through the same analysis and the same figure.
cbam, cbam_config = load_model("cbam_tiny")
cbam_result = excitation_profile(
    cbam, images, preprocess=cbam_config, permutations=0, progress=False
)
plot_gate_stage_bars(cbam_result)
