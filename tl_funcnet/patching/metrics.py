"""Patching metrics: callables ``metric(logits) -> (batch,)`` giving one value per prompt.

Built-in metrics read one position (the last by default) and carry ``last_position_only = True``, which
lets the sweeps compute logits only there. Any other callable works too (full logits are then passed).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..errors import FuncnetError, ShapeError

Metric = Callable[[Float[Tensor, "batch pos d_vocab"]], Float[Tensor, "batch"]]


def _ids(x: Any, name: str) -> Int[Tensor, "batch"]:
    t = torch.as_tensor(x, dtype=torch.long)
    if t.ndim != 1:
        raise ShapeError(f"{name} should be one token id per prompt (shape (batch,)), got shape {tuple(t.shape)}")
    return t


class _LastPos:
    last_position_only = True
    name = "metric"

    def __init__(self, answer: Any):
        self.answer = _ids(answer, "answer")

    def _rows(self, logits: Tensor, ids: Tensor) -> Tensor:
        b = logits.shape[0]
        if b % ids.shape[0]:
            raise ShapeError(f"{self.name}: logits have batch {b}, which is not a multiple of the "
                             f"{ids.shape[0]} prompts the metric was built for")
        return ids.to(logits.device).repeat(b // ids.shape[0])

    def __repr__(self) -> str:
        return f"{self.name}(n_prompts={self.answer.shape[0]})"


class LogitDiff(_LastPos):
    """``logit[answer] - logit[distractor]`` at the last position, per prompt."""

    name = "logit_diff"

    def __init__(self, answer: Any, distractor: Any):
        super().__init__(answer)
        self.distractor = _ids(distractor, "distractor")
        if self.distractor.shape != self.answer.shape:
            raise ShapeError(f"logit_diff: {self.answer.shape[0]} answers but {self.distractor.shape[0]} distractors")

    def __call__(self, logits: Float[Tensor, "batch pos d_vocab"]) -> Float[Tensor, "batch"]:
        last = logits[:, -1]
        a, d = self._rows(last, self.answer), self._rows(last, self.distractor)
        return last.gather(1, a[:, None])[:, 0] - last.gather(1, d[:, None])[:, 0]


class AnswerProb(_LastPos):
    """Probability of the answer token at the last position, per prompt."""

    name = "answer_prob"

    def __call__(self, logits: Float[Tensor, "batch pos d_vocab"]) -> Float[Tensor, "batch"]:
        last = logits[:, -1].float().log_softmax(-1)
        return last.gather(1, self._rows(last, self.answer)[:, None])[:, 0].exp()


class Normalized:
    """``(m - corrupted) / (clean - corrupted)``: 0 at the corrupted baseline, 1 at the clean one."""

    def __init__(self, metric: Metric, clean: float, corrupted: float):
        if abs(clean - corrupted) < 1e-9:
            raise FuncnetError(f"cannot normalize: the clean ({clean:.4g}) and corrupted ({corrupted:.4g}) "
                               "metric values are equal; choose prompts on which the two runs differ")
        self.metric, self.clean, self.corrupted = metric, float(clean), float(corrupted)
        self.last_position_only = getattr(metric, "last_position_only", False)
        self.name = f"normalized_{getattr(metric, 'name', 'metric')}"

    def __call__(self, logits: Float[Tensor, "batch pos d_vocab"]) -> Float[Tensor, "batch"]:
        return (self.metric(logits) - self.corrupted) / (self.clean - self.corrupted)


def logit_diff(answer: Sequence[int] | Tensor, distractor: Sequence[int] | Tensor) -> LogitDiff:
    return LogitDiff(answer, distractor)


def answer_prob(answer: Sequence[int] | Tensor) -> AnswerProb:
    return AnswerProb(answer)


def normalized_logit_diff(model: Any, clean: Tensor, corrupted: Tensor, answer: Any, distractor: Any) -> Normalized:
    """Logit difference normalized by its mean clean and corrupted values (both measured here)."""
    ld = LogitDiff(answer, distractor)
    with torch.no_grad():
        c = ld(model(clean)[:, -1:]).mean().item()
        k = ld(model(corrupted)[:, -1:]).mean().item()
    return Normalized(ld, c, k)


def check_metric(metric: Any, n_prompts: int, out: Tensor) -> Tensor:
    """Raise unless ``out`` is one value per prompt."""
    if not isinstance(out, Tensor) or out.ndim != 1 or out.shape[0] != n_prompts:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ShapeError(f"metric {metric!r} returned {shape}; a patching metric must return one value per "
                         f"prompt, shape ({n_prompts},) (reduce over positions/vocab, not over the batch)")
    return out


__all__ = ["Metric", "LogitDiff", "AnswerProb", "Normalized", "logit_diff", "answer_prob",
           "normalized_logit_diff", "check_metric"]
