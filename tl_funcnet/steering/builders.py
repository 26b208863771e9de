"""Builders of :class:`SteeringVector` values: mean difference (CAA), PCA of differences (RepE), functional
networks, SAE decoder directions, and entropy weighting (EAST-style).

Builders that read the model take prompt sets (lists of strings or token-id lists) and read one vector per
prompt at a ``site`` (a hook name such as ``"blocks.6.hook_resid_post"``): the activation at the prompt's
last token (``reduce="last"``) or the mean over its tokens (``reduce="mean"``). :func:`mean_differences`
reads several sites in one pass (a per-layer suffix with ``layers=``).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from ..errors import FuncnetError, ShapeError
from ..hooks.sites import resolve_sites
from .vector import SteeringVector

REDUCTIONS = ("last", "mean")


# --------------------------------------------------------------------------------------- reading


def _check_set(texts: Any, name: str) -> list:
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
        raise FuncnetError(f"{name} prompts should be a list of strings (or token-id lists), got "
                           f"{type(texts).__name__}")
    if len(texts) == 0:
        raise FuncnetError(f"the {name} prompt set is empty; pass at least one prompt")
    for i, t in enumerate(texts):
        if isinstance(t, str) and not t.strip():
            raise FuncnetError(f"{name} prompt {i} is empty; remove it or give it some text")
    return list(texts)


def _check_pairs(positive: Any, negative: Any, paired: bool) -> tuple[list, list]:
    pos, neg = _check_set(positive, "positive"), _check_set(negative, "negative")
    if paired and len(pos) != len(neg):
        raise FuncnetError(f"paired prompt sets are unbalanced: {len(pos)} positive vs {len(neg)} negative; "
                           f"give one negative per positive, or pass paired=False for unpaired sets")
    return pos, neg


def one_site(model: Any, site: str) -> str:
    """``site`` as exactly one hook name of ``model`` (a per-layer suffix is refused: it names several)."""
    sites = resolve_sites(model, site)
    if len(sites) != 1:
        raise FuncnetError(f"{site!r} names {len(sites)} hooks; give one hook name such as "
                           f"'blocks.6.hook_resid_post' (mean_differences reads several at once)")
    return sites[0]


def read_examples(model: Any, texts: Sequence[Any], sites: Sequence[str], *, reduce: str = "last",
                  batch_size: int = 8) -> dict[str, Float[Tensor, "n d"]]:
    """One activation vector per prompt at each site: ``{site: (n_prompts, d)}``."""
    from ..activations import collect

    if reduce not in REDUCTIONS:
        raise FuncnetError(f"reduce should be one of {REDUCTIONS}, got {reduce!r}")
    texts = _check_set(texts, "input")
    acts = collect(model, texts, list(sites), batch_size=batch_size, max_tokens_per_seq=None, progress=False)
    off = acts.offsets
    out = {}
    for s in sites:
        m = acts[s].to(torch.float32)
        if reduce == "last":
            out[s] = m[off[1:] - 1]
        else:
            out[s] = torch.stack([m[int(a):int(b)].mean(0) for a, b in zip(off[:-1], off[1:])])
    return out


# --------------------------------------------------------------------------------------- array cores


def mean_difference_of(pos: Float[Tensor, "n_pos d"], neg: Float[Tensor, "n_neg d"]) -> Float[Tensor, "d"]:
    """``mean(pos) - mean(neg)`` (for paired sets this equals the mean of the paired differences)."""
    return pos.mean(0) - neg.mean(0)


def pca_direction_of(diffs: Float[Tensor, "n d"], *, center: bool = False) -> Float[Tensor, "d"]:
    """First principal direction of paired differences, sign-aligned with their mean, scaled to the mean
    projection ``mean(diffs @ u)`` so its norm is comparable with the mean difference.

    ``center=False`` (default) takes the top right singular vector of the raw differences (as in RepE's
    reading vectors on differences); ``center=True`` subtracts the mean difference first (the direction of
    largest variation *among* the differences).
    """
    if diffs.shape[0] < 2:
        raise FuncnetError(f"PCA needs at least 2 paired differences, got {diffs.shape[0]}")
    d = diffs.to(torch.float64)
    x = d - d.mean(0) if center else d
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    u = vh[0]
    mean = d.mean(0)
    if float(u @ mean) < 0:
        u = -u
    return (u * (d @ u).mean()).to(torch.float32)


def entropy_weights(entropies: Float[Tensor, "n"]) -> Float[Tensor, "n"]:
    """``w_i = H_i / sum_j H_j``; entropies must be finite, non-negative and not all zero."""
    h = torch.as_tensor(entropies, dtype=torch.float64).flatten()
    if h.numel() == 0 or not torch.isfinite(h).all() or (h < 0).any() or float(h.sum()) <= 0:
        raise FuncnetError(f"entropies should be finite, >= 0 and not all zero (one per example); got {h.tolist()}")
    return h / h.sum()


def entropy_weighted_of(acts: Float[Tensor, "n d"], entropies: Float[Tensor, "n"]) -> Float[Tensor, "d"]:
    """EAST-style vector (our formula; the paper's exact one was not found):

    ``v = sum_i w_i a_i - mean_i a_i`` with ``w_i = H_i / sum_j H_j``, i.e. the entropy-weighted mean of
    the activations, centred by their plain mean. It points from the average state towards the states of
    high-entropy examples, and is zero when all entropies are equal.
    """
    if acts.shape[0] != torch.as_tensor(entropies).numel():
        raise FuncnetError(f"got {acts.shape[0]} examples but {torch.as_tensor(entropies).numel()} entropies; "
                           f"give one entropy per example")
    w = entropy_weights(entropies).to(acts.device)
    a = acts.to(torch.float64)
    return ((w[:, None] * a).sum(0) - a.mean(0)).to(torch.float32)


# --------------------------------------------------------------------------------------- model builders


def mean_differences(model: Any, positive: Sequence[Any], negative: Sequence[Any],
                     sites: str | Sequence[str] = "hook_resid_post", *, layers: Sequence[int] | None = None,
                     reduce: str = "last", paired: bool = True, batch_size: int = 8) -> dict[str, SteeringVector]:
    """:func:`mean_difference` at several sites from one pass over the prompts: ``{site: vector}``.

    ``sites`` is a per-layer suffix (every layer, or ``layers``) or a list of hook names.
    """
    pos, neg = _check_pairs(positive, negative, paired)
    names = resolve_sites(model, sites, layers)
    a = read_examples(model, pos, names, reduce=reduce, batch_size=batch_size)
    b = read_examples(model, neg, names, reduce=reduce, batch_size=batch_size)
    return {s: SteeringVector(mean_difference_of(a[s], b[s]), s,
                              {"method": "mean_difference", "reduce": reduce, "paired": paired,
                               "n_positive": len(pos), "n_negative": len(neg)})
            for s in names}


def mean_difference(model: Any, positive: Sequence[Any], negative: Sequence[Any], site: str, *,
                    reduce: str = "last", paired: bool = True, batch_size: int = 8) -> SteeringVector:
    """CAA-style vector ``mean(positive acts) - mean(negative acts)`` at ``site`` (one hook name).

    ``paired=True`` requires one negative per positive (contrast pairs); ``paired=False`` accepts sets of
    any sizes.
    """
    name = one_site(model, site)
    return mean_differences(model, positive, negative, [name], reduce=reduce, paired=paired,
                            batch_size=batch_size)[name]


def pca_direction(model: Any, positive: Sequence[Any], negative: Sequence[Any], site: str, *,
                  reduce: str = "last", center: bool = False, batch_size: int = 8) -> SteeringVector:
    """RepE-style reading vector at ``site``: first principal direction of the paired differences (see
    :func:`pca_direction_of`), sign-aligned with the mean difference."""
    pos, neg = _check_pairs(positive, negative, paired=True)
    name = one_site(model, site)
    a = read_examples(model, pos, [name], reduce=reduce, batch_size=batch_size)[name]
    b = read_examples(model, neg, [name], reduce=reduce, batch_size=batch_size)[name]
    v = pca_direction_of(a - b, center=center)
    return SteeringVector(v, name, {"method": "pca", "reduce": reduce, "center": center, "n_pairs": len(pos)})


@torch.no_grad()
def next_token_entropy(model: Any, texts: Sequence[Any], *, batch_size: int = 8) -> Float[Tensor, "n"]:
    """Entropy (nats) of the model's next-token distribution after each prompt."""
    from ..activations.forward import run_batches
    from ..activations.tokens import tokenize

    seqs = tokenize(model, list(texts), max_tokens_per_seq=None)
    out = torch.empty(len(seqs))
    for batch, logits in run_batches(model, seqs, batch_size=batch_size, return_type="logits"):
        last = (batch.mask.sum(1) - 1).to(logits.device)
        logp = F.log_softmax(logits[torch.arange(len(last)), last].float(), -1)
        out[batch.index] = -(logp.exp() * logp).sum(-1).cpu()
    return out


def entropy_weighted(model: Any, texts: Sequence[Any], site: str, *, entropies: Any = None,
                     reduce: str = "last", batch_size: int = 8) -> SteeringVector:
    """EAST-style vector from logged examples (see :func:`entropy_weighted_of` for the formula).

    ``entropies`` gives one weight source per example (e.g. the entropy of an agent's action
    distribution); by default the entropy of the model's own next-token distribution after each text.
    """
    texts = _check_set(texts, "input")
    if len(texts) < 2:
        raise FuncnetError("entropy weighting needs at least 2 examples (the vector is centred by their mean)")
    name = one_site(model, site)
    h = next_token_entropy(model, texts, batch_size=batch_size) if entropies is None else \
        torch.as_tensor(entropies, dtype=torch.float32)
    a = read_examples(model, texts, [name], reduce=reduce, batch_size=batch_size)[name]
    v = entropy_weighted_of(a, h)
    return SteeringVector(v, name, {
        "method": "entropy_weighted", "reduce": reduce, "n_examples": len(texts),
        "entropy_source": "model_next_token" if entropies is None else "given",
        "formula": "sum_i (H_i / sum_j H_j) a_i - mean_i a_i"})


def from_network(networks: Any, network: int, *, site: str | None = None, weights: str = "binary") -> SteeringVector:
    """Direction over one functional network's units at one site (adding it amplifies the network).

    ``weights="binary"`` puts 1 on every unit of the network (``scale`` then equals the constant the
    ``amplify`` mode of :meth:`FunctionalNetworks.to_intervention` adds); ``"map"`` uses the network's
    z-scored map values on those units. ``site`` defaults to the site holding most of its units.
    """
    if weights not in ("binary", "map"):
        raise FuncnetError(f"weights should be 'binary' or 'map', got {weights!r}")
    masks = getattr(networks, "masks_", None)
    if masks is None:
        raise FuncnetError("the functional networks are not fitted; call .fit(acts) first")
    n = masks.shape[0]
    if isinstance(network, bool) or not isinstance(network, int) or not 0 <= network < n:
        raise FuncnetError(f"network {network!r} is out of range; these networks have ids 0..{n - 1}")
    per_site = networks.site_units(masks[network])
    if not any(len(u) for u in per_site.values()):
        raise FuncnetError(f"network {network} has no units above threshold; lower the threshold or pick another")
    if site is None:
        site = max(per_site, key=lambda s: len(per_site[s]))
    if site not in per_site:
        raise FuncnetError(f"site {site!r} is not one of the networks' sites {list(per_site)}")
    starts, start = {}, 0
    for s, w in zip(networks.sites_, networks.widths_):
        starts[s] = (start, int(w))
        start += int(w)
    begin, width = starts[site]
    units = per_site[site].long()
    v = torch.zeros(width)
    if weights == "binary":
        v[units] = 1.0
    else:
        v[units] = networks.maps_[network, begin:begin + width][units].float()
    return SteeringVector(v, site, {"method": "functional_network", "network": network, "weights": weights,
                                    "n_units": int(units.numel())})


def from_sae(sae: Any, feature: int, *, site: str | None = None) -> SteeringVector:
    """An SAE feature's decoder direction ``W_dec[feature]`` at the SAE's hook.

    Works with any object holding ``W_dec (d_sae, d_in)`` and a hook name at ``cfg.metadata.hook_name``,
    ``cfg.hook_name`` or ``hook_name`` (SAELens 6 and older); ``site`` overrides it.
    """
    w = getattr(sae, "W_dec", None)
    if w is None:
        raise FuncnetError(f"{type(sae).__name__} has no W_dec; expected an SAE with a (d_sae, d_in) decoder")
    w = torch.as_tensor(w.detach() if isinstance(w, Tensor) else w)
    if w.ndim != 2:
        raise ShapeError(f"W_dec should be (d_sae, d_in), got shape {tuple(w.shape)}")
    if isinstance(feature, bool) or not isinstance(feature, int) or not 0 <= feature < w.shape[0]:
        raise FuncnetError(f"feature {feature!r} is out of range; this SAE has features 0..{w.shape[0] - 1}")
    if site is None:
        cfg = getattr(sae, "cfg", None)
        for holder in (getattr(cfg, "metadata", None), cfg, sae):
            name = getattr(holder, "hook_name", None) if holder is not None else None
            if isinstance(name, str) and name:
                site = name
                break
    if site is None:
        raise FuncnetError("cannot tell which hook the SAE reads (no cfg.metadata.hook_name, cfg.hook_name or "
                           "hook_name); pass site=...")
    return SteeringVector(w[feature].float(), site, {"method": "sae_feature", "feature": feature})


__all__ = ["mean_difference", "mean_differences", "pca_direction", "entropy_weighted", "from_network", "from_sae",
           "read_examples", "one_site", "next_token_entropy", "mean_difference_of", "pca_direction_of", "entropy_weights",
           "entropy_weighted_of", "REDUCTIONS"]
