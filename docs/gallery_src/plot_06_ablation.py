"""
Interventions: ablation effects and scale patching
==================================================

:func:`attnviz.intervene` writes attention the way :func:`attnviz.capture` reads it.
:func:`attnviz.ablation` replaces the SE gates of the bundled ``se_tiny`` per site, per stage
and all together (``remove``: gate = 1; ``mean``: the mean gate over a reference set;
``shuffle``: another image's gates) and measures the paired change of P(target); here on 20
held-out images. :func:`attnviz.scale_patching` puts the SK selections of one rendering of a
scene into another (the 200-image and 100-scene measurements with their commands are in the
:doc:`interventions guide </guide/ablation>`).
"""

from attnviz import ShapesDataset, ablation, load_model, scale_patching
from attnviz.plot import plot_ablation_bars, plot_ablation_heatmap, plot_patching

model, config = load_model("se_tiny")
images = ShapesDataset(2, seed=10_000)  # 2 held-out images per class
effects = ablation(
    model, images, preprocess=config, scopes=("site", "stage", "all"), progress=False
)
print(effects.markdown().splitlines()[0])

# %%
# dP(target) per site and policy, with 95 % bootstrap intervals.
plot_ablation_bars(effects)

# %%
# Per stage and all sites together: policy x group, * where Holm p < 0.05.
plot_ablation_heatmap(effects)

# %%
# SKNet's interchange: the 2.0x rendering with the SK selections of its own 1.0x rendering
# (wrong scale) or of another scene at 2.0x (wrong scene), on 10 scenes of ``sk_tiny``.
sk, sk_config = load_model("sk_tiny")
patched = scale_patching(sk, 10, scopes=("stage", "all"), progress=False)
plot_patching(patched)
