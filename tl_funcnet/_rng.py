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


def check_random_state(random_state: object) -> int | None:
    """``random_state`` as an int in ``[0, 2**32)`` or ``None``; anything else is a FuncnetError."""
    import numbers

    from .errors import FuncnetError

    if random_state is None:
        return None
    if isinstance(random_state, bool) or not isinstance(random_state, (numbers.Integral, np.integer)) \
            or not 0 <= int(random_state) < 2**32:
        raise FuncnetError(f"random_state should be an int in [0, 2**32) or None (fresh randomness), got "
                           f"{random_state!r:.40}")
    return int(random_state)


def generator(random_state: int | None) -> torch.Generator:
    """A local torch generator seeded from ``random_state`` (``None``: fresh entropy)."""
    seed = check_random_state(random_state)
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g


def numpy_generator(random_state: int | None) -> np.random.Generator:
    """A local numpy generator seeded from ``random_state`` (``None``: fresh entropy)."""
    return np.random.default_rng(check_random_state(random_state))


__all__ = ["global_rng_preserved", "check_random_state", "generator", "numpy_generator"]
