"""TransformerLens 3 / 4 differences that feature code outside :mod:`tl_funcnet.models` needs.

TransformerLens 4 removes ``HookedTransformer``, ``HookedTransformerConfig``, ``HookedEncoder`` and
``transformer_lens.utils`` (and sae-lens, which requires <4, is then absent too: see
:func:`tl_funcnet.sae.require_sae_lens`). Nothing here imports TransformerLens at module import time.
"""

from __future__ import annotations

from typing import Any

from .errors import FuncnetError


def hooked_transformer_classes(feature: str) -> tuple[Any, Any]:
    """``(HookedTransformer, HookedTransformerConfig)``, or a :class:`FuncnetError` saying that ``feature``
    builds a HookedTransformer, which this TransformerLens (4 or later) does not have."""
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError as err:
        raise FuncnetError(
            f"{feature} builds a HookedTransformer, which transformer-lens 4 removed; run it in a TransformerLens 3 "
            f"environment (pip install 'transformer-lens<4')"
        ) from err
    return HookedTransformer, HookedTransformerConfig
