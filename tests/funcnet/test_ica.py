"""FastICA and CanICA: planted sources, sklearn agreement, determinism, numerics and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.decomposition import FastICA as SkFastICA

from tl_funcnet.errors import FuncnetError, NotFittedError, ShapeError
from tl_funcnet.funcnet.canica import CanICA
from tl_funcnet.funcnet.ica import FastICA


def matched_abs_corr(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """|corr| of columns of A and B after Hungarian matching (one value per matched pair)."""
    A = (A - A.mean(0)) / A.std(0)
    B = (B - B.mean(0)) / B.std(0)
    C = np.abs(A.T @ B) / len(A)
    r, c = linear_sum_assignment(-C)
    return C[r, c]


def planted(n=2000, f=60, k=6, seed=0, noise=0.05):
    """Sparse heavy-tailed sources (n, k) mixed by a known (k, f) matrix plus small noise."""
    rng = np.random.default_rng(seed)
    S = (rng.random((n, k)) < 0.2) * rng.laplace(size=(n, k)) * 2.0
    A = rng.normal(size=(k, f))
    X = S @ A + noise * rng.normal(size=(n, f))
    return X, S, A


@pytest.mark.parametrize("fun", ["logcosh", "exp", "cube"])
@pytest.mark.parametrize("algorithm", ["parallel", "deflation"])
def test_fastica_recovers_planted_sources(fun, algorithm):
    X, S, _ = planted()
    est = FastICA(6, fun=fun, algorithm=algorithm, random_state=0, dtype=torch.float64, max_iter=400)
    est.fit(X)
    assert est.converged_
    r = matched_abs_corr(est.transform(X), S)
    assert r.min() > 0.95, r


def test_fastica_wide_data_recovers_sources():
    """n_samples << n_features (temporal ICA shape), float32, randomized whitening."""
    X, S, _ = planted(n=300, f=2500, k=5, seed=1)
    est = FastICA(5, random_state=0, whiten_solver="randomized").fit(X)
    assert matched_abs_corr(est.transform(X), S).min() > 0.95


def test_fastica_fit_transform_equals_fit_then_transform():
    X, _, _ = planted(seed=2)
    a = FastICA(6, random_state=3, dtype=torch.float64).fit_transform(X)
    b = FastICA(6, random_state=3, dtype=torch.float64).fit(X).transform(X)
    assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
    np.testing.assert_allclose(a, b, atol=1e-8)


def test_fastica_same_seed_identical_and_torch_in_torch_out():
    X, _, _ = planted(seed=3)
    Xt = torch.from_numpy(X).float()
    a = FastICA(6, random_state=7).fit(Xt)
    b = FastICA(6, random_state=7).fit(Xt)
    assert torch.equal(a.components_, b.components_)
    assert torch.equal(a.mixing_, b.mixing_)
    out = a.transform(Xt)
    assert isinstance(out, torch.Tensor) and out.shape == (2000, 6) and out.dtype == torch.float32


def test_fastica_canonical_order_and_sign():
    X, _, _ = planted(seed=4)
    est = FastICA(6, random_state=0).fit(X)
    var = (est.mixing_.double() ** 2).sum(0)
    assert bool((var[:-1] >= var[1:]).all())
    idx = est.mixing_.abs().argmax(0)
    assert bool((est.mixing_[idx, torch.arange(6)] > 0).all())
    # unit-variance sources
    S = est.transform(X)
    np.testing.assert_allclose(S.std(0), 1.0, rtol=1e-4)


@pytest.mark.parametrize("solver", ["gram", "randomized", "svd"])
def test_fastica_agrees_with_sklearn_float64(solver):
    X, _, _ = planted(n=600, f=1200, k=8, seed=5, noise=0.1)
    w_init = np.random.default_rng(0).normal(size=(8, 8))
    sk = SkFastICA(8, w_init=w_init, whiten="unit-variance", whiten_solver="svd", max_iter=400).fit(X)
    ours = FastICA(
        8, w_init=w_init, dtype=torch.float64, whiten_solver=solver, max_iter=400, canonicalize=False
    ).fit(X)
    assert ours.n_iter_ == sk.n_iter_
    r = matched_abs_corr(ours.transform(X), sk.transform(X))
    assert r.min() >= 0.99, r
    # without canonicalization the order and signs are sklearn's: same sources, same unmixing
    np.testing.assert_allclose(ours.transform(X), sk.transform(X), atol=1e-6)
    np.testing.assert_allclose(ours.components_.numpy(), sk.components_, atol=1e-8)
    np.testing.assert_allclose(ours.mixing_.numpy(), sk.mixing_, rtol=1e-6, atol=1e-8)


def test_fastica_integer_seed_matches_sklearn_w_init():
    X, _, _ = planted(n=800, f=40, k=5, seed=6)
    sk = SkFastICA(5, random_state=11).fit(X)
    ours = FastICA(5, random_state=11, dtype=torch.float64, canonicalize=False).fit(X)
    np.testing.assert_allclose(ours.transform(X), sk.transform(X), atol=1e-6)


def test_fastica_float32_stable_on_heavy_tails():
    rng = np.random.default_rng(7)
    n, f, k = 400, 3000, 16
    S = rng.standard_t(2.0, size=(n, k)) * (rng.random((n, k)) < 0.3)  # sparse, infinite-variance tails
    X = (S @ rng.normal(size=(k, f)) + rng.standard_t(2.0, size=(n, f)) * 0.1).astype(np.float32)
    X[:, :5] *= 1e3  # a few outlier neurons
    from scipy.stats import kurtosis

    assert kurtosis(X[:, 7]) > 10  # heavy-tailed indeed
    for fun in ("cube", "logcosh", "exp"):
        est = FastICA(k, fun=fun, random_state=0, max_iter=50, tol=1e-3)
        with _maybe_convergence():
            est.fit(X)
        for name in ("components_", "mixing_", "mean_", "whitening_"):
            assert bool(torch.isfinite(getattr(est, name)).all()), (fun, name)
        assert np.isfinite(est.transform(X)).all()


class _maybe_convergence:
    """Allow (but do not require) a ConvergenceWarning."""

    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        from sklearn.exceptions import ConvergenceWarning

        warnings.simplefilter("ignore", ConvergenceWarning)

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


def test_fastica_inverse_transform_is_pca_projection():
    X, _, _ = planted(n=500, f=80, k=6, seed=8, noise=0.3)
    est = FastICA(6, random_state=0, dtype=torch.float64).fit(X)
    Xc = X - X.mean(0)
    _, _, Vt = np.linalg.svd(Xc, full_matrices=False)
    proj = Xc @ Vt[:6].T @ Vt[:6] + X.mean(0)
    np.testing.assert_allclose(est.inverse_transform(est.transform(X)), proj, atol=1e-8)


def test_fastica_wide_path_matches_direct_path():
    """The Gram (n x n) and randomized paths give the same sources as a full SVD and as X.T's path."""
    X, _, _ = planted(n=120, f=900, k=5, seed=9, noise=0.2)
    kw = dict(random_state=0, dtype=torch.float64, canonicalize=False)
    ref = FastICA(5, whiten_solver="svd", **kw).fit_transform(X)
    for solver in ("gram", "randomized"):
        np.testing.assert_allclose(FastICA(5, whiten_solver=solver, **kw).fit_transform(X), ref, atol=1e-6)
    # a tall problem takes the feature-side Gram; compare with the full SVD there too
    Xt = np.ascontiguousarray(X[:, :40].repeat(3, axis=0) + np.random.default_rng(0).normal(size=(360, 40)))
    a = FastICA(5, whiten_solver="gram", **kw).fit_transform(Xt)
    b = FastICA(5, whiten_solver="svd", **kw).fit_transform(Xt)
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("shape", [(150, 400), (400, 60)])  # wide (sample Gram) and tall (feature Gram)
def test_fastica_basis_free_sources_survive_a_rotation_of_the_features(shape):
    n, f = shape
    X, S, _ = planted(n=n, f=f, k=5, seed=11, noise=0.2)
    Q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(f, f)))
    kw = dict(random_state=0, dtype=torch.float64, whiten_solver="gram", basis_free=True, tol=1e-8, max_iter=500)
    a = FastICA(5, **kw).fit_transform(X)
    b = FastICA(5, **kw).fit_transform(X @ Q)
    np.testing.assert_allclose(a, b, atol=1e-6)  # same order and signs, no matching needed
    assert (a ** 3).mean(0).min() > 0  # sign-canonical: positive skew
    assert matched_abs_corr(a, S).min() > 0.95


