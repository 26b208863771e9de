"""Record a model's residual stream on a few texts and turn it into a :class:`Fingerprint`.

Time courses are temporal-ICA sources of ``hook_resid_post`` of every layer jointly. With samples = tokens,
the sources depend on the data only through the token x token Gram matrix, so they are unchanged by any
orthogonal change of the residual basis (and by unit permutations). Everything before the ICA keeps that
property: features are centred, and each layer's block is divided by its own RMS norm (so deep layers with
large norms do not dominate) - a per-layer scalar, never a per-unit z-score.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..activations.forward import is_encoder
from ..errors import FuncnetError
from ..models.digest import weights_processing
from .core import Fingerprint

DEFAULT_SPLIT = "evaluation"
DEFAULT_N_TEXTS = 10

Tokenizer = Callable[[str], tuple[list[int], list[tuple[int, int]]]]


def default_texts(n: int = DEFAULT_N_TEXTS) -> list[str]:
    """The first ``n`` passages of the built-in evaluation split (~1,000 characters, ~220 tokens each)."""
    from ..data import load_corpus

    return list(load_corpus(DEFAULT_SPLIT)[:n])


def char_tokenizer(d_vocab: int) -> Tokenizer:
    """One token per character, id = code point mod ``d_vocab`` (for models without a tokenizer, e.g. tests)."""

    def tok(text: str) -> tuple[list[int], list[tuple[int, int]]]:
        return [ord(c) % d_vocab for c in text], [(i, i + 1) for i in range(len(text))]

    return tok


def tokenize_with_offsets(model: Any, text: str, tokenizer: Tokenizer | str | None = None,
                          max_tokens: int | None = None) -> tuple[Int[Tensor, "pos"], Int[Tensor, "pos 2"]]:
    """Token ids as the model's own ``to_tokens`` would give them, with each token's character span.

    Special tokens (BOS, CLS, SEP) get the empty span ``(0, 0)``.
    """
    cfg = model.cfg
    if tokenizer == "chars":
        tokenizer = char_tokenizer(cfg.d_vocab)
    if callable(tokenizer):
        ids, offs = tokenizer(text)
    else:
        tok = getattr(model, "tokenizer", None)
        if tok is None:
            raise FuncnetError(f"{type(model).__name__} has no tokenizer; pass tokenizer='chars' or a callable "
                               "text -> (ids, [(start, end), ...])")
        encoder = is_encoder(model)
        enc = tok(text, add_special_tokens=encoder, return_offsets_mapping=True)
        ids, offs = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
        if not encoder and getattr(cfg, "default_prepend_bos", False) and tok.bos_token_id is not None:
            ids, offs = [tok.bos_token_id, *ids], [(0, 0), *offs]
    limit = min(x for x in (cfg.n_ctx, max_tokens) if x is not None)
    ids_t = torch.tensor(ids[:limit], dtype=torch.long)
    offs_t = torch.tensor(offs[:limit], dtype=torch.long).reshape(-1, 2)
    if ids_t.numel() == 0:
        raise FuncnetError(f"a text produced no tokens: {text[:60]!r}")
    return ids_t, offs_t


@torch.no_grad()
def record(model: Any, ids: Int[Tensor, "pos"]) -> Float[Tensor, "pos n_layers d_model"]:
    """``hook_resid_post`` of every layer for one sequence (no padding, so encoders need no mask)."""
    from ..activations.forward import model_device
    from ..hooks import capture

    names = [f"blocks.{l}.hook_resid_post" for l in range(model.cfg.n_layers)]
    store: dict[str, Tensor] = {}
    kwargs = {} if is_encoder(model) else {"return_type": None}
    with capture(names, store).applied(model):
        model(ids[None].to(model_device(model)), **kwargs)
    return torch.stack([store[n][0].to("cpu", torch.float32) for n in names], 1)


def layer_normalized(acts: Float[Tensor, "n_samples n_layers d_model"]) -> Float[Tensor, "n_samples n_features"]:
    """Centre every unit, then divide each layer's block by its RMS norm (rotation-invariant), and flatten."""
    x = acts - acts.mean(0, keepdim=True)
    rms = x.pow(2).sum(2).mean(0).sqrt().clamp_min(1e-12)  # (n_layers,)
    return (x / rms[None, :, None]).reshape(x.shape[0], -1)


