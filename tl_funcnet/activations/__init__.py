"""Activation collection over a corpus: token matrices per site, in memory or streamed to disk."""

from .collector import ActivationCollector as ActivationCollector
from .collector import collect as collect
from .collector import layer_sites as layer_sites
from .store import Activations as Activations
from .tokens import batches as batches
from .tokens import tokenize as tokenize

__all__ = ["ActivationCollector", "Activations", "collect", "layer_sites", "tokenize", "batches"]
