"""Neuron importance scores: FN (functional networks), FN-guided, random, magnitude, Wanda, FLAP, mean |activation|,
CFSP and FN-aware CFSP.

Every scorer has the signature ``scorer(model, calibration, *, layers, <its own options>) -> list[Tensor | None]``:
one ``(d_mlp_l,)`` float tensor per layer (higher = more important), ``None`` for layers it was not asked to
score. :func:`score` refuses options a method does not take.
Activations are ``mlp.hook_post`` (the input of ``W_out``) over the real calibration tokens.

Per-layer allocation (how many neurons each layer loses) is part of a method, see :data:`ALLOCATION`:
uniform (the same fraction in every prunable layer) for magnitude, wanda, activation, fn_guided and random; global (one
threshold over all prunable layers) for fn (a global |z| threshold T, as in the paper), flap (FLAP's
global selection over per-layer standardized scores) and cfsp (scores built so that one global threshold
gives CFSP's per-layer allocation).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from .._rng import check_random_state, generator, numpy_generator
from ..errors import FuncnetError
from ..hooks.values import finite_number, positive_int
from .calibration import Calibration, block_influence, fn_signals
from .model_info import check_prunable

Scores = list  # list[Float[Tensor, "d_mlp"] | None], one entry per layer
Scorer = Callable[..., Scores]

SCORERS: dict[str, Scorer] = {}
#: "uniform" or "global" per method; "global" methods with standardize=True z-score each layer first.
ALLOCATION: dict[str, str] = {}
STANDARDIZE: dict[str, bool] = {}


def _register(name: str, allocation: str, standardize: bool = False):
    def deco(fn: Scorer) -> Scorer:
        SCORERS[name] = fn
        ALLOCATION[name] = allocation
        STANDARDIZE[name] = standardize
        return fn
    return deco


def _w_out_norm(model: Any, l: int) -> Float[Tensor, "d_mlp"]:
    return model.blocks[l].mlp.W_out.detach().double().cpu().norm(dim=1)


@_register("random", "uniform")
def random_scores(model: Any, calibration: Calibration | None, *, layers: Sequence[int], random_state: int = 0) -> Scores:
    """Uniform random scores (from ``random_state``): the control."""
    g = generator(random_state)
    out: Scores = [None] * len(model.blocks)
    for l in range(len(model.blocks)):
        s = torch.rand(int(model.blocks[l].mlp.W_out.shape[0]), generator=g, dtype=torch.float64)
        out[l] = s if l in layers else None
    return out


@_register("magnitude", "uniform")
def magnitude_scores(model: Any, calibration: Calibration | None, *, layers: Sequence[int]) -> Scores:
    """``‖W_out[j]‖₂ · ‖W_in[:, j]‖₂ (· ‖W_gate[:, j]‖₂ for gated MLPs)``: weights only."""
    out: Scores = [None] * len(model.blocks)
    for l in layers:
        mlp = model.blocks[l].mlp
        s = _w_out_norm(model, l) * mlp.W_in.detach().double().cpu().norm(dim=0)
        if getattr(mlp, "W_gate", None) is not None:
            s = s * mlp.W_gate.detach().double().cpu().norm(dim=0)
        out[l] = s
    return out


@_register("wanda", "uniform")
def wanda_scores(model: Any, calibration: Calibration, *, layers: Sequence[int]) -> Scores:
    """Structured Wanda: ``‖W_out[j]‖₂ · ‖x_j‖₂`` over calibration tokens."""
    st = calibration.stats(model)
    out: Scores = [None] * len(model.blocks)
    for l in layers:
        out[l] = _w_out_norm(model, l) * st.l2[l]
    return out


@_register("flap", "global", standardize=True)
def flap_scores(model: Any, calibration: Calibration, *, layers: Sequence[int]) -> Scores:
    """FLAP's fluctuation metric ``Var(x_j) · ‖W_out[j]‖₂²`` (selected globally after per-layer z-scoring)."""
    st = calibration.stats(model)
    out: Scores = [None] * len(model.blocks)
    for l in layers:
        out[l] = st.var[l] * _w_out_norm(model, l) ** 2
    return out


