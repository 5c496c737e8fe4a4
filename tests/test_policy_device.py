"""Every intervention policy returns its replacement on the attention's device, in its dtype
and shape, for every kind it accepts (issue 26, the class "a tensor built without the
device or dtype of the one it replaces").

The suite runs on CPU, where a tensor made without ``device=`` lands on the right device by
luck; here the attention lives on the ``meta`` device (shapes only, no data), so a
replacement built on the default device shows. The dtype is float64 for the same reason
(the default dtype is float32).
"""

from __future__ import annotations

import pytest
import torch

from attnviz.capture.kinds import KINDS
from attnviz.capture.policies import POLICIES, PolicyContext, PolicyError, get_policy
from attnviz.capture.site import Site

SPECS = {
    "constant": "constant:0.5",
    "remove": "remove",
    "mean": "mean",
    "shuffle": "shuffle:3",
    "uniform": "uniform",
    "query_mean": "query_mean",
    "branch": "branch:1",
    "patch": "patch",
}


def _shape(dims: tuple[str, ...]) -> tuple[int, ...]:
    """A small size per axis, each different, batch 3 (the derangement needs 2)."""
    sizes = iter((4, 5, 3, 7, 2, 6))
    return tuple(3 if d == "batch" else 2 if d == "branch" else next(sizes) for d in dims)


def _site(kind_name: str) -> Site:
    return Site("m", kind_name, "A_1", KINDS[kind_name].dims, "x.Module", "test")


def _cases():
    """(kind, policy) for every policy whose ``check`` accepts a site of that kind."""
    for kind_name in sorted(KINDS):
        for policy_name in sorted(POLICIES):
            try:
                get_policy(SPECS[policy_name]).check(_site(kind_name))
            except PolicyError:
                continue
            yield kind_name, policy_name


def test_the_policy_table_names_every_policy_and_every_policy_has_cases():
    assert set(SPECS) == set(POLICIES)
    assert {p for _, p in _cases()} == set(POLICIES)
    assert len(list(_cases())) > 200


@pytest.mark.parametrize(("kind_name", "policy_name"), list(_cases()))
def test_a_replacement_keeps_the_device_dtype_and_shape_of_the_attention(kind_name, policy_name):
    kind = KINDS[kind_name]
    policy = get_policy(SPECS[policy_name])
    shape = _shape(kind.dims)
    site = _site(kind_name)
    att = torch.empty(shape, dtype=torch.float64, device="meta")
    ctx = PolicyContext(
        site,
        kind,
        reference=torch.empty(shape[1:], dtype=torch.float32, device="meta"),
        source=torch.empty(shape, dtype=torch.float64, device="meta"),
    )
    out = policy.apply(att, ctx)
    assert out.device.type == "meta", (kind_name, policy_name)
    assert out.dtype == torch.float64, (kind_name, policy_name)
    assert tuple(out.shape) == shape, (kind_name, policy_name)
