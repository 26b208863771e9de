"""Structured pruning of MLP neurons: FN pruning (keep functional-network key neurons) and baselines.

>>> small, plan = prune(model, 0.2, method="fn")                  # a smaller copy, FLAP bias compensation
>>> iv = plan_pruning(model, 0.2, method="wanda").to_intervention()  # soft pruning: an Intervention
>>> calibration = Calibration.from_texts(model, "calibration")           # reuse scores across ratios:
>>> s = score(model, calibration, "fn"); plan = compensate(model, plan_from_scores(model, s, 0.3, "fn"), calibration)

Methods: ``fn`` (functional-network key neurons from CanICA), ``fn_guided``, ``cfsp`` (coarse-to-fine
activation information), ``fn_cfsp``, ``flap``, ``wanda``, ``magnitude``, ``activation``, ``random``; see
:mod:`tl_funcnet.pruning.scores` for definitions and per-layer allocation.
"""

from .api import METHODS as METHODS
from .api import compensate as compensate
from .api import plan_from_scores as plan_from_scores
from .api import plan_pruning as plan_pruning
from .api import prune as prune
from .calibration import Calibration as Calibration
from .calibration import NeuronStats as NeuronStats
from .hard import hard_prune as hard_prune
from .model_info import protected_layers as protected_layers
from .plan import PruningPlan as PruningPlan
from .plan import select as select
from .scores import ALLOCATION as ALLOCATION
from .scores import method_options as method_options
from .scores import score as score
from .sweep import sweep as sweep

__all__ = ["METHODS", "ALLOCATION", "Calibration", "NeuronStats", "PruningPlan", "compensate", "hard_prune",
           "method_options", "plan_from_scores", "plan_pruning", "protected_layers", "prune", "score", "select",
           "sweep"]
