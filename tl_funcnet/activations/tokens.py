"""Turning a corpus into padded token batches without letting padding leak into results."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from ..errors import FuncnetError

TextsOrTokens = Sequence[str] | Sequence[Sequence[int]] | Sequence[Tensor] | str


def resolve_inputs(texts: Any) -> list:
    """Accept a split name of the built-in corpus, a path, a list of strings, or a list of token-id sequences."""
    if isinstance(texts, Tensor):
        if texts.ndim != 2:
            raise FuncnetError(f"a token tensor should be (batch, pos), got shape {tuple(texts.shape)}")
        return list(texts)
    if isinstance(texts, (list, tuple)) and texts and not isinstance(texts[0], str):
        return list(texts)
    from ..data import resolve_texts  # lazy: the corpus is package data

    return list(resolve_texts(texts))


def tokenize(model: Any, texts: Any, *, max_tokens_per_seq: int | None = 128,
             prepend_bos: bool | None = None) -> list[Int[Tensor, "pos"]]:
    """One 1-D token tensor per text, each cut at ``max_tokens_per_seq`` tokens (``None``: no cap)."""
    if max_tokens_per_seq is not None and (not isinstance(max_tokens_per_seq, int) or max_tokens_per_seq < 1):
        raise FuncnetError(
            f"max_tokens_per_seq should be a positive int or None (no cap), got {max_tokens_per_seq!r}"
        )
    items = resolve_inputs(texts)
    if not items:
        raise FuncnetError("the corpus is empty: pass at least one text (or a split name like 'calibration')")
    out: list[Tensor] = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            if not item.strip():
                raise FuncnetError(f"text {i} is empty; remove it or give it some content")
            if getattr(model, "tokenizer", None) is None:
                raise FuncnetError("the model has no tokenizer; pass token ids instead of strings")
            kwargs = {} if prepend_bos is None else {"prepend_bos": prepend_bos}
            ids = _to_tokens(model, item, **kwargs)
        else:
            ids = _token_ids(item, i, model)
        if ids.numel() == 0:
            raise FuncnetError(f"text {i} produced no tokens")
        if max_tokens_per_seq is not None:
            ids = ids[:max_tokens_per_seq]
        n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
        if n_ctx is not None and ids.numel() > n_ctx:
            ids = ids[:n_ctx]
        out.append(ids.cpu())
    return out


def _token_ids(item: Any, i: int, model: Any) -> Tensor:
    """A token-id sequence as a 1-D long tensor, checked against the model's vocabulary."""
    t = torch.as_tensor(item)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool or t.ndim > 1:
        raise FuncnetError(f"input {i} should be a text or a 1-D sequence of integer token ids, got {t.dtype} of "
                           f"shape {tuple(t.shape)}")
    t = t.to(torch.long).flatten()
    d_vocab = getattr(getattr(model, "cfg", None), "d_vocab", None)
    if t.numel() and (int(t.min()) < 0 or (d_vocab is not None and int(t.max()) >= d_vocab)):
        raise FuncnetError(f"input {i} holds token id {int(t.max()) if int(t.min()) >= 0 else int(t.min())}, outside "
                           f"the model's vocabulary 0..{d_vocab - 1 if d_vocab else '?'}")
    return t


def _to_tokens(model: Any, text: str, **kwargs: Any) -> Tensor:
    if hasattr(model, "to_tokens"):
        try:
            ids = model.to_tokens(text, truncate=False, move_to_device=False, **kwargs)
        except TypeError:  # HookedEncoder.to_tokens has a narrower signature
            ids = model.to_tokens(text, **kwargs)
        if isinstance(ids, tuple):  # an encoder's bridge returns (tokens, token types, mask)
            ids = ids[0]
        return (ids[0] if ids.ndim == 2 else ids).cpu()
    return torch.as_tensor(model.tokenizer(text)["input_ids"], dtype=torch.long)


@dataclass
class TokenBatch:
    """Right-padded tokens with the mask of real positions and each row's index in the corpus."""

    tokens: Int[Tensor, "batch pos"]
    mask: Int[Tensor, "batch pos"]
    index: list[int]

    @property
    def n_real(self) -> int:
        return int(self.mask.sum())


def batches(seqs: Sequence[Tensor], batch_size: int, *, pad_id: int = 0,
            sort_by_length: bool = True) -> Iterator[TokenBatch]:
    """Yield right-padded batches; with ``sort_by_length`` similar lengths share a batch (less padding).

    Right padding is exact for causal models (real tokens never attend to later pads); for bidirectional
    models pass ``mask`` as the attention mask.
    """
    if batch_size < 1:
        raise FuncnetError(f"batch_size should be >= 1, got {batch_size}")
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i])) if sort_by_length else list(range(len(seqs)))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(seqs[i]) for i in idx)
        toks = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            toks[row, : len(seqs[i])] = seqs[i]
            mask[row, : len(seqs[i])] = 1
        yield TokenBatch(toks, mask, idx)


def pad_id(model: Any) -> int:
    tok = getattr(model, "tokenizer", None)
    pid = getattr(tok, "pad_token_id", None) if tok is not None else None
    if pid is None:
        pid = getattr(tok, "eos_token_id", None) if tok is not None else None
    return int(pid) if pid is not None else 0


__all__ = ["tokenize", "batches", "TokenBatch", "pad_id", "resolve_inputs"]