@_register("activation", "uniform")
def activation_scores(model: Any, calibration: Calibration, *, layers: Sequence[int]) -> Scores:
    """Mean |x_j| over calibration tokens."""
    st = calibration.stats(model)
    out: Scores = [None] * len(model.blocks)
    for l in layers:
        out[l] = st.abs_mean[l].clone()
    return out


@_register("fn", "global")
def fn_scores(model: Any, calibration: Calibration, *, layers: Sequence[int], n_networks: int = 128,
              n_restarts: int = 10, n_runs: int = 1, random_state: int = 0) -> Scores:
    """FN-pruning key-neuron score: max |z| over CanICA components, signals and runs.

    Per layer, spatial ICA (CanICA: z-score columns, SVD, FastICA cube with features as samples) on the
    layer's signals (gated: up projection and activated gate; else ``mlp.hook_post``). A neuron with score
    > T is a key neuron of some functional network in some run, so keeping the neurons with score > T is
    the paper's rule "keep if either signal is key in any component of any run". ``n_runs`` splits the
    calibration tokens into that many consecutive chunks, one ICA run each (the union over runs);
    ``n_networks`` is the number of ICA components per layer and run.
    """
    from ..funcnet.ica import CanICA

    base_seed = check_random_state(random_state)
    if base_seed is None:  # fresh randomness, drawn once so that runs and layers still differ
        base_seed = int(numpy_generator(None).integers(2**31))
    n_runs = positive_int(n_runs, "n_runs")
    n_networks = positive_int(n_networks, "n_networks")
    n_restarts = positive_int(n_restarts, "n_restarts")
    n_tok = calibration.n_tokens
    per_run = n_tok // n_runs
    if per_run < 2 * n_networks:
        raise FuncnetError(f"FN scores need at least 2*n_networks={2 * n_networks} calibration tokens per "
                           f"ICA run, got {per_run} ({n_tok} tokens / {n_runs} runs); add calibration text, "
                           f"lower n_networks or n_runs")
    out: Scores = [None] * len(model.blocks)
    for l, X in fn_signals(model, calibration, list(layers)):
        w = int(model.blocks[l].mlp.W_out.shape[0])
        best = torch.full((w,), -torch.inf, dtype=torch.float64)
        for r in range(n_runs):
            rows = X[r * per_run:(r + 1) * per_run]
            ica = CanICA(n_networks, n_restarts=n_restarts, standardize=True, fun="cube",
                         random_state=base_seed + 1000 * r + l)
            maps = ica.fit(rows).maps_  # (k, n_signals * w)
            z = torch.from_numpy(maps).abs().amax(0).double().view(-1, w).amax(0)
            best = torch.maximum(best, z)
        out[l] = best
    return out


#: CFSP's coarse-allocation temperature on per-token mean angular distances: the public code applies
#: sigmoid((Σ_tokens d_l - mean) / 1e4) to sums over 128 x 2048 calibration tokens, i.e. this factor on means.
CFSP_TEMPERATURE = 128 * 2048 / 1e4


def _relative(w: Float[Tensor, "d_model d_mlp"]) -> Float[Tensor, "d_mlp"]:
    """Each weight's share among the neurons that share its residual dimension, averaged per neuron."""
    a = w.abs()
    return (a / a.sum(1, keepdim=True).clamp_min(1e-30)).mean(0)


def cfsp_fine(model: Any, calibration: Calibration, layer: int) -> Float[Tensor, "d_mlp"]:
    """CFSP's fine (intra-block) score of each neuron: the relative importance of its ``W_out`` weights scaled by
    its activation RMS, plus that of its ``W_in`` (and ``W_gate``) weights, times the activation RMS (the
    public code's ``three_w_one_wa`` with b = c = 1). Shares are taken among neurons: the public code's
    normalisation over a neuron's own weights makes those terms constant, leaving the RMS alone."""
    mlp = model.blocks[layer].mlp
    rms = calibration.stats(model).sq_mean[layer].sqrt()
    s = _relative(mlp.W_out.detach().double().cpu().T * rms) + _relative(mlp.W_in.detach().double().cpu())
    if getattr(mlp, "W_gate", None) is not None:
        s = s + _relative(mlp.W_gate.detach().double().cpu())
    return s * rms


