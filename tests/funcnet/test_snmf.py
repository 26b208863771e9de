"""Semi-NMF: planted non-negative networks recovered, sparse loadings, non-negative coefficients, the
FunctionalNetworks backend (method="snmf") end to end, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from networks_testing import PLANTED, SITES, found
from tl_funcnet.activations import Activations
from tl_funcnet.errors import FuncnetError
from tl_funcnet.funcnet import SNMF, FunctionalNetworks


def planted_nonnegative(n: int = 3000, seed: int = 0, noise: float = 0.05) -> Activations:
    """Three sparse non-negative sources, each driving the units of ``PLANTED``, plus Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    S = torch.rand(n, 3, generator=g) * (torch.rand(n, 3, generator=g) < 0.15)
    A = torch.zeros(3, 400)
    for c, units in enumerate(PLANTED):
        A[c, units] = 1.0 + 0.2 * torch.rand(len(units), generator=g)
    X = S @ A + noise * torch.randn(n, 400, generator=g)
    return Activations({SITES[0]: X[:, :200], SITES[1]: X[:, 200:]}, torch.zeros(n, dtype=torch.long),
                       torch.arange(0, n + 1, 100), SITES)


def test_snmf_recovers_planted_components_with_sparse_loadings():
    X = planted_nonnegative(noise=0.01).matrix()
    est = SNMF(3, sparsity=0.02, random_state=0)
    Y = est.fit_transform(X)
    assert est.converged_ and est.components_.shape == (3, 400) and est.mixing_.shape == (400, 3)
    keep = math.ceil(0.02 * 400)
    assert ((est.components_ != 0).sum(1) == keep).all()  # winner-take-all: 8 loadings per component
    supports = sorted(sorted(np.argsort(-np.abs(c))[:6].tolist()) for c in est.components_)
    assert supports == sorted(PLANTED)
    assert float(Y.min()) >= 0
    torch.testing.assert_close(est.transform(X), Y)  # transform gives the training coefficients
    assert est.reconstruction_err_ < 0.3 * float(X.norm())  # what is left is mostly the noise
    assert est.inverse_transform(Y).shape == X.shape
    again = SNMF(3, sparsity=0.02, random_state=0).fit(X)
    np.testing.assert_array_equal(again.components_, est.components_)  # deterministic


def test_snmf_refuses_bad_input():
    X = planted_nonnegative(n=300).matrix()
    with pytest.raises(FuncnetError, match="n_components=500 exceeds"):
        SNMF(500).fit(X)
    bad = X.clone()
    bad[3, 4] = float("nan")
    with pytest.raises(FuncnetError, match="NaN"):
        SNMF(3).fit(bad)
    with pytest.raises(ValueError):
        SNMF(3, sparsity=0.0).fit(X)


def test_functional_networks_with_snmf_end_to_end(tmp_path, gpt2_tiny):
    acts = planted_nonnegative()
    fn = FunctionalNetworks(3, method="snmf", sparsity=0.03).fit(acts)
    assert found(fn) == sorted(PLANTED) and fn.converged_
    assert float(fn.sources_.min()) >= 0  # token coefficients are non-negative
    back = FunctionalNetworks.load(fn.save(tmp_path / "nets"))
    assert back.method == "snmf" and back.sparsity == 0.03 and torch.equal(back.masks_, fn.masks_)
    iv = fn.to_intervention("mask", ids=[0])
    assert {h.site for h in iv} == {SITES[0]}
    ctl = fn.to_intervention("mask", ids=[0], control="per_layer")
    assert sum(len(h.params["units"]) for h in ctl) == len(PLANTED[0])


@pytest.mark.parametrize("kwargs, message", [({"method": "pca"}, "method should be one of"),
                                             ({"method": "snmf", "sparsity": 0}, "sparsity should be"),
                                             ({"method": "snmf", "sparsity": 1.5}, "sparsity should be"),
                                             ({"method": "snmf", "sparsity": True}, "sparsity should be")])
def test_functional_networks_refuse_bad_methods(kwargs, message):
    with pytest.raises(FuncnetError, match=message):
        FunctionalNetworks(3, **kwargs).fit(planted_nonnegative(n=300))


def test_nonfinite_activations_are_refused_before_snmf_runs():
    acts = planted_nonnegative(n=300)
    x = acts[SITES[0]].clone()
    x[0, 0] = float("inf")
    bad = Activations({SITES[0]: x, SITES[1]: acts[SITES[1]]}, acts.token_ids, acts.offsets, SITES)
    with pytest.raises(FuncnetError, match="NaN or infinite"):
        FunctionalNetworks(3, method="snmf").fit(bad)
