"""Randomness without side effects: local generators, and a guard for libraries that seed globally."""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch


@contextmanager
def global_rng_preserved() -> Iterator[None]:
    """Restore the global torch, numpy and ``random`` states on exit (for third-party code that reseeds them,
    such as TransformerLens building a model from a config with ``seed``)."""
    torch_state = torch.random.get_rng_state()
    np_state = np.random.get_state()
    py_state = random.getstate()
    try:
        yield
    finally:
        torch.random.set_rng_state(torch_state)
        np.random.set_state(np_state)
        random.setstate(py_state)


def generator(random_state: int | None) -> torch.Generator:
    """A local torch generator seeded from ``random_state`` (``None``: fresh entropy)."""
    g = torch.Generator()
    if random_state is None:
        g.seed()
    else:
        g.manual_seed(int(random_state))
    return g


__all__ = ["global_rng_preserved", "generator"]
