"""Helpers shared by the tests of timm's attention adapters."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def set_fused(model, flag: bool):
    """Every module with timm's ``fused_attn`` switch set to ``flag`` inside the block, and set
    back to what it was after, also on an error."""
    mods = [m for m in model.modules() if hasattr(m, "fused_attn")]
    before = [m.fused_attn for m in mods]
    for m in mods:
        m.fused_attn = flag
    try:
        yield
    finally:
        for m, b in zip(mods, before):
            m.fused_attn = b


@contextlib.contextmanager
def module_io(module):
    """The first input (``x``) and the output (``y``) of ``module``'s last forward in the block,
    in the dict it yields (a forward hook, removed on exit, also on an error)."""
    seen: dict = {}
    hook = module.register_forward_hook(lambda m, i, o: seen.update(x=i[0].clone(), y=o.clone()))
    try:
        yield seen
    finally:
        hook.remove()
