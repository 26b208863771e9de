"""Top-activating contexts: the tokens of a corpus where a score peaks, each with a few neighbours.

A score is one value per collected token (a functional network's activity, an SAE feature, a neuron), laid
out like :class:`~tl_funcnet.activations.Activations` rows (texts concatenated, ``offsets`` between them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..errors import FuncnetError, ShapeError
from ..hooks.values import positive_int


@dataclass(frozen=True)
class Context:
    """One place of a corpus: ``tokens`` around the token at ``peak`` (an index into ``tokens``), their
    ``values``, and where it is (``text`` index, ``position`` of the peak token in that text)."""

    text: int
    position: int
    value: float
    tokens: tuple[str, ...]
    values: tuple[float, ...]
    peak: int


def token_strings(model: Any, ids: Int[Tensor, "n"] | list[int]) -> list[str]:
    """Each token id as its own text (``" Paris"``, ``"\\n"``), decoded by the model's tokenizer; a model
    without one shows ids as ``"<17>"``."""
    ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        return [f"<{int(i)}>" for i in ids]
    return list(tok.batch_decode([[int(i)] for i in ids], clean_up_tokenization_spaces=False))


def context_capacity(offsets: Int[Tensor, "n_texts_plus_1"], window: int) -> int:
    """How many contexts with peaks more than ``window`` tokens apart the texts can surely hold."""
    lengths = (offsets[1:] - offsets[:-1]).tolist()
    return int(sum(-(-int(n) // (2 * window + 1)) for n in lengths))


def check_capacity(offsets: Int[Tensor, "n_texts_plus_1"], k: int, window: int) -> None:
    """Refuse a corpus that cannot hold ``k`` separate contexts of ``+-window`` tokens."""
    cap = context_capacity(offsets, window)
    if cap < k:
        raise FuncnetError(f"the corpus ({int(offsets[-1])} tokens in {len(offsets) - 1} texts) holds only {cap} "
                           f"separate contexts of +-{window} tokens, fewer than k={k}; collect more text, or lower "
                           f"k or window")


def positions(offsets: Int[Tensor, "n_texts_plus_1"]) -> Int[Tensor, "n_samples"]:
    """Each collected token's position inside its own text."""
    n = int(offsets[-1])
    text_of = torch.searchsorted(offsets, torch.arange(n), right=True) - 1
    return torch.arange(n) - offsets[text_of]


def top_contexts(model: Any, scores: Float[Tensor, "n_samples"], token_ids: Int[Tensor, "n_samples"],
                 offsets: Int[Tensor, "n_texts_plus_1"], *, k: int = 8, window: int = 6,
                 positive_only: bool = False, skip_positions: int = 0) -> list[Context]:
    """The ``k`` tokens with the highest score, no two peaks of one text within ``window`` tokens of each other,
    each with ``window`` tokens on either side (cut at the text's ends).

    ``positive_only`` skips tokens scoring 0 or less (an SAE feature that fires rarely then has fewer contexts);
    ``skip_positions`` never picks the first tokens of a text as a peak (without a BOS token the first token is
    an attention sink whose huge residual norm dominates many features). A corpus that cannot hold ``k``
    separate contexts is refused.
    """
    positive_int(k, "k")
    positive_int(window, "window", minimum=0)
    positive_int(skip_positions, "skip_positions", minimum=0)
    scores = torch.as_tensor(scores).detach().float().cpu().reshape(-1)
    n = int(offsets[-1])
    if scores.numel() != n or int(token_ids.numel()) != n:
        raise ShapeError(f"{scores.numel()} scores and {int(token_ids.numel())} token ids for a corpus of {n} tokens; "
                         f"pass one score per collected token")
    if not bool(torch.isfinite(scores).all()):
        raise FuncnetError(f"the scores hold {int((~torch.isfinite(scores)).sum())} NaN or infinite values; check "
                           f"the activations they come from")
    check_capacity(offsets, k, window)
    text_of = torch.searchsorted(offsets, torch.arange(n), right=True) - 1
    ranked = scores.masked_fill(positions(offsets) < skip_positions, float("-inf"))
    taken: dict[int, list[int]] = {}
    picked: list[tuple[int, int, int]] = []  # (row, text, position)
    for row in torch.argsort(ranked, descending=True, stable=True).tolist():
        if len(picked) == k or ranked[row] == float("-inf") or (positive_only and float(scores[row]) <= 0):
            break
        t = int(text_of[row])
        pos = row - int(offsets[t])
        if any(abs(pos - q) <= window for q in taken.get(t, ())):
            continue
        taken.setdefault(t, []).append(pos)
        picked.append((row, t, pos))
    out = []
    for row, t, pos in picked:
        lo, hi = max(int(offsets[t]), row - window), min(int(offsets[t + 1]), row + window + 1)
        out.append(Context(t, pos, float(scores[row]), tuple(token_strings(model, token_ids[lo:hi])),
                           tuple(scores[lo:hi].tolist()), row - lo))
    return out


__all__ = ["Context", "check_capacity", "context_capacity", "positions", "token_strings", "top_contexts"]
