"""Activation patching: exact (batched), attribution patching (AtP) and RelP, over tasks shipped as data.

>>> task = load_task("ioi", model)
>>> exact = run_patching(model, task, method="exact", nodes="mlp")
>>> relp = run_patching(model, task, method="relp", nodes="mlp")
>>> correlation(exact, relp)["pearson"]

Every method reports the same quantity, ``PatchResult.effects``: the change of the metric when a node is
patched. Importing this package registers the ``relp_mlp`` op.
"""

from .api import METHODS as METHODS
from .api import run_patching as run_patching
from .attribution import attribution_patch as attribution_patch
from .concepts import NeuronScores as NeuronScores
from .concepts import neuron_scores as neuron_scores
from .exact import exact_patch as exact_patch
from .metrics import AnswerProb as AnswerProb
from .metrics import LogitDiff as LogitDiff
from .metrics import Normalized as Normalized
from .metrics import answer_prob as answer_prob
from .metrics import logit_diff as logit_diff
from .metrics import normalized_logit_diff as normalized_logit_diff
from .nodes import Node as Node
from .nodes import NodeSet as NodeSet
from .nodes import concat as concat
from .nodes import network_nodes as network_nodes
from .nodes import node_grid as node_grid
from .nodes import sae_feature_nodes as sae_feature_nodes
from .nodes import units_nodes as units_nodes
from .relp import RULES as RULES
from .relp import relp_rules as relp_rules
from .result import PatchResult as PatchResult
from .result import correlation as correlation
from .subspace import IllusionCheck as IllusionCheck
from .subspace import subspace_illusion as subspace_illusion
from .tasks import TASKS as TASKS
from .tasks import Task as Task
from .tasks import load_task as load_task
from .tasks import task_report as task_report

__all__ = [
    "run_patching", "METHODS", "exact_patch", "attribution_patch", "relp_rules", "RULES",
    "LogitDiff", "AnswerProb", "Normalized", "logit_diff", "answer_prob", "normalized_logit_diff",
    "Node", "NodeSet", "node_grid", "units_nodes", "concat", "network_nodes", "sae_feature_nodes", "PatchResult",
    "correlation", "Task", "TASKS", "load_task", "task_report", "IllusionCheck", "subspace_illusion",
    "NeuronScores", "neuron_scores",
]
