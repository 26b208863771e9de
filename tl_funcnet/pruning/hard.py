"""Hard pruning: physically remove MLP neurons so the model is smaller and faster.

:func:`hard_prune` returns a deep copy (the tokenizer is shared, not copied); the input model is never
modified. Block ``l`` keeps its neurons' slices of ``W_in``, ``W_gate``, ``b_in`` and ``W_out``, so MLP widths
differ per layer; ``cfg.d_mlp`` becomes the widest layer's, :func:`tl_funcnet.models.mlp_widths` gives each,
and :func:`tl_funcnet.models.save` / ``load`` store such models.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from ..errors import FuncnetError
from ..models.mlp import add_output_bias, select_neurons, sync_config
from .model_info import check_prunable
from .plan import PruningPlan


def _copy_model(model: Any) -> Any:
    memo: dict[int, Any] = {}
    tok = getattr(model, "tokenizer", None)
    if tok is not None:
        memo[id(tok)] = tok
    return copy.deepcopy(model, memo)


@torch.no_grad()
def hard_prune(model: Any, plan: PruningPlan, *, bias_compensation: bool = True) -> Any:
    """A smaller copy of ``model`` without the plan's pruned neurons.

    With ``bias_compensation`` (FLAP style) ``b_out += W_out[P]ᵀ · means[P]`` so the block outputs, on
    average over the calibration tokens, what the removed neurons contributed; the means come from the plan
    (measured with the earlier layers already pruned). The result computes the same logits as
    ``plan.to_intervention(bias_compensation=...)`` applied to ``model``.
    """
    check_prunable(model)
    plan.check_model(model)
    if bias_compensation and plan.means is None:
        raise FuncnetError("bias_compensation=True needs the plan's means; make the plan with "
                           "plan_pruning(..., bias_compensation=True) (or pass bias_compensation=False)")
    new = _copy_model(model)
    for l, p in enumerate(plan.pruned):
        if not bool(p.any()):
            continue
        mlp = new.blocks[l].mlp
        dev = mlp.W_out.device
        if bias_compensation:
            m = plan.means[l].to(dev, mlp.W_out.dtype)  # type: ignore[index]
            pm = p.to(dev)
            add_output_bias(mlp, m[pm] @ mlp.W_out.detach()[pm])
        select_neurons(mlp, (~p).nonzero().flatten())
    sync_config(new)
    return new


__all__ = ["hard_prune"]
