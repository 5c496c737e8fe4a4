"""Round 5's capture survivors, as classes (issue 26, TESTING.md "Mutation testing"):

* the size warning counts only the full per-query maps it is about (a mutant counted every
  captured tensor, channel gates included, so a model of gates alone could warn);
* stage boundaries read from timm's ``FeatureInfo`` object (``features_only`` models) equal
  those read from the plain list of dicts a model's ``feature_info`` holds;
* the refusal of a ``torch.compile``d model, its message whole.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from test_capture_safety import _nl_model, _se_model
from timm.models._features import FeatureInfo

import attnviz
from attnviz.capture import CompiledModelError
from attnviz.capture import core as capture_core
from attnviz.capture.site import feature_stages


def test_the_size_warning_counts_only_full_per_query_maps(monkeypatch):
    monkeypatch.setattr(capture_core, "FULL_MAP_WARN_BYTES", 0)  # any per-query map warns
    se, nl = _se_model(), _nl_model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # gates alone never warn, however small the threshold
        with attnviz.capture(se) as cache, torch.no_grad():
            se(torch.randn(2, 3, 8, 8))
    assert len(cache["1"]) == 2  # the gates were captured
    with pytest.warns(ResourceWarning, match="full per-query attention maps"):
        with attnviz.capture(nl), torch.no_grad():
            nl(torch.randn(1, 3, 16, 16))


class _Flat(torch.nn.Module):
    def __init__(self, info) -> None:
        super().__init__()
        self.feature_info = info


ENTRIES = [
    {"num_chs": 8, "reduction": 2, "module": "features.1"},
    {"num_chs": 16, "reduction": 4, "module": "features.3"},
    {"num_chs": 32, "reduction": 8, "module": "features.6"},
]


def test_feature_stages_read_a_feature_info_object_like_its_list():
    from_list = feature_stages(_Flat([dict(e) for e in ENTRIES]))
    assert from_list == ("features", [(1, 1), (3, 2), (6, 3)])
    info = FeatureInfo([dict(e) for e in ENTRIES], out_indices=(0, 1, 2))
    assert feature_stages(_Flat(info)) == from_list


def test_a_compiled_model_is_refused_with_the_whole_message():
    compiled = torch.compile(_se_model())  # wrapping only: nothing compiles until a call
    with pytest.raises(CompiledModelError) as err:
        attnviz.capture(compiled)
    assert str(err.value) == (
        "this is a torch.compile'd model (OptimizedModule): compiled code does not run the "
        "Python hooks attnviz reads attention with, so its capture would be empty. Capture "
        "the original module and run it eagerly: "
        "`with attnviz.capture(model._orig_mod) as cache: model._orig_mod(x)`"
    )
