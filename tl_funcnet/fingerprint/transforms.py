"""Weight transforms that make a *derived* model: the robustness zoo of the fingerprint benchmark.

Each function returns a new model (the input is never modified). Function-preserving ones:
:func:`rotate_residual` (RMSPre / LNPre-free models only), :func:`permute_mlp`, :func:`widen_mlp`.
Lossy ones: :func:`quantize_int8`, :func:`drop_layer` (pruned variants come from :mod:`tl_funcnet.pruning`).
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from .._rng import generator, global_rng_preserved
from ..errors import FuncnetError, ShapeError
from ..hooks.names import is_bridge
from ..models.mlp import append_neurons, mlp_widths, resize_neurons, select_neurons, sync_config

# parameters that read from the residual stream: their d_model axis; and ones that write to it
_READS = {"W_Q": 1, "W_K": 1, "W_V": 1, "_W_K": 1, "_W_V": 1, "W_in": 0, "W_gate": 0, "W_U": 0}
_WRITES = {"W_E": 1, "W_pos": 1, "W_O": 2, "b_O": 0, "W_out": 1, "b_out": 0}


def random_orthogonal(d: int, random_state: int = 0, dtype: torch.dtype = torch.float64) -> Float[Tensor, "d d"]:
    """A Haar-random orthogonal matrix (QR of a Gaussian with the sign fix)."""
    q, r = torch.linalg.qr(torch.randn(d, d, generator=generator(random_state), dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).to(dtype)


def _hooked_only(model: Any, what: str) -> None:
    """These transforms edit HookedTransformer parameters by their TransformerLens names; a bridge holds the
    Hugging Face modules instead, so the edit would silently do nothing there."""
    if is_bridge(model):
        raise FuncnetError(f"{what} edits HookedTransformer parameters (W_Q, W_in, ... by name); a "
                           f"TransformerBridge holds the Hugging Face modules. Load the model with backend='hooked' "
                           f"(permute_mlp and quantize_int8 work on both classes)")


def _copy(model: Any) -> Any:
    tok = getattr(model, "tokenizer", None)
    model.tokenizer = None  # tokenizers deep-copy slowly and need not be duplicated
    try:
        new = copy.deepcopy(model)
    finally:
        model.tokenizer = tok
    new.tokenizer = tok
    return new


def rotate_residual(model: Any, R: Float[Tensor, "d_model d_model"] | None = None, *, random_state: int = 0) -> Any:
    """Express the residual stream in another orthonormal basis: ``resid -> resid @ R``.

    Function-preserving when every norm before a read is rotation-invariant (``RMSPre``, or no norm);
    ``LN``/``LNPre`` centre along the basis and ``RMS`` has per-channel weights, so those are refused.
    """
    _hooked_only(model, "rotate_residual")
    norm = getattr(model.cfg, "normalization_type", None)
    if norm not in ("RMSPre", None):
        raise FuncnetError(f"rotate_residual needs normalization_type 'RMSPre' or None, got {norm!r}; load the "
                           "model with fold_ln=True on an RMS model (LayerNorm centring is not rotation-invariant)")
    d = model.cfg.d_model
    R = random_orthogonal(d, random_state) if R is None else torch.as_tensor(R)
    if R.shape != (d, d):
        raise ShapeError(f"rotate_residual: R has shape {tuple(R.shape)}, expected ({d}, {d})")
    new = _copy(model)
    with torch.no_grad():
        for name, p in new.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            Rt = R.to(p.dtype)
            if leaf in _READS:  # x @ W: x -> x R, so W -> R^T W along the d_model axis
                ax = _READS[leaf]
                p.copy_(torch.movedim(torch.tensordot(Rt.T, torch.movedim(p, ax, 0), dims=1), 0, ax))
            elif leaf in _WRITES:
                ax = _WRITES[leaf]
                p.copy_(torch.movedim(torch.movedim(p, ax, -1) @ Rt, -1, ax))
    return new


def permute_mlp(model: Any, random_state: int = 0) -> Any:
    """Permute the hidden units of every MLP (function-preserving)."""
    new = _copy(model)
    g = generator(random_state)
    for block in new.blocks:
        select_neurons(block.mlp, torch.randperm(int(block.mlp.W_out.shape[0]), generator=g))
    return new


def widen_mlp(model: Any, extra: int, *, random_state: int = 0) -> Any:
    """Add ``extra`` MLP units per layer with random input weights and zero output weights (function-preserving)."""
    _hooked_only(model, "widen_mlp")
    new = _copy(model)
    g = generator(random_state)
    with torch.no_grad():
        for block in new.blocks:
            m = block.mlp
            slices = {"b_in": m.b_in.data.new_zeros(extra),
                      "W_out": m.W_out.data.new_zeros(extra, m.W_out.shape[1])}
            for name in ("W_in", "W_gate"):
                if hasattr(m, name):
                    w = getattr(m, name).data
                    slices[name] = torch.randn(w.shape[0], extra, generator=g, dtype=w.dtype) * w.std()
            append_neurons(m, slices)
    sync_config(new)
    return new


def quantize_int8(model: Any) -> Any:
    """Per-row symmetric int8 quantize-dequantize of every weight matrix (biases and 1-D params kept)."""
    new = _copy(model)
    with torch.no_grad():
        for _, p in new.named_parameters():
            if p.ndim < 2:
                continue
            rows = p.reshape(-1, p.shape[-1])
            scale = rows.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127
            p.copy_((torch.round(rows / scale).clamp(-127, 127) * scale).reshape(p.shape))
    return new


def drop_layer(model: Any, layer: int) -> Any:
    """Remove block ``layer`` (the residual stream skips it)."""
    _hooked_only(model, "drop_layer")
    from .._compat import hooked_transformer_classes

    HookedTransformer, _ = hooked_transformer_classes("drop_layer")

    n = model.cfg.n_layers
    if not 0 <= layer < n:
        raise FuncnetError(f"drop_layer: layer {layer} out of range for {n} layers")
    cfg = copy.deepcopy(model.cfg)
    cfg.n_layers = n - 1
    cfg.tokenizer_name, cfg.init_weights = None, False  # no hub lookup, no wasted init
    keep: Sequence[int] = [l for l in range(n) if l != layer]
    state = {}
    for k, v in model.state_dict().items():
        if k.startswith("blocks."):
            parts = k.split(".")
            l = int(parts[1])
            if l == layer:
                continue
            parts[1] = str(keep.index(l))
            k = ".".join(parts)
        state[k] = v.clone()
    tok = getattr(model, "tokenizer", None)
    with global_rng_preserved():  # TransformerLens reseeds the global generators from cfg.seed
        new = HookedTransformer(cfg, tokenizer=None, move_to_device=False)
    widths = mlp_widths(model) or []
    for block, l in zip(new.blocks, keep):
        if widths and widths[l] != block.mlp.W_out.shape[0]:
            resize_neurons(block.mlp, widths[l])
    new.load_state_dict(state)
    sync_config(new)
    new.cfg.tokenizer_name = model.cfg.tokenizer_name
    new.tokenizer = tok
    return new.eval()


def random_init(model: Any, random_state: int = 0) -> Any:
    """An independent model: the same architecture and tokenizer as ``model``, freshly initialised from
    ``random_state`` (the global random generators are left as they were)."""
    _hooked_only(model, "random_init")
    from .._compat import hooked_transformer_classes

    HookedTransformer, _ = hooked_transformer_classes("random_init")

    cfg = copy.deepcopy(model.cfg)
    cfg.seed, cfg.init_weights, cfg.tokenizer_name = int(random_state), True, None
    with global_rng_preserved():  # TransformerLens seeds torch, numpy and random globally from cfg.seed
        new = HookedTransformer(cfg, tokenizer=None, move_to_device=False)
    new.tokenizer = model.tokenizer
    return new.eval()


__all__ = ["random_init", "random_orthogonal", "rotate_residual", "permute_mlp", "widen_mlp", "quantize_int8",
           "drop_layer"]
