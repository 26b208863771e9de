"""Planted ICA problems and matching, shared by the ICA tests."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def matched_abs_corr(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """|corr| of the columns of A and B after Hungarian matching (one value per matched pair)."""
    A = (A - A.mean(0)) / A.std(0)
    B = (B - B.mean(0)) / B.std(0)
    C = np.abs(A.T @ B) / len(A)
    r, c = linear_sum_assignment(-C)
    return C[r, c]


def planted(n=2000, f=60, k=6, seed=0, noise=0.05):
    """Sparse heavy-tailed sources (n, k) mixed by a known (k, f) matrix plus small noise: (X, S, A)."""
    rng = np.random.default_rng(seed)
    S = (rng.random((n, k)) < 0.2) * rng.laplace(size=(n, k)) * 2.0
    A = rng.normal(size=(k, f))
    X = S @ A + noise * rng.normal(size=(n, f))
    return X, S, A


def planted_spatial(n=300, f=3000, k=6, seed=0):
    """Sparse non-negative maps (k, f) with Gaussian time courses (n, k) plus noise: (X, M, T)."""
    rng = np.random.default_rng(seed)
    M = (rng.random((k, f)) < 0.03) * rng.exponential(size=(k, f)) * 3.0
    T = rng.normal(size=(n, k))
    return T @ M + 0.3 * rng.normal(size=(n, f)), M, T


def projections(M: np.ndarray, seed: int = 1) -> np.ndarray:
    """``M`` (rows, n_features) projected on a fixed random vector: one number per row pins the whole row."""
    return np.asarray(M, dtype=np.float64) @ np.random.RandomState(seed).normal(size=M.shape[1])
