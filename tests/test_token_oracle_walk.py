"""The attention oracle on models no test names (issue 24): models drawn from timm's registry,
not listed here. For the smallest model of a timm model file, built with random weights, every
site attnviz reads in a module that has timm's ``attn_drop`` is compared with timm's own
weights, the input of that ``attn_drop`` with ``fused_attn = False``: what capture returns must
be those very numbers, rearranged to the kind's canonical layout (the same multiset of values;
a window kind may leave out the rows of padded positions, so there every captured value must be
one of timm's). The model's output must be unchanged by the capture, fused or not.

The default run takes the first ``SAMPLE`` model files, in an order shuffled with a fixed
seed, whose smallest model has a read site with an ``attn_drop`` (files without one are
passed over, and so are models of more than ``MAX_PARAMS`` parameters, ``MAX_PARAMS_ALL``
when all are walked, and models whose input side exceeds ``MAX_SIDE``, whose full maps do not
fit in memory here); ``ATTNVIZ_ORACLE_SEED=N`` draws another sample and ``ATTNVIZ_ORACLE_SEED=all``
walks every file (several minutes).
"""

from __future__ import annotations

import functools
import os
import random
import warnings

import pytest
import timm
import torch
from test_timm_walk import smallest_model
from torch import nn

import attnviz
from attnviz.capture.core import select_sites
from attnviz.errors import NoAttentionSitesError

SAMPLE = 5
MAX_PARAMS = 25_000_000  # larger smallest models are passed over (time, not correctness)
MAX_SIDE = 448  # px: SAM's 1024 px ViT keeps 2 x 12 maps of 4096^2 x 12 heads (19 GiB)
MAX_PARAMS_ALL = 100_000_000  # the walk over every file: larger ones do not fit in 24 GiB here
ATOL = 2e-6


def _order() -> list[str]:
    """Model files in the order they are drawn."""
    files = sorted(timm.list_modules())
    seed = os.environ.get("ATTNVIZ_ORACLE_SEED", "0")
    if seed != "all":
        random.Random(int(seed)).shuffle(files)
    return files


def _attention_sites(model: nn.Module) -> list[str]:
    try:
        found = select_sites(model)
    except NoAttentionSitesError:
        return []
    return [s.name for s, m, _ in found if isinstance(getattr(m, "attn_drop", None), nn.Module)]


def _oracle(name: str, max_params: float = MAX_PARAMS) -> dict[str, tuple] | None:
    """{site: (timm's weights, fused capture, unfused capture)}, None if no site qualifies."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = timm.create_model(name, pretrained=False, device="meta")
        size = model.pretrained_cfg.get("input_size", (3, 224, 224))
        if not _attention_sites(model) or sum(p.numel() for p in model.parameters()) > max_params:
            return None
        if max(size[1:]) > MAX_SIDE:
            return None
        model = timm.create_model(name, pretrained=False).eval()
    x = torch.randn(1, *size)
    with torch.no_grad():
        fused_out = model(x)
        with attnviz.capture(model) as cache:
            assert torch.equal(model(x), fused_out), f"{name}: capture changed the fused output"
    fused = [m for m in model.modules() if hasattr(m, "fused_attn")]
    for m in fused:
        m.fused_attn = False
    seen: dict[str, list[torch.Tensor]] = {}
    handles = []
    for site, module, _ in select_sites(model):
        drop = getattr(module, "attn_drop", None)
        if isinstance(drop, nn.Module):
            hook = functools.partial(lambda key, _m, args: seen.setdefault(key, []).append(
                args[0].detach().clone()), site.name)  # fmt: skip
            handles.append(drop.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            plain = model(x)
            with attnviz.capture(model) as unfused:
                assert torch.equal(model(x), plain), f"{name}: capture changed the output"
    finally:
        for h in handles:
            h.remove()
    return {k: (v, cache[k], unfused[k]) for k, v in seen.items()}


def _same_numbers(ours: torch.Tensor, timms: list[torch.Tensor]) -> str | None:
    """None when ``ours`` holds timm's numbers (see the module docstring), else why not."""
    a = ours.flatten().double().sort().values
    b = torch.cat([t.flatten() for t in timms]).double().sort().values
    if a.numel() == b.numel():
        err = float((a - b).abs().max())
        return None if err <= ATOL else f"values differ by up to {err:.2e}"
    if a.numel() > b.numel():
        return f"{a.numel()} values captured, timm used {b.numel()}"
    i = torch.searchsorted(b, a).clamp(max=b.numel() - 1)
    near = torch.minimum((b[i] - a).abs(), (b[(i - 1).clamp(min=0)] - a).abs())
    err = float(near.max())
    return None if err <= ATOL else f"a captured value is {err:.2e} from every timm weight"


@pytest.mark.slow
def test_captured_attention_is_timms_own_on_drawn_models():
    walk_all = os.environ.get("ATTNVIZ_ORACLE_SEED") == "all"
    checked, problems = [], {}
    for model_file in _order():
        name = smallest_model(model_file)
        found = _oracle(name, MAX_PARAMS_ALL if walk_all else MAX_PARAMS)
        if found is None:
            continue
        checked.append(name)
        for site, (timms, fused, unfused) in found.items():
            for label, ours in (("fused", fused), ("unfused", unfused)):
                why = _same_numbers(ours, timms)
                if why:
                    problems[f"{name} {site} ({label})"] = why
        if len(checked) == SAMPLE and not walk_all:
            break
    print(f"oracle checked {len(checked)} models: {checked}")
    assert len(checked) >= min(SAMPLE, 3)
    assert problems == {}, problems
