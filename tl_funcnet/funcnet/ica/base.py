"""What FastICA and CanICA share as scikit-learn estimators: checks, input handling, tags, feature names."""

from __future__ import annotations

import warnings
from numbers import Integral, Real
from typing import Any

import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import Interval, Options, StrOptions
from torch import Tensor

from .checks import DTYPES, as_tensor, check_params, dtype_name, record_features
from .iteration import FUNS
from .whitening import SOLVERS

__all__ = ["ICAEstimator", "COMMON_CONSTRAINTS", "SOLVER_CONSTRAINT"]

#: parameter constraints both estimators use (scikit-learn's vocabulary)
COMMON_CONSTRAINTS: dict[str, list[Any]] = {
    "n_components": [Interval(Integral, 1, None, closed="left"), None],
    "fun": [StrOptions(set(FUNS))],
    "max_iter": [Interval(Integral, 1, None, closed="left")],
    "tol": [Interval(Real, 0, None, closed="neither")],
    "random_state": [Interval(Integral, 0, 2**32 - 1, closed="both"), None],
    "dtype": [StrOptions(set(DTYPES)), Options(torch.dtype, set(DTYPES.values()))],
    "oversample": [Interval(Integral, 0, None, closed="left")],
    "n_power_iter": [Interval(Integral, 0, None, closed="left")],
    "device": [str, torch.device],
}
SOLVER_CONSTRAINT = [StrOptions(set(SOLVERS))]


class ICAEstimator(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Base of :class:`FastICA` and :class:`CanICA`: ``components_`` is ``(n_components, n_features)``."""

    _parameter_constraints: dict[str, list[Any]] = {}

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        name = dtype_name(self.dtype)  # the output dtype is the dtype parameter, whatever the input's
        tags.transformer_tags.preserves_dtype = [name] if name else []
        return tags

    @property
    def _n_features_out(self) -> int:
        return self.components_.shape[0]

    def _fit_input(self, X: Any, who: str) -> tuple[Tensor, bool, torch.dtype, torch.device]:
        """Check the parameters and ``X`` for ``fit``: ``(tensor, answer_in_numpy, dtype, device)``."""
        dtype, device = check_params(self)
        T, as_numpy = as_tensor(X, dtype=dtype, device=device, who=who, min_samples=2)
        record_features(self, X, reset=True, who=who)
        return T, as_numpy, dtype, device

    def _input(self, X: Any, who: str) -> tuple[Tensor, bool]:
        """``X`` for a fitted method, in the fitted dtype, with the fitted number of features."""
        T, as_numpy = as_tensor(X, dtype=DTYPES[self.components_.dtype.name], device=self.device, who=who)
        record_features(self, X, reset=False, who=who)
        return T, as_numpy

    def _warn_not_converged(self, detail: str) -> None:
        warnings.warn(f"{type(self).__name__}: {detail}", ConvergenceWarning, stacklevel=4)
