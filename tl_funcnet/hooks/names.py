"""Hook names on both TransformerLens model classes: legacy (``HookedTransformer``) and canonical (bridge).

A ``TransformerBridge`` names its hook points after the wrapped module (``blocks.3.hook_out``,
``blocks.3.mlp.out.hook_in``) and keeps the legacy names (``blocks.3.hook_resid_post``,
``blocks.3.mlp.hook_post``) as aliases of the same hook points. A ``HookedTransformer`` knows only the
legacy names. Interventions accept either form on either class; the alias table comes from the installed
TransformerLens's bridge components, so a saved intervention records the table it was written with.
"""

from __future__ import annotations

import re
import weakref
from functools import lru_cache
from typing import Any, Mapping


_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


def is_bridge(model: Any) -> bool:
    """Whether ``model`` is a TransformerLens ``TransformerBridge`` (wraps a Hugging Face model)."""
    return hasattr(model, "original_model") and hasattr(model, "enable_compatibility_mode")


_POINTS: "weakref.WeakKeyDictionary[Any, tuple[Any, dict[str, Any]]]" = weakref.WeakKeyDictionary()


def hook_points(model: Any) -> dict[str, Any]:
    """``model.hook_dict``, read once per change of the model's hook points.

    A bridge rebuilds its alias table on every ``hook_dict`` access (about 10 ms for SmolLM2), so this keeps
    the last one, keyed by the registry's size and the compatibility mode (what changes the names).
    """
    if not is_bridge(model):
        return getattr(model, "hook_dict", {})
    registry = getattr(model, "_hook_registry", None)
    key = (len(registry) if registry is not None else None, bool(getattr(model, "compatibility_mode", False)))
    hit = _POINTS.get(model)
    if hit is None or hit[0] != key or registry is None:
        hit = _POINTS[model] = (key, model.hook_dict)
    return hit[1]


def _first(value: Any) -> str:
    return value if isinstance(value, str) else str(list(value)[-1])


@lru_cache(maxsize=1)
def alias_table() -> dict[str, dict[str, str]]:
    """Per-block legacy -> canonical suffixes of the installed TransformerLens, for plain and gated MLPs.

    ``{"plain": {...}, "gated": {...}}``; empty dicts when this TransformerLens has no bridge.
    """
    try:
        from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge
        from transformer_lens.model_bridge.generalized_components.block import BlockBridge
        from transformer_lens.model_bridge.generalized_components.gated_mlp import GatedMLPBridge
        from transformer_lens.model_bridge.generalized_components.mlp import MLPBridge
    except ImportError:  # pragma: no cover - TransformerLens < 3
        return {"plain": {}, "gated": {}}

    def prefixed(prefix: str, aliases: Mapping[str, Any]) -> dict[str, str]:
        return {f"{prefix}{k}": f"{prefix}{_first(v)}" for k, v in (aliases or {}).items()}

    common = {**{k: _first(v) for k, v in (BlockBridge.hook_aliases or {}).items()},
              **prefixed("attn.", AttentionBridge.hook_aliases)}
    return {"plain": {**common, **prefixed("mlp.", MLPBridge.hook_aliases)},
            "gated": {**common, **prefixed("mlp.", GatedMLPBridge.hook_aliases)}}


@lru_cache(maxsize=1)
def legacy_table() -> dict[str, dict[str, str]]:
    """:func:`alias_table` read backwards: canonical -> legacy suffixes, for plain and gated MLPs."""
    return {kind: {v: k for k, v in table.items()} for kind, table in alias_table().items()}


def transformer_lens_version() -> str:
    from importlib.metadata import version

    return version("transformer-lens")


def _kind(model: Any) -> str:
    return "gated" if getattr(getattr(model, "cfg", None), "gated_mlp", False) else "plain"


def alias_map(model: Any) -> dict[str, str]:
    """Every legacy hook name of ``model`` mapped to its canonical name.

    On a bridge, from the names that share one hook point (a bridge in compatibility mode names its hook
    points by the legacy form, otherwise by the canonical one); on a HookedTransformer, from the installed
    TransformerLens's table.
    """
    names = hook_points(model)
    table = alias_table()[_kind(model)]
    legacy_suffixes = set(table)
    if is_bridge(model):
        groups: dict[int, list[str]] = {}
        for k, hp in names.items():
            groups.setdefault(id(hp), []).append(k)
        out = {}
        for group in groups.values():
            if len(group) < 2:
                continue
            old = [k for k in group if (m := _BLOCK.match(k)) and m.group(2) in legacy_suffixes]
            new = [k for k in group if k not in old]
            for k in old:
                want = canonical_name(model, k)
                out[k] = want if want in new else (new[0] if new else k)
        return {k: v for k, v in out.items() if k != v}
    out = {}
    for name in names:
        m = _BLOCK.match(name)
        if m and m.group(2) in table:
            out[name] = f"blocks.{m.group(1)}.{table[m.group(2)]}"
    return out


