"""The ops that run a circuit: senders write their ablation deltas, receivers add those of missing edges.

Running a circuit ``C`` on a model means: every receiver ``v`` reads
``x_v + sum_{u->v not in C} (a_u - z_u)``, where ``z_u`` is sender ``u``'s output in this (intervened) forward
and ``a_u`` its ablated value (its output on the corrupted prompts, its mean, or zero). Two ops do it, sharing
the application's scratch space:

- ``edge_source`` at each sender site (``hook_embed``, ``attn.hook_result``, ``hook_mlp_out``, and
  ``mlp.hook_post`` for unit groups) stores ``a_u - z_u`` of its senders into one buffer ``(batch, pos,
  n_senders, d_model)``; a unit group's ``z_u`` is ``hook_post[..., units] @ W_out[units]``, and the MLP's
  rest is its output minus its groups' (kept in the scratch space between the two hooks);
- ``edge_sink`` at each receiver site (``hook_{q,k,v}_input``, ``hook_mlp_in``, the last ``hook_resid_post``)
  adds, for each of its receivers and each batch row, the buffer's senders weighted by that row's ablation mask.

Rows of the batch may run different circuits (a mask per row), which is how a faithfulness curve runs in a few
forwards. Both ops hold only tensors and numbers, so a circuit's intervention saves and loads like any other.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from ..errors import FuncnetError, ShapeError
from ..hooks.registry import HookFn, register_op
from ..hooks.values import index_list, positive_int, real_tensor
from .run import group_units

_BUFFER = "edges.delta"


def _rows(stored: Tensor, batch: int, site: str) -> Tensor:
    """A stored ``(b, ...)`` tensor for a batch of ``batch`` rows (tiled: row ``r`` uses stored row ``r % b``)."""
    b = stored.shape[0]
    if batch == b:
        return stored
    if batch % b:
        raise ShapeError(f"{site!r}: {b} stored rows do not tile a batch of {batch} rows")
    return stored.repeat(batch // b, *([1] * (stored.ndim - 1)))


def _blocks(stored: Tensor, batch: int, site: str) -> Tensor:
    """A stored ``(b, ...)`` tensor for a batch of ``batch`` rows in ``b`` consecutive blocks (row ``r`` uses
    stored row ``r // (batch / b)``): one ablation mask per circuit, each circuit's rows together."""
    b = stored.shape[0]
    if batch == b:
        return stored
    if batch % b:
        raise ShapeError(f"{site!r}: {b} circuit rows do not divide a batch of {batch} rows")
    return stored.repeat_interleave(batch // b, dim=0)


def _p_source(p: dict[str, Any]) -> dict[str, Any]:
    p["senders"] = list(index_list(p.get("senders"), "senders"))
    p["slots"] = [None if s is None else int(s) for s in p.get("slots", [])]
    if len(p["slots"]) != len(p["senders"]):
        raise FuncnetError("edge_source needs one slot (a head, or None) per sender")
    p["n_senders"] = positive_int(p.get("n_senders"), "n_senders")
    ablated = p.get("ablated")
    if ablated is not None:
        a = real_tensor(ablated, "ablated")
        if a.ndim != 4 or a.shape[2] != len(p["senders"]):
            raise ShapeError(f"ablated should be (rows or 1, pos or 1, {len(p['senders'])} senders, d_model), got "
                             f"{tuple(a.shape)}")
        p["ablated"] = a
    units, weights, rest = p.get("units"), p.get("weights"), p.get("rest", False)
    if not isinstance(rest, bool):
        raise FuncnetError(f"rest should be True or False, got {rest!r}")
    if (units is None) != (weights is None) or (units is None and (rest or p.get("sae") is not None)):
        raise FuncnetError("unit-group senders need 'units' and 'weights' together ('sae' and 'rest' only with them)")
    if units is not None:
        n_groups = len(p["senders"]) - int(rest)
        if not isinstance(units, (list, tuple)) or len(units) != n_groups or \
                not isinstance(weights, (list, tuple)) or len(weights) != n_groups or n_groups < 1:
            raise FuncnetError("edge_source needs one unit list and one weight matrix per unit-group sender (and "
                               "the MLP's rest last, with rest=True)")
        p["units"] = [list(index_list(u, "units")) for u in units]
        p["weights"] = [real_tensor(w, "weights") for w in weights]
        for u, w in zip(p["units"], p["weights"]):
            if w.ndim != 2 or w.shape[0] != len(u):
                raise ShapeError(f"a unit group's weights should be (its {len(u)} units, d_model), got "
                                 f"{tuple(w.shape)}")
        if p.get("sae") is not None:
            from ..sae.params import check_params

            if not isinstance(p["sae"], Mapping):
                raise FuncnetError("sae should be a dict from tl_funcnet.sae.sae_params(sae)")
            check_params(p["sae"])
    for key in ("share", "minus"):
        if p.get(key) is not None and not isinstance(p[key], str):
            raise FuncnetError(f"{key} should be a scratch key (a string), got {p[key]!r}")
    return p


def _v_source(model: Any, site: str, p: Mapping[str, Any]) -> None:
    if p.get("units") is None:
        return
    width = int(p["sae"]["W_enc"].shape[1]) if p.get("sae") is not None else int(model.cfg.d_mlp or 0)
    top = max(max(u) for u in p["units"])
    if top >= width:
        raise ShapeError(f"{site!r}: unit group neuron {top} is out of range for d_mlp={width}")


@register_op("edge_source", prepare=_p_source, validate=_v_source, writes=False, uses_scratch=True,
             flags=("ungroup_grouped_query_attention",))
def edge_source_op(senders: list[int], slots: list[int | None], n_senders: int, ablated: Tensor | None = None,
                   units: list[list[int]] | None = None, weights: list[Tensor] | None = None,
                   sae: dict[str, Any] | None = None, rest: bool = False, share: str | None = None,
                   minus: str | None = None, scratch: dict[str, Any] | None = None) -> HookFn:
    """Store ``ablated - output`` of each sender at this site (``ablated=None``: zero ablation). With ``units``
    and ``weights`` the senders are unit groups: neurons of ``hook_post`` (their summed output goes to
    ``scratch[share]``), or with ``sae`` features of ``hook_mlp_out`` followed, with ``rest``, by the MLP's
    rest; with ``minus`` the MLP sender is its output less ``scratch[minus]``."""
    state = {} if scratch is None else scratch
    index = torch.tensor(senders, dtype=torch.long)
    first = 0 in senders
    cache: dict[Any, Tensor] = {}

    def outputs(act: Tensor, site: str) -> Tensor:
        if units is not None:
            key = ("w", act.device, act.dtype)
            if key not in cache:
                cache[key] = [w.to(device=act.device, dtype=act.dtype) for w in weights]  # type: ignore[assignment, union-attr]
            read = group_units(act, sae)
            z = torch.stack([read[..., u] @ w for u, w in zip(units, cache[key])], dim=2)  # type: ignore[arg-type]
            total = z.sum(2)
            if share is not None:
                state[share] = total
            return torch.cat([z, (act - total)[:, :, None]], dim=2) if rest else z
        if minus is not None:
            shares = state.get(minus)
            if shares is None or shares.shape != act.shape:
                raise FuncnetError(f"edge_source at {site!r} ran before its MLP's unit groups: apply the whole "
                                   f"circuit intervention, not part of it")
            return (act - shares)[:, :, None]
        return torch.stack([act if s is None else act[:, :, s] for s in slots], dim=2)  # (batch, pos, k, d)

    def hook_fn(act: Tensor, hook: Any = None) -> None:
        site = getattr(hook, "name", "?")
        z = outputs(act, site)
        buf = state.get(_BUFFER)
        if first or buf is None or buf.shape[:2] != z.shape[:2]:  # the input fires first: a new forward
            buf = state[_BUFFER] = z.new_zeros(z.shape[0], z.shape[1], n_senders, z.shape[-1])
        if ablated is None:
            delta = -z
        else:
            key = (act.device, act.dtype)
            if key not in cache:
                cache[key] = ablated.to(device=act.device, dtype=act.dtype)
            a = _rows(cache[key], z.shape[0], site)
            if a.shape[1] not in (1, z.shape[1]):
                raise ShapeError(f"{site!r}: the ablated values cover {a.shape[1]} positions, this forward has "
                                 f"{z.shape[1]}; ablate with prompts of the same length")
            delta = a - z
        if torch.is_grad_enabled() and (delta.requires_grad or buf.requires_grad):
            state[_BUFFER] = buf.index_copy(2, index.to(buf.device), delta)  # keeps earlier reads differentiable
        else:
            buf[:, :, index.to(buf.device)] = delta
        return None

    return hook_fn


def _p_sink(p: dict[str, Any]) -> dict[str, Any]:
    p["receivers"] = list(index_list(p.get("receivers"), "receivers"))
    p["slots"] = [None if s is None else int(s) for s in p.get("slots", [])]
    if len(p["slots"]) != len(p["receivers"]):
        raise FuncnetError("edge_sink needs one slot (a head, or None) per receiver")
    mask = p.get("ablate")
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.ndim != 3 or \
            mask.shape[1] != len(p["receivers"]):
        raise FuncnetError(f"ablate should be a bool tensor (rows, {len(p['receivers'])} receivers, n_senders) of the "
                           f"edges to ablate, got {getattr(mask, 'shape', type(mask).__name__)}")
    return p


def _v_sink(model: Any, site: str, p: Mapping[str, Any]) -> None:
    heads = [s for s in p["slots"] if s is not None]
    if heads and max(heads) >= model.cfg.n_heads:
        raise ShapeError(f"the receivers name head {max(heads)}; the model has {model.cfg.n_heads} heads per layer")


@register_op("edge_sink", prepare=_p_sink, validate=_v_sink, uses_scratch=True,
             flags=("ungroup_grouped_query_attention",))
def edge_sink_op(receivers: list[int], slots: list[int | None], ablate: Tensor,
                 scratch: dict[str, Any] | None = None) -> HookFn:
    """Add, per batch row and receiver, the stored deltas of the senders whose edge that row ablates (the mask's
    rows cover consecutive blocks of the batch: one row per circuit, or per circuit and prompt)."""
    state = {} if scratch is None else scratch
    cache: dict[Any, Tensor] = {}

    def hook_fn(act: Tensor, hook: Any = None) -> Tensor:
        site = getattr(hook, "name", "?")
        buf = state.get(_BUFFER)
        if buf is None:
            raise FuncnetError(f"edge_sink at {site!r} ran before any edge_source: apply the whole circuit "
                               f"intervention, not part of it")
        key = (act.device, act.dtype)
        if key not in cache:
            cache[key] = ablate.to(device=act.device, dtype=act.dtype)
        mask = _blocks(cache[key], act.shape[0], site)[:, :, : buf.shape[2]]  # (batch, k, n_senders)
        # (batch, pos, k, d) = sum_u mask[b, k, u] * buf[b, p, u, d]; a broadcast matmul, which (unlike einsum)
        # does not copy the whole buffer into another layout first (5x faster on SmolLM2)
        delta = torch.matmul(mask[:, None], buf)
        out = act.clone()
        for j, s in enumerate(slots):
            if s is None:
                out = out + delta[:, :, j]
            else:
                out[:, :, s] = out[:, :, s] + delta[:, :, j]
        return out

    return hook_fn


__all__ = ["edge_source_op", "edge_sink_op"]
