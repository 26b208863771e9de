"""Steered text generation with TransformerLens ``generate`` (KV cache on or off)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..errors import FuncnetError
from ..hooks import Intervention
from ..hooks.values import positive_int
from ..models.surface import kv_cache_works
from .vector import SteeringVector


def generate(model: Any, prompt: str | Tensor, steering: SteeringVector | Intervention | None = None, *,
             scale: float = 1.0, pos: Any = None, normalize: bool = False, layers: Any = None,
             max_new_tokens: int = 20, use_past_kv_cache: bool = True, do_sample: bool = False,
             stop_at_eos: bool = False, return_tokens: bool = False) -> str | Tensor:
    """Generate from ``prompt`` with a steering vector (or a ready Intervention) attached.

    One ``applied`` block per call, so the position tracking of ``pos="prompt"/"generated"/"from_last"``
    starts fresh. ``prompt`` is a string or a ``(1, pos)`` / ``(pos,)`` token tensor. Greedy by default.
    Returns the generated continuation (text, or the full token tensor with ``return_tokens``).
    On a TransformerBridge whose KV cache does not reproduce uncached logits (see
    :func:`tl_funcnet.models.surface.kv_cache_works`), generation runs without the cache: same text, slower.
    """
    positive_int(max_new_tokens, "max_new_tokens")
    if isinstance(prompt, str):
        if not prompt.strip():
            raise FuncnetError("the prompt is empty; pass some text to continue")
        tokens = model.to_tokens(prompt)
    elif isinstance(prompt, Tensor) and prompt.ndim in (1, 2) and not prompt.is_floating_point():
        tokens = prompt if prompt.ndim == 2 else prompt.unsqueeze(0)
        if tokens.shape[0] != 1 or tokens.numel() == 0 or int(tokens.max()) >= model.cfg.d_vocab or int(tokens.min()) < 0:
            raise FuncnetError(f"the prompt tokens should be one row of ids in 0..{model.cfg.d_vocab - 1}, got shape "
                               f"{tuple(tokens.shape)}")
    else:
        raise FuncnetError(f"prompt should be a string or a (1, pos) tensor of token ids, got {type(prompt).__name__}")
    if not return_tokens and getattr(model, "tokenizer", None) is None:
        raise FuncnetError("the model has no tokenizer to decode the continuation; pass return_tokens=True")
    if steering is not None and not isinstance(steering, (SteeringVector, Intervention)):
        raise FuncnetError(f"steering should be a SteeringVector, an Intervention or None, got {type(steering).__name__}")
    plen = int(tokens.shape[1])
    if isinstance(steering, SteeringVector):
        iv = steering.to_intervention(scale, pos, normalize=normalize, layers=layers, prompt_len=plen, model=model)
    else:
        iv = steering or Intervention()
    cached = use_past_kv_cache and kv_cache_works(model)  # else a broken bridge cache would ignore the prompt
    with torch.no_grad(), iv.applied(model):
        out = model.generate(tokens.to(next(model.parameters()).device), max_new_tokens=max_new_tokens,
                             use_past_kv_cache=cached, do_sample=do_sample, verbose=False,
                             stop_at_eos=stop_at_eos)
    if return_tokens:
        return out
    return model.tokenizer.decode(out[0, plen:])


__all__ = ["generate"]