def legacy_name(model: Any, site: str) -> str:
    """The legacy form of ``site`` (``site`` itself when it is legacy or has no legacy form)."""
    m = _BLOCK.match(site)
    if m is None:
        return site
    table = alias_table()[_kind(model)]
    if m.group(2) in table:
        return site
    suffix = legacy_table()[_kind(model)].get(m.group(2))
    if suffix is None and is_bridge(model):
        inverse = {v: k for k, v in alias_map(model).items() if _BLOCK.match(k)}
        return inverse.get(site, site)
    return f"blocks.{m.group(1)}.{suffix}" if suffix else site


def canonical_name(model: Any, site: str) -> str:
    """The canonical (bridge) form of ``site`` (``site`` itself when it has none)."""
    m = _BLOCK.match(site)
    if m is None:
        return site
    table = alias_table()[_kind(model)]
    suffix = table.get(m.group(2))
    return f"blocks.{m.group(1)}.{suffix}" if suffix else site


def site_on(model: Any, site: str) -> str:
    """The name under which ``site`` is registered on ``model``: itself, or its other form (legacy or
    canonical); ``site`` itself when neither exists (:func:`other_form` names the alternative for errors)."""
    names = hook_points(model)
    if site in names:
        return site
    other = other_form(model, site)
    return other if other in names else site


_SAE = re.compile(r"^(.+)(\.hook_sae_\w+)$")


def other_form(model: Any, site: str) -> str:
    """The legacy form of a canonical name, or the canonical form of a legacy one (``site`` if it has none).

    The hook points of an attached SAE (``<site>.hook_sae_acts_post``) follow their site's name: sae-lens's
    ``SAETransformerBridge`` registers them under the canonical form.
    """
    sae = _SAE.match(site)
    if sae:
        return other_form(model, sae.group(1)) + sae.group(2)
    other = legacy_name(model, site)
    return canonical_name(model, site) if other == site else other


def bridge_only(model: Any, site: str) -> bool:
    """Whether ``site`` looks like a TransformerBridge name that a HookedTransformer cannot have."""
    m = _BLOCK.match(site)
    suffix = m.group(2) if m else site
    return not is_bridge(model) and other_form(model, site) == site and suffix.endswith(("hook_in", "hook_out"))


def site_keys(site: str) -> frozenset[str]:
    """Every spelling of ``site`` without a model: itself and its legacy / canonical forms under the installed
    TransformerLens's table (both MLP kinds), so two names of one hook point share a key."""
    keys = {site}
    sae = _SAE.match(site)
    base, tail = (sae.group(1), sae.group(2)) if sae else (site, "")
    m = _BLOCK.match(base)
    if m:
        for table, back in zip(alias_table().values(), legacy_table().values()):
            for suffix in (table.get(m.group(2)), back.get(m.group(2))):
                if suffix:
                    keys.add(f"blocks.{m.group(1)}.{suffix}{tail}")
    return frozenset(keys)


def saved_aliases(sites: list[str]) -> dict[str, Any]:
    """What a saved intervention records about its hook names: the TransformerLens version and, for each
    block-level suffix it uses, its legacy -> canonical pairs for plain and gated MLPs."""
    table = alias_table()
    used = set()
    for s in sites:
        m = _BLOCK.match(s)
        if m:
            used.add(m.group(2))
    pairs = {kind: {k: v for k, v in t.items() if k in used or v in used} for kind, t in table.items()}
    return {"transformer_lens": transformer_lens_version(), "aliases": pairs}


def check_saved_aliases(saved: Any, where: str) -> None:
    """Raise (naming both forms) when a saved alias table disagrees with the installed TransformerLens's."""
    from ..errors import FormatError

    if saved is None:
        return
    if not isinstance(saved, Mapping) or not isinstance(saved.get("aliases"), Mapping):
        raise FormatError(f"{where}: 'hook_names' should be an object with 'transformer_lens' and 'aliases'")
    table = alias_table()
    for kind, pairs in saved["aliases"].items():
        if kind not in table or not isinstance(pairs, Mapping):
            raise FormatError(f"{where}: unknown MLP kind {kind!r} in 'hook_names' (expected plain or gated)")
        for legacy, canonical in pairs.items():
            here = table[kind].get(legacy)
            if here is not None and here != canonical:
                raise FormatError(
                    f"{where}: saved with transformer-lens {saved.get('transformer_lens')}, where the legacy hook "
                    f"{legacy!r} is the canonical {canonical!r}; the installed transformer-lens "
                    f"{transformer_lens_version()} maps {legacy!r} to {here!r}. Rebuild the intervention with "
                    f"this version, or use the legacy names")


__all__ = ["is_bridge", "hook_points", "other_form", "bridge_only", "site_keys", "alias_table", "legacy_table",
           "alias_map", "legacy_name", "canonical_name", "site_on", "saved_aliases", "check_saved_aliases",
           "transformer_lens_version"]
