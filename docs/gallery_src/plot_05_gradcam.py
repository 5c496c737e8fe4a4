"""
Grad-CAM across models, and spatial attention against Grad-CAM
==============================================================

CBAM's Grad-CAM comparison (Woo et al. 2018, Sec. 4.3, Fig. 4): Grad-CAM at the last stage of
four bundled networks for the same images and class, with each network's P(target), and
where the maps fall on the generated object masks. Then attnviz's own comparison: every CBAM
spatial gate M_s of ``cbam_tiny`` against Grad-CAM at the coarser grid of the two (Spearman's
ρ, top-20 % IoU). On 10 generated images; the 40- and 200-image measurements with their
script are in the :doc:`Grad-CAM guide </guide/gradcam>`.
"""

from attnviz import ShapesDataset, attention_vs_attribution, gradcam_comparison, load_model
from attnviz.plot import (
    plot_agreement,
    plot_attention_vs_gradcam,
    plot_gradcam_comparison,
    plot_localisation,
    plot_target_probability,
)

images = ShapesDataset(1, seed=30_000)  # one image per class, object masks known
loaded = {n: load_model(n) for n in ("plain_tiny", "se_tiny", "cbam_tiny", "gc_tiny")}
paper = gradcam_comparison(
    {n: m for n, (m, _) in loaded.items()}, images, preprocess=loaded["se_tiny"][1],
    progress=False,
)  # fmt: skip

# %%
# Rows are images, columns models; each title gives P(target) (CBAM Fig. 4).
plot_gradcam_comparison(paper)

# %%
# P(target) per model and its paired difference from ``plain_tiny``.
plot_target_probability(paper)

# %%
# Grad-CAM and every spatial attention site on the object: mass share and pointing game.
plot_localisation(paper)

# %%
# attnviz's own comparison on ``cbam_tiny``: overlays of the gates and of Grad-CAM ...
cbam, config = loaded["cbam_tiny"]
own = attention_vs_attribution(cbam, images, preprocess=config, sites="all", progress=False)
plot_attention_vs_gradcam(own, max_images=3)

# %%
# ... and their agreement per site against the exact chance IoU.
plot_agreement(own)
