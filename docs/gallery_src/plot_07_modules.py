"""
Module figures: STN, residual attention, BAM, DANet, SAGAN, ION
===============================================================

Figures of single mechanisms, read by :func:`attnviz.capture` from the bundled ``mix_tiny``
(spatial transformer, scSE, residual attention, BAM), ``danet_tiny`` (DANet position and
channel attention), ``sa_tiny`` (SAGAN self-attention) and ``ion_tiny`` (Inside-Outside Net
context), on four generated images.
"""

import torch

from attnviz import ShapesDataset, capture, load_model, preprocess_for, query_maps
from attnviz.blocks import DIRECTIONS
from attnviz.plot import plot_query_grid
from attnviz.plot.modules import (
    plot_channel_affinity,
    plot_direction_context,
    plot_residual_masks,
    plot_stn_sampling,
)

images = ShapesDataset(1, seed=10_000)
mix, config = load_model("mix_tiny")
x = torch.stack([preprocess_for(config)(images[i][0]) for i in (0, 2, 5, 7)])
with capture(mix, io=True) as cache, torch.no_grad():
    mix(x)
print(sorted(cache.aliases()))

# %%
# The spatial transformer (Jaderberg et al. 2015): its sampling grid over the input and the
# transformed output beside it.
plot_stn_sampling(cache.inputs("stn"), cache["stn.grid"], cache.outputs("stn"), step=8,
                  model="mix_tiny")  # fmt: skip

# %%
# The soft mask M of the residual attention module (Wang et al. 2017), (1 + M) * T: the mean
# over channels and two channels, over the images.
plot_residual_masks(x, cache["layer2.1"], channels=[0, 5], model="mix_tiny")

# %%
# BAM's combined map M = σ(Mc + Ms) (Park et al. 2018) drawn the same way.
plot_residual_masks(x, cache["layer2.2"], channels=[0], model="mix_tiny")

# %%
# DANet's channel attention x_ji (Fu et al. 2019, Eq. 3): softmax over source channels i.
danet, danet_config = load_model("danet_tiny")
with capture(danet, kinds=["cam"]) as cam, torch.no_grad():
    danet(x)
plot_channel_affinity(cam["layer2.1.channel"], image=0, model="danet_tiny")

# %%
# SAGAN's attention beta_ji (Zhang et al. 2019, Eq. 1) is a per-query map like Non-local's:
# the maps of three query points of ``sa_tiny`` on two images, through the same query maps.
sa, sa_config = load_model("sa_tiny")
points = [(16, 16), (32, 48), (48, 24)]  # image pixels (y, x)
sa_maps = [query_maps(sa, images[i][0], queries=points, preprocess=sa_config) for i in (0, 5)]
plot_query_grid(sa_maps, model="sa_tiny")

# %%
# Inside-Outside Net (Bell et al. 2016) computes context with four directional IRNN sweeps. It
# has no gate: what ``ion_tiny``'s ``ION_3_2`` reads is, per position, each direction's share
# ||t_d|| / sum ||t_d'|| of the context the block adds. Which direction's context is used where:
ion, ion_config = load_model("ion_tiny")
with capture(ion, kinds=["ion"]) as ctx, torch.no_grad():
    ion(x)
plot_direction_context(x, ctx.by_alias("ION_3_2"), model="ion_tiny", site="ION_3_2")

# %%
# The obvious other explanation is geometry: a sweep's state at the right edge has seen the
# whole row from the left, whatever the image. On 100 held-out images, the part of the shares'
# variance that is the same map for every image (its mean over images, per position) against
# the part that changes with the image, for the bundled model and its two seed replicates:
held_out = ShapesDataset(10, seed=10_000)
xs = torch.stack([preprocess_for(ion_config)(held_out[i][0]) for i in range(len(held_out))])
for spec in ["ion_tiny", "ion_tiny@seed1", "ion_tiny@seed2"]:
    net, _ = load_model(spec)
    with capture(net, kinds=["ion"], io=True) as ctx, torch.no_grad():
        net(xs)
    shares = ctx.by_alias("ION_3_2").double()  # (100, 4, 16, 16)
    added = ctx.outputs("layer2.1") - ctx.inputs("layer2.1")  # the context the block adds
    ratio = added.norm(dim=1).mean() / ctx.inputs("layer2.1").norm(dim=1).mean()
    by_position = shares.mean(0, keepdim=True)
    cells = []
    for d, name in enumerate(DIRECTIONS):
        s = shares[:, d]
        explained = 1 - ((s - by_position[:, d]) ** 2).sum() / ((s - s.mean()) ** 2).sum()
        cells.append(f"{name} {s.mean():.3f} ({explained:.2f})")
    print(f"{spec}: context / input norm {ratio:.2f}; mean share (variance explained by "
          "position): " + ", ".join(cells))  # fmt: skip
