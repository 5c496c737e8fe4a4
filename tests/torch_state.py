"""The process-wide state ``attnviz train`` changes (deterministic algorithms, the thread count,
the seeded global generators), put back after a test that trains in-process."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import pytest
import torch


@contextlib.contextmanager
def kept_global_state() -> Iterator[None]:
    det, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(det)
        torch.set_num_threads(threads)
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


@pytest.fixture
def restore_torch_state() -> Iterator[None]:
    """A test that trains in-process: the process's torch settings and generators restored."""
    with kept_global_state():
        yield
