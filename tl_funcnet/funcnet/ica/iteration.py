"""The FastICA fixed-point iteration on whitened data: contrast functions, symmetric decorrelation,
parallel (many starts at once) and deflationary updates.

The ``k x k`` unmixing matrices live in float64, so float32 data stay finite on heavy-tailed activations;
only the products with the whitened data run in its dtype (torch). The small SVDs of the symmetric
decorrelation run in numpy with its BLAS limited to one thread for the call (multi-threaded 64 x 64 SVDs
are much slower on a loaded machine); torch's thread settings are never touched.
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import torch
from jaxtyping import Float
from threadpoolctl import ThreadpoolController
from torch import Tensor

from tl_funcnet.errors import FuncnetError

__all__ = ["FUNS", "contrast", "one_blas_thread", "polar", "ica_parallel", "ica_deflation"]

FUNS = ("logcosh", "exp", "cube")

_blas: ThreadpoolController | None = None
_blas_lock = threading.Lock()


def contrast(fun: str) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """``x -> (g(x), mean over the last axis of g'(x))`` for the contrast ``fun``."""
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
def one_blas_thread() -> Iterator[None]:
    """numpy/scipy BLAS and LAPACK on one thread inside the block, restored on exit.

    Only the BLAS libraries that threadpoolctl finds are limited (not OpenMP, so torch keeps its threads),
    and a lock keeps concurrent callers from restoring each other's limits out of order.
    """
    global _blas
    with _blas_lock:
        if _blas is None:
            _blas = ThreadpoolController()
        with _blas.limit(limits=1, user_api="blas"):
            yield


def polar(W: Float[Tensor, "... k k"]) -> Float[Tensor, "... k k"]:
    """Symmetric decorrelation ``(W W^T)^{-1/2} W``, computed as the SVD polar factor ``U V^T``."""
    Wn = W.detach().cpu().numpy()
    with one_blas_thread():
        U, _, Vh = np.linalg.svd(Wn)
        P = U @ Vh
    return torch.from_numpy(P).to(W.device)


def _non_finite(fun: str, where: str) -> FuncnetError:
    return FuncnetError(
        f"FastICA: the unmixing matrix became non-finite {where} (fun={fun!r}); the data are probably "
        "extremely heavy-tailed. Standardize the features, try fun='logcosh', or fit in dtype='float64'."
    )


def ica_parallel(
    X1: Float[Tensor, "k n"], W0: Float[Tensor, "r k k"], *, fun: str, max_iter: int, tol: float
) -> tuple[Float[Tensor, "r k k"], list[int], list[bool]]:
    """Parallel (symmetric) FastICA for ``r`` starts at once on whitened ``X1``.

    Returns the unmixing matrices (float64), the iterations and the convergence of every start. A start
    leaves the batch once it has converged.
    """
    g = contrast(fun)
    r, k, _ = W0.shape
    n = X1.shape[1]
    X1T = X1.T.contiguous()
    W = polar(W0.double())
    active = list(range(r))
    n_iter = [max_iter] * r
    converged = [False] * r
    for it in range(max_iter):
        Wa = W[active]
        gwx, gp = g(Wa.reshape(-1, k).to(X1.dtype) @ X1)
        W1 = (gwx @ X1T).double().reshape(len(active), k, k) / n
        W1 = W1 - gp.double().reshape(len(active), k, 1) * Wa
        if not bool(torch.isfinite(W1).all()):
            raise _non_finite(fun, f"at iteration {it + 1}")
        W1 = polar(W1)
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
    """Deflationary FastICA: one component at a time, Gram-Schmidt against the ones found.

    Returns the unmixing matrix (float64), the most iterations any component took and whether all converged.
    """
    g = contrast(fun)
    k, n = X1.shape
    W = torch.zeros(k, k, dtype=torch.float64, device=X1.device)
    worst_iter, all_converged = 0, True
    for j in range(k):
        w = W0[j].double().clone()
        w = w / w.norm()
        done = False
        for i in range(max_iter):
            gwx, gp = g((w.to(X1.dtype) @ X1)[None])
            w1 = (gwx @ X1.T).double()[0] / n - gp.double()[0] * w
            w1 = w1 - W[:j].T @ (W[:j] @ w1)
            w1 = w1 / w1.norm()
            lim = float(((w1 * w).sum().abs() - 1.0).abs())
            w = w1
            if not math.isfinite(lim):
                raise _non_finite(fun, f"for component {j}")
            if lim < tol:
                done = True
                break
        W[j] = w
        worst_iter = max(worst_iter, i + 1)
        all_converged = all_converged and done
    return W, worst_iter, all_converged
