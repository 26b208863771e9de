"""RelP's LRP rules as a scoped :class:`Intervention`: gradients change, forward values do not.

Each rule is a "gradient x input" trick applied by forward hooks, so it lasts exactly as long as the
intervention is applied and leaves the model untouched afterwards:

- ``LN``: every ``*.hook_scale`` (LayerNorm/RMSNorm and their ``Pre`` forms) returns ``scale.detach()``;
- ``AH``: every ``attn.hook_pattern`` returns ``pattern.detach()`` (gradient flows through values only);
- ``Identity``: the MLP activation's local gradient becomes ``act(x) / x``;
- ``Half``: the gated product ``g = act(gate) * up`` passes half the gradient to each factor.

``Identity`` and ``Half`` are one hook on ``mlp.hook_post`` that returns ``post.detach() + (g - g.detach())``
with ``g`` rebuilt from the pre-activations captured at ``mlp.hook_pre``/``hook_pre_linear``: the forward
value is exactly ``post`` (bit for bit), and only the backward sees the rules.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor

from ..errors import FuncnetError
from ..hooks import Intervention, custom

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


def _detach(act: Tensor, hook: Any = None) -> Tensor:
    return act.detach()


def _mlp_hooks(model: Any, layer: int, identity: bool, half: bool) -> Intervention:
    mlp = model.blocks[layer].mlp
    gated = bool(getattr(model.cfg, "gated_mlp", False))
    if getattr(mlp, "hook_mid", None) is not None and str(model.cfg.act_fn).endswith("_ln"):
        raise FuncnetError(f"RelP Identity/Half rules do not support act_fn={model.cfg.act_fn!r} (an MLP with an "
                           "inner LayerNorm); drop those rules with rules=('LN', 'AH')")
    seen: dict[str, Tensor] = {}

    def keep(name: str):
        def hook_fn(act: Tensor, hook: Any = None) -> None:
            seen[name] = act
            return None
        return hook_fn

    def post_fn(post: Tensor, hook: Any = None) -> Tensor:
        pre = seen.pop("pre")
        if identity:
            safe = torch.where(pre >= 0, pre + _EPS, pre - _EPS)
            a = pre * (mlp.act_fn(pre) / safe).detach()
        else:
            a = mlp.act_fn(pre)
        g = a * seen.pop("up") if gated else a
        if half and gated:
            g = g / 2 + (g / 2).detach()
        return post.detach() + (g - g.detach())

    base = f"blocks.{layer}.mlp."
    iv = custom(base + "hook_pre", keep("pre"))
    if gated:
        iv = iv + custom(base + "hook_pre_linear", keep("up"))
    return iv + custom(base + "hook_post", post_fn)


def relp_intervention(model: Any, rules: Iterable[str] | str | None = None) -> Intervention:
    """The hooks implementing ``rules`` on ``model`` (default: all four). Apply with ``.applied(model)``."""
    chosen = normalize_rules(rules)
    names = list(model.hook_dict)
    iv = Intervention()
    if "LN" in chosen:
        for site in (s for s in names if s.endswith("hook_scale")):
            iv = iv + custom(site, _detach)
    if "AH" in chosen:
        for site in (s for s in names if s.endswith("attn.hook_pattern")):
            iv = iv + custom(site, _detach)
    identity, half = "Identity" in chosen, "Half" in chosen
    if identity or (half and getattr(model.cfg, "gated_mlp", False)):
        if getattr(model.cfg, "attn_only", False):
            return iv
        for layer in range(model.cfg.n_layers):
            iv = iv + _mlp_hooks(model, layer, identity, half)
    return iv


__all__ = ["RULES", "relp_intervention", "normalize_rules"]
