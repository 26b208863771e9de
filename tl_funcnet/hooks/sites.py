"""What a model's hook sites look like: validation of names and of the widths an op expects.

The model is duck-typed: anything with a ``hook_dict`` mapping hook names to hook points and a ``hooks()``
context manager (``HookedTransformer``, ``HookedEncoder``, ``HookedSAETransformer``) is accepted.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Iterable, Sequence

from ..errors import FuncnetError, UnknownSiteError
from . import names
from .values import index_list

_LAYER = re.compile(r"^blocks\.(\d+)\.(.+)$")

#: Hook-name suffixes and the trailing shape of their activations, from the model's config.
#: ``None`` entries are resolved per layer (MLP widths may differ per layer after pruning).
_TRAILING_SHAPES: dict[str, str] = {
    "hook_resid_pre": "d_model",
    "hook_resid_mid": "d_model",
    "hook_resid_post": "d_model",
    "hook_attn_out": "d_model",
    "hook_mlp_out": "d_model",
    "hook_mlp_in": "d_model",
    "ln1.hook_normalized": "d_model",
    "ln2.hook_normalized": "d_model",
    "mlp.hook_pre": "d_mlp",
    "mlp.hook_pre_linear": "d_mlp",
    "mlp.hook_post": "d_mlp",
    "attn.hook_z": "heads",
    "attn.hook_q": "heads",
    "attn.hook_result": "heads_model",
    "hook_attn_in": "heads_model",
    "hook_q_input": "heads_model",
    "hook_k_input": "kv_heads_model",
    "hook_v_input": "kv_heads_model",
    "attn.hook_rot_q": "heads",
    "attn.hook_k": "kv_heads",
    "attn.hook_v": "kv_heads",
    "attn.hook_rot_k": "kv_heads",
}
_GLOBAL_SHAPES = {"hook_embed": "d_model", "hook_pos_embed": "d_model", "ln_final.hook_normalized": "d_model"}


#: Hook points TransformerLens computes only when a config flag is on, and that flag.
SITE_FLAGS: dict[str, str] = {
    "hook_q_input": "use_split_qkv_input",
    "hook_k_input": "use_split_qkv_input",
    "hook_v_input": "use_split_qkv_input",
    "hook_attn_in": "use_attn_in",
    "attn.hook_result": "use_attn_result",
    "hook_mlp_in": "use_hook_mlp_in",
}


def site_flags(site: str) -> set[str]:
    """The config flags ``site`` needs to fire (empty for hook points that always fire); either name form."""
    m = _LAYER.match(site)
    if not m:
        return set()
    suffix = m.group(2)
    for back in names.legacy_table().values():
        suffix = back.get(suffix, suffix)
    flag = SITE_FLAGS.get(suffix)
    return {flag} if flag else set()


def require_hooked(model: Any) -> None:
    """Raise unless ``model`` offers the TransformerLens hook surface (``hook_dict`` and ``hooks()``)."""
    if not ((names.is_bridge(model) or hasattr(model, "hook_dict")) and hasattr(model, "hooks")):
        raise FuncnetError(
            f"expected a TransformerLens hooked model (HookedTransformer, HookedEncoder or "
            f"HookedSAETransformer), got {type(model).__name__}; load one with tl_funcnet.models.load(...)"
        )


def check_sites(model: Any, sites: Iterable[str]) -> None:
    """Raise :class:`UnknownSiteError` for the first site the model lacks, with the closest valid names."""
    require_hooked(model)
    known = names.hook_points(model)
    for site in sites:
        if names.site_on(model, site) in known:  # either name form; both forms named when neither exists
            continue
        close = difflib.get_close_matches(site, list(known), n=3, cutoff=0.6)
        hint = f" Did you mean {close}?" if close else ""
        other = names.other_form(model, site)
        named = f"{site!r} (or its other form {other!r})" if other != site else repr(site)
        if names.bridge_only(model, site):
            hint += (f" {site!r} is a TransformerBridge (canonical) hook name with no HookedTransformer form; use "
                     f"a legacy name such as 'blocks.0.hook_resid_post', or load the model with backend='bridge'.")
        if ".hook_sae_" in site:
            hint += (" SAE hook points exist only while the SAE is attached to a HookedSAETransformer or an "
                     "SAETransformerBridge: model.add_sae(sae, use_error_term=True).")
        raise UnknownSiteError(
            f"{named} is not a hook point of {type(model).__name__} "
            f"({len(known)} hook points, e.g. 'blocks.0.hook_resid_post').{hint}"
        )


def resolve_sites(model: Any, sites: str | Sequence[str], layers: Sequence[int] | int | None = None) -> list[str]:
    """Hook names from a site, a per-layer suffix or a list of them, in order and without repeats.

    ``"blocks.3.mlp.hook_post"`` names one hook; a suffix such as ``"mlp.hook_post"`` (or a template with
    ``{layer}``) names that hook in every block, or in ``layers`` only. ``layers`` applies to suffixes only.
    """
    require_hooked(model)
    items = [sites] if isinstance(sites, str) else list(sites) if isinstance(sites, (list, tuple)) else None
    if not items or not all(isinstance(s, str) and s for s in items):
        raise FuncnetError(f"sites should be a hook name such as 'blocks.0.hook_resid_post', a per-layer suffix "
                           f"such as 'mlp.hook_post', or a list of them; got {sites!r:.80}")
    n_layers = int(getattr(getattr(model, "cfg", None), "n_layers", 0))
    chosen = None
    if layers is not None:
        raw = [layers] if isinstance(layers, int) and not isinstance(layers, bool) else layers
        chosen = list(index_list(raw, "layers"))
        bad = [l for l in chosen if l >= n_layers]
        if bad:
            raise FuncnetError(f"layers {bad} are out of range; the model has {n_layers} layers (0..{n_layers - 1})")
    out: list[str] = []
    points = names.hook_points(model)
    for item in items:
        if "{layer}" in item:
            found = [item.format(layer=l) for l in (range(n_layers) if chosen is None else chosen)]
        elif item in points or (_LAYER.match(item) and names.site_on(model, item) in points):
            if chosen is not None:
                suffix = _LAYER.sub(r"\2", item)
                raise FuncnetError(f"{item!r} names one hook, so layers= does not apply; pass the per-layer suffix "
                                   f"{suffix!r} to choose layers")
            found = [item]
        elif f"blocks.0.{item}" in points or names.site_on(model, f"blocks.0.{item}") in points:
            found = [f"blocks.{l}.{item}" for l in (range(n_layers) if chosen is None else chosen)]
        else:
            check_sites(model, [item])  # raises with suggestions
            found = [item]
        check_sites(model, found)
        out.extend(n for n in found if n not in out)
    return out


def site_layer(site: str) -> int | None:
    """The block index of a ``blocks.{layer}.…`` site, else ``None``."""
    m = _LAYER.match(site)
    return int(m.group(1)) if m else None


def _mlp_width(model: Any, layer: int) -> int | None:
    try:
        mlp = model.blocks[layer].mlp
        return int(mlp.W_out.shape[0])
    except (AttributeError, IndexError, TypeError):
        cfg = getattr(model, "cfg", None)
        return getattr(cfg, "d_mlp", None)


def site_shape(model: Any, site: str) -> tuple[int, ...] | None:
    """Trailing activation shape at ``site`` (after batch and pos), or ``None`` where it is not known.

    ``(d_model,)`` for residual sites, ``(d_mlp,)`` for MLP neurons (per layer), ``(n_heads, d_head)``
    for per-head attention sites, ``(d_sae,)`` for the feature activations of an attached SAE.
    """
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        return None
    if not site.endswith((".hook_sae_acts_pre", ".hook_sae_acts_post")):
        site = names.legacy_name(model, site)
    if site.endswith((".hook_sae_acts_pre", ".hook_sae_acts_post")):  # inside an SAE attached by sae-lens
        attached = getattr(model, "acts_to_saes", {})
        base = site.rsplit(".", 1)[0]
        sae = attached.get(base) or attached.get(names.other_form(model, base))
        return (int(sae.cfg.d_sae),) if sae is not None else None
    m = _LAYER.match(site)
    kind = _GLOBAL_SHAPES.get(site) if m is None else _TRAILING_SHAPES.get(m.group(2))
    if kind is None:
        return None
    if kind == "d_model":
        return (int(cfg.d_model),)
    if kind == "d_mlp":
        width = _mlp_width(model, int(m.group(1))) if m else None
        return (width,) if width else None
    if kind == "heads":
        return (int(cfg.n_heads), int(cfg.d_head))
    if kind == "heads_model":  # one copy (or one output) of the residual stream per head
        return (int(cfg.n_heads), int(cfg.d_model))
    n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
    if kind == "kv_heads":
        return (int(n_kv), int(cfg.d_head))
    if kind == "kv_heads_model":  # grouped-query models have one k/v input per KV head unless ungrouped
        return (int(cfg.n_heads if getattr(cfg, "ungroup_grouped_query_attention", False) else n_kv),
                int(cfg.d_model))
    return None


def unit_count(model: Any, site: str) -> int | None:
    """Number of units an index refers to at ``site``: the last dim, or the head count on per-head sites."""
    shape = site_shape(model, site)
    if shape is None:
        return None
    return shape[0]


__all__ = ["check_sites", "require_hooked", "resolve_sites", "site_layer", "site_shape", "unit_count", "site_flags",
           "SITE_FLAGS"]
