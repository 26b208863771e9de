"""FastICA in torch, fast when ``n_samples << n_features`` (temporal ICA on LLM activations).

Whitening never forms an ``n_features x n_features`` matrix: it takes the top ``k`` eigenpairs of the
smaller Gram matrix (``n_samples x n_samples`` when there are fewer samples than features), either exactly
(``whiten_solver="gram"``), with a randomized range finder (``"randomized"``) or with a full SVD
(``"svd"``, the direct reference path). The ``k x k`` fixed-point updates and their symmetric
decorrelation (the SVD polar factor) always run in float64, so float32 input stays finite on heavy-tailed
data. With whiten="unit-variance", the same data and the same ``w_init`` (or the same integer
``random_state``) the result matches ``sklearn.decomposition.FastICA`` up to canonical sign and order.
"""

from __future__ import annotations

import inspect
import math
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np
import torch
from jaxtyping import Float
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from torch import Tensor

from tl_funcnet.errors import FuncnetError, NotFittedError, ShapeError

__all__ = ["FastICA", "ConvergenceWarning"]

_FUNS = ("logcosh", "exp", "cube")
_SOLVERS = ("auto", "gram", "randomized", "svd")


# --------------------------------------------------------------------------- input helpers
def as_matrix(
    X: Any, *, dtype: torch.dtype, device: str | torch.device, who: str, check: bool = True
) -> tuple[Tensor, bool]:
    """Return ``X`` as a 2-D finite tensor of ``dtype`` on ``device`` and whether it came from numpy."""
    is_numpy = isinstance(X, np.ndarray)
    if is_numpy:
        T = torch.from_numpy(np.ascontiguousarray(X))
    elif isinstance(X, Tensor):
        T = X.detach()
    else:
        raise FuncnetError(
            f"{who}: X must be a numpy array or a torch tensor of shape (n_samples, n_features), "
            f"got {type(X).__name__}; convert it with np.asarray(X) first."
        )
    if T.ndim != 2:
        raise ShapeError(
            f"{who}: X must be 2-D (n_samples, n_features), got shape {tuple(T.shape)}; "
            "flatten batch and position first, e.g. acts.reshape(-1, acts.shape[-1])."
        )
    if not (T.is_floating_point() or T.dtype in (torch.int8, torch.int16, torch.int32, torch.int64)):
        raise FuncnetError(f"{who}: X must hold real numbers, got dtype {T.dtype}.")
    T = T.to(device=device, dtype=dtype)
    if check and not bool(T.sum().isfinite()):
        check_finite_mean(T, T.mean(0), who)
    return T, is_numpy


def check_finite_mean(T: Tensor, mean: Tensor, who: str) -> None:
    """Raise on NaN/inf in ``T``; ``mean`` (its column mean) makes the common case one cheap test."""
    if bool(mean.isfinite().all()):
        return
    bad = ~torch.isfinite(T)
    if bool(bad.any()):
        rows = bad.any(1).nonzero().flatten()[:5].tolist()
        raise FuncnetError(
            f"{who}: X contains {int(bad.sum())} NaN or infinite values (first rows {rows}); ICA needs "
            "finite data. Drop or impute those entries (e.g. torch.nan_to_num) before fitting."
        )
    raise FuncnetError(
        f"{who}: the column means of X overflow {T.dtype}; rescale X or fit in dtype=torch.float64."
    )


def _out(T: Tensor, as_numpy: bool) -> Tensor | np.ndarray:
    return T.cpu().numpy() if as_numpy else T


def check_fitted(est: Any, attr: str) -> None:
    if not hasattr(est, attr):
        raise NotFittedError(
            f"This {type(est).__name__} instance is not fitted yet. Call 'fit' with appropriate "
            "arguments before using this estimator."
        )


