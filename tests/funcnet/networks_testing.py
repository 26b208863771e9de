"""Planted functional networks shared by the FunctionalNetworks, recurrence and plot tests."""

from __future__ import annotations

import torch

from tl_funcnet.activations import Activations

SITES = ("blocks.0.mlp.hook_post", "blocks.1.mlp.hook_post")
#: three sources, each driving six known units of the 2 x 200 (units 200.. are site 1's)
PLANTED = [list(range(10, 16)), list(range(120, 126)), list(range(250, 253)) + list(range(300, 303))]


def planted_acts(n_tokens: int = 3000, seed: int = 0, noise: float = 0.05) -> Activations:
    """Three sparse sources, each driving six known units (out of 2 x 200), plus Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    S = torch.randn(n_tokens, 3, generator=g) * (torch.rand(n_tokens, 3, generator=g) < 0.15)
    S = S / S.std(0)
    A = torch.zeros(3, 400)
    for c, units in enumerate(PLANTED):
        A[c, units] = 1.0 + 0.2 * torch.rand(len(units), generator=g)
    X = S @ A + noise * torch.randn(n_tokens, 400, generator=g)
    offsets = torch.arange(0, n_tokens + 1, 100)
    return Activations({SITES[0]: X[:, :200], SITES[1]: X[:, 200:]}, torch.zeros(n_tokens, dtype=torch.long),
                       offsets, SITES)


def found(fn) -> list[list[int]]:
    """Each fitted network's units (over the concatenated sites), sorted."""
    return sorted(sorted(m.nonzero().flatten().tolist()) for m in fn.masks_)
