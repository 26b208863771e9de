"""CanICA: planted maps, z-scoring and signs, thresholds, the previous implementation's values, errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from ica_testing import matched_abs_corr, planted_spatial, projections

from tl_funcnet.errors import FuncnetError, NotFittedError, ShapeError
from tl_funcnet.funcnet.ica import CanICA, ConvergenceWarning


def test_recovers_planted_maps():
    X, M, T = planted_spatial()
    est = CanICA(6, n_restarts=4, standardize=False).fit(X)
    assert matched_abs_corr(est.maps_.T, M.T).min() > 0.95
    assert matched_abs_corr(est.transform(X), T).min() > 0.95
    # standardized (default): maps are those of the z-scored columns, M / std
    est = CanICA(6, n_restarts=4).fit(X)
    assert matched_abs_corr(est.maps_.T, (M / X.std(0, ddof=1)).T).min() > 0.9
    assert matched_abs_corr(est.transform(X), T).min() > 0.95


def test_maps_zscored_flipped_and_deterministic():
    X, _, _ = planted_spatial(seed=1)
    a = CanICA(6, n_restarts=3, random_state=5).fit(X)
    b = CanICA(6, n_restarts=3, random_state=5).fit(torch.from_numpy(X))
    np.testing.assert_array_equal(a.maps_, b.maps_)
    for name in ("maps_", "components_", "mean_", "scale_"):
        assert isinstance(getattr(a, name), np.ndarray) and getattr(a, name).dtype == np.float32
    m = a.maps_.astype(np.float64)
    np.testing.assert_allclose(m.mean(1), 0.0, atol=1e-5)
    np.testing.assert_allclose(m.std(1, ddof=1), 1.0, rtol=1e-5)
    assert (m[np.arange(6), np.abs(m).argmax(1)] > 0).all()
    assert len(a.sparsity_all_) == 3 and a.sparsity_all_[a.best_restart_] == min(a.sparsity_all_)
    assert len(a.n_iter_all_) == 3 and a.n_iter_ == a.n_iter_all_[a.best_restart_]
    assert a.singular_values_.shape == (6,) and (np.diff(a.singular_values_) <= 0).all()


def test_numpy_in_numpy_out_torch_in_torch_out():
    X, _, _ = planted_spatial(n=100, f=500, k=3, seed=3)
    est = CanICA(3, n_restarts=2)
    out = est.fit_transform(X)
    assert isinstance(out, np.ndarray) and out.shape == (100, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out, est.transform(X))
    out_t = est.transform(torch.from_numpy(X))
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float32
    np.testing.assert_allclose(out_t.numpy(), out, rtol=1e-6, atol=1e-6)
    assert isinstance(CanICA(3, n_restarts=2).fit_transform(torch.from_numpy(X)), torch.Tensor)


def test_n_components_none_keeps_all_that_the_features_support():
    X, _, _ = planted_spatial(n=40, f=300, k=3, seed=4)
    est = CanICA(n_restarts=1, max_iter=1000)
    est._fit(X, warn=False)
    assert est.maps_.shape == (39, 300)  # min(n_samples, n_features) - 1
    assert est.get_feature_names_out()[:2].tolist() == ["canica0", "canica1"]


def test_threshold_auto_keeps_top_fraction():
    X, _, _ = planted_spatial(seed=2)
    est = CanICA(6, n_restarts=2, threshold="auto").fit(X)
    assert abs(float((est.maps_ != 0).mean()) - 1 / 6) < 0.01
    assert (est.components_ != 0).all()  # unthresholded


# Values of the implementation before the estimators became a package (same data, same seeds): maps_,
# components_ projected on a fixed vector, and the first two rows of transform(X).
PREVIOUS = {
    "canica_f32": (
        dict(n=120, f=900, k=4, seed=23), dict(n_components=4, n_restarts=3), [4, 3, 4], 1,
        [-5.54880369, 2.47049318, 13.69185884, 10.0414694],
        [-5.55188844, 2.47186687, 13.69947107, 10.0470539],
        [[0.1144279, -0.1752626, 0.00512184, -0.21022139],
         [0.30046973, -0.08215982, -0.26695257, -0.3678017]]),
    "canica_f64_raw_auto": (
        dict(n=120, f=900, k=4, seed=24),
        dict(n_components=4, n_restarts=3, random_state=2, dtype="float64", standardize=False,
             threshold="auto"),
        [3, 4, 4], 0,
        [50.8726258, -14.69577206, 53.78719024, -14.55852909],
        [49.97162341, -17.03899691, 52.51699953, -16.94568115],
        [[-1.15691848, 0.2406051, -0.1344644, -0.52805743],
         [-0.12369603, 0.21257628, -0.62562835, -0.57547129]]),
}


@pytest.mark.parametrize("case", sorted(PREVIOUS))
def test_matches_the_previous_implementation(case):
    data, params, n_iter_all, best, maps, components, head = PREVIOUS[case]
    X, _, _ = planted_spatial(**data)
    est = CanICA(**params).fit(X)
    tol = dict(rtol=1e-5, atol=1e-5) if case.endswith("f32") else dict(rtol=1e-7, atol=1e-7)
    assert est.n_iter_all_ == n_iter_all and est.best_restart_ == best and est.converged_
    np.testing.assert_allclose(projections(est.maps_), maps, **tol)
    np.testing.assert_allclose(projections(est.components_), components, **tol)
    np.testing.assert_allclose(est.transform(X)[:2], head, **tol)


def test_convergence_warning_and_the_quiet_internal_fit():
    X, _, _ = planted_spatial(n=60, f=400, k=3, seed=5)
    with pytest.warns(ConvergenceWarning, match="kept restart"):
        CanICA(3, n_restarts=2, max_iter=1).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails
        est = CanICA(3, n_restarts=2, max_iter=1)._fit(X, warn=False)
    assert not est.converged_ and est.n_iter_all_ == [1, 1]


def test_errors():
    X, _, _ = planted_spatial(n=50, f=200, k=3)
    with pytest.raises(NotFittedError):
        CanICA(3).transform(X)
    with pytest.raises(FuncnetError, match="'threshold' parameter of CanICA"):
        CanICA(3, threshold="high").fit(X)
    with pytest.raises(FuncnetError, match="'n_restarts' parameter"):
        CanICA(3, n_restarts=0).fit(X)
    with pytest.raises(FuncnetError, match="exceeds min"):
        CanICA(60).fit(X)
    with pytest.raises(ShapeError, match="n_features=1"):
        CanICA(1).fit(X[:, :1])
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(FuncnetError, match="NaN"):
        CanICA(3).fit(bad)
    est = CanICA(3, n_restarts=1).fit(X)
    with pytest.raises(ShapeError, match="X has 20 features, but CanICA is expecting 200"):
        est.transform(X[:, :20])