def fingerprint(model: Any, texts: Any = None, *, n_networks: int = 64, threshold: float = 3.6,
                random_state: int | None = 0, max_tokens_per_text: int | None = 512,
                tokenizer: Tokenizer | str | None = None, dtype: torch.dtype = torch.float32,
                name: str | None = None) -> Fingerprint:
    """Functional-network fingerprint of ``model`` on ``texts`` (a split name, path or list of strings;
    default: the first 10 passages of the built-in evaluation split).

    Records ``hook_resid_post`` of every layer, runs temporal FastICA with ``n_networks`` components over all
    layers jointly (tokens of all texts as samples) and keeps each network's source time course per text,
    with the tokens' character spans so models with other tokenizers can be aligned. Special tokens (BOS,
    CLS, SEP) are left out. Sources are sign-canonicalised (positive skew) and ordered by explained variance.
    ``dtype`` is that of the Gram product (float64 for exact invariance tests). ``threshold`` only sets the
    descriptive per-layer unit counts (``|z| > threshold`` of each mixing column).
    """
    from ..data import resolve_texts
    from ..hooks.values import finite_number, positive_int

    texts = default_texts() if texts is None else resolve_texts(texts)
    positive_int(n_networks, "n_networks")
    if finite_number(threshold, "threshold") <= 0:
        raise FuncnetError(f"threshold should be a positive z-score such as 3.6, got {threshold}")
    if max_tokens_per_text is not None:
        positive_int(max_tokens_per_text, "max_tokens_per_text", minimum=2)
    acts, offsets = record_texts(model, texts, tokenizer=tokenizer, max_tokens_per_text=max_tokens_per_text)
    return fingerprint_from_activations(model, texts, acts, offsets, n_networks=n_networks, threshold=threshold,
                                        random_state=random_state, dtype=dtype, name=name,
                                        max_tokens_per_text=max_tokens_per_text, tokenizer=tokenizer)


def record_texts(model: Any, texts: Sequence[str], *, tokenizer: Tokenizer | str | None = None,
                 max_tokens_per_text: int | None = 512) -> tuple[list[Tensor], list[Tensor]]:
    """Per text, ``hook_resid_post`` of all layers ``(n_real_tokens, n_layers, d_model)`` and the spans."""
    if not texts or any(not str(t).strip() for t in texts):
        raise FuncnetError("fingerprint() needs at least one non-empty text")
    feats, keep_offs = [], []
    for text in texts:
        ids, offs = tokenize_with_offsets(model, text, tokenizer, max_tokens_per_text)
        real = offs[:, 1] > offs[:, 0]  # drop special tokens (empty span)
        if int(real.sum()) < 2:
            raise FuncnetError(f"text {text[:40]!r} has fewer than 2 real tokens")
        feats.append(record(model, ids)[real])
        keep_offs.append(offs[real])
    return feats, keep_offs


def fingerprint_from_activations(model: Any, texts: Sequence[str], feats: list[Tensor], offsets: list[Tensor], *,
                                 n_networks: int = 64, threshold: float = 3.6, random_state: int | None = 0,
                                 dtype: torch.dtype = torch.float32, name: str | None = None,
                                 max_tokens_per_text: int | None = 512,
                                 tokenizer: Tokenizer | str | None = None) -> Fingerprint:
    """The ICA half of :func:`fingerprint`, on activations from :func:`record_texts`."""
    from ..funcnet.ica import FastICA

    lengths = [int(f.shape[0]) for f in feats]
    keep_offs = list(offsets)
    acts = torch.cat(feats)
    n_layers, d_model = acts.shape[1], acts.shape[2]
    X = layer_normalized(acts.to(dtype))
    del acts
    # temporal ICA (tokens as samples) that sees X only through X X^T: a change of basis of the residual
    # stream (rotation, permutation) leaves the sources unchanged
    ica = FastICA(n_networks, basis_free=True, whiten_solver="gram", max_iter=500, tol=1e-6, random_state=random_state,
                  dtype=str(dtype).removeprefix("torch."))
    try:
        S = ica._fit(X, warn=False).double()  # X is a tensor, so S is one; converged_ is recorded below
    except FuncnetError as err:
        raise FuncnetError(f"fingerprint with n_networks={n_networks} on {X.shape[0]} tokens x {X.shape[1]} "
                           f"features (n_layers x d_model): {err} (here: lower n_networks, or pass more and "
                           f"longer texts)") from err
    mixing, converged, n_iter, k = torch.from_numpy(ica.mixing_), ica.converged_, ica.n_iter_, int(n_networks)
    del X
    energy = mixing.reshape(n_layers, d_model, k).pow(2).sum(1).T  # (k, n_layers)
    energy = energy / energy.sum(1, keepdim=True).clamp_min(1e-30)
    z = (mixing - mixing.mean(0)) / mixing.std(0).clamp_min(1e-30)
    units = (z.abs() > threshold).reshape(n_layers, d_model, k).sum(1).T.long()
    series = tuple(s.float().contiguous() for s in torch.split(S, lengths))
    params = {"n_networks": k, "threshold": threshold, "random_state": random_state,
              "max_tokens_per_text": max_tokens_per_text, "site": "hook_resid_post",
              "ica": "temporal FastICA, sample-space whitening",
              "ica_converged": converged, "ica_n_iter": n_iter,
              "tokenizer": "chars" if tokenizer == "chars" else ("custom" if callable(tokenizer) else "model")}
    info = {"name": name or getattr(model.cfg, "model_name", None) or type(model).__name__,
            "class": type(model).__name__, "weights": weights_processing(model), "n_layers": n_layers,
            "d_model": d_model,
            "n_params": int(sum(p.numel() for p in model.parameters()))}
    return Fingerprint(tuple(texts), series, tuple(keep_offs), energy.float(), units, params, info)


__all__ = ["fingerprint", "record_texts", "fingerprint_from_activations", "default_texts", "tokenize_with_offsets", "record", "layer_normalized", "char_tokenizer"]