def test_fastica_does_not_modify_input():
    X, _, _ = planted(seed=10)
    X32 = X.astype(np.float32)
    before = X32.copy()
    FastICA(6, random_state=0).fit(X32)
    np.testing.assert_array_equal(X32, before)


def test_fastica_errors():
    X, _, _ = planted(n=200, f=30, k=4, seed=11)
    bad = X.copy()
    bad[3, 4] = np.nan
    with pytest.raises(FuncnetError, match="NaN or infinite"):
        FastICA(4).fit(bad)
    bad[3, 4] = np.inf
    with pytest.raises(FuncnetError, match="NaN or infinite"):
        FastICA(4).fit(torch.from_numpy(bad))
    with pytest.raises(FuncnetError, match="constant"):
        FastICA(2).fit(np.ones((50, 10)))
    low_rank = np.random.default_rng(0).normal(size=(100, 3)) @ np.random.default_rng(1).normal(size=(3, 40))
    with pytest.raises(FuncnetError, match="numerical rank"):
        FastICA(6, random_state=0).fit(low_rank)
    with pytest.raises(FuncnetError, match="exceeds min"):
        FastICA(31).fit(X)
    with pytest.raises(ShapeError, match="2-D"):
        FastICA(2).fit(X[0])
    with pytest.raises(FuncnetError, match="fun must be"):
        FastICA(2, fun="tanh").fit(X)
    with pytest.raises(NotFittedError, match="not fitted"):
        FastICA(2).transform(X)
    est = FastICA(4, random_state=0).fit(X)
    with pytest.raises(ShapeError, match="30"):
        est.transform(X[:, :10])
    with pytest.raises(ShapeError, match="w_init"):
        FastICA(4, w_init=np.eye(3)).fit(X)


