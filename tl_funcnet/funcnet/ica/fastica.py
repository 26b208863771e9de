"""Temporal FastICA, fast when ``n_samples << n_features`` (LLM activations: tokens x units)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import StrOptions
from torch import Tensor

from tl_funcnet.errors import ShapeError

from .base import COMMON_CONSTRAINTS, SOLVER_CONSTRAINT, ICAEstimator
from .checks import (
    DTYPES,
    as_output,
    as_tensor,
    check_finite,
    check_fitted,
    check_n_components,
    fitted_tensor,
)
from .iteration import ica_deflation, ica_parallel
from .whitening import center_op, pick_solver, whiten_subspace

__all__ = ["FastICA"]


class FastICA(ICAEstimator):
    """FastICA (a scikit-learn transformer) with fast whitening for ``n_samples << n_features``.

    Parameters follow ``sklearn.decomposition.FastICA``; ``n_components=None`` keeps
    ``min(n_samples, n_features)`` components. Extra ones: ``whiten_solver`` ("auto": exact below
    8192 samples or features, "gram", "randomized" or "svd"), ``oversample`` and ``n_power_iter`` (of the
    randomized range finder), ``dtype`` ("float32" or "float64", or the torch dtype) and ``device`` of the
    big products, ``canonicalize`` and ``basis_free``.

    With the same data, the same ``w_init`` (or integer ``random_state``, which draws ``w_init`` as
    scikit-learn does) and ``canonicalize=False``, the result equals scikit-learn's up to rounding. With
    ``canonicalize=True`` (default) components are sorted by the variance they explain
    (``||mixing_[:, c]||^2``, descending) and each is flipped so that its largest-|loading| mixing entry
    is positive. ``basis_free=True`` makes the fit depend on ``X`` only through ``Xc Xc^T``: whitening
    vectors and sources are sign-fixed by positive skewness instead of by feature loadings and the small
    iteration runs in float64, so rotating or permuting the features gives the same sources.

    Fitted attributes (numpy, in ``dtype``): ``components_`` (k, n_features; unmixing incl. whitening),
    ``mixing_`` (n_features, k), ``mean_`` (n_features,), ``whitening_`` (k, n_features); and
    ``n_iter_``, ``converged_``, ``whiten_solver_`` (what "auto" chose), ``n_features_in_``,
    ``feature_names_in_`` (DataFrame input). ``transform``, ``fit_transform`` and ``inverse_transform``
    answer in numpy for array-likes and in torch for tensors; the products run in torch either way.
    ``fit_transform`` returns the sources of the whitened data (equal to ``transform(X)`` up to
    rounding, or up to the range finder's accuracy with "randomized"). ``fit`` warns with scikit-learn's
    ``ConvergenceWarning`` when ``max_iter`` is reached; ``_fit(X, warn=False)`` does not (then read
    ``converged_``).
    """

    _parameter_constraints = {
        **COMMON_CONSTRAINTS,
        "algorithm": [StrOptions({"parallel", "deflation"})],
        "whiten": [StrOptions({"unit-variance", "arbitrary-variance"})],
        "w_init": ["array-like", None],
        "whiten_solver": SOLVER_CONSTRAINT,
        "canonicalize": ["boolean"],
        "basis_free": ["boolean"],
    }

    def __init__(
        self,
        n_components: int | None = None,
        *,
        algorithm: str = "parallel",
        fun: str = "logcosh",
        whiten: str = "unit-variance",
        max_iter: int = 200,
        tol: float = 1e-4,
        w_init: Any = None,
        random_state: int | None = 0,
        dtype: str | torch.dtype = "float32",
        whiten_solver: str = "auto",
        oversample: int = 32,
        n_power_iter: int = 5,
        canonicalize: bool = True,
        device: str | torch.device = "cpu",
        basis_free: bool = False,
    ) -> None:
        self.n_components = n_components
        self.algorithm = algorithm
        self.fun = fun
        self.whiten = whiten
        self.max_iter = max_iter
        self.tol = tol
        self.w_init = w_init
        self.random_state = random_state
        self.dtype = dtype
        self.whiten_solver = whiten_solver
        self.oversample = oversample
        self.n_power_iter = n_power_iter
        self.canonicalize = canonicalize
        self.device = device
        self.basis_free = basis_free

    def fit(self, X: Any, y: Any = None) -> "FastICA":
        """Fit the unmixing matrix on ``X`` (n_samples, n_features)."""
        self._fit(X, warn=True)
        return self

    def fit_transform(self, X: Any, y: Any = None) -> Float[Tensor, "n_samples k"] | np.ndarray:
        """Fit on ``X`` and return its sources (n_samples, k)."""
        return self._fit(X, warn=True)

    def _fit(self, X: Any, *, warn: bool) -> Float[Tensor, "n_samples k"] | np.ndarray:
        """Fit; return the training sources. ``warn=False``: no ConvergenceWarning (read ``converged_``)."""
        who = "FastICA.fit"
        T, as_numpy, dtype, device = self._fit_input(X, who)
        n, f = T.shape
        k = min(n, f) if self.n_components is None else int(self.n_components)
        check_n_components(k, min(n, f), "min(n_samples, n_features)", who)
        rs = check_random_state(self.random_state)
        if self.w_init is None:
            w_init = torch.as_tensor(rs.normal(size=(k, k)), dtype=torch.float64)
        else:
            w_init = torch.as_tensor(np.asarray(self.w_init), dtype=torch.float64)
            if w_init.shape != (k, k):
                raise ShapeError(
                    f"{who}: w_init has shape {tuple(w_init.shape)}, expected ({k}, {k}) = "
                    "(n_components, n_components); pass a square matrix of that size or w_init=None."
                )
        seed = int(rs.randint(np.iinfo(np.int32).max))
        w_init = w_init.to(device)

        mean = T.mean(0)
        check_finite(T, mean, who)
        solver = pick_solver(self.whiten_solver, n, f, k, self.oversample, self.n_power_iter)
        Vs, s, u = whiten_subspace(
            center_op(T, mean), k, solver=solver, oversample=self.oversample, n_power_iter=self.n_power_iter,
            seed=seed, who=who, sign_by="sample" if self.basis_free else "feature",
        )
        # whitened data: X1 = K Xc^T sqrt(n) = Vs^T sqrt(n), with K = (u / s)^T
        X1 = (Vs.T * math.sqrt(n)).to(torch.float64 if self.basis_free else dtype)
        if self.algorithm == "parallel":
            Ws, n_iters, convs = ica_parallel(X1, w_init[None], fun=self.fun, max_iter=self.max_iter,
                                              tol=self.tol)
            W, n_iter, converged = Ws[0], n_iters[0], convs[0]
        else:
            W, n_iter, converged = ica_deflation(X1, w_init, fun=self.fun, max_iter=self.max_iter,
                                                 tol=self.tol)
        if warn and not converged:
            self._warn_not_converged(
                f"did not converge in max_iter={self.max_iter} iterations; increase max_iter or tol."
            )
        S = Vs @ W.T  # training sources (n, k), float64: S^T = W K Xc^T = W Vs^T
        if self.whiten == "unit-variance":
            std = S.std(0, correction=0)
            S, W = S / std, W / std[:, None]
        s_dt = s.to(u.dtype)
        components = W.to(u.dtype) @ (u / s_dt).T  # (k, f)
        mixing = (u * s_dt) @ torch.linalg.inv(W).to(u.dtype)  # pinv(components) = K^+ W^-1
        if self.canonicalize:
            mixing, components, S, W = _canonical(mixing, components, S, W, by_skewness=self.basis_free)
        self.components_ = components.cpu().numpy()
        self.mixing_ = mixing.cpu().numpy()
        self.mean_ = mean.cpu().numpy()
        self.whitening_ = (u / s_dt).T.contiguous().cpu().numpy()
        self._unmixing = W.cpu().numpy()
        self.n_iter_ = int(n_iter)
        self.converged_ = bool(converged)
        self.whiten_solver_ = solver
        return as_output(S.to(dtype), as_numpy)

    def transform(self, X: Any) -> Float[Tensor, "n_samples k"] | np.ndarray:
        """Sources ``(X - mean_) @ components_.T`` (n_samples, k)."""
        check_fitted(self)
        who = "FastICA.transform"
        T, as_numpy = self._input(X, who)
        check_finite(T, None, who)
        mean, components = fitted_tensor(self.mean_, T.device), fitted_tensor(self.components_, T.device)
        return as_output((T - mean) @ components.T, as_numpy)

    def inverse_transform(self, X: Any) -> Float[Tensor, "n_samples n_features"] | np.ndarray:
        """Map sources ``X`` (n_samples, k) back: ``X @ mixing_.T + mean_`` (the top-k PCA projection)."""
        check_fitted(self)
        who = "FastICA.inverse_transform"
        S, as_numpy = as_tensor(X, dtype=DTYPES[self.mixing_.dtype.name], device=self.device, who=who)
        k = self.mixing_.shape[1]
        if S.shape[1] != k:
            raise ShapeError(f"{who}: X has {S.shape[1]} columns, expected n_components={k}; pass sources "
                             "from transform().")
        mixing, mean = fitted_tensor(self.mixing_, S.device), fitted_tensor(self.mean_, S.device)
        return as_output(S @ mixing.T + mean, as_numpy)


def _canonical(
    mixing: Float[Tensor, "f k"],
    components: Float[Tensor, "k f"],
    S: Float[Tensor, "n k"],
    W: Float[Tensor, "k k"],
    *,
    by_skewness: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Order components by explained variance; flip to positive skewness or positive largest mixing entry."""
    k = mixing.shape[1]
    order = torch.argsort((mixing.double() ** 2).sum(0), descending=True, stable=True)
    mixing, components, S, W = mixing[:, order], components[order], S[:, order], W[order]
    if by_skewness:
        sign = torch.sign(S.pow(3).mean(0)).to(mixing.dtype)
    else:
        idx = mixing.abs().argmax(0)
        sign = torch.sign(mixing[idx, torch.arange(k, device=mixing.device)])
    sign[sign == 0] = 1
    return mixing * sign, components * sign[:, None], S * sign.double(), W * sign.double()[:, None]
