"""RelP's LRP rules as an ordinary, saveable :class:`Intervention`: gradients change, forward values do not.

Each rule is a "gradient x input" trick applied by forward hooks, so it lasts exactly as long as the
intervention is applied and leaves the model untouched afterwards:

- ``LN``: every ``*.hook_scale`` (LayerNorm/RMSNorm and their ``Pre`` forms) is detached (kernel op ``detach``);
- ``AH``: every ``attn.hook_pattern`` is detached (gradient flows through values only);
- ``Identity``: the MLP activation's local gradient becomes ``act(x) / x``;
- ``Half``: the gated product ``g = act(gate) * up`` passes half the gradient to each factor.

``Identity`` and ``Half`` are the ``relp_mlp`` op at ``mlp.hook_post``, which returns
``post.detach() + (g - g.detach())`` with ``g`` rebuilt from the pre-activations that ``stash`` ops kept at
``mlp.hook_pre`` / ``hook_pre_linear`` in the same forward: the forward value is exactly ``post`` (bit for
bit), and only the backward sees the rules.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch
from torch import Tensor

from ..errors import FuncnetError
from ..hooks import Hook, Intervention, detach
from ..hooks.names import hook_points
from ..hooks.registry import HookFn, register_op

RULES = ("LN", "AH", "Identity", "Half")
_EPS = 1e-6


def normalize_rules(rules: Iterable[str] | str | None) -> tuple[str, ...]:
    """Accept ``"LN"``, ``"LN-rule"``, ``"ln"``...; ``None`` means all four rules."""
    if rules is None:
        return RULES
    if isinstance(rules, str):
        rules = [r for r in rules.replace(",", " ").split() if r]
    out = []
    lookup = {r.lower(): r for r in RULES}
    for r in rules:
        key = str(r).lower().removesuffix("-rule").removesuffix("_rule")
        if key not in lookup:
            raise FuncnetError(f"unknown RelP rule {r!r}; expected any of {list(RULES)} (a '-rule' suffix is fine)")
        if lookup[key] not in out:
            out.append(lookup[key])
    return tuple(out)


def _activation(name: str) -> Any:
    from transformer_lens.factories.activation_function_factory import SUPPORTED_ACTIVATIONS

    fn = SUPPORTED_ACTIVATIONS.get(name)
    if fn is None or name.endswith("_ln") or isinstance(fn, type):
        raise FuncnetError(f"RelP Identity/Half rules support element-wise activations "
                           f"{sorted(k for k, v in SUPPORTED_ACTIVATIONS.items() if not k.endswith('_ln') and not isinstance(v, type))}, "
                           f"not act_fn={name!r}; drop those rules with rules=('LN', 'AH')")
    return fn


def _p_relp_mlp(p: dict[str, Any]) -> dict[str, Any]:
    _activation(p.get("act_fn", ""))
    for key in ("gated", "identity", "half"):
        if not isinstance(p.get(key, False), bool):
            raise FuncnetError(f"{key} should be True or False, got {p.get(key)!r}")
    return p


def _v_relp_mlp(model: Any, site: str, p: Mapping[str, Any]) -> None:
    cfg = model.cfg
    if cfg.act_fn != p["act_fn"] or bool(getattr(cfg, "gated_mlp", False)) != p["gated"]:
        raise FuncnetError(f"the op was built for act_fn={p['act_fn']!r}, gated={p['gated']}, but the model has "
                           f"act_fn={cfg.act_fn!r}, gated={bool(getattr(cfg, 'gated_mlp', False))}; rebuild it with "
                           f"relp_rules(model)")


@register_op("relp_mlp", prepare=_p_relp_mlp, validate=_v_relp_mlp, uses_scratch=True)
def relp_mlp_op(act_fn: str, pre_key: str, up_key: str = "", gated: bool = False, identity: bool = True,
                half: bool = True, scratch: dict[str, Any] | None = None) -> HookFn:
    """At ``mlp.hook_post``: the same values, with the Identity and/or Half rules in the gradient."""
    act = _activation(act_fn)
    state = {} if scratch is None else scratch

    def hook_fn(post: Tensor, hook: Any = None) -> Tensor:
        pre = state.pop(pre_key)
        if identity:
            safe = torch.where(pre >= 0, pre + _EPS, pre - _EPS)
            a = pre * (act(pre) / safe).detach()
        else:
            a = act(pre)
        g = a * state.pop(up_key) if gated else a
        if half and gated:
            g = g / 2 + (g / 2).detach()
        return post.detach() + (g - g.detach())

    return hook_fn


def _mlp_rules(model: Any, layer: int, identity: bool, half: bool) -> Intervention:
    gated = bool(getattr(model.cfg, "gated_mlp", False))
    base = f"blocks.{layer}.mlp."
    pre_key, up_key = f"relp.{layer}.pre", f"relp.{layer}.up" if gated else ""
    hooks = [Hook(base + "hook_pre", "stash", {"key": pre_key})]
    if gated:
        hooks.append(Hook(base + "hook_pre_linear", "stash", {"key": up_key}))
    hooks.append(Hook(base + "hook_post", "relp_mlp", {"act_fn": str(model.cfg.act_fn), "pre_key": pre_key,
                                                       "up_key": up_key, "gated": gated, "identity": identity,
                                                       "half": half}))
    return Intervention(tuple(hooks))


def relp_rules(model: Any, rules: Iterable[str] | str | None = None) -> Intervention:
    """The hooks implementing ``rules`` on ``model`` (default all four); apply with ``.applied(model)``."""
    chosen = normalize_rules(rules)
    names = list(hook_points(model))
    stopped = [s for s in names if ("LN" in chosen and s.endswith("hook_scale"))
               or ("AH" in chosen and s.endswith("attn.hook_pattern"))]
    iv = detach(stopped) if stopped else Intervention()
    identity, half = "Identity" in chosen, "Half" in chosen
    if (identity or (half and getattr(model.cfg, "gated_mlp", False))) and not getattr(model.cfg, "attn_only", False):
        for layer in range(model.cfg.n_layers):
            iv = iv + _mlp_rules(model, layer, identity, half)
    return iv


__all__ = ["RULES", "relp_rules", "normalize_rules", "relp_mlp_op"]
