"""The kernel: the :class:`Intervention` type, the op registry, the built-in ops and sites.

Imports torch and TransformerLens only; feature packages build interventions from these pieces.
"""

from . import edit as edit  # registers the built-in ops that change activations
from . import read as read  # registers the built-in ops that read activations
from .builders import ablate as ablate
from .builders import add as add
from .builders import capture as capture
from .builders import capture_grad as capture_grad
from .builders import clamp as clamp
from .builders import custom as custom
from .builders import detach as detach
from .builders import keep_only as keep_only
from .builders import patch as patch
from .builders import patch_subspace as patch_subspace
from .builders import project_onto as project_onto
from .builders import project_out as project_out
from .builders import record as record
from .builders import scale as scale
from .builders import sparsify as sparsify
from .builders import steer as steer
from .intervention import Hook as Hook
from .intervention import Intervention as Intervention
from .registry import OPS as OPS
from .registry import register_op as register_op
from .select import last_token_positions as last_token_positions
from .serialize import SCHEMA_VERSION as SCHEMA_VERSION
from .sites import check_sites as check_sites
from .sites import resolve_sites as resolve_sites
from .sites import site_shape as site_shape

__all__ = [
    "Intervention", "Hook", "SCHEMA_VERSION", "OPS", "register_op", "check_sites", "resolve_sites", "site_shape",
    "steer", "add", "scale", "ablate", "keep_only", "patch", "patch_subspace", "project_out", "project_onto",
    "clamp", "sparsify", "detach",
    "capture", "capture_grad", "record", "custom", "last_token_positions",
]
