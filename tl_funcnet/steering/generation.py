"""Steered text generation with TransformerLens ``generate`` (KV cache on or off)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..errors import FuncnetError
from ..hooks import Intervention
from .vector import SteeringVector


def generate(model: Any, prompt: str | Tensor, steering: SteeringVector | Intervention | None = None, *,
             scale: float = 1.0, pos: str = "all", normalize: bool = False, layers: Any = None,
             max_new_tokens: int = 20, use_past_kv_cache: bool = True, do_sample: bool = False,
             return_tokens: bool = False, **kwargs: Any) -> str | Tensor:
    """Generate from ``prompt`` with a steering vector (or a ready Intervention) attached.

    One ``applied`` block per call, so the position tracking of ``pos="prompt"/"generated"/"last"``
    starts fresh. ``prompt`` is a string or a ``(1, pos)`` / ``(pos,)`` token tensor. Greedy by default.
    Returns the generated continuation (text, or the full token tensor with ``return_tokens``).
    """
    if max_new_tokens < 1:
        raise FuncnetError(f"max_new_tokens should be >= 1, got {max_new_tokens}")
    if isinstance(prompt, str):
        if not prompt.strip():
            raise FuncnetError("the prompt is empty; pass some text to continue")
        tokens = model.to_tokens(prompt)
    else:
        tokens = prompt if prompt.ndim == 2 else prompt.unsqueeze(0)
    plen = int(tokens.shape[1])
    if isinstance(steering, SteeringVector):
        iv = steering.to_intervention(scale, pos, normalize=normalize, layers=layers, prompt_len=plen, model=model)
    else:
        iv = steering or Intervention()
    with torch.no_grad(), iv.applied(model):
        out = model.generate(tokens.to(next(model.parameters()).device), max_new_tokens=max_new_tokens,
                             use_past_kv_cache=use_past_kv_cache, do_sample=do_sample, verbose=False,
                             stop_at_eos=kwargs.pop("stop_at_eos", False), **kwargs)
    if return_tokens:
        return out
    return model.tokenizer.decode(out[0, plen:])


__all__ = ["generate"]
