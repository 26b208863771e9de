"""The one place that imports sae-lens for tl_funcnet, and the error when it is missing.

sae-lens is the optional ``sae`` extra: it requires transformer-lens<4, so a TransformerLens 4 environment has
none. Only training (:func:`~tl_funcnet.sae.train_sae`) and loading (:func:`~tl_funcnet.sae.load_sae`) need
it; the SAE ops, builders and metrics work on the tensors of an SAE (or a ``sae_params`` dict) without it.
"""

from __future__ import annotations

from types import ModuleType

from ..errors import FuncnetError

#: what every "sae-lens is missing" error says after naming the feature
SAE_LENS_MISSING = ("needs sae-lens, which requires transformer-lens<4; pip install 'tl_funcnet[sae]' in a "
                    "TransformerLens 3 environment")


def require_sae_lens(feature: str = "this SAE feature") -> ModuleType:
    """Return the ``sae_lens`` module with the top-AFA architecture registered in it, or raise
    :class:`FuncnetError` saying ``feature`` needs it."""
    try:
        import sae_lens
    except ImportError as err:  # not installed, or an install that cannot import against this TransformerLens
        raise FuncnetError(f"{feature} {SAE_LENS_MISSING} (import sae_lens failed: {err})") from err
    from .lens_topafa import register_top_afa

    register_top_afa()
    return sae_lens
