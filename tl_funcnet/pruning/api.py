"""The pruning entry points: plan (score + select), compensate, and the one-call :func:`prune`."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

from ..errors import FuncnetError
from .calibration import Calibration, compensation_means
from .hard import hard_prune
from .model_info import check_prunable, mlp_width_list, protected_layers
from .plan import PruningPlan, select
from .scores import ALLOCATION, SCORERS, STANDARDIZE, Scores, score

METHODS = tuple(SCORERS)


def _check_method(method: str) -> None:
    if method not in SCORERS:
        raise FuncnetError(f"unknown pruning method {method!r}; choose one of {sorted(SCORERS)}")


def plan_from_scores(model: Any, scores: Scores, ratio: float, method: str, *, protect_first: int = 3,
                     protect_last: int = 2, protect: Sequence[int] | None = None, min_keep: int = 1,
                     allocation: str | None = None) -> PruningPlan:
    """Select neurons from precomputed ``scores`` (reuse one scoring across ratios)."""
    _check_method(method)
    widths = mlp_width_list(model)
    prot = protected_layers(len(widths), protect_first, protect_last, protect)
    return select(scores, widths, ratio, allocation=allocation or ALLOCATION[method], protected=prot,
                  standardize=STANDARDIZE[method], min_keep=min_keep, method=method)


def plan_pruning(model: Any, ratio: float, method: str = "fn", calib: Calibration | None = None, *,
                 protect_first: int = 3, protect_last: int = 2, protect: Sequence[int] | None = None,
                 min_keep: int = 1, allocation: str | None = None, **score_options: Any) -> PruningPlan:
    """Score the neurons with ``method`` and select ``ratio`` of all MLP neurons to remove.

    All arguments are validated before any forward pass. ``score_options`` go to the scorer (fn:
    ``n_components``, ``n_restarts``, ``n_runs``, ``seed``; random: ``seed``).
    """
    check_prunable(model)
    _check_method(method)
    widths = mlp_width_list(model)
    prot = protected_layers(len(widths), protect_first, protect_last, protect)
    # validate the ratio (and reachability) on dummy scores before the expensive scoring
    import torch

    select([torch.zeros(w) for w in widths], widths, ratio, allocation=allocation or ALLOCATION[method],
           protected=prot, min_keep=min_keep, method=method)
    layers = [l for l in range(len(widths)) if l not in prot]
    scores = score(model, calib, method, layers=layers, **score_options)
    return plan_from_scores(model, scores, ratio, method, protect_first=protect_first, protect_last=protect_last,
                            protect=protect, min_keep=min_keep, allocation=allocation)


def compensate(model: Any, plan: PruningPlan, calib: Calibration) -> PruningPlan:
    """The plan with FLAP-style compensation means, measured on ``calib`` with earlier layers pruned."""
    plan.check_model(model)
    return replace(plan, means=compensation_means(model, calib, plan.pruned))


def prune(model: Any, ratio: float, method: str = "fn", calib: Any = "calibration", *,
          bias_compensation: bool = True, hard: bool = True, max_tokens: int = 2048,
          max_tokens_per_seq: int = 128, protect_first: int = 3, protect_last: int = 2,
          protect: Sequence[int] | None = None, **score_options: Any) -> tuple[Any, PruningPlan]:
    """Prune ``ratio`` of the MLP neurons of ``model`` with ``method``.

    Returns ``(pruned_model, plan)`` with ``hard=True`` (a smaller deep copy; ``model`` is untouched), or
    ``(intervention, plan)`` with ``hard=False`` (soft pruning to apply with ``iv.applied(model)``).
    ``calib`` is a :class:`Calibration` or anything :meth:`Calibration.from_texts` accepts.
    """
    check_prunable(model)
    _check_method(method)
    if not isinstance(calib, Calibration):
        needs = bias_compensation or method not in ("random", "magnitude")
        calib = Calibration.from_texts(model, calib, max_tokens=max_tokens,
                                       max_tokens_per_seq=max_tokens_per_seq) if needs else None
    plan = plan_pruning(model, ratio, method, calib, protect_first=protect_first, protect_last=protect_last,
                        protect=protect, **score_options)
    if bias_compensation:
        plan = compensate(model, plan, calib)  # type: ignore[arg-type]
    if hard:
        return hard_prune(model, plan, bias_compensation=bias_compensation), plan
    return plan.to_intervention(bias_compensation=bias_compensation), plan


__all__ = ["METHODS", "plan_pruning", "plan_from_scores", "compensate", "prune"]
