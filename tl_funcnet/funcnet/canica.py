"""CanICA: spatial ICA of activations (features as ICA samples), the FN-pruning paper's decomposition.

Pipeline (methods.md §2.2): z-score each feature over samples, take the top ``k`` left singular vectors of
``X.T`` (features x k) with a randomized SVD, run FastICA (cube) on those loadings with the features as
samples from ``n_restarts`` seeds, keep the sparsest run (smallest ``max_c sum |map_c|`` of unit-variance
maps), z-score each map across features and flip it so that its largest-|value| entry is positive.

The SVD is computed once; all restarts run as one batch (stacked ``k x k`` unmixing matrices), and a
restart leaves the batch once it has converged.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from sklearn.utils import check_random_state
from torch import Tensor

from tl_funcnet.errors import FuncnetError, ShapeError
from tl_funcnet.funcnet.ica import (
    Affine,
    ConvergenceWarning,
    EstimatorParams,
    as_matrix,
    check_common,
    check_finite_mean,
    check_fitted,
    ica_parallel,
    one_thread,
    pick_solver,
    whiten_subspace,
)

__all__ = ["CanICA"]


class CanICA(EstimatorParams):
    """Spatial ICA with restarts: ``maps_`` are k sparse, z-scored maps over the features.

    ``threshold``: None keeps the maps dense; ``"auto"`` or a float ``ratio`` zeroes map entries whose
    |z| is below the ``100 - 100 * ratio / k`` percentile of all |map| values (nilearn's rule; "auto" is
    ratio 1). ``standardize=False`` uses X as given (neither centred nor scaled).

    Fitted attributes (torch tensors): ``maps_`` (k, n_features; z-scored, sign-flipped, thresholded if
    asked), ``components_`` (k, n_features; the kept run's unit-variance ICA maps, sign-flipped,
    unthresholded), ``mean_``/``scale_`` (n_features; the standardization), ``n_iter_`` (iterations of
    the kept run), ``n_iter_all_``, ``sparsity_all_`` (per restart), ``best_restart_``, ``converged_``.
    ``transform`` returns numpy for numpy input and torch for torch input.
    """

    def __init__(
        self,
        n_components: int,
        *,
        n_restarts: int = 10,
        standardize: bool = True,
        fun: str = "cube",
        max_iter: int = 300,
        tol: float = 1e-4,
        random_state: int | np.random.RandomState | None = 0,
        threshold: float | str | None = None,
        dtype: torch.dtype = torch.float32,
        svd_solver: str = "auto",
        oversample: int = 32,
        n_power_iter: int = 5,
        device: str | torch.device = "cpu",
    ) -> None:
        self.n_components = n_components
        self.n_restarts = n_restarts
        self.standardize = standardize
        self.fun = fun
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.threshold = threshold
        self.dtype = dtype
        self.svd_solver = svd_solver
        self.oversample = oversample
        self.n_power_iter = n_power_iter
        self.device = device

    def _validate(self, n: int, f: int) -> None:
        who = "CanICA"
        check_common(who, self.n_components, self.fun, self.max_iter, self.tol)
        if not isinstance(self.n_restarts, (int, np.integer)) or self.n_restarts < 1:
            raise FuncnetError(f"{who}: n_restarts must be a positive int, got {self.n_restarts!r}.")
        if self.dtype not in (torch.float32, torch.float64):
            raise FuncnetError(f"{who}: dtype must be torch.float32 or torch.float64, got {self.dtype}.")
        if self.svd_solver not in ("auto", "gram", "randomized", "svd"):
            raise FuncnetError(f"{who}: svd_solver must be auto, gram, randomized or svd, got {self.svd_solver!r}.")
        t = self.threshold
        if not (t is None or t == "auto" or (isinstance(t, (int, float)) and not isinstance(t, bool) and t > 0)):
            raise FuncnetError(f"{who}: threshold must be None, 'auto' or a positive float ratio, got {t!r}.")
        if n < 2:
            raise ShapeError(f"{who}: need at least 2 samples, got {n}.")
        if self.n_components > min(n, f):
            raise FuncnetError(
                f"{who}: n_components={self.n_components} exceeds min(n_samples, n_features)={min(n, f)} "
                f"for X of shape ({n}, {f}); lower n_components or add samples."
            )

    def _standardizer(self, T: Tensor) -> tuple[Tensor, Tensor]:
        n, f = T.shape
        if not self.standardize:
            return torch.zeros(f, dtype=T.dtype, device=T.device), torch.ones(f, dtype=T.dtype, device=T.device)
        mean = T.mean(0)
        check_finite_mean(T, mean, "CanICA.fit")
        # unbiased std without forming X - mean: sum x^2 - n mean^2, accumulated in float64
        sq = torch.linalg.vector_norm(T, dim=0).double() ** 2
        var = (sq - n * mean.double() ** 2).clamp_min(0) / (n - 1)
        std = var.sqrt()
        if T.dtype == torch.float32 and bool((var < 1e-3 * sq / n).any()):
            # cancellation risk: recompute those columns exactly
            cols = (var < 1e-3 * sq / n).nonzero().flatten()
            std[cols] = T[:, cols].double().std(0, correction=1)
        eps = torch.finfo(T.dtype).eps
        std[std < eps * mean.double().abs().clamp_min(1.0) * 10] = 1.0
        return mean, std.to(T.dtype)

    def fit(self, X: Float[Tensor, "n_samples n_features"] | np.ndarray, y: Any = None) -> "CanICA":
        """Fit ``k`` spatial maps on ``X`` (samples as rows, features as columns)."""
        T, _ = as_matrix(X, dtype=self.dtype, device=self.device, who="CanICA.fit")
        n, f = T.shape
        self._validate(n, f)
        k = int(self.n_components)
        rs = check_random_state(self.random_state)
        seeds = rs.randint(np.iinfo(np.int32).max, size=self.n_restarts)
        svd_seed = int(rs.randint(np.iinfo(np.int32).max))

        mean, scale = self._standardizer(T)
        # standardized X, formed once (exact z-scores; reused by every restart through the SVD)
        A = Affine(T, mean, scale).materialize() if self.standardize else Affine(T, mean, None)
        solver = pick_solver(self.svd_solver, n, f, k, self.oversample, self.n_power_iter)
        # left singular vectors of X.T = right singular vectors of X: (f, k)
        _, s, U = whiten_subspace(
            A, k, solver=solver, oversample=self.oversample, n_power_iter=self.n_power_iter,
            seed=svd_seed, who="CanICA.fit",
        )
        # FastICA with features as samples on U (f x k): centre over features, whiten via k x k covariance
        Uc = U - U.mean(0)
        C = (Uc.T @ Uc).double() / f
        with one_thread():
            lam, E = torch.linalg.eigh(C)
        lam, E = lam.flip(0), E.flip(1)
        if float(lam[-1]) <= float(lam[0]) * 1e-10:
            raise FuncnetError(
                "CanICA.fit: the reduced loadings are degenerate (rank < n_components); "
                "lower n_components."
            )
        K = (E / lam.sqrt()).T  # (k, k): whitening of the k-dim loadings
        X1 = (K.to(Uc.dtype) @ Uc.T).contiguous()  # (k, f), unit covariance over features
        W0 = torch.stack([torch.as_tensor(np.random.RandomState(int(sd)).normal(size=(k, k))) for sd in seeds])
        W, n_iters, convs = ica_parallel(
            X1, W0.to(self.device), fun=self.fun, max_iter=self.max_iter, tol=self.tol
        )
        # unit-variance maps of every restart; pick the sparsest (smallest max_c sum |map_c|)
        best, best_sparsity, sparsities = 0, math.inf, []
        for r in range(self.n_restarts):
            Sr = W[r].to(X1.dtype) @ X1
            Sr = Sr / Sr.std(1, correction=0, keepdim=True)
            sp = float(Sr.abs().sum(1).max())
            sparsities.append(sp)
            if sp < best_sparsity:
                best, best_sparsity, maps = r, sp, Sr
        if not convs[best]:
            warnings.warn(
                f"CanICA: the kept restart did not converge in max_iter={self.max_iter} iterations; "
                "consider increasing max_iter or tol.",
                ConvergenceWarning,
                stacklevel=2,
            )
        z = (maps - maps.mean(1, keepdim=True)) / maps.std(1, correction=1, keepdim=True)
        idx = z.abs().argmax(1)
        sign = torch.sign(z[torch.arange(k, device=z.device), idx])
        sign[sign == 0] = 1
        z, maps = z * sign[:, None], maps * sign[:, None]
        if self.threshold is not None:
            ratio = 1.0 if self.threshold == "auto" else float(self.threshold)
            q = max(0.0, min(1.0, 1.0 - ratio / k))
            az = z.abs().flatten()
            cut = torch.kthvalue(az.cpu(), max(1, int(round(q * (az.numel() - 1))) + 1)).values.item()
            z = torch.where(z.abs() < cut, torch.zeros_like(z), z)
        self.maps_ = z
        self.components_ = maps
        self.mean_, self.scale_ = mean, scale
        self.n_iter_ = int(n_iters[best])
        self.n_iter_all_ = [int(i) for i in n_iters]
        self.sparsity_all_ = sparsities
        self.best_restart_ = best
        self.converged_ = bool(convs[best])
        self.singular_values_ = s
        self.n_features_in_ = f
        return self

    def transform(self, X: Any) -> Float[Tensor, "n_samples n_components"] | np.ndarray:
        """Time courses: least-squares ``T`` with ``standardize(X) ~ T @ maps_``."""
        check_fitted(self, "maps_")
        T, as_np = as_matrix(X, dtype=self.dtype, device=self.device, who="CanICA.transform")
        if T.shape[1] != self.n_features_in_:
            raise ShapeError(
                f"CanICA.transform: X has {T.shape[1]} features, but this CanICA was fitted with "
                f"{self.n_features_in_}; pass activations from the same sites."
            )
        M = self.maps_
        P = Affine(T, self.mean_, self.scale_) @ M.T  # (n, k)
        G = (M @ M.T).double()
        out = torch.linalg.solve(G, P.double().T).T.to(self.dtype)
        return out.cpu().numpy() if as_np else out

    def fit_transform(self, X: Any, y: Any = None) -> Float[Tensor, "n_samples n_components"] | np.ndarray:
        return self.fit(X).transform(X)
