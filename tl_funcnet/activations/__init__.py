"""Activation collection over a corpus: token matrices per site, in memory or streamed to disk."""

from .collector import ActivationCollector as ActivationCollector
from .collector import collect as collect
from .forward import run_batches as run_batches
from .store import Activations as Activations
from .tokens import batches as batches
from .tokens import tokenize as tokenize

__all__ = ["ActivationCollector", "Activations", "collect", "run_batches", "tokenize", "batches"]
