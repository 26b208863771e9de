"""Semi-nonnegative matrix factorisation of activations (Shafran, Geiger and Geva, arXiv 2506.10920).

``X (n_samples, n_features) ≈ Y Z^T``: token coefficients ``Y >= 0`` (n_samples, k) and feature loadings ``Z``
(n_features, k) of any sign, each column made sparse by winner-take-all (only its ``sparsity`` fraction of
largest-magnitude loadings survive each update). Fitted by the multiplicative semi-NMF updates of Ding, Li and
Jordan (2010): ``Z = X^T Y (Y^T Y)^-1`` then winner-take-all, and
``Y <- Y * sqrt(([X Z]+ + Y [Z^T Z]-) / ([X Z]- + Y [Z^T Z]+))``.

A scikit-learn transformer with :class:`~tl_funcnet.funcnet.FastICA`'s interface (``components_`` (k, f),
``mixing_`` (f, k), ``transform`` / ``inverse_transform``), so ``FunctionalNetworks(method="snmf")`` uses it in
place of ICA: a component's loadings are a network's map, its coefficients the network's time course, and
``W_out z`` a residual direction to steer with.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from sklearn.utils._param_validation import Interval, Options, StrOptions
from torch import Tensor

from .._rng import generator
from ..errors import ShapeError
from .ica.base import ICAEstimator
from .ica.checks import DTYPES, as_output, as_tensor, check_finite, check_fitted, check_n_components, fitted_tensor

__all__ = ["SNMF"]

_EPS = 1e-12
_TRANSFORM_ITER = 100  # coefficient updates with the loadings fixed (fit's last step and transform)


def _pos(m: Tensor) -> Tensor:
    return (m.abs() + m) / 2


def _neg(m: Tensor) -> Tensor:
    return (m.abs() - m) / 2


def _winner_take_all(Z: Float[Tensor, "f k"], keep: int) -> Float[Tensor, "f k"]:
    """Keep each column's ``keep`` largest-magnitude entries, zero the rest."""
    if keep >= Z.shape[0]:
        return Z
    idx = Z.abs().topk(keep, dim=0).indices
    return torch.zeros_like(Z).scatter_(0, idx, Z.gather(0, idx))


def _update_y(X: Tensor, Y: Tensor, Z: Tensor) -> Tensor:
    XZ, ZZ = X @ Z, Z.T @ Z
    return Y * torch.sqrt((_pos(XZ) + Y @ _neg(ZZ)) / (_neg(XZ) + Y @ _pos(ZZ) + _EPS))


def _start(X: Float[Tensor, "n f"], k: int, g: torch.Generator) -> Float[Tensor, "n k"]:
    """``|U_k S_k|`` of a randomized SVD of ``X`` (drawn from the local generator ``g``): a positive start that
    spreads the components over the data's main directions (random starts often merge two components)."""
    n, f = X.shape
    ell = min(n, f, k + 10)
    Q = torch.linalg.qr(X @ torch.randn(f, ell, generator=g, dtype=torch.float64).to(X)).Q
    for _ in range(2):
        Q = torch.linalg.qr(X @ (X.T @ Q)).Q
    u, s, _ = torch.linalg.svd(Q.T @ X, full_matrices=False)
    return (Q @ u[:, :k]).mul(s[:k]).abs() + 1e-3 * float(s[0]) / math.sqrt(n)


def _coefficients(X: Float[Tensor, "n f"], Z: Float[Tensor, "f k"], n_iter: int) -> Float[Tensor, "n k"]:
    """Non-negative coefficients of ``X`` for fixed loadings ``Z``: least squares made positive, then updates."""
    Y = _least_squares(Z, X.T).clamp_min(0) + 1e-6
    for _ in range(n_iter):
        Y = _update_y(X, Y, Z)
    return Y


def _least_squares(F: Float[Tensor, "m k"], B: Float[Tensor, "m p"]) -> Float[Tensor, "p k"]:
    """``C`` minimising ``||B - F C^T||`` (a tiny ridge keeps ``F^T F`` invertible)."""
    gram = F.T @ F + _EPS * torch.eye(F.shape[1], dtype=F.dtype, device=F.device)
    return torch.linalg.solve(gram, F.T @ B).T


def _loadings(X: Tensor, Y: Tensor, keep: int) -> Tensor:
    return _winner_take_all(_least_squares(Y, X), keep)