# --------------------------------------------------------------------------- top-k SVD
class Affine:
    """The matrix ``A = (X - 1 mean^T) / scale`` (columnwise) without forming it.

    Products use ``X`` directly and correct for the mean afterwards; ``transposed=True`` stands for
    ``A.T``. If the mean carries almost all of the energy of ``X`` (so the correction would cancel
    badly in float), call :meth:`materialize` first.
    """

    def __init__(self, X: Tensor, mean: Tensor, scale: Tensor | None = None, transposed: bool = False):
        self.X, self.mean, self.scale, self.transposed = X, mean, scale, transposed

    @property
    def shape(self) -> tuple[int, int]:
        n, f = self.X.shape
        return (f, n) if self.transposed else (n, f)

    @property
    def dtype(self) -> torch.dtype:
        return self.X.dtype

    @property
    def T(self) -> "Affine":
        return Affine(self.X, self.mean, self.scale, not self.transposed)

    def materialize(self) -> "Affine":
        Xc = self.X - self.mean
        if self.scale is not None:
            Xc.div_(self.scale)
        return Affine(Xc, torch.zeros_like(self.mean), None, self.transposed)

    def _fwd(self, B: Tensor) -> Tensor:  # Xs @ B, B: (f, l)
        if self.scale is not None:
            B = B / self.scale[:, None]
        out = self.X @ B
        return out.sub_(self.mean @ B)

    def _bwd(self, Q: Tensor) -> Tensor:  # Xs^T @ Q, Q: (n, l)
        out = self.X.T @ Q
        out.addr_(self.mean, Q.sum(0), alpha=-1.0)
        if self.scale is not None:
            out.div_(self.scale[:, None])
        return out

    def __matmul__(self, B: Tensor) -> Tensor:
        B = B.to(self.X.dtype)
        return self._bwd(B) if self.transposed else self._fwd(B)

    def gram(self) -> Tensor:
        """``A @ A.T`` in float64 (formed by one product in the working dtype)."""
        if self.transposed:
            Xs = self.X if self.scale is None else self.X / self.scale
            G = _self_product(Xs, outer=False).double()
            m = (self.mean if self.scale is None else self.mean / self.scale).double()
            return G - self.X.shape[0] * torch.outer(m, m)
        Xs = self.X if self.scale is None else self.X / self.scale
        m = self.mean if self.scale is None else self.mean / self.scale
        G = _self_product(Xs, outer=True).double()
        r = (Xs @ m).double()
        c = float((m.double() ** 2).sum())
        return G - r[:, None] - r[None, :] + c

    def dense(self) -> Tensor:
        Xc = self.X - self.mean
        if self.scale is not None:
            Xc = Xc / self.scale
        return Xc.T if self.transposed else Xc


def _self_product(X: Float[Tensor, "n f"], *, outer: bool) -> Tensor:
    """``X @ X.T`` (``outer``) or ``X.T @ X``; on CPU via BLAS syrk, which uses the symmetry (half the work)."""
    if X.device.type != "cpu" or X.dtype not in (torch.float32, torch.float64) or X.requires_grad:
        return X @ X.T if outer else X.T @ X
    from scipy.linalg import blas

    syrk = blas.ssyrk if X.dtype == torch.float32 else blas.dsyrk
    a = X.contiguous().numpy().T  # a Fortran-ordered view of X^T, no copy
    upper = torch.from_numpy(syrk(1.0, a, trans=1 if outer else 0))  # a^T a = X X^T, or a a^T = X^T X
    return upper.triu() + upper.triu(1).T


