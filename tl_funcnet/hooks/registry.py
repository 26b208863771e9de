"""The op registry: an op name maps to a hook-function factory, a parameter check and a model check.

A :class:`~tl_funcnet.hooks.intervention.Hook` stores ``(site, op, params)``; the function that runs on the
model is built from the registry, which is what makes interventions serializable. The kernel registers its
built-in ops; feature packages register theirs when imported, and declare the module under the entry-point
group ``tl_funcnet.ops`` so that a saved intervention loads without importing the feature by hand. Third-party
packages can register ops the same way.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ..errors import FuncnetError, UnknownOpError

HookFn = Callable[..., Any]
Prepare = Callable[[dict[str, Any]], dict[str, Any]]
Validator = Callable[[Any, str, Mapping[str, Any]], None]

ENTRY_POINT_GROUP = "tl_funcnet.ops"


@dataclass(frozen=True)
class OpSpec:
    """One registered op.

    - ``factory(**params)`` returns the TransformerLens hook function ``fn(activation, hook)``;
    - ``prepare(params)`` checks and normalizes the parameters when a Hook is made (no model needed);
    - ``validate(model, site, params)`` raises before anything is attached if the params do not fit the model;
    - ``writes`` is False for ops that only read the activation; ``direction`` is ``"fwd"`` or ``"bwd"``;
    - ``refs`` name parameters held by reference (a caller's dict, a callback); all others are frozen copies;
    - ``serializable`` is False when a parameter is a Python object (then ``refs`` is usually non-empty);
    - ``uses_scratch``: the factory also receives ``scratch``, a dict shared by the hook functions of one
      application (how an op reads what a ``stash`` op recorded at an earlier site of the same forward);
    - ``flags``: TransformerLens config flags the op needs on while applied (besides those its site needs,
      which ``applied`` turns on anyway), e.g. ``ungroup_grouped_query_attention``.
    """

    name: str
    factory: Callable[..., HookFn]
    prepare: Prepare | None = None
    validate: Validator | None = None
    writes: bool = True
    serializable: bool = True
    direction: str = "fwd"
    refs: tuple[str, ...] = ()
    uses_scratch: bool = False
    flags: tuple[str, ...] = ()

    @property
    def parameters(self) -> tuple[str, ...]:
        """Parameter names the factory accepts (besides ``scratch``)."""
        return tuple(n for n in inspect.signature(self.factory).parameters if n != "scratch")


OPS: dict[str, OpSpec] = {}


def register_op(
    name: str,
    *,
    prepare: Prepare | None = None,
    validate: Validator | None = None,
    writes: bool = True,
    serializable: bool = True,
    direction: str = "fwd",
    refs: tuple[str, ...] = (),
    uses_scratch: bool = False,
    flags: tuple[str, ...] = (),
    replace: bool = False,
) -> Callable[[Callable[..., HookFn]], Callable[..., HookFn]]:
    """Decorator that registers a hook-function factory under ``name``.

    A name can be registered once; ``replace=True`` swaps an existing op on purpose.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise FuncnetError(f"op names should be identifiers like 'my_edit', got {name!r}")
    if direction not in ("fwd", "bwd"):
        raise FuncnetError(f"direction should be 'fwd' or 'bwd', got {direction!r}")

    def deco(factory: Callable[..., HookFn]) -> Callable[..., HookFn]:
        old = OPS.get(name)
        if old is not None and not replace and old.factory is not factory:
            raise FuncnetError(f"an op named {name!r} is already registered (by {old.factory.__module__}); "
                               f"choose another name, or pass replace=True to swap it on purpose")
        OPS[name] = OpSpec(name, factory, prepare, validate, writes, serializable, direction, tuple(refs),
                           uses_scratch, tuple(flags))
        return factory

    return deco


def _load_entry_points() -> None:
    """Import every module declared under the ``tl_funcnet.ops`` entry-point group (they register ops)."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except ImportError:
            continue


def get_op(name: str) -> OpSpec:
    """The registered op called ``name``; an :class:`UnknownOpError` lists close names otherwise."""
    if name not in OPS:
        _load_entry_points()
    try:
        return OPS[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), list(OPS), n=3)
        hint = f" Did you mean {close}?" if close else f" Registered ops: {sorted(OPS)}."
        raise UnknownOpError(
            f"unknown op {name!r}.{hint} Register new ops with @tl_funcnet.hooks.register_op({name!r})."
        ) from None


__all__ = ["OPS", "OpSpec", "HookFn", "register_op", "get_op", "ENTRY_POINT_GROUP"]
