"""The ICA engine: scikit-learn estimators that run their big products in torch.

:class:`FastICA` (temporal ICA, fast when ``n_samples << n_features``) and :class:`CanICA` (spatial ICA
with restarts) share the input checks (:mod:`.checks`), the whitening linear algebra (:mod:`.whitening`)
and the fixed-point iteration (:mod:`.iteration`).
"""

from sklearn.exceptions import ConvergenceWarning

from .canica import CanICA
from .fastica import FastICA

__all__ = ["FastICA", "CanICA", "ConvergenceWarning"]
