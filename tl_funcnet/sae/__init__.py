"""SAE features as composable hooks: sae-lens SAEs as ``sae_edit``/``sae_capture`` ops, metrics, training.

Importing this package registers the ``sae_edit`` and ``sae_capture`` ops. Top-AFA SAEs (``"topafa"``,
:mod:`~tl_funcnet.sae.topafa`) join sae-lens's architectures whenever tl_funcnet uses sae-lens. Training
(:func:`train_sae`) and loading (:func:`load_sae`) import sae-lens lazily: it is the optional ``sae`` extra;
it requires transformer-lens<4, so under TransformerLens 4 they raise :class:`~tl_funcnet.errors.FuncnetError` (see
:func:`require_sae_lens`); the ops, builders and metrics need only the SAE's tensors.
"""

from . import ops as ops  # registers the ops
from ._requires import require_sae_lens as require_sae_lens
from .builders import ablate_features as ablate_features
from .builders import capture_features as capture_features
from .builders import clamp_features as clamp_features
from .builders import edit_features as edit_features
from .builders import scale_features as scale_features
from .builders import set_features as set_features
from .builders import splice as splice
from .builders import steer_features as steer_features
from .features import collect_features as collect_features
from .features import feature_site as feature_site
from .metrics import SAEMetrics as SAEMetrics
from .metrics import evaluate_sae as evaluate_sae
from .metrics import max_decoder_cos as max_decoder_cos
from .params import ARCHITECTURES as ARCHITECTURES
from .params import decode as decode
from .params import encode as encode
from .params import sae_params as sae_params
from .topafa import top_afa as top_afa
from .train import DEFAULT_SITES as DEFAULT_SITES
from .train import train_and_save as train_and_save
from .train import load_sae as load_sae
from .train import save_sae as save_sae
from .train import train_sae as train_sae
from .train import token_dataset as token_dataset

__all__ = [
    "splice", "edit_features", "ablate_features", "set_features", "steer_features", "scale_features",
    "clamp_features", "capture_features", "collect_features", "feature_site", "SAEMetrics", "evaluate_sae",
    "max_decoder_cos", "ARCHITECTURES", "sae_params", "encode", "decode", "train_sae", "token_dataset",
    "save_sae", "load_sae", "DEFAULT_SITES", "train_and_save", "require_sae_lens",
    "top_afa",
]
