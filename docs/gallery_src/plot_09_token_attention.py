"""
Token attention: per-head query maps and attention rollout of a ViT
===================================================================

timm's ``vit_tiny_patch16_224`` built at 96 px (a 6 x 6 patch grid) with **random weights**: no
trained transformer is bundled, so this is the untrained baseline a trained ViT's maps are read
against. Per-head maps of four patch queries and the class token at the first layer, and the
class token's attention rollout over the 12 layers (Abnar & Zuidema 2020: the head means mixed
0.5 / 0.5 with the identity, multiplied; a flow of attention weights, not an attribution).
The statistics and the command line are in the :doc:`query maps guide </guide/query_maps>`.
"""

import timm
import torch

from attnviz import ShapesDataset, query_maps, rollout
from attnviz.plot import plot_query_heads, plot_rollout

torch.manual_seed(0)
model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=96).eval()
images = [im for im, _ in ShapesDataset(1, size=96, seed=7)][:3]
queries = [(8, 8), (8, 80), (56, 24), (80, 72)]  # image pixels (y, x)

# %%
# Rows are the query patches (marked) and the class token, columns the head mean and each head.
maps = query_maps(model, images[0], queries=queries, site="TOK_4_1a")
plot_query_heads(maps, model="vit_tiny (random weights)")

# %%
# The class token's rollout over the patch grid, beside each image.
result = rollout(model, images, model_name="vit_tiny (random weights)", progress=False)
print(result.summary())
plot_rollout(result)
