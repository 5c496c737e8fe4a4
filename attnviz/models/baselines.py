"""Baselines of a trained network: the same architecture without its learning.

A reading of a trained network ("D rises with scale at SK_3_1") is about learning only if
the same architecture *without* training does not show it. Two baselines, each at N seeds:

* ``untrained``: the architecture at a fresh random initialisation, the network's own init
  recipe (the bundled tiny models are rebuilt by their factory under ``torch.manual_seed``;
  any other model is a copy with every module's ``reset_parameters()`` called under the seed).
  Running statistics of BatchNorm are the initial ones (mean 0, variance 1).
* ``permuted``: the trained weights, each parameter and floating-point buffer shuffled
  within itself (one permutation of its elements per tensor): every layer keeps its
  distribution of values, the structure that training gave it is destroyed.

``--baseline untrained:3`` on the command line is :func:`parse_baseline` ("untrained", 3).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import AttnvizError

__all__ = [
    "BASELINES",
    "BaselineError",
    "baseline_models",
    "parse_baseline",
    "permuted",
    "untrained",
]

DEFAULT_BASELINE_N = 3


class BaselineError(AttnvizError, ValueError):
    """A baseline is named wrongly or cannot be built."""


def untrained(
    model: nn.Module, seed: int, factory: Callable[[], nn.Module] | None = None
) -> nn.Module:
    """The architecture of ``model`` at the random initialisation of ``seed`` (eval mode).

    ``factory``: builds the architecture with its own init recipe (preferred: custom inits such
    as zero-initialised last layers are kept); without it, a copy of ``model`` with every
    module's ``reset_parameters()`` (and BatchNorm's ``reset_running_stats()``) under the seed.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        if factory is not None:
            fresh = factory()
        else:
            fresh = copy.deepcopy(model)
            for m in fresh.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
                if hasattr(m, "reset_running_stats"):
                    m.reset_running_stats()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return fresh.to(device).eval()


def permuted(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model`` whose parameters and floating-point buffers are each shuffled within
    themselves (a seeded permutation of the elements of every tensor), in eval mode."""
    gen = torch.Generator().manual_seed(int(seed))
    out = copy.deepcopy(model)
    with torch.no_grad():
        tensors = [t for _, t in out.named_parameters()]
        tensors += [b for _, b in out.named_buffers() if b.is_floating_point()]
        for t in tensors:
            flat = t.reshape(-1)
            order = torch.randperm(flat.numel(), generator=gen).to(t.device)
            t.copy_(flat[order].reshape(t.shape))
    return out.eval()


BaselineBuilder = Callable[[nn.Module, int, "Callable[[], nn.Module] | None"], nn.Module]
BASELINES: dict[str, BaselineBuilder] = {
    "untrained": untrained,
    "permuted": lambda model, seed, factory=None: permuted(model, seed),
}


def parse_baseline(text: str) -> tuple[str, int]:
    """``"untrained"`` / ``"untrained:N"`` / ``"permuted:N"`` -> (kind, N); N defaults to 3."""
    kind, _, count = str(text).partition(":")
    if kind not in BASELINES:
        raise BaselineError(
            f"unknown baseline {text!r}: use {' or '.join(sorted(BASELINES))}, optionally :N"
        )
    if not count:
        return kind, DEFAULT_BASELINE_N
    if not count.isdigit() or int(count) < 1:
        raise BaselineError(f"baseline {text!r}: N must be a whole number >= 1")
    return kind, int(count)


def baseline_models(
    model: nn.Module,
    kind: str,
    n: int,
    *,
    factory: Callable[[], nn.Module] | None = None,
    first_seed: int = 0,
) -> dict[str, Callable[[], nn.Module]]:
    """``{"<kind>:<seed>": builder}`` for seeds first_seed .. first_seed + n - 1 (builders, so
    that only one baseline network is held at a time)."""
    if kind not in BASELINES:
        raise BaselineError(f"unknown baseline {kind!r}; use {' or '.join(sorted(BASELINES))}")
    build = BASELINES[kind]

    def one(seed: int) -> Callable[[], nn.Module]:
        return lambda: build(model, seed, factory)

    return {f"{kind}:{s}": one(s) for s in range(first_seed, first_seed + n)}


def describe(kind: str) -> str:
    """One line on what a baseline kind is (for summaries)."""
    words: dict[str, Any] = {
        "untrained": "the same architecture at random initialisations",
        "permuted": "the trained weights shuffled within each tensor",
    }
    return words[kind]
