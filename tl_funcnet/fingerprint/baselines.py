"""Baseline similarity measures the fingerprint is compared against (each returns ``None`` = "n/a").

* :func:`representation_cka` (REEF-style): linear CKA of ``hook_resid_post`` on the same tokens; needs the
  same tokenization. Each victim layer takes its best-matching suspect layer; the mean is reported.
* :func:`weight_awm` (AWM-style): residual bases aligned by orthogonal Procrustes on the embeddings, MLP
  units matched per layer by linear assignment on their input weights, then linear CKA of the matched
  ``W_in`` and ``W_out``; needs the same vocabulary, depth and d_model.
* :func:`parameter_cosine` (PCS): cosine of all parameters flattened; needs identical shapes.
* :func:`output_similarity`: ``1 - JS/ln 2`` of next-token distributions on the same tokens, averaged.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from jaxtyping import Float
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ..activations.forward import is_encoder


def same_tokens(ids_a: Sequence[Tensor], ids_b: Sequence[Tensor]) -> bool:
    """Whether two models tokenized every text identically."""
    return len(ids_a) == len(ids_b) and all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(ids_a, ids_b))


def centered_gram(x: Float[Tensor, "n d"]) -> Float[Tensor, "n n"]:
    """Doubly centred, Frobenius-normalised linear Gram matrix (so CKA is a dot product)."""
    x = (x - x.mean(0)).double()
    k = x @ x.T
    return k / k.norm().clamp_min(1e-300)


def layer_grams(acts: Float[Tensor, "n_tokens n_layers d_model"], stride: int = 4) -> Float[Tensor, "n_layers m m"]:
    """Per-layer normalised Gram matrices on every ``stride``-th token (cheap CKA for all layer pairs)."""
    sub = acts[::stride]
    return torch.stack([centered_gram(sub[:, l]) for l in range(sub.shape[1])])


def representation_cka(grams_a: Tensor, grams_b: Tensor) -> float:
    """Mean over victim layers of the best linear CKA with any suspect layer."""
    cka = torch.einsum("aij,bij->ab", grams_a, grams_b)
    return float(cka.max(1).values.mean())


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear CKA of two sample matrices with the same rows."""
    x, y = (x - x.mean(0)).double(), (y - y.mean(0)).double()
    num = (x.T @ y).norm() ** 2
    return float(num / ((x.T @ x).norm() * (y.T @ y).norm()).clamp_min(1e-300))


def _procrustes(a: Tensor, b: Tensor) -> Tensor:
    """Orthogonal ``Q`` minimising ``||b Q - a||`` (rows of a and b paired)."""
    u, _, vh = torch.linalg.svd(b.double().T @ a.double())
    return u @ vh


@torch.no_grad()
def weight_awm(victim: Any, suspect: Any) -> float | None:
    """AWM-style weight similarity (mean over layers of CKA of aligned, matched MLP weights), or None."""
    cv, cs = victim.cfg, suspect.cfg
    if (cv.d_vocab != cs.d_vocab or cv.n_layers != cs.n_layers or cv.d_model != cs.d_model
            or not hasattr(victim.blocks[0], "mlp") or not hasattr(suspect.blocks[0], "mlp")):
        return None
    Q = _procrustes(victim.W_E, suspect.W_E)  # suspect basis -> victim basis
    scores = []
    for bv, bs in zip(victim.blocks, suspect.blocks):
        win_v = _stack_in(bv.mlp).double()
        win_s = _rot_in(bs.mlp, Q)
        nv = win_v / win_v.norm(dim=0).clamp_min(1e-12)
        ns = win_s / win_s.norm(dim=0).clamp_min(1e-12)
        rows, cols = linear_sum_assignment((nv.T @ ns).abs().numpy(), maximize=True)
        rows, cols = torch.as_tensor(rows), torch.as_tensor(cols)
        wout_v = bv.mlp.W_out.double()[rows]
        wout_s = (bs.mlp.W_out.double() @ Q)[cols]
        scores.append(0.5 * (linear_cka(win_v.T[rows], win_s.T[cols]) + linear_cka(wout_v, wout_s)))
    return float(np.mean(scores))


def _stack_in(mlp: Any) -> Tensor:
    ws = [mlp.W_in] + ([mlp.W_gate] if hasattr(mlp, "W_gate") else [])
    return torch.cat(ws, 0)  # (k * d_model, d_mlp)


def _rot_in(mlp: Any, Q: Tensor) -> Tensor:
    # W_E_s Q ~ W_E_v: suspect reads x_s = x_v Q^T, so in the victim basis its input weights are Q^T W
    ws = [Q.T @ mlp.W_in.double()] + ([Q.T @ mlp.W_gate.double()] if hasattr(mlp, "W_gate") else [])
    return torch.cat(ws, 0)


@torch.no_grad()
def parameter_cosine(victim: Any, suspect: Any) -> float | None:
    """Cosine similarity of all parameters flattened, or None unless every name and shape matches."""
    pv, ps = dict(victim.named_parameters()), dict(suspect.named_parameters())
    if pv.keys() != ps.keys() or any(pv[k].shape != ps[k].shape for k in pv):
        return None
    dot = sum(float((pv[k].double() * ps[k].double()).sum()) for k in pv)
    nv = math.sqrt(sum(float(pv[k].double().pow(2).sum()) for k in pv))
    ns = math.sqrt(sum(float(ps[k].double().pow(2).sum()) for k in ps))
    return dot / max(nv * ns, 1e-300)


@torch.no_grad()
def next_token_logprobs(model: Any, ids: Sequence[Tensor], stride: int = 4) -> Tensor | None:
    """Log-probabilities at every ``stride``-th position of each text (None for encoders)."""
    if is_encoder(model):
        return None
    out = []
    for seq in ids:
        logits = model(seq[None], return_type="logits")[0, ::stride]
        out.append(torch.log_softmax(logits.float(), -1))
    return torch.cat(out)


def output_similarity(lp_a: Tensor | None, lp_b: Tensor | None) -> float | None:
    """``1 - mean JS / ln 2`` of next-token distributions (same tokens, same vocabulary), or None."""
    if lp_a is None or lp_b is None or lp_a.shape != lp_b.shape:
        return None
    m = torch.logsumexp(torch.stack([lp_a, lp_b]), 0) - math.log(2)
    js = 0.5 * ((lp_a.exp() * (lp_a - m)).sum(-1) + (lp_b.exp() * (lp_b - m)).sum(-1))
    return float(1 - js.mean() / math.log(2))


__all__ = ["representation_cka", "layer_grams", "weight_awm", "parameter_cosine", "output_similarity",
           "next_token_logprobs", "same_tokens", "linear_cka"]
