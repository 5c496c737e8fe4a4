"""
The query viewer, embedded
==========================

:class:`attnviz.viewer.QueryViewer` is an HTML/JS view of one image's per-query maps: hover
or click a cell of the image to pick the query, and that query's map is drawn over it, with
one colour scale for every query. It needs no kernel, so it works here, in an exported
notebook and in the HTML report. Below: every query cell of the bundled ``nl_tiny``'s
Non-local block (16 x 16 = 256 queries) on one held-out image.
"""

from attnviz import ShapesDataset, load_model
from attnviz.viewer import QueryViewer, viewer_maps

model, config = load_model("nl_tiny")
image, label = ShapesDataset(1, seed=10_000)[3]
maps = viewer_maps(model, image, preprocess=config)
print(f"{maps.n_queries} query maps of {maps.site['alias']}, key grid {maps.grid_maps.shape[1:]}")

# %%
# The last expression of a block renders as the viewer itself (its ``_repr_html_``).
QueryViewer(maps, model="nl_tiny", title="nl_tiny, NL_3_2")
