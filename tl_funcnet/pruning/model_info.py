"""What pruning needs to know about a model: can its MLPs be pruned, and how many parameters they hold."""

from __future__ import annotations

from typing import Any, Sequence

from ..errors import FuncnetError
from ..hooks.values import index_list
from ..models.mlp import mlp_widths, neuron_params
from ..hooks.names import is_bridge
from ..models.surface import act_fn_normalizes


def check_prunable(model: Any) -> list[int]:
    """Raise unless ``model`` is a HookedTransformer whose blocks have plain (or gated) MLPs; return their widths."""
    cfg = getattr(model, "cfg", None)
    if cfg is None or not hasattr(model, "blocks") or not (is_bridge(model) or hasattr(model, "hook_dict")):
        raise FuncnetError(f"pruning needs a TransformerLens HookedTransformer, got {type(model).__name__}")
    if getattr(cfg, "attn_only", False):
        raise FuncnetError("the model is attention-only (cfg.attn_only=True): it has no MLP neurons to prune")
    if getattr(cfg, "num_experts", None):
        raise FuncnetError("mixture-of-experts MLPs are not supported by MLP-neuron pruning")
    if act_fn_normalizes(model):
        raise FuncnetError(f"act_fn={cfg.act_fn!r} normalizes across MLP neurons, so removing neurons changes "
                           "the others; MLP-neuron pruning supports element-wise activations only")
    widths = mlp_widths(model)
    for l, block in enumerate(model.blocks):
        mlp = getattr(block, "mlp", None)
        if widths is None or not all(hasattr(mlp, n) for n in ("W_in", "W_out")):
            raise FuncnetError(f"block {l} has no MLP with W_in/W_out; MLP-neuron pruning needs one per block")
    return widths  # type: ignore[return-value]


def n_params(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def mlp_params(model: Any) -> int:
    return int(sum(p.numel() for b in model.blocks for p in b.mlp.parameters()))


def params_per_neuron(model: Any, layer: int) -> int:
    """Parameters removed with one neuron of ``layer`` (its W_in/W_gate column, b_in entry, W_out row)."""
    mlp = model.blocks[layer].mlp
    width = int(mlp.W_out.shape[0])
    return int(sum(p.numel() // width for p, _ in neuron_params(mlp).values()))


def protected_layers(n_layers: int, protect_first: int, protect_last: int,
                     protect: Sequence[int] | None = None) -> tuple[int, ...]:
    """Layers never pruned: the first ``protect_first``, the last ``protect_last``, plus ``protect``."""
    for name, v in (("protect_first", protect_first), ("protect_last", protect_last)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise FuncnetError(f"{name} should be a non-negative int, got {v!r}")
    out = set(range(min(protect_first, n_layers))) | set(range(max(0, n_layers - protect_last), n_layers))
    for l in index_list(protect or (), "protect"):
        if l >= n_layers:
            raise FuncnetError(f"protected layer {l} is out of range for a {n_layers}-layer model")
        out.add(l)
    return tuple(sorted(out))


__all__ = ["check_prunable", "n_params", "mlp_params", "params_per_neuron", "protected_layers"]
