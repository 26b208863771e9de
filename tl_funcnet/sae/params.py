"""An SAE as plain tensors plus a few config fields, and its encode/decode math.

Holding the SAE's tensors (not the module) is what lets SAE edits be saved and loaded with
:meth:`~tl_funcnet.hooks.Intervention.save`, and what keeps the adapters independent of how a given
sae-lens release wires its hook points. :func:`encode` and :func:`decode` re-implement the inference
``encode``/``decode`` of the common sae-lens architectures; tests check them against ``sae.encode`` and
``sae.decode``.

Supported architectures: ``standard`` (ReLU), ``jumprelu`` (also what a trained ``batchtopk`` SAE saves
as), ``topk``, ``abstopk``, ``gated`` and ``topafa`` (top-AFA, :mod:`tl_funcnet.sae.topafa`); input
normalization ``none``, ``expected_average_only_in`` (treated as ``none``, as sae-lens does at inference),
``constant_norm_rescale`` and ``layer_norm``;
``reshape_activations`` ``none`` or ``hook_z`` (heads flattened into ``d_in``).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import FuncnetError
from .topafa import top_afa

#: Architectures :func:`encode` knows, and the extra tensors each needs besides W_enc, W_dec, b_dec.
ARCHITECTURES: dict[str, tuple[str, ...]] = {
    "standard": ("b_enc",),
    "jumprelu": ("b_enc", "threshold"),
    "topk": ("b_enc",),
    "abstopk": ("b_enc",),
    "gated": ("b_gate", "b_mag", "r_mag"),
    "topafa": ("b_enc",),
}
#: Architectures that may select features on decoder-norm-scaled pre-activations (``rescale_acts_by_decoder_norm``).
_RESCALABLE = ("topk", "abstopk", "topafa")
_NORMS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")
SAEParams = dict[str, Any]


def sae_params(sae: Any) -> SAEParams:
    """The tensors and config fields of a sae-lens SAE (or an already extracted dict, returned as is).

    Tensors are detached clones, so later training of the SAE does not change an intervention built
    from it. Keys: ``architecture``, ``d_in``, ``d_sae``, ``W_enc`` (d_in, d_sae), ``W_dec`` (d_sae, d_in),
    ``b_dec``, the architecture's extra tensors, ``apply_b_dec_to_input``, ``normalize_activations``,
    ``reshape_activations``, ``k`` (top-k only), ``rescale_acts_by_decoder_norm`` (top-k and top-AFA),
    ``hook_name``.
    """
    if isinstance(sae, Mapping):
        check_params(sae)
        return dict(sae)
    cfg = getattr(sae, "cfg", None)
    if cfg is None or not hasattr(sae, "W_enc"):
        raise FuncnetError(
            f"expected a sae-lens SAE (with .cfg, W_enc, W_dec) or a dict from sae_params(), "
            f"got {type(sae).__name__}"
        )
    arch = cfg.architecture()
    if arch not in ARCHITECTURES:
        raise FuncnetError(
            f"SAE architecture {arch!r} is not supported by the tl_funcnet adapters; supported: "
            f"{sorted(ARCHITECTURES)}. Use sae-lens's HookedSAETransformer for this one"
        )
    p: SAEParams = {
        "architecture": arch,
        "d_in": int(cfg.d_in),
        "d_sae": int(cfg.d_sae),
        "apply_b_dec_to_input": bool(cfg.apply_b_dec_to_input),
        "normalize_activations": str(cfg.normalize_activations),
        "reshape_activations": str(getattr(cfg, "reshape_activations", "none")),
        "hook_name": getattr(cfg.metadata, "hook_name", None) or "",
    }
    for name in ("W_enc", "W_dec", "b_dec", *ARCHITECTURES[arch]):
        p[name] = getattr(sae, name).detach().clone()
    if arch in ("topk", "abstopk"):
        p["k"] = int(cfg.k)
    if arch in _RESCALABLE:
        p["rescale_acts_by_decoder_norm"] = bool(getattr(cfg, "rescale_acts_by_decoder_norm", False))
    check_params(p)
    return p


def check_params(p: Mapping[str, Any]) -> None:
    """Raise :class:`FuncnetError` if ``p`` is not a usable SAE parameter dict."""
    arch = p.get("architecture")
    if arch not in ARCHITECTURES:
        raise FuncnetError(f"SAE architecture {arch!r} is not supported; supported: {sorted(ARCHITECTURES)}")
    missing = [k for k in ("W_enc", "W_dec", "b_dec", *ARCHITECTURES[arch]) if not isinstance(p.get(k), Tensor)]
    if missing:
        raise FuncnetError(f"SAE params for architecture {arch!r} lack the tensors {missing}")
    d_in, d_sae = p["W_enc"].shape
    if tuple(p["W_dec"].shape) != (d_sae, d_in):
        raise FuncnetError(f"W_dec has shape {tuple(p['W_dec'].shape)}, expected (d_sae, d_in) = {(d_sae, d_in)}")
    if p.get("normalize_activations", "none") not in _NORMS:
        raise FuncnetError(
            f"normalize_activations={p.get('normalize_activations')!r} is not supported; supported: {_NORMS}"
        )
    if arch in ("topk", "abstopk") and not isinstance(p.get("k"), int):
        raise FuncnetError(f"a {arch} SAE needs an int k, got {p.get('k')!r}")


def _like(t: Tensor, x: Tensor) -> Tensor:
    return t.to(device=x.device, dtype=x.dtype)


class Normalizer:
    """The run-time input normalization of an SAE, remembering what :meth:`undo` needs for one call."""

    def __init__(self, kind: str, d_in: int):
        self.kind, self.d_in = kind, d_in
        self.scale: Tensor | None = None
        self.mu: Tensor | None = None

    def apply(self, x: Tensor) -> Tensor:
        if self.kind == "constant_norm_rescale":
            self.scale = (self.d_in**0.5) / x.norm(dim=-1, keepdim=True)
            return x * self.scale
        if self.kind == "layer_norm":
            self.mu = x.mean(dim=-1, keepdim=True)
            x = x - self.mu
            self.scale = x.std(dim=-1, keepdim=True)
            return x / (self.scale + 1e-5)
        return x

    def undo(self, x: Tensor) -> Tensor:
        if self.kind == "constant_norm_rescale":
            return x / self.scale
        if self.kind == "layer_norm":
            return x * self.scale + self.mu
        return x


def sae_input(p: Mapping[str, Any], x: Float[Tensor, "... d_in"], norm: Normalizer) -> Float[Tensor, "... d_in"]:
    """What the encoder multiplies by W_enc: normalized input minus b_dec (if ``apply_b_dec_to_input``)."""
    x = norm.apply(x)
    if p.get("apply_b_dec_to_input", True):
        x = x - _like(p["b_dec"], x)
    return x


def rescales_by_decoder_norm(p: Mapping[str, Any]) -> bool:
    """Whether features are coefficients of unit decoder atoms: ``decode`` divides them by the atoms' norms."""
    return p["architecture"] in _RESCALABLE and bool(p.get("rescale_acts_by_decoder_norm", False))


