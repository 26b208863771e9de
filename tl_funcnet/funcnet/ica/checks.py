"""Input checks shared by the ICA estimators: parameters, dtypes, and data in (numpy, array-like or torch).

Every error is a :class:`~tl_funcnet.errors.FuncnetError` that says what was wrong, what was expected and
how to fix it. scikit-learn's validation does the array conversion and the feature bookkeeping
(``n_features_in_``, ``feature_names_in_``); its messages are kept and a fix is added.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from sklearn.base import BaseEstimator
from sklearn.utils._param_validation import InvalidParameterError, validate_parameter_constraints
from sklearn.utils.validation import check_array, validate_data
from torch import Tensor

from tl_funcnet.errors import FuncnetError, InputTypeError, NotFittedError, ShapeError

__all__ = ["DTYPES", "dtype_name", "check_params", "as_tensor", "record_features",
           "check_finite", "check_n_components", "check_fitted", "fitted_tensor", "as_output"]

#: the working dtypes, by name
DTYPES = {"float32": torch.float32, "float64": torch.float64}

_INTEGERS = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)
_ARRAY_FIX = "Pass a 2-D array or tensor of real numbers, shape (n_samples, n_features)."



def dtype_name(dtype: Any) -> str | None:
    """``"float32"``/``"float64"`` for those names or torch dtypes, else None."""
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    return dtype if isinstance(dtype, str) and dtype in DTYPES else None


def check_params(est: BaseEstimator) -> tuple[torch.dtype, torch.device]:
    """Check ``est``'s parameters against its ``_parameter_constraints``; return its dtype and device."""
    name = type(est).__name__
    params = est.get_params(deep=False)
    for key, constraints in type(est)._parameter_constraints.items():
        try:
            validate_parameter_constraints({key: constraints}, {key: params[key]}, caller_name=name)
        except InvalidParameterError as err:
            default = inspect.signature(type(est)).parameters[key].default
            raise FuncnetError(f"{err} Fix: pass a valid {key}, e.g. the default {key}={default!r}.") from err
    try:
        device = torch.device(est.device)
    except RuntimeError as err:
        raise FuncnetError(
            f"The 'device' parameter of {name} must name a torch device, got {est.device!r} ({err}). "
            "Fix: pass e.g. device='cpu' or device='cuda'."
        ) from err
    return DTYPES[dtype_name(est.dtype)], device


def _sentence(err: Exception) -> str:
    """scikit-learn's message as one sentence (ending in a full stop)."""
    text = str(err).strip()
    return text if text.endswith(".") else text + "."


def _check_2d(shape: tuple[int, ...], who: str) -> None:
    if len(shape) != 2:
        raise ShapeError(
            f"{who}: X must be 2-D (n_samples, n_features), got shape {tuple(shape)}. Reshape your data: "
            "X.reshape(1, -1) for a single sample; for activations flatten batch and position first, "
            "acts.reshape(-1, acts.shape[-1])."
        )


