"""Attribution patching (AtP) and RelP: ``(source_act - target_act) . grad`` per node, from 2 forwards + 1 backward.

AtP takes the plain gradient of the metric at the target run; RelP takes it through the LRP rules of
:mod:`.relp`. The gradient is taken with ``torch.autograd.grad`` with respect to the captured activations,
so no ``.grad`` accumulates on the model's parameters.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any, Iterable

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import FuncnetError
from ..hooks import Intervention, capture
from ._common import forward_logits, last_position_only, prepare, run_capture
from .metrics import Metric, check_metric
from .nodes import NodeSet
from .relp import normalize_rules, relp_rules
from .result import PatchResult


def _reduce(prod: Float[Tensor, "batch pos units"], nodes: list, out: Tensor, idx: list[int]) -> None:
    """Sum ``prod`` over each node's positions and units into ``out[idx[j]]`` (vectorized for 1-unit nodes)."""
    by_pos = prod.sum(1)  # (batch, units)
    single = [j for j, nd in enumerate(nodes) if nd.units is not None and len(nd.units) == 1 and nd.pos is not None]
    if single:
        p = torch.tensor([nodes[j].pos for j in single])
        u = torch.tensor([nodes[j].units[0] for j in single])
        out[[idx[j] for j in single]] = prod[:, p, u].T
    single_all = [j for j, nd in enumerate(nodes) if nd.units is not None and len(nd.units) == 1 and nd.pos is None]
    if single_all:
        u = torch.tensor([nodes[j].units[0] for j in single_all])
        out[[idx[j] for j in single_all]] = by_pos[:, u].T
    done = set(single) | set(single_all)
    for j, nd in enumerate(nodes):
        if j in done:
            continue
        sel = by_pos if nd.pos is None else prod[:, nd.pos]
        out[idx[j]] = sel.sum(-1) if nd.units is None else sel[:, list(nd.units)].sum(-1)


def attribution_patch(model: Any, clean: Tensor, corrupted: Tensor, nodes: NodeSet, metric: Metric, *,
                      direction: str = "denoise", method: str = "atp",
                      rules: Iterable[str] | str | None = None) -> PatchResult:
    """Estimate every node's patching effect to first order (AtP) or through LRP rules (RelP).

    ``method="relp"`` uses ``rules`` (default all: LN, AH, Identity, Half); ``method="atp"`` ignores them.
    ``direction`` as in :func:`exact_patch`: ``"denoise"`` differentiates at the corrupted run and uses
    ``clean - corrupted``. Values are estimated changes of the mean metric.
    """
    if method not in ("atp", "relp"):
        raise FuncnetError(f"method should be 'atp' or 'relp', got {method!r}")
    chosen = normalize_rules(rules) if method == "relp" else ()
    target, source = prepare(model, clean, corrupted, nodes, direction)
    n = target.shape[0]
    sites = nodes.sites
    t0 = time.perf_counter()
    src = run_capture(model, source, sites)
    store: dict[str, Tensor] = {}
    iv = (relp_rules(model, chosen) if chosen else Intervention()) + capture(sites, store, detach=False)
    with torch.enable_grad():
        with iv.applied(model):
            last_only = last_position_only(metric, sites)
            values = check_metric(metric, n, metric(forward_logits(model, target, last_only=last_only)))
        acts = [store[s] for s in sites]
        grads = torch.autograd.grad(values.sum(), acts, allow_unused=True)
    per_prompt = torch.zeros(len(nodes), n)
    groups: dict[str, list[int]] = defaultdict(list)  # single-site nodes, reduced vectorized
    spanning: dict[str, list[tuple[int, Any]]] = defaultdict(list)  # parts of multi-site nodes, summed
    for i, nd in enumerate(nodes.nodes):
        if nd.also:
            for site, units in nd.parts:
                spanning[site].append((i, units))
        else:
            groups[nd.site].append(i)
    with torch.no_grad():
        for site, act, grad in zip(sites, acts, grads):
            if grad is None:  # the metric does not depend on this site
                continue
            prod = (src[site] - act.detach()) * grad
            if prod.ndim == 4:
                prod = prod.sum(-1)
            prod = prod.float().cpu()
            idx = groups[site]
            if idx:
                _reduce(prod, [nodes.nodes[i] for i in idx], per_prompt, idx)
            for i, units in spanning[site]:
                pos = nodes.nodes[i].pos
                sel = prod.sum(1) if pos is None else prod[:, pos]
                per_prompt[i] += sel.sum(-1) if units is None else sel[:, list(units)].sum(-1)
    return PatchResult(effects=per_prompt.mean(1), nodes=nodes, method=method, direction=direction,
                       baseline=float(values.detach().mean()), per_prompt=per_prompt,
                       seconds=time.perf_counter() - t0,
                       info={"rules": list(chosen), "n_prompts": n})


__all__ = ["attribution_patch"]
