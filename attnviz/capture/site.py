"""Sites: the attention modules of a model, with paper-style aliases.

Alias rule (the papers count the stem as stage 1, so the first residual stage is stage 2;
blocks count from 1 within a stage). The first pattern that matches the site's qualified name
decides:

==========================================  =================  ===============================
layout (example name)                        pattern            alias
==========================================  =================  ===============================
ResNet family, timm and torchvision           ``layerX.Y``       stage X + 1, block Y + 1
(``layer2.3.conv1`` in skresnet)                                 (``SK_3_4``)
timm byobnet / gcresnet (``stages.2.1.attn``) ``stages.i.j``     stage i + 2, block j + 1
timm efficientnet / mobilenetv3               ``blocks.i.j``     stage i + 2, block j + 1
(``blocks.1.0.se``)
torchvision efficientnet (``features.2.1``)   ``features.i.j``   stage i + 1 (features.0 is the
                                                                 stem), block j + 1
torchvision regnet (``block2.block2-1``)      ``blockX.blockX-Y``  stage X + 1, block Y + 1
timm regnet (``s1.b2.se``)                    ``sX.bY``          stage X + 1, block Y
flat timm blocks with ``feature_info``         ``features.i``     stage log2(reduction) of the
(rexnet ``features.3.se``)                                       feature stage holding block i,
                                                                 block = its number in that stage
anything else (mobilenet_v3 ``features.i``)   --                 running number: ``SE_1``, ...
==========================================  =================  ===============================

The last name rule needs the model: :func:`feature_stages` reads its timm ``feature_info`` (the
module ending each feature stage and its reduction); ``find_sites`` passes it along.

The alias prefix comes from the kind (``SK``, ``SE``, ``ECA``, ``CBAMC``, ``CBAMS``, ``GC``,
``NL``, ...). Two sites of one kind in one block get suffixes ``a``, ``b``, ...
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .kinds import get_kind

_STAGE_RULES: tuple[tuple[re.Pattern[str], int], ...] = (
    (re.compile(r"(?:^|\.)layer(\d+)\.(\d+)(?:\.|$)"), 1),
    (re.compile(r"(?:^|\.)stages\.(\d+)\.(?:blocks\.)?(\d+)(?:\.|$)"), 2),
    (re.compile(r"(?:^|\.)blocks\.(\d+)\.(\d+)(?:\.|$)"), 2),
    (re.compile(r"(?:^|\.)features\.(\d+)\.(\d+)(?:\.|$)"), 1),
    (re.compile(r"(?:^|\.)block(\d+)\.block\1-(\d+)(?:\.|$)"), 1),
)
_TIMM_REGNET = re.compile(r"(?:^|\.)s(\d+)\.b(\d+)(?:\.|$)")
_FLAT = re.compile(r"^(\w+)\.(\d+)(?:\.|$)")

# (container, [(last block index of a feature stage, paper stage), ...]) from feature_info
FeatureStages = tuple[str, list[tuple[int, int]]] | None


def feature_stages(model: object) -> FeatureStages:
    """Stage boundaries of a flat ``features.i`` model from its timm ``feature_info``."""
    info = getattr(model, "feature_info", None)
    entries = getattr(info, "info", info)
    if not isinstance(entries, (list, tuple)):
        return None
    container = None
    bounds: list[tuple[int, int]] = []
    for e in entries:
        if not isinstance(e, dict) or "module" not in e or "reduction" not in e:
            return None
        m = _FLAT.match(str(e["module"]))
        if m is None or "." in str(e["module"])[m.end() :]:
            continue  # the stem, or a nested module
        if container not in (None, m.group(1)):
            return None
        container = m.group(1)
        reduction = int(e["reduction"])
        if reduction < 2 or reduction & (reduction - 1):
            return None
        bounds.append((int(m.group(2)), reduction.bit_length() - 1))
    if container is None or bounds != sorted(bounds):
        return None
    return container, bounds


def stage_block(name: str, stages: FeatureStages = None) -> tuple[int, int] | None:
    """Paper-style (stage, block) of a qualified module name, or None if no rule applies.

    ``stages`` (from :func:`feature_stages`) places blocks of flat models (rexnet).
    """
    for pattern, stage_offset in _STAGE_RULES:
        m = pattern.search(name)
        if m:
            return int(m.group(1)) + stage_offset, int(m.group(2)) + 1
    m = _TIMM_REGNET.search(name)
    if m:
        return int(m.group(1)) + 1, int(m.group(2))
    if stages is not None:
        container, bounds = stages
        m = _FLAT.match(name)
        if m and m.group(1) == container:
            i = int(m.group(2))
            previous = -1
            for last, stage in bounds:
                if i <= last:
                    return stage, i - previous
                previous = last
    return None


@dataclass(frozen=True)
class Site:
    """One attention module of a model and how its attention is read.

    ``name`` is the qualified module name (``model.get_submodule(name)``), ``dims`` the axis
    names of the captured tensor, ``module_type`` the module's class (``package.Class``),
    ``family`` the adapter family that reads it (``timm``, ``torchvision``, ``attnviz``, ...).
    """

    name: str
    kind: str
    alias: str
    dims: tuple[str, ...]
    module_type: str
    family: str
    stage: int | None = None
    block: int | None = None
    info: dict = field(default_factory=dict, compare=False, hash=False)

    def __str__(self) -> str:  # pragma: no cover - cosmetic
        return f"{self.alias} ({self.kind}) {self.name}"


def assign_aliases(
    entries: list[tuple[str, str]], stages: FeatureStages = None
) -> list[tuple[str, int | None, int | None]]:
    """Aliases for (name, kind) pairs in model order: [(alias, stage, block), ...]."""
    raw: list[tuple[str, int | None, int | None]] = []
    counters: dict[str, int] = {}
    for name, kind in entries:
        prefix = get_kind(kind).prefix
        sb = stage_block(name, stages)
        if sb is None:
            counters[kind] = counters.get(kind, 0) + 1
            raw.append((f"{prefix}_{counters[kind]}", None, None))
        else:
            raw.append((f"{prefix}_{sb[0]}_{sb[1]}", sb[0], sb[1]))
    totals: dict[str, int] = {}
    for alias, _, _ in raw:
        totals[alias] = totals.get(alias, 0) + 1
    seen: dict[str, int] = {}
    out = []
    for alias, stage, block in raw:
        if totals[alias] > 1:
            k = seen.get(alias, 0)
            seen[alias] = k + 1
            alias = f"{alias}{chr(ord('a') + k)}"
        out.append((alias, stage, block))
    return out