def cfsp_keep_shares(influence: dict[int, float], temperature: float) -> dict[int, float]:
    """CFSP's coarse allocation: each block's share of the kept neurons, ``sigmoid(temperature · (d_l - mean d))``
    over its mean (a block that changes the hidden state more keeps more)."""
    layers = list(influence)
    d = torch.tensor([influence[l] for l in layers], dtype=torch.float64)
    raw = torch.sigmoid(temperature * (d - d.mean()))
    raw = raw / raw.mean() if float(raw.mean()) > 0 else torch.ones_like(raw)  # all saturated at 0: uniform
    return {l: float(r) for l, r in zip(layers, raw)}


def cfsp_ranked(model: Any, calibration: Calibration, layers: Sequence[int], temperature: float = CFSP_TEMPERATURE,
                keep_first: Scores | None = None, key_fraction: float = 0.0) -> Scores:
    """Scores whose global threshold at ratio p prunes ``1 - k_l (1 - p)`` of layer l (k_l the keep share) in
    fine-score order; with ``keep_first`` the top ``key_fraction`` of each layer by it is pruned last."""
    temperature = finite_number(temperature, "temperature")
    shares = cfsp_keep_shares(block_influence(model, calibration, list(layers)), temperature)
    out: Scores = [None] * len(model.blocks)
    for l in layers:
        fine = cfsp_fine(model, calibration, l)
        w = int(fine.numel())
        key = torch.zeros(w, dtype=torch.bool)
        if keep_first is not None and key_fraction > 0:
            order = torch.argsort(keep_first[l].double(), descending=True, stable=True)
            key[order[: int(round(key_fraction * w))]] = True
        # u: rank among the other neurons over the full width, so the layer's prune count stays CFSP's
        rest = (~key).nonzero().flatten()
        u = torch.ones(w, dtype=torch.float64)
        u[rest[torch.argsort(fine[rest], stable=True)]] = torch.arange(1, rest.numel() + 1, dtype=torch.float64) / w
        s = 1.0 - (1.0 - u) / shares[l]
        s[key] = 2.0 + fine[key] / fine.max().clamp_min(1e-30)  # above every score a prune can reach
        out[l] = s
    return out


@_register("cfsp", "global")
def cfsp_scores(model: Any, calibration: Calibration, *, layers: Sequence[int],
                temperature: float = CFSP_TEMPERATURE) -> Scores:
    """CFSP (coarse-to-fine activation information): blocks that change the residual stream more (angular
    distance, :func:`~tl_funcnet.pruning.calibration.block_influence`) keep more neurons; within a block,
    :func:`cfsp_fine` ranks them. One forward pass of statistics."""
    return cfsp_ranked(model, calibration, layers, temperature)


@_register("fn_cfsp", "global")
def fn_cfsp_scores(model: Any, calibration: Calibration, *, layers: Sequence[int], key_fraction: float = 0.05,
                   temperature: float = CFSP_TEMPERATURE, n_networks: int = 128, n_restarts: int = 10,
                   n_runs: int = 1, random_state: int = 0) -> Scores:
    """FN-aware CFSP: CFSP's allocation and ranking, with each layer's top ``key_fraction`` of neurons by FN
    score (:func:`fn_scores`, which takes the remaining options) pruned only after all others."""
    key_fraction = guided_fraction(key_fraction)
    fn = fn_scores(model, calibration, layers=layers, n_networks=n_networks, n_restarts=n_restarts,
                   n_runs=n_runs, random_state=random_state)
    return cfsp_ranked(model, calibration, layers, temperature, fn, key_fraction)


#: the scores fn_guided can rank the unprotected neurons by
GUIDED_BASES = ("wanda", "activation", "flap")