def as_tensor(
    X: Any, *, dtype: torch.dtype, device: torch.device | str, who: str, min_samples: int = 1
) -> tuple[Float[Tensor, "n f"], bool]:
    """``X`` as a 2-D tensor of ``dtype`` on ``device`` and whether it was not a tensor (so: answer in numpy).

    NaN and infinity are not checked here (see :func:`check_finite`). A numpy array of the right dtype and
    layout is shared, not copied; it is never modified.
    """
    if isinstance(X, Tensor):
        T = X.detach()
        _check_2d(T.shape, who)
        if T.is_complex():
            raise FuncnetError(f"{who}: Complex data not supported (X has dtype {T.dtype}); pass X.real or "
                               "X.abs().")
        if not (T.is_floating_point() or T.dtype in _INTEGERS):
            raise InputTypeError(f"{who}: X must hold real numbers, got dtype {T.dtype}; convert it with "
                                 "X.float().")
        n, f = T.shape
        if n < min_samples or f < 1:
            raise ShapeError(
                f"{who}: found {n} sample(s) and {f} feature(s) (shape=({n}, {f})) while at least "
                f"{min_samples} samples and 1 feature are required (got n_samples={n}); pass more rows."
            )
        return T.to(device=device, dtype=dtype), False
    if hasattr(X, "ndim") and hasattr(X, "shape"):
        _check_2d(X.shape, who)
    if hasattr(X, "dtype") and np.iscomplexobj(X):
        raise FuncnetError(f"{who}: Complex data not supported (X has dtype {X.dtype}); pass X.real or "
                           "abs(X).")
    try:
        A = check_array(X, dtype=np.dtype(dtype_name(dtype)), order="C", ensure_all_finite=False,
                        ensure_min_samples=min_samples, estimator=who.split(".")[0], input_name="X")
    except TypeError as err:
        raise InputTypeError(f"{who}: {_sentence(err)} {_ARRAY_FIX} Convert it first, e.g. with X.toarray() "
                             "or np.asarray(X, dtype=float).") from err
    except ValueError as err:
        raise FuncnetError(f"{who}: {_sentence(err)} {_ARRAY_FIX}") from err
    if not A.flags.writeable:  # torch.from_numpy needs a writeable buffer (X itself is only read)
        A = A.copy()
    return torch.from_numpy(A).to(device), True


def record_features(est: BaseEstimator, X: Any, *, reset: bool, who: str) -> None:
    """Set (``reset``) or check ``n_features_in_`` and ``feature_names_in_`` of ``est`` for the 2-D ``X``."""
    try:
        validate_data(est, X, skip_check_array=True, reset=reset)
    except TypeError as err:
        raise InputTypeError(f"{who}: {_sentence(err)}") from err  # scikit-learn's message names the fix
    except ValueError as err:
        fix = f"Pass data with the columns {type(est).__name__} was fitted on (e.g. from the same sites)."
        raise ShapeError(f"{who}: {_sentence(err)} {fix}") from err


def check_finite(T: Float[Tensor, "n f"], mean: Float[Tensor, " f"] | None, who: str) -> None:
    """Raise on NaN/inf in ``T``; its column ``mean`` (if at hand) makes the common case one cheap test."""
    if bool(T.sum().isfinite() if mean is None else mean.isfinite().all()):
        return
    bad = ~torch.isfinite(T)
    if bool(bad.any()):
        rows = bad.any(1).nonzero().flatten()[:5].tolist()
        raise FuncnetError(
            f"{who}: X contains {int(bad.sum())} NaN or infinite values (first rows {rows}); ICA needs "
            "finite data. Drop or impute those entries first (e.g. with torch.nan_to_num or np.nan_to_num)."
        )
    if mean is None:
        check_finite(T, T.mean(0), who)
        return
    raise FuncnetError(
        f"{who}: the column means of X overflow {T.dtype}; rescale X or fit with dtype='float64'."
    )


def check_n_components(k: int, limit: int, why: str, who: str) -> None:
    """Raise unless ``1 <= k <= limit`` (``why`` names the limit, e.g. ``"min(n_samples, n_features)"``)."""
    if not 1 <= k <= limit:
        raise FuncnetError(
            f"{who}: n_components={k} exceeds {why}={limit}; lower n_components or add samples."
        )


def check_fitted(est: BaseEstimator) -> None:
    """Raise :class:`~tl_funcnet.errors.NotFittedError` unless ``est`` has been fitted."""
    if not hasattr(est, "components_"):
        raise NotFittedError(
            f"This {type(est).__name__} instance is not fitted yet. Call 'fit' with appropriate "
            "arguments before using this estimator."
        )


def fitted_tensor(a: np.ndarray, device: torch.device | str) -> Tensor:
    """A fitted numpy attribute as a tensor on ``device`` (shared with ``a`` on the CPU)."""
    return torch.from_numpy(a if a.flags.writeable else a.copy()).to(device)


def as_output(T: Tensor, as_numpy: bool) -> Tensor | np.ndarray:
    """``T`` as numpy (for array-like input) or as it is (for tensor input)."""
    return T.cpu().numpy() if as_numpy else T
