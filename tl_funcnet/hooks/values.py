"""Checking the numbers an op is given: finite real scalars and tensors, converted once when a Hook is made."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import FuncnetError, ShapeError


def finite_number(x: Any, name: str) -> float:
    """``x`` as a finite float; bools, complex numbers, NaN and inf are refused."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Real):
        raise FuncnetError(f"{name} should be a finite real number, got {type(x).__name__} {x!r:.40}")
    value = float(x)
    if not math.isfinite(value):
        raise FuncnetError(f"{name} should be a finite real number, got {value}; NaN and inf would make the "
                           f"model output NaN")
    return value


def real_tensor(x: Any, name: str) -> Tensor:
    """An array-like (tensor, numpy array, nested list) as a finite real tensor: a detached copy, floating
    point (integers become float32), on the CPU unless ``x`` is already a tensor (kept on its device)."""
    if isinstance(x, Tensor):
        t = x.detach()
    else:
        try:
            arr = np.asarray(x)
        except (TypeError, ValueError) as err:
            raise FuncnetError(f"{name} should be a tensor, array or list of numbers; got {type(x).__name__} "
                               f"({err})") from None
        if arr.dtype == object or arr.dtype.kind in "USV":
            raise FuncnetError(f"{name} should hold numbers, got {type(x).__name__} {x!r:.60}")
        t = torch.from_numpy(np.array(arr))
    if t.is_complex():
        raise FuncnetError(f"{name} is complex ({t.dtype}); tl_funcnet ops take real numbers: pass .real or .abs()")
    if t.dtype == torch.bool:
        raise FuncnetError(f"{name} is a boolean tensor; pass numbers (for a selection of units use units=)")
    if t.numel() == 0:
        raise ShapeError(f"{name} is empty (shape {tuple(t.shape)}); pass at least one number")
    if not t.is_floating_point():
        t = t.to(torch.float32)
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise FuncnetError(f"{name} holds {bad} NaN or infinite value(s); the model would output NaN. Check "
                           f"how it was computed (e.g. torch.nan_to_num)")
    return t.clone()


def scalar_or_tensor(x: Any, name: str) -> float | Tensor:
    """A finite number, or a finite real tensor (anything array-like); 0-d tensors become numbers."""
    if isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_)):
        return finite_number(x, name)
    t = real_tensor(x, name)
    return float(t) if t.ndim == 0 else t


def index_list(x: Any, name: str, *, allow_negative: bool = False) -> tuple[int, ...]:
    """A sequence of integer indices (list, tuple, range, int array or tensor) as a tuple of ints.

    Floats (even 2.0), bools, strings and a bare int are refused: a bare int is ambiguous (one index, or
    that many?), so write ``[5]``.
    """
    if isinstance(x, (str, bytes, numbers.Number, np.generic)) or x is None:
        hint = f"; write [{x}] for one index" if isinstance(x, numbers.Integral) and not isinstance(x, bool) else ""
        raise FuncnetError(f"{name} should be a list of integer indices, got {type(x).__name__} {x!r:.40}{hint}")
    if isinstance(x, Tensor):
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise FuncnetError(f"{name} should hold integers, got a {x.dtype} tensor")
        values = x.detach().reshape(-1).tolist()
    elif isinstance(x, np.ndarray):
        if x.dtype.kind not in "iu":
            raise FuncnetError(f"{name} should hold integers, got a {x.dtype} array")
        values = x.reshape(-1).tolist()
    else:
        try:
            values = list(x)
        except TypeError:
            raise FuncnetError(f"{name} should be a list of integer indices, got {type(x).__name__}") from None
    out = []
    for v in values:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (numbers.Integral, np.integer)):
            raise FuncnetError(f"{name} should hold integers only, got {type(v).__name__} {v!r:.20} (indices are "
                               f"never rounded: 1.5 is not unit 1)")
        if int(v) < 0 and not allow_negative:
            raise FuncnetError(f"{name} holds the negative index {int(v)}; units are numbered 0..n-1")
        out.append(int(v))
    return tuple(out)


def positive_int(x: Any, name: str, *, minimum: int = 1) -> int:
    """``x`` as an int >= ``minimum`` (bools and floats refused)."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (numbers.Integral, np.integer)) or int(x) < minimum:
        raise FuncnetError(f"{name} should be an integer >= {minimum}, got {x!r:.40}")
    return int(x)


__all__ = ["finite_number", "real_tensor", "scalar_or_tensor", "index_list", "positive_int"]