def test_fastica_get_params_roundtrip():
    est = FastICA(5, fun="cube", random_state=2)
    params = est.get_params()
    assert params["n_components"] == 5 and params["fun"] == "cube" and "whiten_solver" in params
    clone = FastICA(**params)
    assert clone.get_params() == params


# --------------------------------------------------------------------------- CanICA
def planted_spatial(n=300, f=3000, k=6, seed=0):
    rng = np.random.default_rng(seed)
    M = (rng.random((k, f)) < 0.03) * rng.exponential(size=(k, f)) * 3.0
    T = rng.normal(size=(n, k))
    return T @ M + 0.3 * rng.normal(size=(n, f)), M, T


def test_canica_recovers_planted_maps():
    X, M, T = planted_spatial()
    est = CanICA(6, n_restarts=4, standardize=False).fit(X)
    assert matched_abs_corr(est.maps_.numpy().T, M.T).min() > 0.95
    assert matched_abs_corr(est.transform(X), T).min() > 0.95
    # standardized (default): maps are those of the z-scored columns, M / std
    est = CanICA(6, n_restarts=4).fit(X)
    assert matched_abs_corr(est.maps_.numpy().T, (M / X.std(0, ddof=1)).T).min() > 0.9
    assert matched_abs_corr(est.transform(X), T).min() > 0.95


def test_canica_maps_zscored_flipped_and_deterministic():
    X, _, _ = planted_spatial(seed=1)
    a = CanICA(6, n_restarts=3, random_state=5).fit(X)
    b = CanICA(6, n_restarts=3, random_state=5).fit(torch.from_numpy(X))
    assert torch.equal(a.maps_, b.maps_)
    m = a.maps_.double()
    np.testing.assert_allclose(m.mean(1).numpy(), 0.0, atol=1e-5)
    np.testing.assert_allclose(m.std(1).numpy(), 1.0, rtol=1e-5)
    assert bool((m[torch.arange(6), m.abs().argmax(1)] > 0).all())
    assert len(a.sparsity_all_) == 3 and a.sparsity_all_[a.best_restart_] == min(a.sparsity_all_)
    assert isinstance(b.transform(torch.from_numpy(X)), torch.Tensor)


def test_canica_threshold_auto_keeps_top_fraction():
    X, _, _ = planted_spatial(seed=2)
    est = CanICA(6, n_restarts=2, threshold="auto").fit(X)
    frac = float((est.maps_ != 0).double().mean())
    assert abs(frac - 1 / 6) < 0.01


def test_canica_errors():
    X, _, _ = planted_spatial(n=50, f=200, k=3)
    with pytest.raises(NotFittedError):
        CanICA(3).transform(X)
    with pytest.raises(FuncnetError, match="threshold"):
        CanICA(3, threshold="high").fit(X)
    with pytest.raises(FuncnetError, match="exceeds min"):
        CanICA(60).fit(X)
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(FuncnetError, match="NaN"):
        CanICA(3).fit(bad)
