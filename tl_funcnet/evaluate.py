"""Evaluation helpers: loss, perplexity, next-token accuracy and KL to the unmodified model, under an Intervention."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from .errors import FuncnetError
from .hooks import Intervention
from .activations.tokens import batches, pad_id, tokenize


@dataclass(frozen=True)
class EvalResult:
    """Corpus-level metrics (token-weighted means over every predicted token)."""

    loss: float
    perplexity: float
    accuracy: float
    kl: float | None
    n_tokens: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def _check_causal(model: Any) -> None:
    if getattr(getattr(model, "cfg", None), "attention_dir", "causal") == "bidirectional":
        raise FuncnetError(f"{type(model).__name__} is bidirectional; next-token loss needs a causal model "
                           f"(for encoders, compare hidden states through hooks instead)")


@torch.no_grad()
def evaluate(model: Any, texts: Any, intervention: Intervention | None = None, *, batch_size: int = 8,
             max_tokens_per_seq: int | None = 128, compare_to_base: bool = True, prepend_bos: bool | None = None,
             progress: bool = True) -> EvalResult:
    """Next-token loss, perplexity and accuracy of ``model`` under ``intervention`` on ``texts``.

    With ``compare_to_base`` it also runs the unmodified model and reports the mean KL(base ‖ intervened)
    per token. Padding never counts: only positions whose next token is real are scored.
    """
    from tqdm.auto import tqdm

    _check_causal(model)
    iv = intervention or Intervention()
    iv.validate(model)
    seqs = tokenize(model, texts, max_tokens_per_seq=max_tokens_per_seq, prepend_bos=prepend_bos)
    if all(len(s) < 2 for s in seqs):
        raise FuncnetError("every text has fewer than 2 tokens; next-token metrics need at least 2")
    tot_loss = tot_correct = tot_kl = 0.0
    n = 0
    bar = tqdm(total=len(seqs), desc="evaluate", unit="seq", disable=not progress, leave=False)
    device = _device(model)
    for batch in batches(seqs, batch_size, pad_id=pad_id(model)):
        toks = batch.tokens.to(device)
        target_mask = batch.mask[:, 1:].to(device).bool()
        with iv.applied(model):
            logits = model(toks)
        logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
        tgt = toks[:, 1:]
        nll = -logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
        tot_loss += float(nll[target_mask].sum())
        tot_correct += float((logp.argmax(-1) == tgt)[target_mask].sum())
        if compare_to_base and iv:
            base_logp = F.log_softmax(model(toks)[:, :-1].float(), dim=-1)
            kl = (base_logp.exp() * (base_logp - logp)).sum(-1)
            tot_kl += float(kl[target_mask].sum())
        n += int(target_mask.sum())
        bar.update(len(batch.index))
    bar.close()
    loss = tot_loss / n
    kl_value = (tot_kl / n if iv else 0.0) if compare_to_base else None
    return EvalResult(loss, math.exp(min(loss, 700.0)), tot_correct / n, kl_value, n)


@torch.no_grad()
def token_losses(model: Any, texts: Any, intervention: Intervention | None = None, *, batch_size: int = 8,
                 max_tokens_per_seq: int | None = 128) -> list[Float[Tensor, "pos_minus_1"]]:
    """Per-token next-token loss for each text (in corpus order), under ``intervention``."""
    _check_causal(model)
    iv = intervention or Intervention()
    iv.validate(model)
    seqs = tokenize(model, texts, max_tokens_per_seq=max_tokens_per_seq)
    out: list[Tensor | None] = [None] * len(seqs)
    device = _device(model)
    for batch in batches(seqs, batch_size, pad_id=pad_id(model)):
        toks = batch.tokens.to(device)
        with iv.applied(model):
            logits = model(toks)
        nll = -F.log_softmax(logits[:, :-1].float(), -1).gather(-1, toks[:, 1:].unsqueeze(-1)).squeeze(-1)
        for row, i in enumerate(batch.index):
            out[i] = nll[row, : len(seqs[i]) - 1].cpu()
    return out  # type: ignore[return-value]


def loss(model: Any, texts: Any, intervention: Intervention | None = None, **kwargs: Any) -> float:
    """Mean next-token loss (nats) under ``intervention``."""
    return evaluate(model, texts, intervention, compare_to_base=False, **kwargs).loss


def perplexity(model: Any, texts: Any, intervention: Intervention | None = None, **kwargs: Any) -> float:
    """Token-level perplexity, ``exp(mean loss)``."""
    return evaluate(model, texts, intervention, compare_to_base=False, **kwargs).perplexity


__all__ = ["EvalResult", "evaluate", "token_losses", "loss", "perplexity"]
