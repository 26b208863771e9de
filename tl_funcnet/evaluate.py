"""Evaluation: loss, perplexity, next-token accuracy and KL to the unmodified model, under an Intervention.

:func:`next_token_nll` and :func:`kl_divergence` are the one place next-token loss and KL are computed;
steering side effects, SAE metrics and pruning use them too.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from .activations.forward import is_encoder, run_batches
from .activations.tokens import tokenize
from .errors import FuncnetError
from .hooks import Intervention


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


def next_token_logprobs(logits: Float[Tensor, "batch pos d_vocab"]) -> Float[Tensor, "batch pos_m1 d_vocab"]:
    """Log-probabilities of the next token at every position but the last (float32)."""
    return F.log_softmax(logits[:, :-1].float(), dim=-1)


def next_token_nll(logp: Float[Tensor, "batch pos_m1 d_vocab"], tokens: Int[Tensor, "batch pos"]
                   ) -> Float[Tensor, "batch pos_m1"]:
    """Negative log-likelihood of each actual next token, from :func:`next_token_logprobs`."""
    return -logp.gather(-1, tokens[:, 1:].to(logp.device).unsqueeze(-1)).squeeze(-1)


def kl_divergence(base_logp: Float[Tensor, "... d_vocab"], logp: Float[Tensor, "... d_vocab"]) -> Float[Tensor, "..."]:
    """``KL(base || other)`` per position, from two log-probability tensors."""
    return (base_logp.exp() * (base_logp - logp)).sum(-1)


def target_mask(mask: Int[Tensor, "batch pos"]) -> Bool[Tensor, "batch pos_m1"]:
    """Positions whose next token is real (padding never counts)."""
    return mask[:, 1:].bool()


def _check_causal(model: Any) -> None:
    if is_encoder(model):
        raise FuncnetError(f"{type(model).__name__} is bidirectional; next-token loss needs a causal model "
                           f"(for encoders, compare hidden states through hooks instead)")


@torch.no_grad()
def evaluate(model: Any, texts: Any, intervention: Intervention | None = None, *, batch_size: int = 8,
             max_tokens_per_seq: int | None = 128, compare_to_base: bool = True, prepend_bos: bool | None = None,
             progress: bool = True) -> EvalResult:
    """Next-token loss, perplexity and accuracy of ``model`` under ``intervention`` on ``texts``.

    With ``compare_to_base`` it also runs the unmodified model and reports the mean KL(base ‖ intervened)
    per token (0 without an intervention). Only positions whose next token is real are scored.
    """
    _check_causal(model)
    iv = intervention or Intervention()
    seqs = tokenize(model, texts, max_tokens_per_seq=max_tokens_per_seq, prepend_bos=prepend_bos)
    if all(len(s) < 2 for s in seqs):
        raise FuncnetError("every text has fewer than 2 tokens; next-token metrics need at least 2")
    tot_loss = tot_correct = tot_kl = 0.0
    n = 0
    for batch, logits in run_batches(model, seqs, batch_size=batch_size, intervention=iv,
                                     progress="evaluate" if progress else None):
        toks, tmask = batch.tokens.to(logits.device), target_mask(batch.mask).to(logits.device)
        logp = next_token_logprobs(logits)
        tot_loss += float(next_token_nll(logp, toks)[tmask].sum())
        tot_correct += float((logp.argmax(-1) == toks[:, 1:])[tmask].sum())
        if compare_to_base and iv:
            tot_kl += float(kl_divergence(next_token_logprobs(model(toks)), logp)[tmask].sum())
        n += int(tmask.sum())
    loss = tot_loss / n
    kl_value = (tot_kl / n) if compare_to_base else None
    return EvalResult(loss, math.exp(min(loss, 700.0)), tot_correct / n, kl_value, n)


@torch.no_grad()
def token_losses(model: Any, texts: Any, intervention: Intervention | None = None, *, batch_size: int = 8,
                 max_tokens_per_seq: int | None = 128) -> list[Float[Tensor, "pos_m1"]]:
    """Per-token next-token loss for each text (in corpus order), under ``intervention``."""
    _check_causal(model)
    seqs = tokenize(model, texts, max_tokens_per_seq=max_tokens_per_seq)
    out: list[Tensor | None] = [None] * len(seqs)
    for batch, logits in run_batches(model, seqs, batch_size=batch_size, intervention=intervention):
        nll = next_token_nll(next_token_logprobs(logits), batch.tokens)
        for row, i in enumerate(batch.index):
            out[i] = nll[row, : len(seqs[i]) - 1].cpu()
    return out  # type: ignore[return-value]


def loss(model: Any, texts: Any, intervention: Intervention | None = None, **options: Any) -> float:
    """Mean next-token loss (nats) under ``intervention`` (options as in :func:`evaluate`)."""
    return evaluate(model, texts, intervention, compare_to_base=False, **options).loss


def perplexity(model: Any, texts: Any, intervention: Intervention | None = None, **options: Any) -> float:
    """Token-level perplexity, ``exp(mean loss)`` (options as in :func:`evaluate`)."""
    return evaluate(model, texts, intervention, compare_to_base=False, **options).perplexity


__all__ = ["EvalResult", "evaluate", "token_losses", "loss", "perplexity", "next_token_logprobs", "next_token_nll",
           "kl_divergence", "target_mask"]
