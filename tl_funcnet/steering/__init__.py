"""Steering vectors as interventions: build a direction, then add it with ``to_intervention``.

>>> sv = mean_difference(model, positive, negative, "blocks.6.hook_resid_post")
>>> with sv.to_intervention(scale=4.0, pos="generated").applied(model):
...     model.generate(tokens, use_past_kv_cache=True)
>>> generate(model, "The movie was", sv, scale=4.0)   # the same, one call

Importing this package registers the ``steer_gen`` op (needed to load saved steering interventions).
"""

from .builders import entropy_weighted as entropy_weighted
from .builders import from_network as from_network
from .builders import from_sae as from_sae
from .builders import mean_difference as mean_difference
from .builders import mean_differences as mean_differences
from .builders import pca_direction as pca_direction
from .builders import read_examples as read_examples
from .evaluation import NeutralReference as NeutralReference
from .evaluation import best_config as best_config
from .evaluation import prompt_logprobs as prompt_logprobs
from .evaluation import plot_sweep as plot_sweep
from .evaluation import sweep as sweep
from .evaluation import target_metrics as target_metrics
from .generation import generate as generate
from .lineas import LinEASMaps as LinEASMaps
from .lineas import train_lineas as train_lineas
from .ops import GEN_MODES as GEN_MODES
from .prompts import PromptPairs as PromptPairs
from .prompts import load_pairs as load_pairs
from .prompts import read_prompts as read_prompts
from .vector import SteeringVector as SteeringVector
from .vector import random_like as random_like

__all__ = [
    "SteeringVector", "random_like", "mean_difference", "mean_differences", "pca_direction", "entropy_weighted",
    "from_network", "from_sae", "read_examples", "generate", "GEN_MODES", "sweep", "best_config", "plot_sweep",
    "NeutralReference", "target_metrics", "prompt_logprobs", "PromptPairs", "load_pairs", "read_prompts",
    "LinEASMaps", "train_lineas",
]
