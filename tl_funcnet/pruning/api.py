"""The pruning entry points: :func:`plan_pruning` (score, select, compensate) and :func:`prune` (the smaller model)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

import torch

from ..errors import FuncnetError
from .calibration import Calibration, compensation_means
from .hard import hard_prune
from .model_info import check_prunable, protected_layers
from .plan import PruningPlan, select
from .scores import ALLOCATION, SCORERS, STANDARDIZE, Scores, method_options, score

METHODS = tuple(SCORERS)
_WEIGHTS_ONLY = ("magnitude", "random")  # every other method reads calibration activations


def _check_method(method: Any) -> None:
    if method not in SCORERS:
        raise FuncnetError(f"unknown pruning method {method!r}; choose one of {sorted(SCORERS)}")


def plan_from_scores(model: Any, scores: Scores, ratio: float, method: str, *, protect_first: int = 3,
                     protect_last: int = 2, protect: Sequence[int] | None = None, min_keep: int = 1,
                     allocation: str | None = None) -> PruningPlan:
    """Select neurons from precomputed ``scores`` (reuse one scoring across ratios); no compensation means."""
    _check_method(method)
    widths = check_prunable(model)
    prot = protected_layers(len(widths), protect_first, protect_last, protect)
    return select(scores, widths, ratio, allocation=allocation or ALLOCATION[method], protected=prot,
                  standardize=STANDARDIZE[method], min_keep=min_keep, method=method)


def compensate(model: Any, plan: PruningPlan, calibration: Calibration) -> PruningPlan:
    """The plan with FLAP-style compensation means, measured on ``calibration`` with earlier layers pruned."""
    plan.check_model(model)
    return replace(plan, means=compensation_means(model, calibration, plan.pruned))


def calibration_for(model: Any, texts: Any, *, max_tokens: int = 2048, max_tokens_per_seq: int = 128) -> Calibration:
    """``texts`` as a :class:`Calibration` for ``model`` (a Calibration passes through, checked)."""
    if isinstance(texts, Calibration):
        texts.check_model(model)
        return texts
    return Calibration.from_texts(model, texts, max_tokens=max_tokens, max_tokens_per_seq=max_tokens_per_seq)


def plan_pruning(model: Any, ratio: float, method: str = "fn", texts: Any = "calibration", *,
                 bias_compensation: bool = True, max_tokens: int = 2048, max_tokens_per_seq: int = 128,
                 protect_first: int = 3, protect_last: int = 2, protect: Sequence[int] | None = None,
                 min_keep: int = 1, allocation: str | None = None, **options: Any) -> PruningPlan:
    """Score the MLP neurons with ``method``, select ``ratio`` of them to remove, and (with
    ``bias_compensation``) measure the FLAP-style means that :func:`hard_prune` and
    ``plan.to_intervention()`` add back.

    ``texts`` is the calibration text (split name, path, list of strings) or a :class:`Calibration`; methods
    that read only weights (``magnitude``, ``random``) need it only for compensation. ``options`` are the
    method's own (``fn``: ``n_networks``, ``n_restarts``, ``n_runs``, ``random_state``; ``fn_guided``: those and
    ``base``, ``key_fraction``; ``random``: ``random_state``): anything else is refused before any forward pass.
    """
    widths = check_prunable(model)
    _check_method(method)
    unknown = sorted(set(options) - set(method_options(method)))
    if unknown:
        raise FuncnetError(f"method {method!r} takes the options {list(method_options(method))}, not {unknown}")
    if not isinstance(bias_compensation, bool):
        raise FuncnetError(f"bias_compensation should be True or False, got {bias_compensation!r}")
    prot = protected_layers(len(widths), protect_first, protect_last, protect)
    # validate the ratio (and reachability) on dummy scores before the expensive scoring
    select([torch.zeros(w) for w in widths], widths, ratio, allocation=allocation or ALLOCATION[method],
           protected=prot, min_keep=min_keep, method=method)
    needs_text = bias_compensation or method not in _WEIGHTS_ONLY
    calibration = calibration_for(model, texts, max_tokens=max_tokens, max_tokens_per_seq=max_tokens_per_seq) \
        if needs_text else None
    layers = [l for l in range(len(widths)) if l not in prot]
    scores = score(model, calibration, method, layers=layers, **options)
    plan = plan_from_scores(model, scores, ratio, method, protect_first=protect_first, protect_last=protect_last,
                            protect=protect, min_keep=min_keep, allocation=allocation)
    return compensate(model, plan, calibration) if bias_compensation else plan  # type: ignore[arg-type]


def prune(model: Any, ratio: float, method: str = "fn", texts: Any = "calibration", *,
          bias_compensation: bool = True, **options: Any) -> tuple[Any, PruningPlan]:
    """Prune ``ratio`` of the MLP neurons of ``model``: ``(smaller_model, plan)``; ``model`` is untouched.

    Arguments as in :func:`plan_pruning`. For soft pruning (an Intervention on the unpruned model) use
    ``plan_pruning(...).to_intervention()``.
    """
    plan = plan_pruning(model, ratio, method, texts, bias_compensation=bias_compensation, **options)
    return hard_prune(model, plan, bias_compensation=bias_compensation), plan


__all__ = ["METHODS", "plan_pruning", "plan_from_scores", "compensate", "calibration_for", "prune"]
