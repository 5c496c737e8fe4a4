"""
Non-local query maps and GCNet's Table 1
========================================

GCNet (Cao et al. 2019) found that a trained Non-local block's attention maps hardly depend on
the query. Here: the maps of four query points of the bundled ``nl_tiny`` (GCNet Fig. 2), the
distances between them, and the Table 1 statistics (mean over pairs of (1 - cos) / 2 of the
block input, its output and the attention rows, and the rows' Jensen-Shannon divergence) of
three bundled per-query blocks beside the paper's row, on 10 held-out images. The 100-image
measurement and its command are in the :doc:`query maps guide </guide/query_maps>`.
"""

from attnviz import ShapesDataset, load_model, query_independence, query_maps
from attnviz.plot import (
    plot_query_distances,
    plot_query_grid,
    plot_statistics_table,
    statistics_table,
)

images = [im for im, _ in ShapesDataset(1, seed=10_000)]  # one held-out image per class
model, config = load_model("nl_tiny")
queries = [(8, 8), (8, 56), (40, 32), (56, 12)]  # image pixels (y, x)
maps = [query_maps(model, im, queries=queries, preprocess=config) for im in images[:3]]

# %%
# Rows are images, columns query points (marked); one colour scale for every panel.
plot_query_grid(maps, model="nl_tiny")

# %%
# The cosine distance between the maps of the query points of one image.
plot_query_distances(maps[0], model="nl_tiny")

# %%
# GCNet Table 1 for three per-query blocks and the paper's row (a DataFrame) ...
results = []
for name in ("nl_tiny", "sa_tiny", "danet_tiny"):
    net, pre = load_model(name)
    results.append(query_independence(net, images, preprocess=pre, model_name=name, progress=False))
print(statistics_table(results).round(3).to_string())

# %%
# ... and drawn as a heatmap table.
plot_statistics_table(results)
