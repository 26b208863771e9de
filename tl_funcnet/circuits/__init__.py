"""Circuits on edges: the graph of a transformer, edge scores (exact patching, EAP, EAP-IG, RelP), circuits
chosen from them, and their evaluation (faithfulness curves, CPR, CMD), all run as interventions.

>>> graph = Graph.from_model(model)
>>> exact = exact_edge_scores(model, graph, task.clean, task.corrupted, task.metric(), edges=sample)
>>> scores = edge_scores(model, graph, task.clean, task.corrupted, task.metric(), method="eap-ig-inputs")
>>> circuit = scores.circuit(300)                       # the 300 best edges, pruned
>>> faithfulness(model, circuit, task.clean, task.metric(), corrupted=task.corrupted)

Functional networks or SAE features as senders (each MLP split into their shares and the rest):

>>> graph = Graph.from_model(model, groups=networks)                      # a fitted FunctionalNetworks
>>> graph = Graph.from_model(model, groups=feature_groups({6: [17, 40]}), saes={6: sae})   # SAE on hook_mlp_out
>>> edge_scores(model, graph, ...).by_group(circuit)                      # scores read per network / feature

Importing this package registers the ``edge_source`` and ``edge_sink`` ops.
"""

from . import ops as ops  # registers the ops
from .attribution import METHODS as METHODS
from .attribution import edge_scores as edge_scores
from .circuit import AblatedValues as AblatedValues
from .circuit import Circuit as Circuit
from .circuit import circuits_intervention as circuits_intervention
from .evaluate import FRACTIONS as FRACTIONS
from .evaluate import FaithfulnessCurve as FaithfulnessCurve
from .evaluate import circuit_metrics as circuit_metrics
from .evaluate import edges_for_faithfulness as edges_for_faithfulness
from .evaluate import faithfulness as faithfulness
from .evaluate import faithfulness_curve as faithfulness_curve
from .exact import exact_edge_scores as exact_edge_scores
from .graph import Graph as Graph
from .graph import feature_groups as feature_groups
from .graph import network_groups as network_groups
from .planted import PLANTED_BLOCKS as PLANTED_BLOCKS
from .planted import PLANTED_KINDS as PLANTED_KINDS
from .planted import PlantedCircuit as PlantedCircuit
from .planted import planted_circuit as planted_circuit
from .plots import plot_circuit as plot_circuit
from .plots import plot_faithfulness as plot_faithfulness
from .run import ablated_values as ablated_values
from .run import edge_hooks as edge_hooks
from .run import sender_outputs as sender_outputs
from .scores import EdgeScores as EdgeScores
from .scores import auroc as auroc
from .scores import edge_correlation as edge_correlation

__all__ = ["Graph", "network_groups", "feature_groups", "Circuit", "AblatedValues", "EdgeScores", "FaithfulnessCurve", "FRACTIONS", "ablated_values",
           "sender_outputs", "edge_hooks", "circuits_intervention", "circuit_metrics", "faithfulness",
           "faithfulness_curve", "edges_for_faithfulness", "exact_edge_scores", "edge_scores", "METHODS",
           "edge_correlation", "auroc", "plot_circuit", "plot_faithfulness", "planted_circuit", "PlantedCircuit",
           "PLANTED_KINDS", "PLANTED_BLOCKS"]
