"""Asked to keep no maps or images (``map_images=0`` / ``keep_maps=0``), every analysis that
keeps them returns the same fields as when it keeps some: arrays of the same dtype and number of
dimensions, with no rows, that survive a save / load round trip. A consumer (a plot, a report,
an array concatenated across runs) can then treat both alike."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from attnviz.analysis.attribution import attention_vs_attribution, gradcam_comparison
from attnviz.analysis.query_independence import query_independence
from attnviz.analysis.rollout import rollout
from attnviz.models.tiny import create_tiny

X = torch.randn(3, 3, 64, 96, generator=torch.Generator().manual_seed(2))


def _vit() -> torch.nn.Module:
    torch.manual_seed(3)
    kw = dict(img_size=(64, 96), patch_size=16, depth=2, num_classes=3)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **kw).eval()


def _tiny(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_tiny(name, num_classes=3, zero_init_residual=False).eval()


RUNS = {
    "rollout": (lambda n: rollout(_vit(), X, map_images=n, progress=False)),
    "query_independence": (
        lambda n: query_independence(_tiny("nl_tiny"), X, map_images=n, progress=False)
    ),
    "attention_vs_attribution": (
        lambda n: attention_vs_attribution(_tiny("cbam_tiny"), X, keep_maps=n, progress=False)
    ),
    "gradcam_comparison": (
        lambda n: gradcam_comparison(
            {"se": _tiny("se_tiny"), "cbam": _tiny("cbam_tiny")}, X, keep_maps=n, progress=False
        )
    ),
}


def _arrays(result) -> dict[str, np.ndarray]:
    return {
        name: value
        for name in result.__dataclass_fields__
        if isinstance(value := getattr(result, name), np.ndarray)
    }


@pytest.mark.parametrize("analysis", sorted(RUNS))
def test_no_kept_maps_give_empty_arrays_of_the_kept_dtype(analysis, tmp_path):
    kept, none = RUNS[analysis](2), RUNS[analysis](0)
    a, b = _arrays(kept), _arrays(none)
    assert a.keys() == b.keys()
    emptied = [n for n in a if a[n].size and not b[n].size]
    assert emptied, f"{analysis}: keeping no maps emptied no array"
    for name in a:
        assert (b[name].dtype, b[name].ndim) == (a[name].dtype, a[name].ndim), name
    back = type(none).load(none.save(tmp_path / analysis))
    for name, value in _arrays(back).items():
        assert value.dtype == b[name].dtype and np.array_equal(value, b[name]), name
