"""timm CoaT factorized attention (Xu et al. 2021, Eq. 2): F(Q, K, V) = Q (softmax_N(K)^T V).

``FactorAttnConvRelPosEnc`` never forms a query-key map: the softmax runs over the N tokens for
each key channel, so each of a head's Ch key channels is a distribution over the tokens from
which it pools the values (the role of LambdaNetworks' keys). Read from the module's own
softmax call as kind ``factor`` (B, heads, Ch, N), one row per key channel; tokens are the
class token (``prefix_tokens`` 1) then the H x W patch grid (``key_grid``: the module's own
``size`` argument when given positionally, as the serial blocks do; else, in the parallel
blocks, which pass it by keyword, the grid of the stage's ``patch_embed{i}``, fixed by its
``img_size``).
"""

from __future__ import annotations

from torch import nn

from ..registry import Intercepted, Reading, register_adapter, site_context


def _stage_grid(module: nn.Module, ancestors: tuple[nn.Module, ...]) -> dict:
    """The patch grid of the CoaT stage the module attends in (serial block or parallel)."""
    root = ancestors[0] if ancestors else None
    for i in range(1, 5):
        embed = getattr(root, f"patch_embed{i}", None)
        in_serial = any(a is getattr(root, f"serial_blocks{i}", None) for a in ancestors)
        in_parallel = any(getattr(a, f"factoratt_crpe{i}", None) is module for a in ancestors)
        if embed is not None and (in_serial or in_parallel):
            return {"grid": tuple(int(g) for g in embed.grid_size)}
    return {}


def _key_weights(module: nn.Module, taps, inputs: tuple, output, rows) -> Reading:
    (k_softmax,) = taps[Intercepted.key("softmax")]  # (B, heads, N, Ch), softmax over N
    n = int(k_softmax.shape[2])
    size = inputs[1] if len(inputs) > 1 else site_context(module).get("grid", (1, n - 1))
    h, w = (int(s) for s in size)
    prefix = n - h * w
    meta = {"prefix_tokens": prefix, "prefix_names": ["class"][:prefix], "key_grid": (h, w)}
    return Reading(k_softmax.transpose(-1, -2), meta)


register_adapter(
    "timm.models.coat.FactorAttnConvRelPosEnc",
    kind="factor",
    read=Intercepted(("softmax",), _key_weights),
    family="timm",
    write="the canonical rows are the key channels, a transpose of the module's tensor, not a "
    "reshape; attnviz reads them only",
    context=_stage_grid,
    describe=lambda m: {"heads": int(m.num_heads)},
)
