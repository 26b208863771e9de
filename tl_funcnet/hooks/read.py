"""The built-in ops that read an activation without changing it: capture, capture_grad, record, stash; and
``custom``, the escape hatch for arbitrary hook functions.

``capture`` and ``capture_grad`` copy into a dict the caller owns; ``record`` hands each activation to a
callback (how collection streams rows); ``stash`` keeps the activation in the scratch space one application
of an intervention shares, so an op at a later site of the same forward can read it. Those holding a
caller's object cannot be saved.
"""

from __future__ import annotations

from typing import Any, Callable, MutableMapping

from torch import Tensor

from ..errors import FuncnetError
from .registry import HookFn, register_op


def _p_store(p: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(p.get("store"), MutableMapping):
        raise FuncnetError(f"capture needs a dict the caller owns as store, got {type(p.get('store')).__name__}")
    for key in ("append", "detach"):
        if key in p and not isinstance(p[key], bool):
            raise FuncnetError(f"{key} should be True or False, got {p[key]!r}")
    return p


def _capture_factory(store: MutableMapping[str, Any], key: str | None = None, detach: bool = True,
                     append: bool = False) -> HookFn:
    def hook_fn(act: Tensor, hook: Any = None) -> None:
        k = key or getattr(hook, "name", "activation")
        value = act.detach().clone() if detach else act
        if append:
            store.setdefault(k, []).append(value)
        else:
            store[k] = value
        return None

    return hook_fn


register_op("capture", prepare=_p_store, writes=False, serializable=False, refs=("store",))(_capture_factory)


@register_op("capture_grad", prepare=_p_store, writes=False, serializable=False, direction="bwd", refs=("store",))
def capture_grad_op(store: MutableMapping[str, Any], key: str | None = None) -> HookFn:
    """Copy the gradient reaching the site during ``backward()`` into ``store[key]``."""
    return _capture_factory(store, key)


def _p_sink(p: dict[str, Any]) -> dict[str, Any]:
    if not callable(p.get("sink")):
        raise FuncnetError(f"record needs a callable sink(site, activation), got {type(p.get('sink')).__name__}")
    return p


@register_op("record", prepare=_p_sink, writes=False, serializable=False, refs=("sink",))
def record_op(sink: Callable[[str, Tensor], None], key: str | None = None) -> HookFn:
    """Call ``sink(key, activation)`` on every forward (the activation as the model made it: detach or copy it
    in the sink if it must outlive the forward)."""

    def hook_fn(act: Tensor, hook: Any = None) -> None:
        sink(key or getattr(hook, "name", "activation"), act)
        return None

    return hook_fn


def _p_key(p: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(p.get("key"), str) or not p["key"]:
        raise FuncnetError(f"stash needs a non-empty string key, got {p.get('key')!r}")
    return p


@register_op("stash", prepare=_p_key, writes=False, uses_scratch=True)
def stash_op(key: str, scratch: dict[str, Any]) -> HookFn:
    """Keep the activation in the application's scratch space under ``key`` (read by a later op)."""

    def hook_fn(act: Tensor, hook: Any = None) -> None:
        scratch[key] = act
        return None

    return hook_fn


def _p_fn(p: dict[str, Any]) -> dict[str, Any]:
    if not callable(p.get("fn")):
        raise FuncnetError(f"custom needs a callable fn(activation, hook), got {type(p.get('fn')).__name__}")
    return p


@register_op("custom", prepare=_p_fn, serializable=False, refs=("fn",))
def custom_op(fn: HookFn) -> HookFn:
    """An arbitrary TransformerLens hook function (the escape hatch for users; cannot be saved)."""
    return fn


@register_op("custom_bwd", prepare=_p_fn, serializable=False, direction="bwd", refs=("fn",))
def custom_bwd_op(fn: HookFn) -> HookFn:
    """An arbitrary backward hook function (cannot be saved)."""
    return fn


__all__ = ["capture_grad_op", "record_op", "stash_op", "custom_op", "custom_bwd_op"]
