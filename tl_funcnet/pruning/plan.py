"""Which neurons to remove: selection at a requested ratio, and the :class:`PruningPlan` value it returns.

The ratio is the fraction of *all* MLP neurons removed (protected layers count in the denominator but
lose nothing). Uniform allocation removes the same fraction from every prunable layer; global allocation
removes the lowest-scoring neurons over all prunable layers at once, i.e. it picks the threshold T such
that exactly the requested number of neurons score at or below it (for FN: the global |z| threshold).
At least ``min_keep`` neurons stay in every layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from ..errors import FuncnetError
from ..hooks import Intervention, ablate
from ..models.mlp import mlp_widths
from .model_info import mlp_params, n_params, params_per_neuron

POST = "blocks.{}.mlp.hook_post"


@dataclass(eq=False)
class PruningPlan:
    """Per-layer masks of pruned MLP neurons, plus the compensation means (when asked for).

    Attributes:
        method, allocation, ratio: how the plan was made (``ratio`` = requested fraction of MLP neurons).
        pruned: one ``(d_mlp_l,)`` bool mask per layer, True = removed.
        protected: layers that were not allowed to lose neurons.
        threshold: for global allocation, the score T at the cut (pruned neurons score ≤ T).
        means: per-layer full-width mean ``mlp.hook_post`` of the pruned neurons, measured with the
            earlier layers already pruned (zero at kept neurons), or None before compensation.
    """

    method: str
    allocation: str
    ratio: float
    pruned: list[Bool[Tensor, "d_mlp"]]
    protected: tuple[int, ...]
    threshold: float | None = None
    means: list[Float[Tensor, "d_mlp"]] | None = field(default=None, repr=False)

    @property
    def widths_before(self) -> list[int]:
        return [int(p.numel()) for p in self.pruned]

    @property
    def widths_after(self) -> list[int]:
        return [int((~p).sum()) for p in self.pruned]

    @property
    def n_pruned(self) -> int:
        return int(sum(int(p.sum()) for p in self.pruned))

    @property
    def neuron_ratio(self) -> float:
        """Achieved fraction of MLP neurons removed."""
        return self.n_pruned / sum(self.widths_before)

    def pruned_units(self, layer: int) -> Tensor:
        return self.pruned[layer].nonzero().flatten()

    def check_model(self, model: Any) -> None:
        widths = mlp_widths(model)
        if widths != self.widths_before:
            raise FuncnetError(f"the plan was made for MLP widths {self.widths_before[:4]}..., but the model has "
                               f"{(widths or [])[:4]}...; make the plan on this model")

    def to_intervention(self, *, bias_compensation: bool = True) -> Intervention:
        """Soft pruning: zero-ablate (or, with compensation, mean-ablate) the pruned neurons at ``mlp.hook_post``.

        Mean-ablation is the same computation as adding ``W_outᵀ·E[x_P]`` to ``b_out`` (the hard prune).
        """
        if bias_compensation and self.means is None:
            raise FuncnetError("bias_compensation=True needs the plan's means; make the plan with "
                               "plan_pruning(..., bias_compensation=True) (or pass bias_compensation=False)")
        iv = Intervention()
        for l, p in enumerate(self.pruned):
            if not bool(p.any()):
                continue
            units = p.nonzero().flatten()
            if bias_compensation:
                iv = iv | ablate(POST.format(l), units, mode="mean", values=self.means[l])  # type: ignore[index]
            else:
                iv = iv | ablate(POST.format(l), units)
        return iv

    def param_counts(self, model: Any) -> dict[str, Any]:
        """Parameters before/after over the MLPs and over the whole model (embeddings included)."""
        self.check_model(model)
        removed = sum(params_per_neuron(model, l) * int(p.sum()) for l, p in enumerate(self.pruned))
        total, mlp = n_params(model), mlp_params(model)
        return {"params_before": total, "params_after": total - removed,
                "mlp_params_before": mlp, "mlp_params_after": mlp - removed,
                "param_ratio": removed / total, "mlp_param_ratio": removed / mlp}

    def summary(self) -> dict[str, Any]:
        return {"method": self.method, "allocation": self.allocation, "ratio": self.ratio,
                "neuron_ratio": self.neuron_ratio, "n_pruned": self.n_pruned, "threshold": self.threshold,
                "protected": list(self.protected), "widths_after": self.widths_after,
                "bias_compensation_ready": self.means is not None}


def _check_ratio(ratio: Any) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not (0.0 < float(ratio) < 1.0) \
            or math.isnan(float(ratio)):
        raise FuncnetError(f"ratio should be a fraction of MLP neurons to remove, strictly between 0 and 1; "
                           f"got {ratio!r}")
    return float(ratio)


def select(scores: Sequence[Tensor | None], widths: Sequence[int], ratio: float, *, allocation: str,
           protected: Sequence[int], standardize: bool = False, min_keep: int = 1, method: str = "custom"
           ) -> PruningPlan:
    """Remove ``round(ratio · Σ widths)`` neurons with the lowest scores; see the module docstring."""
    ratio = _check_ratio(ratio)
    if allocation not in ("uniform", "global"):
        raise FuncnetError(f"allocation should be 'uniform' or 'global', got {allocation!r}")
    L = len(widths)
    prunable = [l for l in range(L) if l not in set(protected)]
    if not prunable:
        raise FuncnetError(f"all {L} layers are protected (layers {list(protected)}); nothing can be pruned; "
                           f"lower protect_first / protect_last")
    for l in prunable:
        if scores[l] is None or int(scores[l].numel()) != widths[l]:
            raise FuncnetError(f"layer {l} has no score of width {widths[l]}")
    total = sum(widths)
    n_remove = int(round(ratio * total))
    capacity = sum(max(0, widths[l] - min_keep) for l in prunable)
    if n_remove < 1:
        raise FuncnetError(f"ratio={ratio} removes no neuron out of {total}; use a larger ratio")
    if n_remove > capacity:
        raise FuncnetError(
            f"ratio={ratio} asks to remove {n_remove} of {total} MLP neurons, but only {capacity} are prunable "
            f"(layers {list(protected)} are protected, {min_keep} neuron(s) stay per layer): at most "
            f"{capacity / total:.3f}; lower the ratio or protect fewer layers")
    pruned = [torch.zeros(w, dtype=torch.bool) for w in widths]
    threshold = None
    if allocation == "uniform":
        pw = sum(widths[l] for l in prunable)
        quota = {l: n_remove * widths[l] / pw for l in prunable}
        take = {l: min(int(math.floor(quota[l])), widths[l] - min_keep) for l in prunable}
        rest = n_remove - sum(take.values())
        by_remainder = sorted(prunable, key=lambda l: -(quota[l] - math.floor(quota[l])))
        while rest > 0:  # largest remainders first; capacity was checked, so this ends
            for l in by_remainder:
                if rest > 0 and take[l] < widths[l] - min_keep:
                    take[l] += 1
                    rest -= 1
        for l in prunable:
            order = torch.argsort(scores[l].double(), stable=True)
            pruned[l][order[: take[l]]] = True
    else:
        vals, owner, index = [], [], []
        for l in prunable:
            s = scores[l].double().clone()
            if standardize:
                sd = s.std()
                s = (s - s.mean()) / (sd if float(sd) > 0 else 1.0)
            if min_keep > 0:  # the top min_keep of each layer can never go
                s[torch.argsort(s, descending=True, stable=True)[:min_keep]] = torch.inf
            vals.append(s)
            owner.append(torch.full((widths[l],), l, dtype=torch.long))
            index.append(torch.arange(widths[l]))
        v, o, i = torch.cat(vals), torch.cat(owner), torch.cat(index)
        order = torch.argsort(v, stable=True)[:n_remove]
        threshold = float(v[order[-1]])
        so, si = o[order], i[order]
        for l in prunable:
            pruned[l][si[so == l]] = True
    return PruningPlan(method, allocation, ratio, pruned, tuple(protected), threshold)


__all__ = ["PruningPlan", "select"]
