"""Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers", Sec. 3).

Per layer l the head mean A_l = mean_h A_l,h of the (N, N) token attention (rows = output
tokens, columns = input tokens) is mixed with the identity for the residual connection and its
rows renormalised, A~_l = norm_rows(0.5 A_l + 0.5 I) (``residual`` = 0.5, the paper's choice);
the rollout is the product in forward order, A_roll = A~_L ... A~_2 A~_1 (eq. on p. 3 of the
paper: A~(l_i) = A(l_i) A~(l_{i-1})). Row t of A_roll says how much each input token flows into
token t after the last layer. :func:`rollout` reports, per image, the rollout rows of the prefix
tokens (the class token first) over the key patch grid, the mean row of the patch tokens, and
the rollout mass left on the prefix inputs.

Caveats, as the paper states them and beyond: the 0.5 residual mixing is an assumption (the
true mix depends on the norms of the residual stream and of the attention output); the MLPs,
layer norms and the values (their norms and directions) are ignored, so the rollout is a flow
of attention weights, not of information; it is not a faithful attribution of the prediction
(attention weights need not explain outputs: Jain & Wallace 2019, "Attention is not
Explanation"; Abnar & Zuidema themselves find rollout and flow correlate with, but do not equal,
gradient / ablation importance). Read a rollout map beside an attribution (Grad-CAM,
:mod:`attnviz.analysis.attribution`) and the rows' entropy, not as an explanation.

Sites: every ``token`` site of the model (or those chosen) in forward order; they must share
one token sequence (queries = keys, the same count): a plain ViT / DeiT / BEiT / EVA. A
hierarchical model (PVT, Twins) changes its sequence between stages: choose the sites of one
stage.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from ..capture import Site
from ..results import Result, from_records, records
from ._sites import TokenLayout, choose_sites
from .query_maps import display_image, site_record
from .runner import Analysis, RunInfo, State, run

RESIDUAL = 0.5  # weight of the identity (the residual path), Abnar & Zuidema 2020
PATCH_MEAN = "patch mean"  # the label of the mean rollout row of the patch tokens

__all__ = ["RESIDUAL", "Rollout", "RolloutResult", "rollout", "rollout_matrix"]


def rollout_matrix(attentions: Sequence[Tensor], residual: float = RESIDUAL) -> Tensor:
    """A_roll = prod_l norm_rows(residual * I + (1 - residual) * mean_h A_l) in forward order
    (the last layer leftmost). ``attentions``: per layer (..., heads, N, N); returns
    (..., N, N) in float64."""
    if not attentions:
        raise ValueError("rollout needs at least one layer of attention")
    if not 0.0 <= residual <= 1.0:
        raise ValueError(f"residual must be in [0, 1], got {residual}")
    roll: Tensor | None = None
    for a in attentions:
        if a.dim() < 3 or a.shape[-1] != a.shape[-2]:
            raise ValueError(f"rollout needs (..., heads, N, N) attention, got {tuple(a.shape)}")
        m = a.double().mean(dim=-3)  # the head mean
        eye = torch.eye(m.shape[-1], dtype=m.dtype)
        mixed = residual * eye + (1.0 - residual) * m
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        roll = mixed if roll is None else mixed @ roll
    assert roll is not None
    return roll


@dataclass
class RolloutResult(Result):
    """Attention rollout of every image (see the module docstring).

    ``maps`` (n_images, T, kh, kw): rollout rows over the patch inputs of the T = P + 1 rows
    ``tokens`` (the P prefix tokens, "class" first, then "patch mean", the mean row of the
    patch tokens); ``prefix_mass`` (n_images, T): each row's rollout weight on the prefix
    inputs (``maps`` + ``prefix_mass`` sum to 1); ``images`` (k, H, W, 3): the first k
    images as the model saw them (for figures); ``sites``: the layers multiplied, in order;
    ``residual``: the identity weight (0.5).
    """

    kind: ClassVar[str] = "attention_rollout"
    format_version: ClassVar[int] = 1

    model: str
    sites: list[dict[str, Any]]
    tokens: list[str]
    maps: np.ndarray
    prefix_mass: np.ndarray
    residual: float = RESIDUAL
    query_grid: list[int] = field(default_factory=list)
    images: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0, 3), np.uint8))
    ids: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_images(self) -> int:
        return int(self.maps.shape[0])

    def token_index(self, token: str | int) -> int:
        """Position of a row by name ("class", "patch mean", ...) or index."""
        if isinstance(token, int):
            if not -len(self.tokens) <= token < len(self.tokens):
                raise ValueError(f"token {token} out of range; tokens: {self.tokens}")
            return token % len(self.tokens)
        if token not in self.tokens:
            raise ValueError(f"unknown token {token!r}; tokens: {self.tokens}")
        return self.tokens.index(token)

    def per_image(self) -> pd.DataFrame:
        """One row per (image, token): ``prefix_mass``, ``patch_mass`` (1 - prefix mass),
        ``entropy_norm`` (entropy of the patch map renormalised to sum 1, over ln(kh kw):
        1 = uniform), ``max_share`` (largest patch's share of the patch mass), argmax cell."""
        rows = []
        n_cells = int(np.prod(self.maps.shape[2:])) if self.maps.ndim == 4 else 0
        for i in range(self.n_images):
            for t, token in enumerate(self.tokens):
                m = self.maps[i, t].astype(np.float64)
                total = float(m.sum())
                p = m.ravel() / total if total > 0 else np.full(n_cells, np.nan)
                nz = p[p > 0]
                ent = float(-(nz * np.log(nz)).sum()) / math.log(n_cells) if n_cells > 1 else 0.0
                y, x = np.unravel_index(int(np.argmax(m)), m.shape)
                rows.append(
                    {
                        "image": i,
                        "id": self.ids[i] if i < len(self.ids) else str(i),
                        "token": token,
                        "prefix_mass": float(self.prefix_mass[i, t]),
                        "patch_mass": total,
                        "entropy_norm": ent,
                        "max_share": float(p.max()) if total > 0 else math.nan,
                        "argmax_y": int(y),
                        "argmax_x": int(x),
                    }
                )
        columns = ["image", "id", "token", "prefix_mass", "patch_mass", "entropy_norm"]
        return pd.DataFrame(rows, columns=[*columns, "max_share", "argmax_y", "argmax_x"])

    def to_frame(self) -> pd.DataFrame:
        """One row per token: mean and std (ddof=0) over images of the :meth:`per_image`
        figures."""
        frame = self.per_image()
        cols = ["prefix_mass", "entropy_norm", "max_share"]
        out = []
        for token in self.tokens:
            part = frame[frame["token"] == token]
            row: dict[str, Any] = {"model": self.model, "token": token, "n_images": len(part)}
            for c in cols:
                row[f"{c}_mean"] = float(part[c].mean()) if len(part) else math.nan
                row[f"{c}_std"] = float(part[c].std(ddof=0)) if len(part) else math.nan
            out.append(row)
        return pd.DataFrame(out)

    def effects(self) -> pd.DataFrame:
        """Per token and figure: mean over images, its standard error (std ddof=1 / sqrt n)."""
        frame = self.per_image()
        rows = []
        for token in self.tokens:
            part = frame[frame["token"] == token]
            for c in ("prefix_mass", "entropy_norm", "max_share"):
                v = part[c].to_numpy(dtype=np.float64)
                v = v[np.isfinite(v)]
                n = int(v.size)
                se = float(v.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
                rows.append(
                    {
                        "site": token,
                        "metric": c,
                        "effect": float(v.mean()) if n else math.nan,
                        "se": se,
                        "n": n,
                    }
                )
        return pd.DataFrame(rows, columns=["site", "metric", "effect", "se", "n"])

    def summary(self) -> str:
        """The layers, the residual weight, and per token the mean figures over images."""
        aliases = [s["alias"] for s in self.sites]
        layers = f"{aliases[0]} ... {aliases[-1]}" if len(aliases) > 1 else "".join(aliases)
        gh, gw = (self.query_grid + [0, 0])[:2]
        head = (
            f"{self.model}: attention rollout over {len(aliases)} layers ({layers}), "
            f"A~ = {self.residual:g} I + {1 - self.residual:g} mean_h A, rows renormalised; "
            f"{self.n_images} images ({len(self.skipped)} skipped); {gh}x{gw} patch grid"
        )
        table = self.to_frame().drop(columns=["model"])
        text = table.to_string(index=False, float_format=lambda v: f"{v:.4f}")
        caveat = (
            "caveats: assumes residual mixing of 0.5, ignores the MLPs and the values' norms; "
            "a flow of attention weights, not a faithful attribution (Abnar & Zuidema 2020; "
            "Jain & Wallace 2019)"
        )
        return "\n".join([head, text, caveat])

    def _payload(self):
        arrays = {"maps": self.maps, "prefix_mass": self.prefix_mass, "images": self.images}
        fields = {
            "model": self.model,
            "sites": self.sites,
            "tokens": self.tokens,
            "residual": self.residual,
            "query_grid": self.query_grid,
            "ids": self.ids,
            "skipped": records(self.skipped),
            "meta": self.meta,
        }
        return arrays, {"rollout.csv": self.per_image()}, fields

    @classmethod
    def _restore(cls, manifest: dict[str, Any], arrays: dict[str, np.ndarray]):
        return cls(
            model=manifest["model"],
            sites=list(manifest["sites"]),
            tokens=list(manifest["tokens"]),
            maps=arrays["maps"],
            prefix_mass=arrays["prefix_mass"],
            residual=float(manifest["residual"]),
            query_grid=list(manifest.get("query_grid", [])),
            images=arrays["images"],
            ids=list(manifest.get("ids", [])),
            skipped=from_records(manifest.get("skipped")),
            meta=dict(manifest.get("meta", {})),
        )


class Rollout(Analysis):
    """Attention rollout per image from one forward per batch (full token maps captured)."""

    name = "attention_rollout"

    def __init__(
        self,
        sites: Iterable[str | Site] | str | None = None,
        residual: float = RESIDUAL,
        map_images: int = 3,
        model_name: str | None = None,
    ):
        if not 0.0 <= residual <= 1.0:
            raise ValueError(f"residual must be in [0, 1], got {residual}")
        if map_images < 0:
            raise ValueError("map_images must be >= 0")
        self.selection, self.residual, self.map_images = sites, float(residual), int(map_images)
        self.model_name = model_name
        self.keep_images = self.map_images > 0

    def sites(self, model: nn.Module) -> list[Site]:
        self._sites = choose_sites(model, ["token"], self.selection, what="token-attention site")
        self._model_name = self.model_name or type(model).__name__
        return self._sites

    def params(self) -> dict[str, Any]:
        return {"residual": self.residual, "map_images": self.map_images}

    def step(self, state: State, batch, cache, output) -> None:
        layers, layout = [], None
        for site in self._sites:
            att = cache[site.name]
            lay = TokenLayout.of(att, cache.meta.get(site.name, {}))
            if att.shape[-1] != att.shape[-2] or lay.prefix != lay.key_prefix:
                raise ValueError(
                    f"rollout needs queries = keys: site {site.alias} has {att.shape[-2]} query "
                    f"and {att.shape[-1]} key tokens (reduced keys, as in PVT / Twins)"
                )
            if layout is not None and (lay.prefix, lay.query_grid) != (
                layout.prefix,
                layout.query_grid,
            ):
                raise ValueError(
                    f"rollout multiplies layers over one token sequence: site {site.alias} has "
                    f"{lay.prefix} prefix tokens and a {lay.query_grid} grid, the first "
                    f"{layout.prefix} and {layout.query_grid} (choose the sites of one stage)"
                )
            layout = lay
            layers.append(att)
        assert layout is not None
        roll = rollout_matrix(layers, self.residual)  # (B, N, N)
        p = layout.prefix
        rows = torch.cat([roll[:, :p], roll[:, p:].mean(dim=1, keepdim=True)], dim=1)
        maps = layout.key_maps(rows).float().numpy()  # (B, P + 1, kh, kw)
        mass = layout.prefix_keys(rows).sum(-1).numpy()  # (B, P + 1)
        state.info["tokens"] = [*layout.prefix_names, PATCH_MEAN]
        state.info["query_grid"] = list(layout.query_grid)
        for j, r in enumerate(batch.records):
            state.put("id", r.index, np.asarray(r.id))
            state.put("maps", r.index, maps[j])
            state.put("prefix_mass", r.index, mass[j])
            kept = state.rows.get("image", {})
            if r.index < self.map_images or len(kept) < self.map_images:
                disp = display_image(batch.images[j], batch.x[j], self.transform)
                state.put("image", r.index, disp)

    def finalise(self, state: State, run: RunInfo) -> RolloutResult:
        idx, images = state.stacked("image")
        order = np.argsort(idx)[: self.map_images]
        return RolloutResult(
            model=self._model_name,
            sites=[site_record(s) for s in self._sites],
            tokens=list(state.info["tokens"]),
            maps=state.stacked("maps")[1],
            prefix_mass=state.stacked("prefix_mass")[1].astype(np.float64),
            residual=self.residual,
            query_grid=list(state.info["query_grid"]),
            images=images[order] if len(idx) else np.zeros((0, 0, 0, 3), np.uint8),
            ids=[str(v) for v in state.stacked("id")[1]],
            skipped=run.skipped,
        )


def rollout(
    model: nn.Module,
    images: Any,
    *,
    sites: Iterable[str | Site] | str | None = None,
    residual: float = RESIDUAL,
    map_images: int = 3,
    model_name: str | None = None,
    **run_options: Any,
) -> RolloutResult:
    """Attention rollout (Abnar & Zuidema 2020) of ``model`` on ``images`` (see the module
    docstring for the equation and its caveats). ``sites``: the token sites multiplied
    (default all, in forward order); ``residual``: the identity weight (0.5); ``map_images``:
    images kept for figures. ``run_options``: those of :func:`attnviz.analysis.runner.run`."""
    result = run(Rollout(sites, residual, map_images, model_name), model, images, **run_options)
    assert isinstance(result, RolloutResult)
    return result
