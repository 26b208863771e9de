"""The op registry: an op name maps to a hook-function factory and a shape check.

A :class:`~tl_funcnet.hooks.intervention.Hook` stores ``(site, op, params)``; the function that runs on the
model is built from the registry, which is what makes interventions serializable. Register new ops with
:func:`register_op`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ..errors import UnknownOpError

HookFn = Callable[..., Any]
Validator = Callable[[Any, str, Mapping[str, Any]], None]


@dataclass(frozen=True)
class OpSpec:
    """One registered op.

    ``factory(**params)`` returns the TransformerLens hook function ``fn(activation, hook)``.
    ``validate(model, site, params)`` raises before anything is attached. ``writes`` is False for ops
    that only read the activation (capture), ``direction`` is ``"fwd"`` or ``"bwd"``.
    """

    name: str
    factory: Callable[..., HookFn]
    validate: Validator | None = None
    writes: bool = True
    serializable: bool = True
    direction: str = "fwd"


OPS: dict[str, OpSpec] = {}

#: Feature modules that register ops of their own; imported on first lookup of an unknown name, so an
#: intervention saved with, say, a steering op loads without importing tl_funcnet.steering by hand.
OP_PROVIDERS = ("tl_funcnet.steering.ops", "tl_funcnet.sae.ops", "tl_funcnet.pruning.ops",
                "tl_funcnet.patching.ops")


def register_op(
    name: str,
    *,
    validate: Validator | None = None,
    writes: bool = True,
    serializable: bool = True,
    direction: str = "fwd",
) -> Callable[[Callable[..., HookFn]], Callable[..., HookFn]]:
    """Decorator that registers a hook-function factory under ``name``."""

    if direction not in ("fwd", "bwd"):
        raise ValueError(f"direction should be 'fwd' or 'bwd', got {direction!r}")

    def deco(factory: Callable[..., HookFn]) -> Callable[..., HookFn]:
        OPS[name] = OpSpec(name, factory, validate, writes, serializable, direction)
        return factory

    return deco


def get_op(name: str) -> OpSpec:
    """The registered op called ``name``; an :class:`UnknownOpError` lists close names otherwise."""
    if name not in OPS:
        import importlib

        for module in OP_PROVIDERS:
            try:
                importlib.import_module(module)
            except ImportError:
                continue
    try:
        return OPS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(OPS), n=3)
        hint = f" Did you mean {close}?" if close else f" Registered ops: {sorted(OPS)}."
        raise UnknownOpError(
            f"unknown op {name!r}.{hint} Register new ops with @tl_funcnet.hooks.register_op({name!r})."
        ) from None


__all__ = ["OPS", "OpSpec", "HookFn", "register_op", "get_op"]
