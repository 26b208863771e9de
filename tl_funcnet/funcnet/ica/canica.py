"""CanICA: spatial ICA of activations (features as ICA samples), the FN-pruning paper's decomposition.

z-score each feature over samples, take the top ``k`` left singular vectors of ``X.T`` (features x k), run
FastICA (cube) on those loadings with the features as samples from ``n_restarts`` seeds, keep the sparsest
run (smallest ``max_c sum |map_c|`` of unit-variance maps), z-score each map across features and flip it so
that its largest-|value| entry is positive. The SVD is computed once; all restarts run as one batch of
``k x k`` unmixing matrices, and a restart leaves the batch once it has converged.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from torch import Tensor

from tl_funcnet.errors import FuncnetError, ShapeError

from .base import COMMON_CONSTRAINTS, SOLVER_CONSTRAINT, ICAEstimator
from .checks import as_output, check_finite, check_fitted, check_n_components, fitted_tensor
from .iteration import ica_parallel
from .whitening import Affine, pick_solver, whiten_subspace

__all__ = ["CanICA"]


class CanICA(ICAEstimator):
    """Spatial ICA with restarts (a scikit-learn transformer): ``maps_`` are k sparse, z-scored feature maps.

    ``n_components=None`` keeps ``min(n_samples, n_features) - 1`` components: the ICA over features
    centres its ``n_features`` samples, which leaves one dimension fewer than the SVD's. ``threshold``:
    None keeps the maps dense; ``"auto"`` or a float ``ratio`` zeroes map entries whose |z| is below the
    ``100 - 100 * ratio / k`` percentile of all |map| values (nilearn's rule; "auto" is ratio 1).
    ``standardize=False`` uses X as given (neither centred nor scaled). ``svd_solver``, ``oversample``,
    ``n_power_iter``, ``dtype`` and ``device`` are those of :class:`FastICA`'s whitening.

    Fitted attributes (numpy, in ``dtype``): ``maps_`` (k, n_features; z-scored, sign-flipped,
    thresholded if asked), ``components_`` (k, n_features; the kept run's unit-variance maps,
    sign-flipped, unthresholded), ``mean_`` and ``scale_`` (n_features; the standardization),
    ``singular_values_`` (k; float64); and ``n_iter_`` (of the kept run), ``n_iter_all_``,
    ``sparsity_all_`` (per restart), ``best_restart_``, ``converged_`` (of the kept run),
    ``n_features_in_``, ``feature_names_in_``. ``transform`` gives the least-squares time courses, in numpy
    for array-likes and in torch for tensors. ``fit`` warns with scikit-learn's ``ConvergenceWarning`` when
    the kept run reached ``max_iter``; ``_fit(X, warn=False)`` does not (then read ``converged_``).
    """

    _parameter_constraints = {
        **COMMON_CONSTRAINTS,
        "n_restarts": [Interval(Integral, 1, None, closed="left")],
        "standardize": ["boolean"],
        "threshold": [None, StrOptions({"auto"}), Interval(Real, 0, None, closed="neither")],
        "svd_solver": SOLVER_CONSTRAINT,
    }

    def __init__(
        self,
        n_components: int | None = None,
        *,
        n_restarts: int = 10,
        standardize: bool = True,
        fun: str = "cube",
        max_iter: int = 300,
        tol: float = 1e-4,
        random_state: int | None = 0,
        threshold: float | str | None = None,
        dtype: str | torch.dtype = "float32",
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

    def fit(self, X: Any, y: Any = None) -> "CanICA":
        """Fit ``k`` spatial maps on ``X`` (n_samples, n_features)."""
        return self._fit(X, warn=True)

    def fit_transform(self, X: Any, y: Any = None) -> Float[Tensor, "n_samples k"] | np.ndarray:
        """Fit on ``X`` and return its time courses (n_samples, k)."""
        return self._fit(X, warn=True).transform(X)

    def _fit(self, X: Any, *, warn: bool) -> "CanICA":
        """Fit; ``warn=False`` skips the ConvergenceWarning (see ``converged_``)."""
        who = "CanICA.fit"
        T, _, _, device = self._fit_input(X, who)
        n, f = T.shape
        if f < 2:
            raise ShapeError(f"{who}: the ICA runs over the features, so it needs at least 2 of them; got "
                             f"n_features={f}. Pass more features (columns), or use FastICA.")
        k = min(n, f) - 1 if self.n_components is None else int(self.n_components)
        check_n_components(k, min(n, f), "min(n_samples, n_features)", who)
        check_finite(T, None, who)
        rs = check_random_state(self.random_state)
        seeds = rs.randint(np.iinfo(np.int32).max, size=self.n_restarts)
        svd_seed = int(rs.randint(np.iinfo(np.int32).max))

        mean, scale = _standardizer(T) if self.standardize else (T.new_zeros(f), T.new_ones(f))
        # standardized X, formed once (exact z-scores; reused by every restart through the SVD)
        A = Affine(T, mean, scale).materialize() if self.standardize else Affine(T, mean, None)
        solver = pick_solver(self.svd_solver, n, f, k, self.oversample, self.n_power_iter)
        # left singular vectors of X.T = right singular vectors of X: (f, k)
        _, s, U = whiten_subspace(
            A, k, solver=solver, oversample=self.oversample, n_power_iter=self.n_power_iter, seed=svd_seed,
            who=who,
        )
        # FastICA with features as samples on U (f x k): centre over features, whiten by the k x k covariance.
        # (torch's eigh, as before: numpy's LAPACK returns other eigenvector signs, which would change the
        # restarts; one k x k call per fit needs no thread limit.)
        Uc = U - U.mean(0)
        lam, E = torch.linalg.eigh((Uc.T @ Uc).double() / f)
        lam, E = lam.flip(0), E.flip(1)
        if float(lam[-1]) <= float(lam[0]) * 1e-10:
            raise FuncnetError(
                f"{who}: the reduced loadings are degenerate (rank < n_components={k}); lower n_components."
            )
        K = (E / lam.sqrt()).T  # (k, k): whitening of the k-dim loadings
        X1 = (K.to(Uc.dtype) @ Uc.T).contiguous()  # (k, f), unit covariance over features
        # one w_init per restart, drawn as scikit-learn's FastICA draws it from an integer seed
        W0 = torch.from_numpy(np.stack([np.random.RandomState(int(sd)).normal(size=(k, k)) for sd in seeds]))
        W, n_iters, convs = ica_parallel(
            X1, W0.to(device), fun=self.fun, max_iter=self.max_iter, tol=self.tol
        )
        best, maps, sparsities = _sparsest(W, X1)
        if warn and not convs[best]:
            self._warn_not_converged(
                f"the kept restart did not converge in max_iter={self.max_iter} iterations; "
                "increase max_iter or tol."
            )
        z = (maps - maps.mean(1, keepdim=True)) / maps.std(1, correction=1, keepdim=True)
        sign = torch.sign(z[torch.arange(k, device=z.device), z.abs().argmax(1)])
        sign[sign == 0] = 1
        z, maps = z * sign[:, None], maps * sign[:, None]
        if self.threshold is not None:
            z = _threshold(z, 1.0 if self.threshold == "auto" else float(self.threshold))
        self.maps_ = z.cpu().numpy()
        self.components_ = maps.cpu().numpy()
        self.mean_, self.scale_ = mean.cpu().numpy(), scale.cpu().numpy()
        self.singular_values_ = s.cpu().numpy()
        self.n_iter_ = int(n_iters[best])
        self.n_iter_all_ = [int(i) for i in n_iters]
        self.sparsity_all_ = sparsities
        self.best_restart_ = best
        self.converged_ = bool(convs[best])
        return self

    def transform(self, X: Any) -> Float[Tensor, "n_samples k"] | np.ndarray:
        """Time courses: the least-squares ``T`` with ``standardize(X) ~ T @ maps_`` (n_samples, k)."""
        check_fitted(self)
        who = "CanICA.transform"
        T, as_numpy = self._input(X, who)
        check_finite(T, None, who)
        M = fitted_tensor(self.maps_, T.device)
        mean, scale = fitted_tensor(self.mean_, T.device), fitted_tensor(self.scale_, T.device)
        P = Affine(T, mean, scale) @ M.T  # (n, k)
        out = torch.linalg.solve((M @ M.T).double(), P.double().T).T.to(T.dtype)
        return as_output(out, as_numpy)


def _standardizer(T: Float[Tensor, "n f"]) -> tuple[Float[Tensor, " f"], Float[Tensor, " f"]]:
    """Column means and unbiased standard deviations (1 where a column is constant)."""
    n = T.shape[0]
    mean = T.mean(0)
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


def _sparsest(
    W: Float[Tensor, "r k k"], X1: Float[Tensor, "k f"]
) -> tuple[int, Float[Tensor, "k f"], list[float]]:
    """The restart whose unit-variance maps have the smallest ``max_c sum |map_c|``: its index, its maps and
    the sparsity of every restart."""
    best, best_sparsity, maps, sparsities = 0, math.inf, None, []
    for r in range(W.shape[0]):
        Sr = W[r].to(X1.dtype) @ X1
        Sr = Sr / Sr.std(1, correction=0, keepdim=True)
        sparsity = float(Sr.abs().sum(1).max())
        sparsities.append(sparsity)
        if sparsity < best_sparsity:
            best, best_sparsity, maps = r, sparsity, Sr
    return best, maps, sparsities


def _threshold(z: Float[Tensor, "k f"], ratio: float) -> Float[Tensor, "k f"]:
    """Zero the entries whose |z| is below the ``1 - ratio / k`` quantile of all |z|."""
    q = max(0.0, min(1.0, 1.0 - ratio / z.shape[0]))
    az = z.abs().flatten()
    cut = torch.kthvalue(az.cpu(), max(1, round(q * (az.numel() - 1)) + 1)).values.item()
    return torch.where(z.abs() < cut, torch.zeros_like(z), z)
