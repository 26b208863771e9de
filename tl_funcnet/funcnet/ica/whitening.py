"""Centring and whitening without an ``n_features x n_features`` matrix.

The top ``k`` singular triplets of the centred data come from the smaller Gram matrix (``n_samples x
n_samples`` when there are fewer samples than features): exactly (``"gram"``: one BLAS ``syrk`` product and
a partial eigendecomposition), by a randomized range finder (``"randomized"``) or by a full SVD (``"svd"``,
the direct reference path).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from jaxtyping import Float
from scipy.linalg import blas
from scipy.linalg import eigh as scipy_eigh
from torch import Tensor

from tl_funcnet.errors import FuncnetError

__all__ = ["SOLVERS", "EXACT_UP_TO", "Affine", "self_product", "top_svd", "center_op", "whiten_subspace",
           "pick_solver"]

SOLVERS = ("auto", "gram", "randomized", "svd")

#: ``auto`` whitens exactly (Gram matrix + partial eigendecomposition) up to this many samples or features
EXACT_UP_TO = 8192


class Affine:
    """The matrix ``A = (X - 1 mean^T) / scale`` (columnwise) without forming it.

    Products use ``X`` directly and correct for the mean afterwards; ``transposed=True`` stands for
    ``A.T``. If the mean carries almost all of the energy of ``X`` (so the correction would cancel
    badly in float), call :meth:`materialize` first.
    """

    def __init__(
        self,
        X: Float[Tensor, "n f"],
        mean: Float[Tensor, " f"],
        scale: Float[Tensor, " f"] | None = None,
        transposed: bool = False,
    ):
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
        """The same matrix with the centring (and scaling) applied to a copy of ``X``."""
        Xc = self.X - self.mean
        if self.scale is not None:
            Xc.div_(self.scale)
        return Affine(Xc, torch.zeros_like(self.mean), None, self.transposed)

    def _forward(self, B: Float[Tensor, "f l"]) -> Float[Tensor, "n l"]:
        if self.scale is not None:
            B = B / self.scale[:, None]
        out = self.X @ B
        return out.sub_(self.mean @ B)

    def _backward(self, Q: Float[Tensor, "n l"]) -> Float[Tensor, "f l"]:
        out = self.X.T @ Q
        out.addr_(self.mean, Q.sum(0), alpha=-1.0)
        if self.scale is not None:
            out.div_(self.scale[:, None])
        return out

    def __matmul__(self, B: Tensor) -> Tensor:
        B = B.to(self.X.dtype)
        return self._backward(B) if self.transposed else self._forward(B)

    def gram(self) -> Float[Tensor, "m m"]:
        """``A @ A.T`` in float64 (formed by one product in the working dtype)."""
        Xs = self.X if self.scale is None else self.X / self.scale
        m = self.mean if self.scale is None else self.mean / self.scale
        if self.transposed:
            G = self_product(Xs, outer=False).double()
            return G - self.X.shape[0] * torch.outer(m.double(), m.double())
        G = self_product(Xs, outer=True).double()
        r = (Xs @ m).double()
        c = float((m.double() ** 2).sum())
        return G - r[:, None] - r[None, :] + c

    def dense(self) -> Tensor:
        """``A`` as a tensor."""
        Xc = self.X - self.mean
        if self.scale is not None:
            Xc = Xc / self.scale
        return Xc.T if self.transposed else Xc


def self_product(X: Float[Tensor, "n f"], *, outer: bool) -> Tensor:
    """``X @ X.T`` (``outer``) or ``X.T @ X``; on CPU by BLAS syrk, which does half the work (symmetry)."""
    if X.device.type != "cpu" or X.dtype not in (torch.float32, torch.float64) or X.requires_grad:
        return X @ X.T if outer else X.T @ X
    syrk = blas.ssyrk if X.dtype == torch.float32 else blas.dsyrk
    a = X.contiguous().numpy().T  # a Fortran-ordered view of X^T, no copy
    upper = torch.from_numpy(syrk(1.0, a, trans=1 if outer else 0))  # a^T a = X X^T, or a a^T = X^T X
    return upper.triu() + upper.triu(1).T


def top_svd(
    A: Affine, k: int, *, solver: str, oversample: int, n_power_iter: int, seed: int
) -> tuple[Float[Tensor, "m k"], Float[Tensor, " k"], Float[Tensor, "p k"]]:
    """Top ``k`` singular triplets of ``A`` (m <= p) as ``(V, s, Z)`` with ``Z = A.T @ V = U * s``.

    ``V`` has orthonormal columns (float64), ``s`` is descending (float64), ``Z`` is in ``A.dtype``.
    Only ``m x m`` or ``m x l`` products are formed, never ``p x p``.
    """
    m, _ = A.shape
    if solver == "svd":
        _, s, Vh = torch.linalg.svd(A.dense().double().T, full_matrices=False)
        V = Vh[:k].T.contiguous()
        return V, s[:k].clone(), A.T @ V
    if solver == "gram":
        G = A.gram()
        if 4 * k < m:  # only the top k eigenvectors: LAPACK's syevr on a subset is ~3x faster than eigh
            _, E = scipy_eigh(G.cpu().numpy(), subset_by_index=[m - k, m - 1], driver="evr")
            Q = torch.from_numpy(np.ascontiguousarray(E[:, ::-1])).to(G.device)
        else:
            _, E = torch.linalg.eigh(G)
            Q = E.flip(1)[:, :k].contiguous()
    else:
        # randomized subspace iteration on G = A A^T from the small (sample) side. A block Krylov variant
        # gave a more accurate subspace on SmolLM2 activations, but its Ritz basis within near-degenerate
        # eigenvalues differs from the exact one, so the same w_init led FastICA to another optimum;
        # 5 subspace iterations matched the exact Gram path to |r| = 1.000.
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


def center_op(
    X: Float[Tensor, "n f"], mean: Float[Tensor, " f"], scale: Float[Tensor, " f"] | None = None
) -> Affine:
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
    options = dict(solver=solver, oversample=oversample, n_power_iter=n_power_iter, seed=seed)
    if n <= f:
        V, s, Z = top_svd(A, k, **options)
        Vs, u = V, None
    else:
        V, s, Z = top_svd(A.T, k, **options)
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
            f"{who}: {k} components exceed the numerical rank of the centred data (about {rank}); "
            f"pass n_components <= {rank} or add more (and more varied) samples."
        )
    if u is None:
        u = Z / s.to(Z.dtype)
    else:
        Vs = Z.double() / s
    sign = torch.sign(u[0].double() if sign_by == "feature" else Vs.pow(3).sum(0))
    sign[sign == 0] = 1.0
    return Vs * sign, s, u * sign.to(u.dtype)


def pick_solver(solver: str, n: int, f: int, k: int, oversample: int, n_power_iter: int) -> str:
    """``auto``: the exact Gram path while ``min(n, f) <= EXACT_UP_TO``, else randomized if that is cheaper.

    The randomized range finder is faster, but when eigenvalues near the k-th are close its subspace differs
    slightly and FastICA can settle in another optimum (SmolLM2 ``mlp.hook_post``, 2048 x 46080, k = 64:
    matched |r| 0.88 against the exact path), so exactness wins whenever the m x m Gram matrix is affordable.
    """
    if solver != "auto":
        return solver
    m = min(n, f)
    if m <= EXACT_UP_TO:
        return "gram"
    return "randomized" if (2 * n_power_iter + 1) * (k + oversample) < m else "gram"
