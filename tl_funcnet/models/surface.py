"""What differs between a ``HookedTransformer`` and a ``TransformerBridge`` when a feature runs a forward.

The bridge runs the wrapped Hugging Face model, so it cannot start a forward from a residual stream at a
given block (``start_at_layer``), and ``stop_at_layer=n_layers`` still returns logits. Features call these
helpers instead of branching on the class themselves.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..hooks.intervention import attached
from ..hooks.names import is_bridge


class _Stop(Exception):
    """Raised by a hook to end a forward once the wanted activation is computed."""


def starts_at_layer(model: Any) -> bool:
    """Whether ``model(resid, start_at_layer=l)`` runs the blocks from ``l`` (not on a TransformerBridge: use
    :func:`embed` and :func:`run_blocks`, which work on both classes)."""
    return not is_bridge(model)


def embed(model: Any, tokens: Int[Tensor, "batch pos"]) -> tuple[Float[Tensor, "batch pos d_model"], Any]:
    """The residual stream entering block 0, and what the blocks need besides it (``None`` for a
    HookedTransformer; for a bridge, the keyword arguments the wrapped model passes its layers: position
    embeddings, attention mask), for :func:`run_blocks`."""
    if not is_bridge(model):
        return model(tokens, stop_at_layer=0), None
    box: dict[str, Any] = {}

    def grab(module: Any, args: tuple, kwargs: dict) -> None:
        box["resid"], box["kwargs"] = args[0], dict(kwargs)
        raise _Stop

    handle = model.blocks[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        model(tokens, return_type=None)
    except _Stop:
        pass
    finally:
        handle.remove()
    kwargs = box["kwargs"]
    for key in ("cache", "past_key_values", "past_key_value", "layer_past"):
        kwargs.pop(key, None)  # block-by-block runs keep no KV cache
    kwargs["use_cache"] = False
    return box["resid"], kwargs


def run_blocks(model: Any, resid: Float[Tensor, "batch pos d_model"], start: int, stop: int, context: Any
               ) -> Float[Tensor, "batch pos d_model"]:
    """Blocks ``start`` to ``stop - 1`` on ``resid`` (hook points inside them fire as in a full forward);
    ``context`` from :func:`embed` on the same tokens."""
    if context is None:
        return model(resid, start_at_layer=start, stop_at_layer=stop)
    for layer in range(start, stop):
        out = model.blocks[layer](resid, **context)
        resid = out[0] if isinstance(out, tuple) else out
    return resid


def final_resid(model: Any, tokens: Int[Tensor, "batch pos"], **kwargs: Any) -> Float[Tensor, "batch pos d_model"]:
    """The residual stream after the last block (before the final norm), with gradients if enabled."""
    if not is_bridge(model):
        return model(tokens, stop_at_layer=int(model.cfg.n_layers), **kwargs)
    box: dict[str, Tensor] = {}

    def grab(act: Tensor, hook: Any) -> None:
        box["resid"] = act
        raise _Stop

    try:  # through the kernel's attach path: the bridge's own hooks() costs ~20 ms per call
        with attached(model, [(f"blocks.{int(model.cfg.n_layers) - 1}.hook_resid_post", grab)], []):
            model(tokens, **kwargs)
    except _Stop:
        pass
    return box["resid"]


def run_to_layer(model: Any, tokens: Int[Tensor, "batch pos"], stop: int, **kwargs: Any) -> Any:
    """``model(tokens, stop_at_layer=stop)`` on either class (the final residual stream when ``stop`` is the
    number of layers)."""
    if stop >= int(model.cfg.n_layers):
        return final_resid(model, tokens, **kwargs)
    return model(tokens, stop_at_layer=stop, **kwargs)


_CACHE_CHECKED: "weakref.WeakKeyDictionary[Any, bool]" = weakref.WeakKeyDictionary()


@torch.no_grad()
def kv_cache_works(model: Any) -> bool:
    """Whether ``model.generate(..., use_past_kv_cache=True)`` gives the logits of uncached generation.

    Always True for a HookedTransformer. A TransformerBridge is probed once (two 3-token generations from a
    5-token prompt): TransformerLens 3.9's bridge attention reads the cache from ``past_key_values``, which
    transformers 5.2x passes as ``cache``, so its cached generation silently ignores the prompt there.
    """
    if not is_bridge(model):
        return True
    if model in _CACHE_CHECKED:
        return _CACHE_CHECKED[model]
    dev = next(model.parameters()).device
    prompt = (torch.arange(1, 6, device=dev) % int(model.cfg.d_vocab))[None]
    runs = [model.generate(prompt, max_new_tokens=3, use_past_kv_cache=cached, do_sample=False, verbose=False,
                           stop_at_eos=False, output_logits=True) for cached in (True, False)]
    same = torch.equal(runs[0].sequences, runs[1].sequences) and all(
        torch.allclose(a, b, rtol=1e-3, atol=1e-4) for a, b in zip(runs[0].logits, runs[1].logits))
    _CACHE_CHECKED[model] = same
    return same


def act_fn_normalizes(model: Any) -> bool:
    """Whether the MLP activation normalizes across neurons (``solu_ln``-style), on either config class."""
    cfg = getattr(model, "cfg", None)
    check = getattr(cfg, "is_layer_norm_activation", None)
    if callable(check):
        return bool(check())
    return str(getattr(cfg, "act_fn", "") or "").endswith("_ln")


__all__ = ["starts_at_layer", "embed", "run_blocks", "final_resid", "run_to_layer", "act_fn_normalizes", "kv_cache_works"]
