"""Shared checks and small runs used by the exact and attribution sweeps."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..errors import FuncnetError, ShapeError
from ..hooks import capture
from ..models.surface import final_resid, starts_at_layer
from .nodes import NodeSet

DIRECTIONS = ("denoise", "noise")


def as_tokens(x: Any, name: str) -> Int[Tensor, "batch pos"]:
    t = torch.as_tensor(x)
    if t.dtype not in (torch.int64, torch.int32) or t.ndim != 2:
        raise ShapeError(f"{name} should be token ids of shape (batch, pos), got dtype {t.dtype} and shape "
                         f"{tuple(t.shape)}; tokenize with model.to_tokens(...) or load a task with load_task(...)")
    return t.long()


def prepare(model: Any, clean: Any, corrupted: Any, nodes: NodeSet, direction: str
            ) -> tuple[Tensor, Tensor]:
    """Validate everything, then return ``(target, source)`` tokens: the run patched and the run patched from."""
    if direction not in DIRECTIONS:
        raise FuncnetError(f"direction should be 'denoise' (patch clean activations into the corrupted run) or "
                           f"'noise' (patch corrupted into clean), got {direction!r}")
    c, k = as_tokens(clean, "clean"), as_tokens(corrupted, "corrupted")
    if c.shape != k.shape:
        raise ShapeError(f"clean tokens {tuple(c.shape)} and corrupted tokens {tuple(k.shape)} must have the "
                         "same shape: one corrupted prompt of equal token length per clean prompt")
    if not isinstance(nodes, NodeSet):
        raise FuncnetError(f"nodes should be a NodeSet (from node_grid or units_nodes), got {type(nodes).__name__}")
    nodes.validate(model, c.shape[1])
    dev = model.cfg.device
    c, k = c.to(dev), k.to(dev)
    return (k, c) if direction == "denoise" else (c, k)


def run_capture(model: Any, tokens: Tensor, sites: Sequence[str]) -> dict[str, Float[Tensor, "..."]]:
    """Activations at ``sites`` on one plain forward (no grad, no logits)."""
    store: dict[str, Tensor] = {}
    with torch.no_grad(), capture(list(sites), store).applied(model):
        model(tokens, return_type=None)
    return store


#: sites computed after the blocks, where a last-position-only forward holds just the last position
_AFTER_BLOCKS = ("ln_final.", "unembed.")


def last_position_only(metric: Any, sites: Sequence[str]) -> bool:
    """Whether a sweep may compute logits at the last position only: the metric reads only that position and
    no patched site lies after the blocks (there such a forward would hold the last position alone)."""
    return bool(getattr(metric, "last_position_only", False)) and not any(s.startswith(_AFTER_BLOCKS) for s in sites)


def logits_from_resid(model: Any, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]:
    """Final norm, unembed and soft cap applied to a final residual stream (any positions)."""
    if model.cfg.normalization_type is not None:
        resid = model.ln_final(resid)
    logits = model.unembed(resid)
    cap = getattr(model.cfg, "output_logits_soft_cap", -1.0) or -1.0
    if cap > 0:
        logits = cap * torch.tanh(logits / cap)
    return logits


def forward_logits(model: Any, tokens: Tensor, *, last_only: bool, resid: Tensor | None = None,
                   start_layer: int | None = None) -> Tensor:
    """Logits of a forward from tokens, or from ``resid`` entering block ``start_layer``; last position only if asked."""
    n = model.cfg.n_layers
    if start_layer is not None and not starts_at_layer(model):
        raise FuncnetError(f"{type(model).__name__} cannot start a forward at block {start_layer}; run from tokens")
    if start_layer is None:
        if not last_only:
            return model(tokens)
        final = final_resid(model, tokens)
    else:
        final = model(resid, start_at_layer=start_layer, stop_at_layer=n)
    return logits_from_resid(model, final[:, -1:] if last_only else final)
