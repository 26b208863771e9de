"""Basis-free temporal ICA: sources that do not depend on the basis of the feature space.

The library's ``FastICA`` fixes the signs of its whitening vectors by the first *feature's* loading, which
changes under a rotation of the features and then sends the fixed-point iteration to another solution.
Here the whitening vectors are sign-fixed in *sample* space (positive third moment), so the whole pipeline
depends on the data only through the sample x sample Gram matrix: rotating or permuting the features gives
the same sources (up to rounding). The fixed-point iteration itself is ``ica.ica_parallel``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import FuncnetError
from ..funcnet.ica import ica_parallel


def sample_pca(X: Float[Tensor, "n_samples n_features"], k: int) -> Float[Tensor, "n_samples k"]:
    """Orthonormal top-``k`` principal score vectors of the centred ``X``, sign-fixed by skewness (float64)."""
    n, f = X.shape
    if n <= f:
        G = (X @ X.T).double()
        evals, evecs = torch.linalg.eigh(G)
        evals, V = evals.flip(0)[:k], evecs.flip(1)[:, :k]
    else:
        C = (X.T @ X).double()
        evals, evecs = torch.linalg.eigh(C)
        evals, U = evals.flip(0)[:k], evecs.flip(1)[:, :k]
        V = (X.double() @ U) / evals.clamp_min(1e-300).sqrt()
    if evals[0] <= 0 or evals[-1] <= evals[0] * 1e-10:
        rank = int((evals > evals[0] * 1e-10).sum()) if evals[0] > 0 else 0
        raise FuncnetError(f"the activations have numerical rank about {rank}, below n_networks={k}; lower "
                           "n_networks or use more (and longer) texts")
    sign = torch.where(V.pow(3).sum(0) < 0, -1.0, 1.0).to(V.dtype)
    return V * sign


def temporal_ica(X: Float[Tensor, "n_samples n_features"], k: int, *, random_state: int = 666,
                 max_iter: int = 1000, tol: float = 1e-7) -> tuple[Float[Tensor, "n_samples k"],
                                                                   Float[Tensor, "n_features k"], bool, int]:
    """Sources ``S`` (unit variance, positive skew, sorted by explained variance) and ``mixing``.

    ``X`` must be centred. ``mixing = X^T S / n`` is the regression of the features on the sources.
    """
    n = X.shape[0]
    V = sample_pca(X, k)
    X1 = (V.T * math.sqrt(n)).contiguous()  # (k, n), white
    w_init = torch.as_tensor(np.random.RandomState(random_state).normal(size=(k, k)), dtype=torch.float64)
    W, n_iter, conv = ica_parallel(X1, w_init[None], fun="logcosh", max_iter=max_iter, tol=tol)
    S = (W[0] @ X1).T  # (n, k)
    S = S / S.std(0, correction=0).clamp_min(1e-300)
    S = S * torch.where(S.pow(3).mean(0) < 0, -1.0, 1.0).to(S.dtype)
    mixing = (X.T @ S.to(X.dtype)).double() / n  # (f, k)
    order = torch.argsort(mixing.pow(2).sum(0), descending=True, stable=True)
    return S[:, order], mixing[:, order], bool(conv[0]), int(n_iter[0])


_ = Tensor
__all__ = ["temporal_ica", "sample_pca"]