def top_svd(
    A: Affine,
    k: int,
    *,
    solver: str,
    oversample: int,
    n_power_iter: int,
    seed: int,
) -> tuple[Float[Tensor, "m k"], Float[Tensor, " k"], Float[Tensor, "p k"]]:
    """Top ``k`` singular triplets of ``A`` (m <= p) as ``(V, s, Z)`` with ``Z = A.T @ V = U * s``.

    ``V`` has orthonormal columns (float64), ``s`` is descending (float64), ``Z`` is in ``A.dtype``.
    Only ``m x m`` or ``m x l`` products are formed, never ``p x p``.
    """
    m, p = A.shape
    if solver == "svd":
        D = A.dense().double()
        _, s, Vh = torch.linalg.svd(D.T, full_matrices=False)
        V = Vh[:k].T.contiguous()
        return V, s[:k].clone(), A.T @ V
    if solver == "gram":
        G = A.gram()
        if 4 * k < m:  # only the top k eigenvectors: LAPACK's syevr on a subset is ~3x faster than a full eigh
            from scipy.linalg import eigh as scipy_eigh

            _, E = scipy_eigh(G.cpu().numpy(), subset_by_index=[m - k, m - 1], driver="evr")
            Q = torch.from_numpy(np.ascontiguousarray(E[:, ::-1])).to(G.device)
        else:
            _, E = torch.linalg.eigh(G)
            Q = E.flip(1)[:, :k].contiguous()
    else:
        # randomized subspace iteration on G = A A^T, starting from the small (sample) side. (A block
        # Krylov variant was tried on SmolLM2 activations: a more accurate subspace, but its Ritz basis
        # within near-degenerate eigenvalues differs from the exact one, so the same w_init led FastICA
        # to a different optimum; 5 subspace iterations matched the exact Gram path to |r| = 1.000.)
        ell = min(m, k + oversample)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        Q = torch.randn(m, ell, generator=gen, dtype=torch.float64).to(A.X.device)
        for _ in range(n_power_iter):
            Q = torch.linalg.qr((A @ (A.T @ Q)).double()).Q
    # Rayleigh-Ritz in float64 on Q^T G Q = Z^T Z: singular values accurate to ~eps * s_1 (the Gram
    # eigenvalues alone have a noise floor near sqrt(eps) * s_1)
    Zq = A.T @ Q
    Zd = Zq.double()
    lam, E = torch.linalg.eigh(Zd.T @ Zd)
    lam, E = lam.flip(0)[:k], E.flip(1)[:, :k]
    return Q @ E, lam.clamp_min(0).sqrt(), Zq @ E.to(Zq.dtype)


def center_op(X: Tensor, mean: Tensor, scale: Tensor | None = None) -> Affine:
    """An :class:`Affine` for ``X``; materialized when the mean holds > 99% of the energy."""
    n = X.shape[0]
    m = mean if scale is None else mean / scale
    total = float((torch.linalg.vector_norm(X if scale is None else X / scale) ** 2))
    op = Affine(X, mean, scale)
    if total > 0 and n * float((m.double() ** 2).sum()) > 0.99 * total:
        op = op.materialize()
    return op


def whiten_subspace(
    A: Affine,
    k: int,
    *,
    solver: str,
    oversample: int,
    n_power_iter: int,
    seed: int,
    who: str,
    sign_by: str = "feature",
) -> tuple[Float[Tensor, "n k"], Float[Tensor, " k"], Float[Tensor, "f k"]]:
    """Top-k PCA of the centred data ``A`` as ``(Vs, s, u)``: sample scores, singular values, loadings.

    Signs follow scikit-learn's FastICA convention (the first feature's loading is positive) with
    ``sign_by="feature"``; with ``sign_by="sample"`` each score vector has a positive third moment, which
    does not depend on the basis of the feature space. ``Vs`` and ``s`` are float64, ``u`` is in ``A.dtype``.
    """
    n, f = A.shape
    kw = dict(solver=solver, oversample=oversample, n_power_iter=n_power_iter, seed=seed)
    if n <= f:
        V, s, Z = top_svd(A, k, **kw)
        Vs, u = V, None
    else:
        V, s, Z = top_svd(A.T, k, **kw)
        Vs, u = None, V.to(A.dtype)
    if s.numel() == 0 or s[0] <= 0:
        raise FuncnetError(
            f"{who}: X is constant (every feature has zero variance over samples); ICA needs varying data. "
            "Check that the activations were recorded (not all zeros)."
        )
    eps = torch.finfo(A.dtype).eps
    tol = s[0] * 10 * math.sqrt(max(n, f)) * eps  # above the rounding floor of these solvers
    rank = int((s > tol).sum())
    if rank < k:
        raise FuncnetError(
            f"{who}: n_components={k} exceeds the numerical rank of the centred data (about {rank}); "
            f"pass n_components <= {rank} or add more (and more varied) samples."
        )
    if u is None:
        u = Z / s.to(Z.dtype)
    else:
        Vs = Z.double() / s
    sign = torch.sign(u[0].double() if sign_by == "feature" else Vs.pow(3).sum(0))
    sign[sign == 0] = 1.0
    return Vs * sign, s, u * sign.to(u.dtype)


