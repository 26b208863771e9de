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


#: On a TransformerBridge MLP: the wrapped Hugging Face linear layers (bridge attribute names) and the neuron
#: axis of their ``weight`` / ``bias`` (``[out, in]`` layout: rows of the input projections, columns of ``out``).
_BRIDGE_LINEARS: Mapping[str, tuple[str, int, bool]] = {
    "W_in": ("in", 0, True), "W_gate": ("gate", 0, True), "W_out": ("out", 1, False)}


def _wraps_hf(mlp: Any) -> bool:
    """Whether ``mlp`` is a TransformerBridge MLP (its parameters live in the wrapped Hugging Face linears)."""
    return hasattr(mlp, "original_component")


def _slots(mlp: Any) -> dict[str, tuple[Any, str, int]]:
    """Every per-neuron parameter as ``(owner module, attribute, neuron axis)``, on either model class."""
    out: dict[str, tuple[Any, str, int]] = {}
    if _wraps_hf(mlp):  # edit the wrapped HF linears
        for name, (attr, axis, has_bias) in _BRIDGE_LINEARS.items():
            linear = getattr(getattr(mlp, attr, None), "original_component", None)
            if isinstance(getattr(linear, "weight", None), torch.nn.Parameter):
                out[name] = (linear, "weight", axis)
                if has_bias and isinstance(getattr(linear, "bias", None), torch.nn.Parameter):
                    out[f"{name}.bias"] = (linear, "bias", 0)
        return out
    for name, axis in NEURON_AXES.items():
        p = getattr(mlp, name, None)
        if isinstance(p, torch.nn.Parameter):
            out[name] = (mlp, name, axis % p.ndim)
    return out


def neuron_params(mlp: Any) -> dict[str, tuple[torch.nn.Parameter, int]]:
    """The MLP's per-neuron parameters present on this MLP, with their neuron axis."""
    return {name: (getattr(owner, attr), axis) for name, (owner, attr, axis) in _slots(mlp).items()}


def _set(owner: Any, attr: str, data: Tensor, like: torch.nn.Parameter) -> None:
    setattr(owner, attr, torch.nn.Parameter(data, requires_grad=like.requires_grad))
    if attr == "weight" and hasattr(owner, "in_features"):  # keep an nn.Linear's repr and checks in step
        owner.out_features, owner.in_features = int(data.shape[0]), int(data.shape[1])


def _sync_processed(mlp: Any) -> None:
    """A bridge MLP in compatibility mode computes from its own references to the linears' tensors: point them
    at the edited ones."""
    if not getattr(mlp, "_use_processed_weights", False):
        return
    for key in ("gate", "in", "out"):
        linear = getattr(getattr(mlp, key, None), "original_component", None)
        if linear is not None:
            mlp.__dict__[f"_processed_W_{key}"] = linear.weight.detach()
            bias = getattr(linear, "bias", None)
            mlp.__dict__[f"_processed_b_{key}"] = None if bias is None else bias.detach()


@torch.no_grad()
def add_output_bias(mlp: Any, delta: Tensor) -> None:
    """Add ``delta`` (``[d_model]``) to the MLP's output bias, creating it on a bias-free bridge MLP."""
    if not _wraps_hf(mlp):
        mlp.b_out.data = mlp.b_out.data + delta.to(mlp.b_out.device, mlp.b_out.dtype)
        return
    linear = getattr(mlp, "out").original_component
    old = linear.bias if isinstance(linear.bias, torch.nn.Parameter) else torch.zeros_like(linear.weight[:, 0])
    linear.bias = torch.nn.Parameter(old + delta.to(old.device, old.dtype), requires_grad=linear.weight.requires_grad)
    _sync_processed(mlp)


@torch.no_grad()
def select_neurons(mlp: Any, index: Int[Tensor, "n"]) -> None:
    """Keep the neurons ``index`` of ``mlp`` in that order (a subset prunes, a permutation reorders)."""
    for owner, attr, axis in _slots(mlp).values():
        p = getattr(owner, attr)
        _set(owner, attr, p.data.index_select(axis, index.to(p.device)).contiguous(), p)
    _sync_processed(mlp)
    if not _wraps_hf(mlp):
        mlp.d_mlp = int(index.numel())


@torch.no_grad()
def append_neurons(mlp: Any, new: Mapping[str, Tensor]) -> None:
    """Add neurons after the existing ones; ``new`` gives each per-neuron parameter's extra slices."""
    slots = _slots(mlp)
    missing = sorted(set(slots) - set(new))
    if missing:
        raise ValueError(f"append_neurons needs slices for {missing}")
    for name, (owner, attr, axis) in slots.items():
        p = getattr(owner, attr)
        _set(owner, attr, torch.cat([p.data, new[name].to(p.device, p.dtype)], dim=axis), p)
    _sync_processed(mlp)
    if not _wraps_hf(mlp):
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


__all__ = ["NEURON_AXES", "mlp_widths", "neuron_params", "select_neurons", "add_output_bias", "append_neurons",
           "resize_neurons", "sync_config"]
