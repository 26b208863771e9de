"""Reading a model edge by edge: every sender's output and every receiver's input, as dense tensors.

``sender_outputs`` gives ``(batch, pos, n_senders, d_model)`` in the graph's sender order. A receiver's input is
the sum of its senders' outputs plus constant biases, which is what edge patching and edge attribution use.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..errors import FuncnetError, ShapeError
from ..hooks import capture
from ..hooks.intervention import flags_on
from .circuit import ABLATIONS, AblatedValues
from .graph import Graph

#: TransformerLens flags an edge graph needs (hook points per head, MLP inputs, one k/v input per query head)
EDGE_FLAGS = {"use_split_qkv_input", "use_attn_result", "use_hook_mlp_in", "ungroup_grouped_query_attention"}


@contextmanager
def edge_hooks(model: Any) -> Iterator[Any]:
    """TransformerLens's per-head input/output hook points (and ungrouped GQA) on for the block, restored after."""
    flags = set(EDGE_FLAGS)
    if getattr(model.cfg, "attn_only", False):
        flags.discard("use_hook_mlp_in")
    with flags_on(model, flags):
        yield model


def check_tokens(model: Any, tokens: Any, name: str) -> Int[Tensor, "batch pos"]:
    t = torch.as_tensor(tokens)
    if t.ndim != 2 or t.is_floating_point() or t.dtype == torch.bool or t.numel() == 0:
        raise ShapeError(f"{name} should be token ids of shape (batch, pos), got {t.dtype} of shape {tuple(t.shape)}")
    t = t.long()
    if model is None:  # the shape alone (a fanned-out sweep checks the vocabulary in its workers)
        return t
    if int(t.min()) < 0 or int(t.max()) >= model.cfg.d_vocab:
        raise FuncnetError(f"{name} holds token ids outside the vocabulary 0..{model.cfg.d_vocab - 1}")
    return t


def group_weights(model: Any, graph: Graph) -> dict[int, Float[Tensor, "units d_model"]]:
    """For each unit-group sender, the rows that write its units' share of the MLP's output: ``W_out`` rows of
    its neurons, or ``W_dec`` rows of its SAE features (check the graph against the model first)."""
    from ..sae.params import rescales_by_decoder_norm

    out = {}
    for u in range(graph.n_senders):
        part = graph.group_of(u)
        if part is None:
            continue
        _, layer, units = part
        if layer in graph.saes:
            p = graph.saes[layer]
            w = p["W_dec"].detach()[list(units)]
            if rescales_by_decoder_norm(p):
                w = w / w.norm(dim=-1, keepdim=True)  # decode divides those features by their decoder norms
            out[u] = w.to(model.cfg.dtype)
        else:
            out[u] = model.blocks[layer].mlp.W_out.detach()[list(units)]
    return out


def group_units(act: Tensor, sae: Any = None) -> Tensor:
    """What a unit group reads at its site: the neurons (``hook_post``), or the SAE's features of
    ``hook_mlp_out``."""
    if sae is None:
        return act
    from ..sae.params import encode

    return encode(sae, act)


def sender_values(graph: Graph, store: dict[str, Tensor], weights: dict[int, Tensor], dtype: torch.dtype | None = None
                  ) -> Float[Tensor, "batch pos n_senders d_model"]:
    """Every sender's output from the captured ``graph.sender_sites()`` (``weights`` from :func:`group_weights`).
    An MLP sender whose layer has unit groups is what the groups leave of the MLP's output."""
    parts: list[Tensor] = []
    shares: dict[int, Tensor] = {}  # layer -> the unit groups' summed output
    units: dict[str, Tensor] = {}  # site -> what its groups read (SAE features are encoded once)
    for u in range(graph.n_senders):
        site, slot = graph.sender_site(u)
        act = store[site] if dtype is None else store[site].to(dtype)
        group = graph.group_of(u)
        if group is not None:
            if site not in units:
                units[site] = group_units(act, graph.saes.get(group[1]))
            z = units[site][..., list(group[2])] @ weights[u].to(act.dtype)
            shares[group[1]] = shares[group[1]] + z if group[1] in shares else z
        elif slot is not None:
            z = act[:, :, slot]
        elif site.endswith("hook_mlp_out") and graph.sender_layer(u) in shares:
            z = act - shares[graph.sender_layer(u)]
        else:
            z = act
        parts.append(z)
    return torch.stack(parts, dim=2)


@torch.no_grad()
def sender_outputs(model: Any, graph: Graph, tokens: Tensor) -> Float[Tensor, "batch pos n_senders d_model"]:
    """Every sender's output on ``tokens``. The input node is the token embedding (``hook_embed``); a position
    embedding is the same for prompts of one length, so it belongs to the constant part of every receiver."""
    graph.check_model(model)
    tokens = check_tokens(model, tokens, "tokens")
    store: dict[str, Tensor] = {}
    with edge_hooks(model), capture(graph.sender_sites(), store).applied(model):
        model(tokens.to(model.cfg.device), return_type=None)
    return sender_values(graph, store, group_weights(model, graph))


def ablated_values(model: Any, graph: Graph, ablation: str = "patching", *, corrupted: Tensor | None = None,
                   texts: Any = None, positional: bool = False) -> AblatedValues:
    """What each sender's output becomes when an edge from it is ablated.

    - ``"patching"``: its output on the ``corrupted`` prompts (the interchange intervention);
    - ``"mean"``: its mean output over ``texts`` (token ids ``(batch, pos)``; every position pooled, or one mean
      per position with ``positional=True``, which needs prompts of the circuit's length);
    - ``"zero"``: zero.
    """
    if ablation not in ABLATIONS:
        raise FuncnetError(f"ablation should be one of {ABLATIONS}, got {ablation!r}")
    graph.check_model(model)
    weights = group_weights(model, graph)
    if ablation == "zero":
        return AblatedValues(graph, ablation, None, weights)
    if ablation == "patching":
        if corrupted is None:
            raise FuncnetError("ablation='patching' needs the corrupted prompts: ablated_values(..., corrupted=tokens)")
        return AblatedValues(graph, ablation, sender_outputs(model, graph, corrupted).float(), weights)
    if texts is None:
        raise FuncnetError("ablation='mean' needs texts to average over: ablated_values(..., texts=tokens)")
    out = sender_outputs(model, graph, texts).float()
    mean = out.mean(0, keepdim=True) if positional else out.mean((0, 1), keepdim=True)
    return AblatedValues(graph, ablation, mean, weights)


__all__ = ["edge_hooks", "sender_outputs", "sender_values", "group_weights", "group_units", "ablated_values",
           "check_tokens", "EDGE_FLAGS"]
