"""timm CrossViT (``timm.models.crossvit.CrossAttention``): cross-attention token fusion.

CrossViT (Chen et al. 2021, eq. 7-8) fuses two branches through their class tokens: the class
token of branch i (projected to branch j's width) is the only query, the keys are that class
token and branch j's patches: ``softmax(q_cls k^T / sqrt(d))``. The module calls ``softmax``
itself (no fused path): its (B, heads, 1, N) output is read as it is. The keys' patch grid is
branch j's (its ``patch_embed[j]``). The branches' own ViT self-attention (timm ``Attention``,
read by ``timm_vit``) gets its branch's class token and patch grid from :func:`branch_context`.

Kind ``class_token``, (B, heads, Nk); ``cache.meta[name]``: ``prefix_tokens`` 1 (the
class token, of the other branch), ``prefix_names``, ``key_grid``. Writing replaces the
softmax output.
"""

from __future__ import annotations

from torch import nn

from ..registry import register_adapter
from ._sdpa import softmax_or_sdpa
from .timm_cait import class_attention, class_write, patch_context


def _branch(block: nn.Module, ancestors: tuple[nn.Module, ...]) -> int | None:
    """The branch whose tokens a module inside a ``MultiScaleBlock`` attends over: d inside
    ``blocks[d]`` (branch d's self-attention), (i + 1) mod branches inside ``fusion[i]``
    (branch i's class token reads branch i + 1's patches)."""
    for d, branch in enumerate(block.blocks or ()):
        if any(branch is a for a in ancestors):
            return d
    for i, fusion in enumerate(block.fusion):
        if any(fusion is a for a in ancestors):
            return (i + 1) % int(block.num_branches)
    return None


def branch_context(ancestors: tuple[nn.Module, ...]) -> dict:
    """Class token and patch grid of the CrossViT branch a module attends over.

    Branch d's tokens are its class token, then the patches of ``patch_embed[d]``
    ((img_size / patch_size) per axis, the branch's own image size); in cross-attention the
    class token is the other branch's (projected). ``ancestors``: the module's ancestors, root
    first; {} when the module is not inside a CrossViT ``MultiScaleBlock``.
    """
    model = next(
        (a for a in ancestors if isinstance(getattr(a, "patch_embed", None), nn.ModuleList)), None
    )
    for owner in ancestors:
        if model is None or owner is model or not hasattr(owner, "fusion"):
            continue
        d = _branch(owner, ancestors)
        if d is not None:
            embed = model.patch_embed[d]
            grid = tuple(int(s) // int(p) for s, p in zip(embed.img_size, embed.patch_size))
            return {"prefix_tokens": 1, "prefix_names": ["class"], "patch_grid": grid}
    return {}


def _context(module: nn.Module, ancestors: tuple[nn.Module, ...]) -> dict:
    return branch_context(ancestors) or patch_context(module, ancestors)


register_adapter(
    "timm.models.crossvit.CrossAttention",
    kind="class_token",
    read=softmax_or_sdpa(class_attention),
    family="timm",
    write=class_write,
    context=_context,
    describe=lambda m: {"heads": int(m.num_heads)},
)
