"""The ``sae_edit`` and ``sae_capture`` ops: SAE features as plain TransformerLens hook functions.

``sae_edit`` encodes the activation with the SAE, applies a list of feature edits, decodes, and (with
``use_error_term``) adds back the SAE's reconstruction error, so that with no edits the output equals the
input exactly. Nothing is spliced into the model: the op is a hook function at the site, so it stacks
with other hooks on the same site (``+``) and works on ``HookedSAETransformer`` too.

An edit is a dict ``{"kind": ..., "features": [...], ...}`` applied in order to ``feature_acts``:

- ``{"kind": "ablate", "features": [3, 7]}`` sets them to 0;
- ``{"kind": "set", "features": [3], "values": [5.0]}`` sets them to values (a scalar or one per feature);
- ``{"kind": "add", ...values}`` adds values (feature steering); ``{"kind": "scale", ...values}`` multiplies;
- ``{"kind": "clamp", "features": [...], "min": 0.0, "max": 2.0}`` clamps (min and/or max).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, MutableMapping

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import FuncnetError, ShapeError
from ..hooks.registry import HookFn, register_op
from ..hooks.select import prepare_pos, where_pos
from ..hooks.values import index_list, scalar_or_tensor
from ..hooks.sites import site_shape
from .params import Normalizer, check_params, decode, encode

EDIT_KINDS = ("ablate", "set", "add", "scale", "clamp")


def _flat(p: Mapping[str, Any], act: Tensor, site: str) -> Float[Tensor, "batch pos d_in"]:
    """Flatten per-head activations for ``hook_z`` SAEs and check the width."""
    x = act.flatten(-2) if act.ndim == 4 else act
    if x.shape[-1] != p["W_enc"].shape[0]:
        raise ShapeError(
            f"the SAE has d_in={p['W_enc'].shape[0]}, but the activation at {site!r} has shape "
            f"{tuple(act.shape)}; use an SAE trained on this site"
        )
    return x


def _index(features: Any) -> Tensor:
    return torch.as_tensor(features if isinstance(features, Tensor) else list(features), dtype=torch.long).flatten()


def apply_edits(feature_acts: Float[Tensor, "... d_sae"], edits: Any) -> Float[Tensor, "... d_sae"]:
    """Apply ``edits`` (see the module docstring) to a copy of ``feature_acts``."""
    f = feature_acts.clone()
    for e in edits or ():
        idx = _index(e["features"]).to(f.device)
        kind = e["kind"]
        if kind == "ablate":
            f[..., idx] = 0.0
            continue
        if kind == "clamp":
            sel = f[..., idx]
            lo, hi = e.get("min"), e.get("max")
            if lo is not None:
                sel = torch.maximum(sel, torch.as_tensor(lo, dtype=f.dtype, device=f.device))
            if hi is not None:
                sel = torch.minimum(sel, torch.as_tensor(hi, dtype=f.dtype, device=f.device))
            f[..., idx] = sel
            continue
        vals = torch.as_tensor(e["values"], dtype=f.dtype, device=f.device)
        if kind == "set":
            f[..., idx] = vals
        elif kind == "add":
            f[..., idx] = f[..., idx] + vals
        elif kind == "scale":
            f[..., idx] = f[..., idx] * vals
    return f


def _prepare_edits(d_sae: int, edits: Any) -> list[dict[str, Any]]:
    """The edits checked and normalized: integer features in range, finite values of the right length."""
    if edits is None:
        return []
    if not isinstance(edits, (list, tuple)):
        raise FuncnetError(f"edits should be a list of dicts like {{'kind': 'ablate', 'features': [3]}}, got {edits!r}")
    out = []
    for i, e in enumerate(edits):
        if not isinstance(e, Mapping) or e.get("kind") not in EDIT_KINDS:
            raise FuncnetError(f"edit {i} should be a dict with kind one of {EDIT_KINDS}, got {e!r:.80}")
        allowed = {"kind", "features"} | ({"values"} if e["kind"] in ("set", "add", "scale") else set()) \
            | ({"min", "max"} if e["kind"] == "clamp" else set())
        if set(e) - allowed:
            raise FuncnetError(f"edit {i} ({e['kind']}) has unknown keys {sorted(set(e) - allowed)}")
        if e.get("features") is None:
            raise FuncnetError(f"edit {i} ({e['kind']}) needs 'features', a list of feature indices")
        features = index_list(e["features"], f"edit {i} features")
        if features and max(features) >= d_sae:
            raise ShapeError(f"edit {i} ({e['kind']}): feature index {max(features)} is out of range for an SAE "
                             f"with d_sae={d_sae} (valid: 0..{d_sae - 1})")
        edit: dict[str, Any] = {"kind": e["kind"], "features": list(features)}
        if e["kind"] in ("set", "add", "scale"):
            if e.get("values") is None:
                raise FuncnetError(f"edit {i} ({e['kind']}) needs 'values' (a number or one per feature)")
            v = scalar_or_tensor(e["values"], f"edit {i} values")
            if isinstance(v, Tensor) and (v.ndim > 1 or v.numel() != len(features)):
                raise ShapeError(f"edit {i} ({e['kind']}): {v.numel()} values for {len(features)} features; "
                                 f"give one value per feature or a single number")
            edit["values"] = v.tolist() if isinstance(v, Tensor) else v
        if e["kind"] == "clamp":
            if e.get("min") is None and e.get("max") is None:
                raise FuncnetError(f"edit {i} (clamp) needs 'min', 'max' or both")
            for key in ("min", "max"):
                if e.get(key) is not None:
                    bound = scalar_or_tensor(e[key], f"edit {i} {key}")
                    if isinstance(bound, Tensor):
                        raise FuncnetError(f"edit {i} (clamp) {key} should be one number, got shape "
                                           f"{tuple(bound.shape)}")
                    edit[key] = bound
            if "min" in edit and "max" in edit and edit["min"] > edit["max"]:
                raise FuncnetError(f"edit {i} (clamp) needs min <= max, got {edit['min']} > {edit['max']}")
        out.append(edit)
    return out


def _p_sae(p: dict[str, Any]) -> dict[str, Any]:
    sae = p.get("sae")
    if not isinstance(sae, Mapping):
        raise FuncnetError(f"needs 'sae', a dict from tl_funcnet.sae.sae_params(sae); got {type(sae).__name__}")
    check_params(sae)
    if "pos" in p:
        p["pos"] = prepare_pos(p["pos"])
    return p


def _p_edit(p: dict[str, Any]) -> dict[str, Any]:
    p = _p_sae(p)
    p["edits"] = _prepare_edits(int(p["sae"]["W_enc"].shape[1]), p.get("edits"))
    if not isinstance(p.get("use_error_term", True), bool):
        raise FuncnetError(f"use_error_term should be True or False, got {p.get('use_error_term')!r}")
    return p


def _v_site(model: Any, site: str, p: Mapping[str, Any]) -> None:
    sae = p["sae"]
    d_in = int(sae["W_enc"].shape[0])
    shape = site_shape(model, site)
    if shape is None:
        return
    width = math.prod(shape)  # per-head sites are flattened (sae-lens's hook_z convention)
    if width != d_in:
        raise ShapeError(
            f"the SAE has d_in={d_in}, but the site has trailing shape {shape} (width {width}); "
            f"the SAE was trained for {sae.get('hook_name') or 'another site'!r}"
        )


@register_op("sae_edit", prepare=_p_edit, validate=_v_site)
def sae_edit_op(sae: Mapping[str, Any], edits: Any = (), use_error_term: bool = True, pos: Any = None) -> HookFn:
    """Encode with the SAE, apply ``edits`` to the features, decode (+ the SAE error if ``use_error_term``)."""

    def hook_fn(act: Tensor, hook: Any = None) -> Tensor:
        x = _flat(sae, act, getattr(hook, "name", "?"))
        norm = Normalizer(sae.get("normalize_activations", "none"), x.shape[-1])
        f = encode(sae, x, norm)
        f_edit = apply_edits(f, edits)
        out = x + (decode(sae, f_edit, norm) - decode(sae, f, norm)) if use_error_term else decode(sae, f_edit, norm)
        return where_pos(pos, out.reshape(act.shape), act, getattr(hook, "name", "?"))

    return hook_fn


def _p_capture(p: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(p.get("store"), MutableMapping):
        raise FuncnetError(f"needs a dict-like store the caller owns; got {type(p.get('store')).__name__}")
    if not isinstance(p.get("append", False), bool):
        raise FuncnetError(f"append should be True or False, got {p.get('append')!r}")
    return _p_sae(p)


@register_op("sae_capture", prepare=_p_capture, validate=_v_site, writes=False, serializable=False, refs=("store",))
def sae_capture_op(sae: Mapping[str, Any], store: MutableMapping[str, Any], key: str | None = None,
                   append: bool = False) -> HookFn:
    """Store the SAE's ``feature_acts`` (batch, pos, d_sae) of the activation in ``store[key]`` (detached)."""

    def hook_fn(act: Tensor, hook: Any = None) -> None:
        with torch.no_grad():
            f = encode(sae, _flat(sae, act, getattr(hook, "name", "?")).detach())
        k = key or f"{getattr(hook, 'name', 'activation')}.hook_sae_acts_post"
        if append:
            store.setdefault(k, []).append(f)
        else:
            store[k] = f
        return None

    return hook_fn


__all__ = ["EDIT_KINDS", "apply_edits", "sae_edit_op", "sae_capture_op"]