def unit_coefficients(p: Mapping[str, Any], f: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_sae"]:
    """``g`` with ``x̂ - b_dec = Σ g_i u_i`` for unit decoder atoms ``u_i`` (``f`` itself when the SAE rescales by
    decoder norm)."""
    return f if rescales_by_decoder_norm(p) else f * _like(p["W_dec"], f).norm(dim=-1)


def afa_target(p: Mapping[str, Any], s: Float[Tensor, "... d_in"]) -> Float[Tensor, "..."]:
    """The norm AFA expects of the unit-atom coefficients: ``‖normalized x - b_dec‖`` from the encoder input
    ``s`` (which already lacks ``b_dec`` when the SAE subtracts it)."""
    if not p.get("apply_b_dec_to_input", True):
        s = s - _like(p["b_dec"], s)
    return s.norm(dim=-1)


def encode(p: Mapping[str, Any], x: Float[Tensor, "... d_in"],
           norm: Normalizer | None = None) -> Float[Tensor, "... d_sae"]:
    """Feature activations, as the architecture's ``sae.encode`` computes them (``x`` already flat)."""
    norm = norm or Normalizer(p.get("normalize_activations", "none"), x.shape[-1])
    s = sae_input(p, x, norm)
    W_enc = _like(p["W_enc"], x)
    arch = p["architecture"]
    if arch == "gated":
        gate = (s @ W_enc + _like(p["b_gate"], x)) > 0
        mag = torch.relu(s @ (W_enc * _like(p["r_mag"], x).exp()) + _like(p["b_mag"], x))
        return gate.to(x.dtype) * mag
    pre = s @ W_enc + _like(p["b_enc"], x)
    if arch == "standard":
        return torch.relu(pre)
    if arch == "jumprelu":
        return torch.relu(pre) * (pre > _like(p["threshold"], x)).to(x.dtype)
    if rescales_by_decoder_norm(p):
        pre = pre * _like(p["W_dec"], x).norm(dim=-1)
    if arch == "topafa":
        acts = torch.relu(pre)
        return acts * top_afa(unit_coefficients(p, acts), afa_target(p, s))
    k = min(int(p["k"]), pre.shape[-1])
    if arch == "topk":
        vals, idx = torch.topk(pre, k=k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, idx, vals.relu())
    idx = torch.topk(pre.abs(), k=k, dim=-1, sorted=False).indices  # abstopk: signed values, no ReLU
    return torch.zeros_like(pre).scatter_(-1, idx, pre.gather(-1, idx))


def decode(p: Mapping[str, Any], feature_acts: Float[Tensor, "... d_sae"],
           norm: Normalizer | None = None) -> Float[Tensor, "... d_in"]:
    """Reconstruction ``feature_acts @ W_dec + b_dec``, un-normalized with the ``norm`` used to encode."""
    W_dec = _like(p["W_dec"], feature_acts)
    if rescales_by_decoder_norm(p):
        feature_acts = feature_acts / W_dec.norm(dim=-1)
    out = feature_acts @ W_dec + _like(p["b_dec"], feature_acts)
    return norm.undo(out) if norm is not None else out


def decoder_norms(p: Mapping[str, Any]) -> Float[Tensor, "d_sae"]:
    """Euclidean norm of each decoder atom (row of W_dec)."""
    return p["W_dec"].detach().float().norm(dim=-1)


__all__ = ["ARCHITECTURES", "SAEParams", "sae_params", "check_params", "encode", "decode", "Normalizer",
           "sae_input", "decoder_norms", "rescales_by_decoder_norm", "afa_target",
           "unit_coefficients"]