# --------------------------------------------------------------------------- the ICA iteration
def _g(fun: str) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """Return ``x -> (g(x), mean_over_last_axis(g'(x)))`` for the contrast ``fun``."""
    if fun == "logcosh":

        def g(x: Tensor) -> tuple[Tensor, Tensor]:
            gx = torch.tanh(x)
            return gx, 1.0 - (gx * gx).mean(-1)

    elif fun == "exp":

        def g(x: Tensor) -> tuple[Tensor, Tensor]:
            sq = x * x
            e = torch.exp(-0.5 * sq)
            gp = ((1.0 - sq) * e).mean(-1)
            return e.mul_(x), gp

    else:

        def g(x: Tensor) -> tuple[Tensor, Tensor]:
            sq = x * x
            gp = 3.0 * sq.mean(-1)
            return sq.mul_(x), gp

    return g


@contextmanager
def one_thread() -> Iterator[None]:
    """Run small LAPACK calls on one thread: multi-threaded 64 x 64 SVDs are 100x slower under load."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def polar(W: Float[Tensor, "... k k"]) -> Float[Tensor, "... k k"]:
    """Symmetric decorrelation ``(W W^T)^{-1/2} W`` computed as the SVD polar factor ``U V^T``."""
    with one_thread():
        U, _, Vh = torch.linalg.svd(W)
        return U @ Vh


def ica_parallel(
    X1: Float[Tensor, "k n"],
    W0: Float[Tensor, "r k k"],
    *,
    fun: str,
    max_iter: int,
    tol: float,
) -> tuple[Float[Tensor, "r k k"], list[int], list[bool]]:
    """Parallel (symmetric) FastICA for ``r`` independent starts at once on whitened ``X1``.

    ``W`` lives in float64; only the big products with ``X1`` run in ``X1.dtype``. A start leaves the
    batch once it has converged.
    """
    g = _g(fun)
    r, k, _ = W0.shape
    n = X1.shape[1]
    X1T = X1.T.contiguous()
    W = polar(W0.double())
    active = list(range(r))
    n_iter = [max_iter] * r
    converged = [False] * r
    for it in range(max_iter):
        Wa = W[active]
        WX = Wa.reshape(-1, k).to(X1.dtype) @ X1
        gwx, gp = g(WX)
        W1 = (gwx @ X1T).double().reshape(len(active), k, k) / n
        W1 = W1 - gp.double().reshape(len(active), k, 1) * Wa
        W1 = polar(W1)
        if not bool(torch.isfinite(W1).all()):
            raise FuncnetError(
                f"FastICA: the unmixing matrix became non-finite at iteration {it + 1} (fun={fun!r}); "
                "the data are probably extremely heavy-tailed. Standardize the features, try "
                "fun='logcosh', or fit in dtype=torch.float64."
            )
        lim = ((W1 * Wa).sum(-1).abs() - 1.0).abs().amax(-1)
        W[active] = W1
        still = []
        for j, a in enumerate(active):
            if float(lim[j]) < tol:
                n_iter[a], converged[a] = it + 1, True
            else:
                still.append(a)
        active = still
        if not active:
            break
    return W, n_iter, converged


def ica_deflation(
    X1: Float[Tensor, "k n"], W0: Float[Tensor, "k k"], *, fun: str, max_iter: int, tol: float
) -> tuple[Float[Tensor, "k k"], int, bool]:
    """Deflationary FastICA: one component at a time, Gram-Schmidt against the ones found."""
    g = _g(fun)
    k, n = X1.shape
    W = torch.zeros(k, k, dtype=torch.float64, device=X1.device)
    worst_iter, all_conv = 0, True
    for j in range(k):
        w = W0[j].double().clone()
        w = w / w.norm()
        done = False
        for i in range(max_iter):
            wx = (w.to(X1.dtype) @ X1)[None]
            gwx, gp = g(wx)
            w1 = (gwx @ X1.T).double()[0] / n - gp.double()[0] * w
            w1 = w1 - W[:j].T @ (W[:j] @ w1)
            w1 = w1 / w1.norm()
            lim = float(((w1 * w).sum().abs() - 1.0).abs())
            w = w1
            if not math.isfinite(lim):
                raise FuncnetError(f"FastICA: component {j} became non-finite (fun={fun!r}); try float64.")
            if lim < tol:
                done = True
                break
        W[j] = w
        worst_iter = max(worst_iter, i + 1)
        all_conv = all_conv and done
    return W, worst_iter, all_conv


def check_common(who: str, n_components: Any, fun: str, max_iter: Any, tol: Any) -> None:
    if not isinstance(n_components, (int, np.integer)) or isinstance(n_components, bool) or n_components < 1:
        raise FuncnetError(f"{who}: n_components must be a positive int, got {n_components!r}.")
    if fun not in _FUNS:
        raise FuncnetError(f"{who}: fun must be one of {_FUNS}, got {fun!r}.")
    if not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise FuncnetError(f"{who}: max_iter must be a positive int, got {max_iter!r}.")
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise FuncnetError(f"{who}: tol must be a positive number, got {tol!r}.")


#: ``auto`` whitens exactly (Gram matrix + partial eigendecomposition) up to this many samples or features
EXACT_UP_TO = 8192


def pick_solver(solver: str, n: int, f: int, k: int, oversample: int, n_power_iter: int) -> str:
    """``auto``: the exact Gram path while ``min(n, f) <= EXACT_UP_TO``, else randomized if that is cheaper.

    The randomized range finder is faster, but when eigenvalues near the k-th are close its subspace differs
    slightly and FastICA can settle in another optimum (SmolLM2 ``mlp.hook_post``, 2048 x 46080, k = 64:
    matched |r| 0.88 against the exact path), so exactness wins whenever the m x m Gram matrix is affordable.
    """
    if solver != "auto":
        return solver
    m = min(n, f)
    ell = k + oversample
    if m <= EXACT_UP_TO:
        return "gram"
    return "randomized" if (2 * n_power_iter + 1) * ell < m else "gram"


# --------------------------------------------------------------------------- estimator
class EstimatorParams:
    """scikit-learn's ``get_params`` / ``set_params`` from the constructor's signature (keeps clone() working)."""

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {name: getattr(self, name) for name in inspect.signature(type(self).__init__).parameters
                if name != "self"}

    def set_params(self, **params: Any) -> Any:
        for key, value in params.items():
            if key not in self.get_params():
                raise FuncnetError(f"{type(self).__name__}.set_params: unknown parameter {key!r}.")
            setattr(self, key, value)
        return self


class FastICA(EstimatorParams):
    """FastICA with fast Gram/randomized whitening for ``n_samples << n_features``.

    Parameters follow ``sklearn.decomposition.FastICA``. Extra ones: ``whiten_solver`` ("auto", "gram",
    "randomized" or "svd"), ``oversample`` and ``n_power_iter`` (randomized range finder), ``dtype`` and
    ``device`` (of the big matrix products and of the fitted tensors), and ``canonicalize``.

    With ``canonicalize=True`` (default) components are sorted by the variance they explain
    (``||mixing_[:, c]||^2``, descending) and each is flipped so that its largest-|loading| mixing entry
    is positive; with an integer ``random_state`` the fit is deterministic. With ``canonicalize=False``
    the order and signs are those of scikit-learn's FastICA.

    An integer ``random_state`` draws ``w_init`` exactly as scikit-learn does
    (``RandomState(seed).normal(size=(k, k))``).

    ``basis_free=True`` makes the fit depend on ``X`` only through the sample Gram matrix ``Xc Xc^T``:
    whitening vectors and sources are sign-fixed in sample space (positive skewness) instead of by feature
    loadings, and the small fixed-point iteration runs in float64. Rotating or permuting the features then
    gives the same sources (used by the fingerprints, whose models may differ by a change of basis).

    Fitted attributes are torch tensors: ``components_`` (k, n_features; unmixing incl. whitening),
    ``mixing_`` (n_features, k), ``mean_`` (n_features,), ``whitening_`` (k, n_features),
    ``n_iter_``, ``converged_``, ``n_features_in_``, ``whiten_solver_`` (the solver "auto" chose).
    ``transform``/``fit_transform``/``inverse_transform`` return numpy when given numpy and torch when
    given torch. ``fit_transform`` takes the sources from the whitened data; with the randomized solver
    they equal ``transform(X)`` up to the range finder's accuracy (exactly for the other solvers).
    A ``ConvergenceWarning`` (scikit-learn's class) is emitted when ``max_iter`` is reached.
    """

    def __init__(
        self,
        n_components: int,
        *,
        algorithm: str = "parallel",
        fun: str = "logcosh",
        whiten: str = "unit-variance",
        max_iter: int = 200,
        tol: float = 1e-4,
        w_init: Any = None,
        random_state: int | np.random.RandomState | None = None,
        dtype: torch.dtype = torch.float32,
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

    def _validate(self, n: int, f: int) -> None:
        who = "FastICA"
        check_common(who, self.n_components, self.fun, self.max_iter, self.tol)
        if self.algorithm not in ("parallel", "deflation"):
            raise FuncnetError(f"{who}: algorithm must be 'parallel' or 'deflation', got {self.algorithm!r}.")
        if self.whiten not in ("unit-variance", "arbitrary-variance"):
            raise FuncnetError(
                f"{who}: whiten must be 'unit-variance' or 'arbitrary-variance', got {self.whiten!r}; "
                "pre-whitened input (whiten=False) is not supported."
            )
        if self.whiten_solver not in _SOLVERS:
            raise FuncnetError(f"{who}: whiten_solver must be one of {_SOLVERS}, got {self.whiten_solver!r}.")
        if self.dtype not in (torch.float32, torch.float64):
            raise FuncnetError(f"{who}: dtype must be torch.float32 or torch.float64, got {self.dtype}.")
        if n < 2:
            raise ShapeError(f"{who}: need at least 2 samples, got {n}.")
        if self.n_components > min(n, f):
            raise FuncnetError(
                f"{who}: n_components={self.n_components} exceeds min(n_samples, n_features)="
                f"{min(n, f)} for X of shape ({n}, {f}); lower n_components or add samples."
            )

    def fit(self, X: Float[Tensor, "n_samples n_features"] | np.ndarray, y: Any = None) -> "FastICA":
        """Fit the unmixing matrix on ``X`` (samples as rows)."""
        self._fit(X)
        return self

    def fit_transform(self, X: Any, y: Any = None) -> Float[Tensor, "n_samples n_components"] | np.ndarray:
        """Fit and return the sources of ``X``."""
        S, as_np = self._fit(X)
        return _out(S, as_np)

    def _fit(self, X: Any) -> tuple[Tensor, bool]:
        T, as_np = as_matrix(X, dtype=self.dtype, device=self.device, who="FastICA.fit", check=False)
        n, f = T.shape
        self._validate(n, f)
        k = int(self.n_components)
        rs = check_random_state(self.random_state)
        if self.w_init is None:
            w_init = torch.as_tensor(rs.normal(size=(k, k)), dtype=torch.float64)
        else:
            w_init = torch.as_tensor(np.asarray(self.w_init), dtype=torch.float64)
            if w_init.shape != (k, k):
                raise ShapeError(
                    f"FastICA: w_init has shape {tuple(w_init.shape)}, expected ({k}, {k}) = "
                    "(n_components, n_components)."
                )
        seed = int(rs.randint(np.iinfo(np.int32).max))
        w_init = w_init.to(self.device)

        mean = T.mean(0)
        check_finite_mean(T, mean, "FastICA.fit")
        solver = pick_solver(self.whiten_solver, n, f, k, self.oversample, self.n_power_iter)
        Vs, s, u = whiten_subspace(
            center_op(T, mean), k, solver=solver, oversample=self.oversample, n_power_iter=self.n_power_iter,
            seed=seed, who="FastICA.fit", sign_by="sample" if self.basis_free else "feature",
        )
        # whitened data: X1 = K Xc^T sqrt(n) = Vs^T sqrt(n); K = (u / s)^T
        X1 = (Vs.T * math.sqrt(n)).to(torch.float64 if self.basis_free else self.dtype)
        if self.algorithm == "parallel":
            W, n_iters, convs = ica_parallel(X1, w_init[None], fun=self.fun, max_iter=self.max_iter, tol=self.tol)
            W, n_iter, conv = W[0], n_iters[0], convs[0]
        else:
            W, n_iter, conv = ica_deflation(X1, w_init, fun=self.fun, max_iter=self.max_iter, tol=self.tol)
        if not conv:
            warnings.warn(
                "FastICA did not converge. Consider increasing tolerance or the maximum number of "
                "iterations.",
                ConvergenceWarning,
                stacklevel=3,
            )
        # sources of the training data: S^T = W K Xc^T = W Vs^T
        S = Vs @ W.T  # (n, k) float64
        if self.whiten == "unit-variance":
            std = S.std(0, correction=0)
            S = S / std
            W = W / std[:, None]
        s_dt = s.to(u.dtype)
        components = (W.to(u.dtype) @ (u / s_dt).T)  # (k, f)
        mixing = (u * s_dt) @ torch.linalg.inv(W).to(u.dtype)  # pinv(components) = K^+ W^-1
        if self.canonicalize:
            order = torch.argsort((mixing.double() ** 2).sum(0), descending=True, stable=True)
            mixing, components, S, W = mixing[:, order], components[order], S[:, order], W[order]
            if self.basis_free:  # positive skewness of the sources
                sign = torch.sign(S.pow(3).mean(0)).to(mixing.dtype)
            else:  # the largest-|loading| mixing entry positive
                idx = mixing.abs().argmax(0)
                sign = torch.sign(mixing[idx, torch.arange(k, device=mixing.device)])
            sign[sign == 0] = 1
            mixing, components = mixing * sign, components * sign[:, None]
            S, W = S * sign.double(), W * sign.double()[:, None]
        self.components_ = components
        self.mixing_ = mixing
        self.mean_ = mean
        self.whitening_ = (u / s_dt).T.contiguous()
        self._unmixing = W
        self.n_iter_ = int(n_iter)
        self.converged_ = bool(conv)
        self.n_features_in_ = f
        self.whiten_solver_ = solver
        return S.to(self.dtype), as_np

    def _check_X(self, X: Any, who: str) -> tuple[Tensor, bool]:
        check_fitted(self, "components_")
        T, as_np = as_matrix(X, dtype=self.dtype, device=self.device, who=who)
        if T.shape[1] != self.n_features_in_:
            raise ShapeError(
                f"{who}: X has {T.shape[1]} features, but this FastICA was fitted with "
                f"{self.n_features_in_}; pass activations from the same sites."
            )
        return T, as_np

    def transform(self, X: Any) -> Float[Tensor, "n_samples n_components"] | np.ndarray:
        """Sources ``(X - mean_) @ components_.T``."""
        T, as_np = self._check_X(X, "FastICA.transform")
        return _out((T - self.mean_) @ self.components_.T, as_np)

    def inverse_transform(self, S: Any) -> Float[Tensor, "n_samples n_features"] | np.ndarray:
        """Map sources back to feature space: ``S @ mixing_.T + mean_`` (the top-k PCA projection of X)."""
        check_fitted(self, "components_")
        T, as_np = as_matrix(S, dtype=self.dtype, device=self.device, who="FastICA.inverse_transform")
        if T.shape[1] != self.mixing_.shape[1]:
            raise ShapeError(
                f"FastICA.inverse_transform: S has {T.shape[1]} columns, expected n_components="
                f"{self.mixing_.shape[1]}."
            )
        return _out(T @ self.mixing_.T + self.mean_, as_np)

