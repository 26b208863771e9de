"""Selecting units and positions: the ``units`` and ``pos`` parameters every op shares.

- ``units`` index the last dim of ``(batch, pos, d)`` activations and the head dim of per-head
  ``(batch, pos, head, d_head)`` ones: ``None`` (all), a list of ints, an int tensor, or a bool mask over
  the units. Only integers are indices (never rounded), and they are numbered ``0..n-1``.
- ``pos`` selects sequence positions: ``None`` (all), an int (negative counts from the end), a list of
  ints, ``"last"`` (the last position of each row in this forward: the last real token unless the batch
  is right-padded, then pass :func:`last_token_positions`), ``{"slice": [start, stop, step]}``, or an int
  tensor ``(batch,)`` with one position per row. Positions are checked against each forward's length.
"""

from __future__ import annotations

import numbers
from typing import Any, Mapping

import numpy as np
import torch
from jaxtyping import Bool, Int
from torch import Tensor

from ..errors import FuncnetError, ShapeError
from .values import index_list

PosSpec = Any  # None | int | tuple[int, ...] | "last" | {"slice": (start, stop, step)} | Int[Tensor, "batch"]
UnitSpec = Any  # None | tuple[int, ...] | Bool[Tensor, "n_units"]

_POS_HELP = ("pos should be None (all positions), an int, a list of ints, 'last', {'slice': [start, stop, step]} "
             "or an int tensor of shape (batch,)")


def prepare_units(units: Any, name: str = "units") -> UnitSpec:
    """Check and normalize a ``units`` parameter (see the module docstring)."""
    if units is None:
        return None
    if isinstance(units, (Tensor, np.ndarray)) and units.dtype in (torch.bool, np.bool_):
        mask = torch.as_tensor(units).detach().clone()
        if mask.ndim != 1:
            raise ShapeError(f"{name} as a boolean mask should be 1-D (one entry per unit), got shape "
                             f"{tuple(mask.shape)}")
        return mask
    return index_list(units, name)


def prepare_pos(pos: Any) -> PosSpec:
    """Check and normalize a ``pos`` parameter (see the module docstring)."""
    if pos is None:
        return None
    if isinstance(pos, str):
        if pos == "last":
            return pos
        hint = " (all positions are pos=None)" if pos == "all" else ""
        raise FuncnetError(f"{_POS_HELP}; got {pos!r}{hint}")
    if isinstance(pos, (bool, np.bool_)):
        raise FuncnetError(f"{_POS_HELP}; got {pos!r}")
    if isinstance(pos, (numbers.Integral, np.integer)):
        return int(pos)
    if isinstance(pos, Mapping):
        raw = pos.get("slice") if set(pos) == {"slice"} else None
        if not isinstance(raw, (list, tuple)) or not 1 <= len(raw) <= 3:
            raise FuncnetError(f"{_POS_HELP}; a slice is {{'slice': [start, stop, step]}}, got {dict(pos)!r:.80}")
        parts = list(raw) + [None] * (3 - len(raw))
        for p in parts:
            if p is not None and (isinstance(p, bool) or not isinstance(p, numbers.Integral)):
                raise FuncnetError(f"slice bounds should be ints or None, got {p!r} in {dict(pos)!r:.80}")
        if parts[2] is not None and int(parts[2]) <= 0:
            raise FuncnetError(f"slice step should be a positive int or None, got {parts[2]}")
        return {"slice": tuple(None if p is None else int(p) for p in parts)}
    if isinstance(pos, (Tensor, np.ndarray)):
        t = torch.as_tensor(pos).detach()
        if t.ndim != 1 or t.is_floating_point() or t.dtype == torch.bool or t.is_complex():
            raise FuncnetError(f"{_POS_HELP}; a tensor must be 1-D integers (one position per row), got "
                               f"{t.dtype} of shape {tuple(t.shape)}")
        return t.to(torch.long).clone()
    return index_list(pos, "pos", allow_negative=True)