@_register("fn_guided", "uniform")
def fn_guided_scores(model: Any, calibration: Calibration, *, layers: Sequence[int], base: str = "wanda",
                     key_fraction: float = 0.05, n_networks: int = 128, n_restarts: int = 10, n_runs: int = 1,
                     random_state: int = 0) -> Scores:
    """FN-guided pruning: a ``base`` ranking (``"wanda"``, ``"activation"`` or ``"flap"``) in which each layer's
    strongest functional-network units are protected.

    In every layer the ``key_fraction`` of neurons with the highest FN score (max |z| over CanICA
    components and runs, see :func:`fn_scores`, which takes the remaining options) is pruned only after all
    others; everything else is ranked by the base score. ``key_fraction=0`` is the base method.
    """
    if base not in GUIDED_BASES:
        raise FuncnetError(f"base should be one of {GUIDED_BASES}, got {base!r}")
    key_fraction = guided_fraction(key_fraction)
    fn = fn_scores(model, calibration, layers=layers, n_networks=n_networks, n_restarts=n_restarts,
                   n_runs=n_runs, random_state=random_state)
    return guided(fn, SCORERS[base](model, calibration, layers=layers), key_fraction)


def guided_fraction(key_fraction: Any) -> float:
    if (isinstance(key_fraction, bool) or not isinstance(key_fraction, (int, float))
            or not 0.0 <= float(key_fraction) <= 1.0):
        raise FuncnetError(f"key_fraction should be the fraction of each layer's neurons (highest FN scores) "
                           f"pruned last, between 0 and 1; got {key_fraction!r}")
    return float(key_fraction)


def guided(fn: Scores, base: Scores, key_fraction: float) -> Scores:
    """Combine FN scores and base scores: per layer, the top ``key_fraction`` by FN score ranks above every
    other neuron; within each part the base score decides (values in [0, 2), higher = kept longer)."""
    key_fraction = guided_fraction(key_fraction)
    out: Scores = [None] * len(base)
    for l, (f, b) in enumerate(zip(fn, base)):
        if f is None or b is None:
            continue
        w = int(b.numel())
        rank = torch.empty(w, dtype=torch.float64)
        rank[torch.argsort(b.double(), stable=True)] = torch.arange(w, dtype=torch.float64) / w
        top = torch.argsort(f.double(), descending=True, stable=True)[: int(round(key_fraction * w))]
        rank[top] += 1.0
        out[l] = rank
    return out


def method_options(method: str) -> tuple[str, ...]:
    """The options ``method``'s scorer takes (besides model, calibration and layers)."""
    import inspect

    if method not in SCORERS:
        raise FuncnetError(f"unknown pruning method {method!r}; choose one of {sorted(SCORERS)}")
    return tuple(n for n, p in inspect.signature(SCORERS[method]).parameters.items()
                 if p.kind is p.KEYWORD_ONLY and n != "layers")


def score(model: Any, calibration: Calibration | None, method: str, *, layers: Sequence[int] | None = None,
          **options: Any) -> Scores:
    """Scores of ``method`` for ``layers`` (default all); ``options`` are the method's own (see
    :func:`method_options`), anything else is refused."""
    check_prunable(model)
    unknown = sorted(set(options) - set(method_options(method)))
    if unknown:
        raise FuncnetError(f"method {method!r} takes the options {list(method_options(method))}, not {unknown}")
    if calibration is None and method not in ("random", "magnitude"):
        raise FuncnetError(f"method {method!r} needs calibration text; pass calibration=Calibration.from_texts(...)")
    if calibration is not None:
        calibration.check_model(model)
    layers = list(range(len(model.blocks))) if layers is None else list(layers)
    return SCORERS[method](model, calibration, layers=layers, **options)


__all__ = ["SCORERS", "ALLOCATION", "STANDARDIZE", "score", "random_scores", "magnitude_scores",
           "wanda_scores", "flap_scores", "activation_scores", "fn_scores", "fn_guided_scores", "guided", "cfsp_scores",
           "fn_cfsp_scores", "cfsp_fine", "cfsp_keep_shares", "cfsp_ranked"]
