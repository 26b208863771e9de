"""MLP neurons as parameters: the one table of per-neuron axes, and edits that keep the config in step.

A TransformerLens MLP holds one slice per neuron in ``W_in`` and ``W_gate`` (last axis), ``b_in`` and
``W_out`` (first axis). Pruning, saving and loading pruned models, and the fingerprint transforms all change
widths through these functions, so every layer's width is read from its parameters and ``cfg.d_mlp`` is
kept equal to the widest layer (TransformerLens holds a single number; :func:`mlp_widths` gives each).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from jaxtyping import Int
from torch import Tensor

#: MLP parameters that carry one slice per neuron, and the axis of that slice.
NEURON_AXES: Mapping[str, int] = {"W_in": -1, "W_gate": -1, "b_in": 0, "W_out": 0}


def mlp_widths(model: Any) -> list[int] | None:
    """Per-layer number of MLP neurons (rows of ``W_out``), or ``None`` if a block has no such MLP."""
    widths = []
    for block in getattr(model, "blocks", []):
        mlp = getattr(block, "mlp", None)
        w_out = getattr(mlp, "W_out", None)
        if not isinstance(w_out, Tensor):
            return None
        widths.append(int(w_out.shape[0]))
    return widths


def neuron_params(mlp: Any) -> dict[str, tuple[torch.nn.Parameter, int]]:
    """The MLP's per-neuron parameters present on this MLP, with their neuron axis."""
    out = {}
    for name, axis in NEURON_AXES.items():
        p = getattr(mlp, name, None)
        if isinstance(p, torch.nn.Parameter):
            out[name] = (p, axis % p.ndim)
    return out


@torch.no_grad()
def select_neurons(mlp: Any, index: Int[Tensor, "n"]) -> None:
    """Keep the neurons ``index`` of ``mlp`` in that order (a subset prunes, a permutation reorders)."""
    for name, (p, axis) in neuron_params(mlp).items():
        data = p.data.index_select(axis, index.to(p.device)).contiguous()
        setattr(mlp, name, torch.nn.Parameter(data, requires_grad=p.requires_grad))
    mlp.d_mlp = int(index.numel())


@torch.no_grad()
def append_neurons(mlp: Any, new: Mapping[str, Tensor]) -> None:
    """Add neurons after the existing ones; ``new`` gives each per-neuron parameter's extra slices."""
    params = neuron_params(mlp)
    missing = sorted(set(params) - set(new))
    if missing:
        raise ValueError(f"append_neurons needs slices for {missing}")
    for name, (p, axis) in params.items():
        data = torch.cat([p.data, new[name].to(p.device, p.dtype)], dim=axis)
        setattr(mlp, name, torch.nn.Parameter(data, requires_grad=p.requires_grad))
    mlp.d_mlp = int(getattr(mlp, "W_out").shape[0])


def resize_neurons(mlp: Any, width: int) -> None:
    """Give ``mlp`` uninitialised per-neuron parameters of ``width`` neurons (filled by a state dict next)."""
    for name, (p, axis) in neuron_params(mlp).items():
        shape = list(p.shape)
        shape[axis] = width
        setattr(mlp, name, torch.nn.Parameter(torch.empty(shape, dtype=p.dtype, device=p.device)))
    mlp.d_mlp = int(width)


def sync_config(model: Any) -> None:
    """Set ``model.cfg.d_mlp`` to the widest layer after widths changed (no-op for MLP-free models)."""
    widths = mlp_widths(model)
    if widths:
        model.cfg.d_mlp = max(widths)


__all__ = ["NEURON_AXES", "mlp_widths", "neuron_params", "select_neurons", "append_neurons", "resize_neurons",
           "sync_config"]