def last_token_positions(attention_mask: Int[Tensor, "batch pos"]) -> Int[Tensor, "batch"]:
    """Index of each row's last real token, for right-padded batches (for left padding use ``"last"``)."""
    mask = attention_mask.to(torch.long)
    idx = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return (idx * mask).argmax(dim=1)


def unit_dim(act: Tensor) -> int:
    """The axis units index: the head axis of per-head activations, else the last axis."""
    return 2 if act.ndim == 4 else act.ndim - 1


def unit_index(units: UnitSpec) -> Tensor | None:
    """``units`` as a 1-D long tensor (``None`` for all units)."""
    if units is None:
        return None
    if isinstance(units, Tensor) and units.dtype == torch.bool:
        return units.nonzero().flatten()
    return torch.as_tensor(units, dtype=torch.long).reshape(-1)


def unit_mask(units: UnitSpec, act: Tensor, site: str = "?") -> Bool[Tensor, "..."] | None:
    """Bool mask broadcastable to ``act``, True on the selected units; ``None`` selects all."""
    if units is None:
        return None
    dim = unit_dim(act)
    n = act.shape[dim]
    if isinstance(units, Tensor) and units.dtype == torch.bool:
        if units.numel() != n:
            raise ShapeError(f"units mask at {site!r} has {units.numel()} entries, the activation has {n} units")
        mask = units.to(act.device)
    else:
        idx = unit_index(units)
        if idx.numel() and int(idx.max()) >= n:
            raise ShapeError(f"unit index {int(idx.max())} is out of range at {site!r}, which has {n} units "
                             f"(valid 0..{n - 1})")
        mask = torch.zeros(n, dtype=torch.bool, device=act.device)
        mask[idx.to(act.device)] = True
    shape = [1] * act.ndim
    shape[dim] = n
    return mask.view(shape)


def _check_pos_range(p: int, n_pos: int, site: str) -> int:
    if not -n_pos <= p < n_pos:
        raise ShapeError(f"pos={p} is out of range at {site!r}: this forward has {n_pos} positions "
                         f"(valid {-n_pos}..{n_pos - 1})")
    return p % n_pos


def pos_mask(pos: PosSpec, act: Tensor, site: str = "?") -> Bool[Tensor, "..."] | None:
    """Bool mask ``(batch or 1, pos, 1, ...)`` selecting positions of ``act``; ``None`` selects all."""
    if pos is None:
        return None
    batch, n_pos = act.shape[0], act.shape[1]
    if isinstance(pos, Tensor):
        if pos.shape[0] != batch:
            raise ShapeError(f"pos tensor at {site!r} has {pos.shape[0]} entries but the batch has {batch} rows; "
                             f"give one position per row")
        if pos.numel() and (int(pos.max()) >= n_pos or int(pos.min()) < 0):
            raise ShapeError(f"pos tensor at {site!r} holds positions outside 0..{n_pos - 1}")
        mask = torch.zeros(batch, n_pos, dtype=torch.bool, device=act.device)
        mask[torch.arange(batch, device=act.device), pos.to(act.device)] = True
    else:
        mask = torch.zeros(1, n_pos, dtype=torch.bool, device=act.device)
        if pos == "last":
            mask[0, -1] = True
        elif isinstance(pos, Mapping):
            mask[0, slice(*pos["slice"])] = True
        elif isinstance(pos, int):
            mask[0, _check_pos_range(pos, n_pos, site)] = True
        else:
            mask[0, [_check_pos_range(p, n_pos, site) for p in pos]] = True
    return mask.view(*mask.shape, *([1] * (act.ndim - 2)))


def where_pos(pos: PosSpec, edited: Tensor, act: Tensor, site: str = "?") -> Tensor:
    """``edited`` at the selected positions, ``act`` elsewhere."""
    mask = pos_mask(pos, act, site)
    return edited if mask is None else torch.where(mask, edited, act)


__all__ = ["PosSpec", "UnitSpec", "prepare_units", "prepare_pos", "last_token_positions", "unit_dim", "unit_index",
           "unit_mask", "pos_mask", "where_pos"]
