"""SKNet's claim in causal form: does the output need the selection computed at its own scale?

SKNet (Li et al. 2019) reads larger objects -> more weight on the larger kernel as neurons
"adapting their receptive field". The interchange intervention (activation patching): on the
native 2.0x rendering of a scene, put in the SK selection the same scene produced at 1.0x
(``patch:1.0x>2.0x``), and compare with putting in the selection of *another scene* at 2.0x
(``patch:other>2.0x``): the right scale, the wrong content. And back: 2.0x selections into the
1.0x rendering (``patch:2.0x>1.0x``) against another scene's 1.0x selection
(``patch:other>1.0x``). If selections carried scale information the output relies on, the
wrong-scale patch would cost more than the wrong-scene patch; if they mostly carry the scene's
content, the other way round. Measures and statistics as in :mod:`attnviz.analysis.ablation`
(changes against the unpatched forward at the target scale, per image, paired).

Items are :class:`~attnviz.data.shapes.ShapeScenes` strips rendered at (1.0, 2.0); the other
scene of scene k is scene (k + 1) mod N, rendered in the same batch's extra forward, so the
result depends only on the scenes (also under torchrun). Sites: every SK/branch site alone,
each stage together, all together (any branch-role kind: SK, split attention).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from ..capture import Site, capture
from ..capture.intervene import intervene
from ..capture.kinds import kinds_with_role
from ..data.preprocess import EvalTransform
from ..data.shapes import ShapeScenes, split_strip
from ..data.sources import Batch
from ._sites import choose_sites
from .ablation import AblationResult, ablation_groups, record_changes
from .runner import Analysis, RunInfo, State, run

SMALL, LARGE = 1.0, 2.0
POLICIES = ("patch:1.0x>2.0x", "patch:other>2.0x", "patch:2.0x>1.0x", "patch:other>1.0x")


class ScalePatching(Analysis):
    """Interchange interventions between a scene's 1.0x and 2.0x renderings (module doc)."""

    name = "scale_patching"
    accepts_prepared = False

    def __init__(self, scenes: ShapeScenes, groups: Sequence[tuple[str, str, Sequence[Site]]]):
        if tuple(scenes.scales) != (SMALL, LARGE) or scenes.controls:
            raise ValueError(
                f"scale patching needs ShapeScenes(..., scales=(1.0, 2.0)) without content "
                f"controls, got scales {list(scenes.scales)}"
            )
        self.scenes = scenes
        self.groups = [(g, scope, list(sites)) for g, scope, sites in groups]
        self._sites = list({s.name: s for _, _, ss in self.groups for s in ss}.values())

    def sites(self, model: nn.Module) -> list[Site]:
        return []  # captured inside forward(), once per rendering

    def params(self) -> dict[str, Any]:
        return {
            "scenes": self.scenes.params(),
            "groups": [[g, scope, [s.name for s in sites]] for g, scope, sites in self.groups],
        }

    def prepare(self, image: Image.Image | Tensor, transform: EvalTransform | None) -> Tensor:
        assert transform is not None and isinstance(image, Image.Image)
        return torch.stack([transform(v) for v in split_strip(image, 2)])  # (2, 3, H, W)

    def _partners(self, batch: Batch) -> Tensor:
        """The (2, 3, H, W) views of scene (k + 1) mod N for each scene k of the batch."""
        out = []
        for r in batch.records:
            k = (r.index + 1) % len(self.scenes)
            out.append(torch.stack([self.transform(v) for v in self.scenes.views(k)]))
        return torch.stack(out)

    def forward(self, model: nn.Module, x: Tensor, batch: Batch) -> dict[str, Tensor]:
        b = x.shape[0]
        other = self._partners(batch).to(x.device)
        names = [s.name for s in self._sites]
        with capture(model, sites=names) as own:  # originals: views of the scenes themselves
            originals = model(torch.cat([x[:, 0], x[:, 1]]))
        with capture(model, sites=names) as others:
            model(torch.cat([other[:, 0], other[:, 1]]))
        small = {n: own[n][:b] for n in names}
        large = {n: own[n][b:] for n in names}
        out = {"original@1.0x": originals[:b], "original@2.0x": originals[b:]}
        jobs = (  # (policy, target rendering, source attention)
            ("patch:1.0x>2.0x", x[:, 1], small),
            ("patch:other>2.0x", x[:, 1], {n: others[n][b:] for n in names}),
            ("patch:2.0x>1.0x", x[:, 0], large),
            ("patch:other>1.0x", x[:, 0], {n: others[n][:b] for n in names}),
        )
        for group, _, sites in self.groups:
            for policy, target, source in jobs:
                with intervene(model, {s.name: "patch" for s in sites}, source=source):
                    out[f"{group}|{policy}"] = model(target)
        return out

    def step(self, state: State, batch: Batch, cache: Any, output: dict[str, Tensor]) -> None:
        for scale in ("2.0x", "1.0x"):
            keys = {k: v for k, v in output.items() if k.endswith(f">{scale}")}
            record_changes(state, batch, output[f"original@{scale}"], keys, f"original@{scale}")

    def finalise(self, state: State, run: RunInfo) -> AblationResult:
        from .ablation import MEASURES

        changes = {}
        for group, _, _ in self.groups:
            for policy in POLICIES:
                for m in MEASURES:
                    changes[f"{group}|{policy}|{m}"] = state.stacked(f"{group}|{policy}::{m}")[1]
        original = {}
        for scale in ("2.0x", "1.0x"):
            for m in ("p_true", "accuracy"):
                original[m if scale == "2.0x" else f"{m}@1.0x"] = state.stacked(
                    f"original@{scale}::{m}"
                )[1]
        result = AblationResult(
            changes=changes,
            scopes={g: scope for g, scope, _ in self.groups},
            groups={g: [s.alias for s in sites] for g, _, sites in self.groups},
            original=original,
            n_images=run.n_images,
            skipped=run.skipped,
        )
        result.meta["analysis"] = "scale_patching"
        result.meta["scenes"] = self.scenes.params()
        return result


def scale_patching(
    model: nn.Module,
    scenes: ShapeScenes | int = 200,
    *,
    sites: Sequence[str] | str | None = None,
    scopes: Sequence[str] = (),
    **options: Any,
) -> AblationResult:
    """SK selections patched between 1.0x and 2.0x renderings (see the module docstring).

    ``scenes``: a :class:`ShapeScenes` with scales (1.0, 2.0), or a number of scenes (seed
    20000, the sweep's); ``sites`` / ``scopes`` as :func:`attnviz.analysis.ablation.ablation`
    (default every branch-role site); ``options``: the runner's.
    """
    if isinstance(scenes, int):
        scenes = ShapeScenes(scenes, scales=(SMALL, LARGE))
    chosen = choose_sites(model, kinds_with_role("branch"), sites, what="branch-selection site")
    groups = ablation_groups(model, [s.name for s in chosen], scopes=scopes)
    result = run(ScalePatching(scenes, groups), model, scenes, **options)
    result.meta.setdefault("policies", list(POLICIES))
    return result
