"""tl_funcnet: functional networks, pruning, fingerprints, patching, SAE features and steering for
TransformerLens, all delivered as composable hook interventions.

Names are imported lazily so that ``import tl_funcnet`` and ``tl-funcnet --help`` stay fast; the kernel
lives in :mod:`tl_funcnet.hooks`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_HOOK_NAMES = (
    "Hook", "Intervention", "ablate", "add", "capture", "capture_grad", "clamp", "custom", "detach", "keep_only",
    "patch", "patch_subspace", "project_onto", "project_out", "record", "register_op", "resolve_sites", "scale",
    "sparsify", "steer", "last_token_positions",
)

__all__ = ["FuncnetError", *_HOOK_NAMES, "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from .errors import FuncnetError as FuncnetError
    from .hooks import *  # noqa: F403


def __getattr__(name: str) -> Any:
    if name == "FuncnetError":
        from .errors import FuncnetError

        return FuncnetError
    if name in _HOOK_NAMES:
        return getattr(importlib.import_module(".hooks", __name__), name)
    raise AttributeError(f"module 'tl_funcnet' has no attribute {name!r}")
