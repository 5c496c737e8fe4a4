"""Jupyter widgets: :class:`QueryInspector` for Non-local per-query attention maps.

The inspector runs the model once on the image and keeps the full attention of one site
(N x Nk, e.g. 256 x 256 for the bundled nl_tiny). Choosing a query cell (sliders, or a click on
the image when the notebook uses an interactive matplotlib backend such as ipympl) calls
:meth:`QueryInspector.update`, a plain method that recomputes

* the query's map over the keys, blended over the image (``attnviz.plot.overlay``),
* its top-k keys (cells with the largest weights),
* its distance to the mean map over all queries: (1 - cos) / 2 (GCNet Table 1) and, when
  rows are distributions, the Jensen-Shannon divergence (nats).

The figure shows the query's map and the mean map on one colour scale (the whole attention's
min to max) with a colour bar. Without ipywidgets the inspector falls back to that figure
alone (``inspector.figure``), redrawn by :meth:`update`, its top-k keys written under it. For a
view that needs no kernel at all, see :class:`attnviz.viewer.QueryViewer`
(:meth:`QueryInspector.viewer`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from .analysis._eval_mode import eval_mode
from .analysis.query_maps import (
    QueryMapsResult,
    cell_centre,
    jsd_of,
    pick_site,
    pixel_to_cell,
    prepare_image,
    site_record,
    upsample,
)
from .capture import capture, query_kinds
from .plot._style import OVERLAY_ALPHA, SEQUENTIAL, colorbar, draw_overlay, shared_norm
from .plot.queries import MARKER


@dataclass
class QueryState:
    """What the inspector shows for one query cell."""

    cell: tuple[int, int]
    grid_map: np.ndarray  # (kh, kw)
    map: np.ndarray  # (H, W), upsampled to the image
    top_keys: list[tuple[tuple[int, int], float]]  # ((ky, kx), weight), largest first
    cos_to_mean: float  # (1 - cos(w_i, mean_j w_j)) / 2
    jsd_to_mean: float  # JSD(w_i, mean_j w_j) in nats, NaN if rows are not distributions


class QueryInspector:
    """Interactive per-query attention maps of one Non-local site for one image.

    ``QueryInspector(model, image, site=None, top_k=5, preprocess=None, alpha=0.55,
    colormap="viridis")``; display it in a notebook (``inspector`` as the cell's last
    expression, or ``inspector.widget``). Use :meth:`update` to choose a query from code.
    ``site``: name or alias (default: the first Non-local site). ``image``: a PIL image or
    array, prepared by :func:`attnviz.data.preprocess.preprocess_for` ``(preprocess)``
    (default: the model's own, as every analysis) and shown as the view the model sees, or a
    prepared (3, H, W) tensor. ``alpha`` / ``colormap``: the opacity and matplotlib colour map
    of the attention overlays.
    """

    def __init__(
        self,
        model: nn.Module,
        image: Any,
        site: str | None = None,
        *,
        top_k: int = 5,
        preprocess: Any = None,
        alpha: float = OVERLAY_ALPHA,
        colormap: str = SEQUENTIAL,
    ) -> None:
        site_obj = pick_site(model, site, kinds=query_kinds())
        self.site = site_record(site_obj)
        self.top_k = top_k
        self.alpha = alpha
        self.colormap = colormap
        x, self.image = prepare_image(image, model if preprocess is None else preprocess)
        with eval_mode(model), capture(model, sites=[site_obj.name]) as cache, torch.no_grad():
            model(x[None])
        self.attention = cache[site_obj.name][0].double().numpy()  # (N, Nk)
        meta = cache.meta[site_obj.name]
        self.query_grid = tuple(int(v) for v in meta["query_grid"])
        kg = meta.get("key_grid") or self.query_grid
        self.key_grid = (int(kg[0]), int(kg[1]))
        self.size = self.image.shape[:2]
        a = self.attention
        self.is_distribution = bool((a >= 0).all()) and bool(
            np.allclose(a.sum(axis=1), 1.0, atol=1e-4)
        )
        self.mean_map = a.mean(axis=0)
        self.norm = shared_norm([a])
        self.state: QueryState | None = None
        self.widget = None
        self.info = None
        self._interactive = False
        self._canvas_shown = False
        self._cid = None
        self._drawn: dict[str, Any] = {}
        try:
            import ipywidgets  # noqa: F401
        except ImportError:
            self.figure = self._new_figure(pyplot=False)
        else:
            self._build_widget()
        self.update(self.query_grid[0] // 2, self.query_grid[1] // 2)

    # -- the callback ------------------------------------------------------------------------------
    def query_state(self, y: int, x: int) -> QueryState:
        """Map, top-k keys and distance to the mean map of query cell (y, x)."""
        gh, gw = self.query_grid
        if not (0 <= y < gh and 0 <= x < gw):
            raise ValueError(f"query cell (y={y}, x={x}) is outside the {gh}x{gw} query grid")
        row = self.attention[y * gw + x]
        kh, kw = self.key_grid
        order = np.argsort(-row, kind="stable")[: self.top_k]
        top = [((int(k // kw), int(k % kw)), float(row[k])) for k in order]
        nr, nm = np.linalg.norm(row), np.linalg.norm(self.mean_map)
        cos = float(row @ self.mean_map / (nr * nm)) if nr > 0 and nm > 0 else 0.0
        jsd = math.nan
        if self.is_distribution:
            jsd = jsd_of(row, self.mean_map)
        grid_map = row.reshape(kh, kw)
        return QueryState(
            cell=(int(y), int(x)),
            grid_map=grid_map,
            map=upsample(grid_map, self.size),
            top_keys=top,
            cos_to_mean=(1.0 - cos) / 2.0,
            jsd_to_mean=jsd,
        )

    def update(self, y: int, x: int) -> QueryState:
        """Choose query cell (y, x): recompute, move the sliders there and redraw (the
        widgets' callback)."""
        self.state = self.query_state(int(y), int(x))
        self._set_sliders(*self.state.cell)
        self._redraw()
        return self.state

    def click_cell(self, ydata: float, xdata: float) -> tuple[int, int]:
        """The query cell of a click at image data coordinates (``imshow`` draws pixel p over
        [p - 0.5, p + 0.5), as :func:`attnviz.analysis.query_maps.pixel_to_cell` counts):
        the point, clamped to the image, through the one point -> cell rule of the analyses."""
        h, w = self.size
        y = min(max(float(ydata), -0.5), h - 0.5 - 1e-9)
        x = min(max(float(xdata), -0.5), w - 0.5 - 1e-9)
        return pixel_to_cell((y, x), self.query_grid, (h, w))

    def on_click(self, event: Any) -> None:
        """Matplotlib ``button_press_event`` handler: the clicked pixel picks the query cell."""
        if event is None or event.xdata is None or event.ydata is None:
            return
        if getattr(event, "inaxes", None) is not self._ax_map:
            return
        cy, cx = self.click_cell(event.ydata, event.xdata)
        self.update(cy, cx)

    def viewer(self) -> Any:
        """The kernel-free HTML view of every query of this image
        (:class:`attnviz.viewer.QueryViewer`)."""
        from .viewer import QueryViewer, viewer_cells

        gh, gw = self.query_grid
        kh, kw = self.key_grid
        cells = viewer_cells(self.query_grid)
        rows = np.stack([self.attention[y * gw + x].reshape(kh, kw) for y, x in cells])
        res = QueryMapsResult(
            image=self.image,
            maps=np.zeros((len(cells), 1, 1), np.float32),
            grid_maps=rows.astype(np.float32),
            query_cells=np.asarray(cells, dtype=np.int64),
            query_pixels=np.asarray(
                [cell_centre(c, (gh, gw), self.size) for c in cells], dtype=np.float64
            ),
            site=self.site,
            is_distribution=self.is_distribution,
            meta={"query_grid": [gh, gw]},
        )
        return QueryViewer(res)

    # -- views -----------------------------------------------------------------------------------
    def _new_figure(self, pyplot: bool) -> Figure:
        if pyplot:  # pragma: no cover - needs ipympl in a live kernel
            import matplotlib.pyplot as plt

            fig = plt.figure(figsize=(7.0, 3.6), layout="constrained")
        else:
            fig = Figure(figsize=(7.0, 3.6), layout="constrained")
        self._ax_map, self._ax_mean = fig.subplots(1, 2)
        return fig

    def _build_widget(self) -> None:
        import ipywidgets as w
        import matplotlib

        gh, gw = self.query_grid
        self.slider_y = w.IntSlider(value=gh // 2, min=0, max=gh - 1, description="query y")
        self.slider_x = w.IntSlider(value=gw // 2, min=0, max=gw - 1, description="query x")
        self.output = w.Output()
        self.info = w.HTML()
        self._syncing = False

        def changed(_change: Any) -> None:
            if not self._syncing:
                self.update(self.slider_y.value, self.slider_x.value)

        self.slider_y.observe(changed, names="value")
        self.slider_x.observe(changed, names="value")
        # clicks need an interactive canvas (``%matplotlib widget``: ipympl, in the
        # ``widgets`` extra); otherwise the figure is redrawn as an image in ``self.output``
        backend = matplotlib.get_backend().lower()
        self._interactive = "ipympl" in backend or "widget" in backend
        self.figure = self._new_figure(pyplot=self._interactive)
        if self._interactive:  # pragma: no cover - needs ipympl in a live kernel
            self._cid = self.figure.canvas.mpl_connect("button_press_event", self.on_click)
        self.widget = w.VBox([w.HBox([self.slider_y, self.slider_x]), self.output, self.info])

    def _set_sliders(self, y: int, x: int) -> None:
        if self.widget is None:
            return
        self._syncing = True
        try:
            self.slider_y.value, self.slider_x.value = y, x
        finally:
            self._syncing = False

    def _info_text(self) -> tuple[str, str]:
        st = self.state
        assert st is not None
        keys = ", ".join(f"({ky},{kx}): {v:.3f}" for (ky, kx), v in st.top_keys)
        jsd = (
            "n/a (rows are not distributions)"
            if math.isnan(st.jsd_to_mean)
            else f"{st.jsd_to_mean:.4f}"
        )
        dist = f"(1 - cos)/2 = {st.cos_to_mean:.4f}, JSD = {jsd}"
        return keys, dist

    def _redraw(self) -> None:
        st = self.state
        assert st is not None and self.figure is not None
        py, px = cell_centre(st.cell, self.query_grid, self.size)
        if not self._drawn:  # first draw: images, marker and the one colour bar
            style = {"cmap": self.colormap, "alpha": self.alpha}
            im = draw_overlay(self._ax_map, self.image, st.map, self.norm, **style)
            (marker,) = self._ax_map.plot([px], [py], **MARKER)
            mean_up = upsample(self.mean_map.reshape(self.key_grid), self.size)
            draw_overlay(self._ax_mean, self.image, mean_up, self.norm, **style)
            self._ax_mean.set_title("mean map over all queries", fontsize=9)
            colorbar(self.figure, im, [self._ax_map, self._ax_mean], label="attention")
            text = self.figure.text(0.01, 0.01, "", fontsize=8, va="bottom")
            self._drawn = {"map": im, "marker": marker, "text": text}
        else:
            self._drawn["map"].set_data(st.map)
            self._drawn["marker"].set_data([px], [py])
        self._ax_map.set_title(f"{self.site['alias']} query {st.cell}", fontsize=9)
        keys, dist = self._info_text()
        if self.info is not None:
            self.info.value = (
                f"<b>query</b> {st.cell} &nbsp; <b>top-{self.top_k} keys</b> {keys}<br>"
                f"<b>distance to mean map</b>: {dist}"
            )
        else:  # the fallback figure carries what the widget's text would
            self._drawn["text"].set_text(f"top-{self.top_k} keys: {keys}\nto mean map: {dist}")
        if self.widget is None:
            return
        if self._interactive:  # pragma: no cover - needs ipympl in a live kernel
            self.figure.canvas.draw_idle()
            return
        self.output.clear_output(wait=True)
        with self.output:
            from IPython.display import display

            display(self.figure)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        if self.widget is None:
            display(self.figure)
            return
        if self._interactive and not self._canvas_shown:
            with self.output:
                display(self.figure.canvas)
            self._canvas_shown = True  # the canvas lives in the output once, however often
        display(self.widget)


__all__ = ["QueryInspector", "QueryState"]
