"""Basis-free temporal ICA: sources that do not depend on the basis of the feature space.

The library's ``FastICA`` fixes the signs of its whitening vectors by the first *feature's* loading, which
changes under a rotation of the features and then sends the fixed-point iteration to another solution.
Here the whitening vectors are sign-fixed in *sample* space (positive third moment), so the whole pipeline
depends on the data only through the sample x sample Gram matrix: rotating or permuting the features gives
the same sources (up to rounding). The k x k fixed-point iteration runs in float64 numpy (cheap).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import FuncnetError


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
                 max_iter: int = 500, tol: float = 1e-6) -> tuple[Float[Tensor, "n_samples k"],
                                                                   Float[Tensor, "n_features k"], bool, int]:
    """Sources ``S`` (unit variance, positive skew, sorted by explained variance) and ``mixing``.

    ``X`` must be centred. ``mixing = X^T S / n`` is the regression of the features on the sources.
    """
    n = X.shape[0]
    V = sample_pca(X, k)
    X1 = (V.T * math.sqrt(n)).contiguous()  # (k, n), white
    W, n_iter, conv = _fastica(X1.numpy(), np.random.RandomState(random_state).normal(size=(k, k)),
                               max_iter=max_iter, tol=tol)
    S = torch.from_numpy(W @ X1.numpy()).T  # (n, k)
    S = S / S.std(0, correction=0).clamp_min(1e-300)
    S = S * torch.where(S.pow(3).mean(0) < 0, -1.0, 1.0).to(S.dtype)
    mixing = (X.T @ S.to(X.dtype)).double() / n  # (f, k)
    order = torch.argsort(mixing.pow(2).sum(0), descending=True, stable=True)
    return S[:, order], mixing[:, order], conv, n_iter


def _polar(W: np.ndarray) -> np.ndarray:
    u, _, vh = np.linalg.svd(W)
    return u @ vh


def _fastica(X1: np.ndarray, w_init: np.ndarray, *, max_iter: int, tol: float) -> tuple[np.ndarray, int, bool]:
    """Symmetric FastICA (logcosh) on whitened ``X1`` (k, n), as scikit-learn's ``_ica_par``."""
    n = X1.shape[1]
    W = _polar(w_init)
    for it in range(max_iter):
        gwx = np.tanh(W @ X1)
        W1 = _polar(gwx @ X1.T / n - (1 - gwx ** 2).mean(1)[:, None] * W)
        lim = float(np.abs(np.abs(np.einsum("ij,ij->i", W1, W)) - 1).max())
        W = W1
        if lim < tol:
            return W, it + 1, True
    return W, max_iter, False


_ = Tensor
__all__ = ["temporal_ica", "sample_pca"]