class SNMF(ICAEstimator):  # the input checks, tags and feature names FastICA and CanICA use
    """Semi-NMF with winner-take-all sparse loadings (see the module docstring).

    Parameters: ``n_components``; ``sparsity``, the fraction of features each component keeps (at least one);
    ``max_iter`` and ``tol`` (relative change of the reconstruction error between iterations);
    ``random_state`` (the randomized SVD behind the non-negative start); ``dtype`` and ``device``.

    Fitted attributes (numpy): ``components_`` (k, n_features; the sparse loadings ``Z^T``), ``mixing_``
    (n_features, k; ``Z``), ``reconstruction_err_`` (Frobenius norm of ``X - Y Z^T``), ``n_iter_``,
    ``converged_``, ``n_features_in_``. Components are ordered by the energy they reconstruct
    (``||Y_c|| ||Z_c||``, descending). ``fit_transform`` returns the training coefficients ``Y``;
    ``transform`` fits non-negative coefficients to new rows with ``Z`` fixed.
    """

    _parameter_constraints: dict[str, list[Any]] = {
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "sparsity": [Interval(Real, 0, 1, closed="right")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="neither")],
        "random_state": [Interval(Integral, 0, 2**32 - 1, closed="both"), None],
        "dtype": [StrOptions(set(DTYPES)), Options(torch.dtype, set(DTYPES.values()))],
        "device": [str, torch.device],
    }

    def __init__(self, n_components: int = 10, *, sparsity: float = 0.01, max_iter: int = 200, tol: float = 1e-4,
                 random_state: int | None = 0, dtype: str | torch.dtype = "float32", device: str | torch.device = "cpu"):
        self.n_components = n_components
        self.sparsity = sparsity
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.dtype = dtype
        self.device = device

    def fit(self, X: Any, y: Any = None) -> "SNMF":
        """Factorise ``X`` (n_samples, n_features)."""
        self._fit(X, warn=True)
        return self

    def fit_transform(self, X: Any, y: Any = None) -> Float[Tensor, "n_samples k"] | np.ndarray:
        """Factorise ``X`` and return its non-negative coefficients (n_samples, k)."""
        return self._fit(X, warn=True)

    def _keep(self, n_features: int) -> int:
        return max(1, math.ceil(float(self.sparsity) * n_features))

    def _fit(self, X: Any, *, warn: bool) -> Float[Tensor, "n_samples k"] | np.ndarray:
        who = "SNMF.fit"
        T, as_numpy, dtype, device = self._fit_input(X, who)
        n, f = T.shape
        k = int(self.n_components)
        check_n_components(k, min(n, f), "min(n_samples, n_features)", who)
        check_finite(T, None, who)
        keep = self._keep(f)
        g = generator(self.random_state)
        Y = _start(T, k, g)
        sq = float((T * T).sum())
        err_prev, converged, it = math.inf, False, 0
        for it in range(1, int(self.max_iter) + 1):
            Z = _loadings(T, Y, keep)
            Y = _update_y(T, Y, Z)
            # ||X - Y Z^T||^2 from small products: ||X||^2 - 2 tr(Y^T X Z) + tr(Z^T Z Y^T Y)
            err = math.sqrt(max(0.0, sq - 2 * float((Y * (T @ Z)).sum()) + float(((Z.T @ Z) * (Y.T @ Y)).sum())))
            if abs(err_prev - err) <= float(self.tol) * max(err, _EPS):
                converged = True
                break
            err_prev = err
        Z = _loadings(T, Y, keep)
        Z = Z[:, torch.argsort(Y.norm(dim=0) * Z.norm(dim=0), descending=True, stable=True)].contiguous()
        Y = _coefficients(T, Z, _TRANSFORM_ITER)  # exactly what transform() computes, so the two agree
        if warn and not converged:
            self._warn_not_converged(f"did not converge in max_iter={self.max_iter} iterations; increase max_iter "
                                     f"or tol.")
        self.components_ = Z.T.contiguous().cpu().numpy()
        self.mixing_ = Z.contiguous().cpu().numpy()
        self.reconstruction_err_ = float((T - Y @ Z.T).norm())
        self.n_iter_, self.converged_ = it, converged
        return as_output(Y, as_numpy)

    def transform(self, X: Any) -> Float[Tensor, "n_samples k"] | np.ndarray:
        """Non-negative coefficients of rows ``X`` with the fitted loadings fixed (what ``fit_transform`` returns
        for the training rows)."""
        check_fitted(self)
        who = "SNMF.transform"
        T, as_numpy = self._input(X, who)
        check_finite(T, None, who)
        return as_output(_coefficients(T, fitted_tensor(self.mixing_, T.device), _TRANSFORM_ITER), as_numpy)

    def inverse_transform(self, X: Any) -> Float[Tensor, "n_samples n_features"] | np.ndarray:
        """Rows rebuilt from coefficients ``X`` (n_samples, k): ``X @ components_``."""
        check_fitted(self)
        who = "SNMF.inverse_transform"
        S, as_numpy = as_tensor(X, dtype=DTYPES[self.components_.dtype.name], device=self.device, who=who)
        if S.shape[1] != self.components_.shape[0]:
            raise ShapeError(f"{who}: X has {S.shape[1]} columns, expected n_components="
                             f"{self.components_.shape[0]}; pass coefficients from transform()")
        return as_output(S @ fitted_tensor(self.components_, S.device), as_numpy)
