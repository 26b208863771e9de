"""What pruning needs to know about a model: can its MLPs be pruned, their widths, and parameter counts."""

from __future__ import annotations

from typing import Any, Sequence

from ..errors import FuncnetError

#: MLP parameters that carry one slice per neuron, and the axis of that slice.
NEURON_AXIS = {"W_in": -1, "W_gate": -1, "b_in": 0, "W_out": 0}


def check_prunable(model: Any) -> None:
    """Raise unless ``model`` is a HookedTransformer whose blocks have plain (or gated) MLPs."""
    cfg = getattr(model, "cfg", None)
    if cfg is None or not hasattr(model, "blocks") or not hasattr(model, "hook_dict"):
        raise FuncnetError(f"pruning needs a TransformerLens HookedTransformer, got {type(model).__name__}")
    if getattr(cfg, "attn_only", False):
        raise FuncnetError("the model is attention-only (cfg.attn_only=True): it has no MLP neurons to prune")
    if getattr(cfg, "num_experts", None):
        raise FuncnetError("mixture-of-experts MLPs are not supported by MLP-neuron pruning")
    if cfg.is_layer_norm_activation():
        raise FuncnetError(f"act_fn={cfg.act_fn!r} normalizes across MLP neurons, so removing neurons changes "
                           "the others; MLP-neuron pruning supports element-wise activations only")
    for l, block in enumerate(model.blocks):
        mlp = getattr(block, "mlp", None)
        if mlp is None or not all(hasattr(mlp, n) for n in ("W_in", "W_out", "b_out")):
            raise FuncnetError(f"block {l} has no MLP with W_in/W_out; MLP-neuron pruning needs one per block")


def mlp_width_list(model: Any) -> list[int]:
    """Per-layer number of MLP neurons (rows of ``W_out``)."""
    return [int(b.mlp.W_out.shape[0]) for b in model.blocks]


def n_params(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def mlp_params(model: Any) -> int:
    return int(sum(p.numel() for b in model.blocks for p in b.mlp.parameters()))


def params_per_neuron(model: Any, layer: int) -> int:
    """Parameters removed with one neuron of ``layer`` (its W_in/W_gate column, b_in entry, W_out row)."""
    mlp = model.blocks[layer].mlp
    width = int(mlp.W_out.shape[0])
    return int(sum(getattr(mlp, n).numel() // width for n in NEURON_AXIS if hasattr(mlp, n)))


def protected_layers(n_layers: int, protect_first: int, protect_last: int,
                     protect: Sequence[int] | None = None) -> tuple[int, ...]:
    """Layers never pruned: the first ``protect_first``, the last ``protect_last``, plus ``protect``."""
    for name, v in (("protect_first", protect_first), ("protect_last", protect_last)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise FuncnetError(f"{name} should be a non-negative int, got {v!r}")
    out = set(range(min(protect_first, n_layers))) | set(range(max(0, n_layers - protect_last), n_layers))
    for l in protect or ():
        if not isinstance(l, int) or not -n_layers <= l < n_layers:
            raise FuncnetError(f"protected layer {l!r} is out of range for a {n_layers}-layer model")
        out.add(l % n_layers)
    return tuple(sorted(out))


__all__ = ["check_prunable", "mlp_width_list", "n_params", "mlp_params", "params_per_neuron",
           "protected_layers", "NEURON_AXIS"]
