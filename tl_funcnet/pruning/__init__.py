"""Structured pruning of MLP neurons: FN pruning (keep functional-network key neurons) and baselines.

>>> model2, plan = prune(model, 0.2, method="fn")            # hard: a smaller copy, FLAP bias compensation
>>> iv, plan = prune(model, 0.2, method="wanda", hard=False)  # soft: an Intervention
>>> calib = Calibration.from_texts(model, "calibration")      # reuse scores across ratios:
>>> s = score(model, calib, "fn"); plan = compensate(model, plan_from_scores(model, s, 0.3, "fn"), calib)

Methods: ``fn`` (methods.md §2), ``flap``, ``wanda``, ``magnitude``, ``activation``, ``random``; see
:mod:`tl_funcnet.pruning.scores` for definitions and per-layer allocation. Names are imported lazily so the
CLI module (:mod:`tl_funcnet.pruning.cli`) can register its command without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_NAMES = {
    "METHODS": "api", "compensate": "api", "plan_from_scores": "api", "plan_pruning": "api", "prune": "api",
    "Calibration": "calibration", "NeuronStats": "calibration", "hard_prune": "hard",
    "protected_layers": "model_info", "PruningPlan": "plan", "select": "plan", "ALLOCATION": "scores",
    "score": "scores",
}

__all__ = sorted(_NAMES)

if TYPE_CHECKING:  # pragma: no cover
    from .api import METHODS, compensate, plan_from_scores, plan_pruning, prune  # noqa: F401
    from .calibration import Calibration, NeuronStats  # noqa: F401
    from .hard import hard_prune  # noqa: F401
    from .model_info import protected_layers  # noqa: F401
    from .plan import PruningPlan, select  # noqa: F401
    from .scores import ALLOCATION, score  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    raise AttributeError(f"module 'tl_funcnet.pruning' has no attribute {name!r}")
