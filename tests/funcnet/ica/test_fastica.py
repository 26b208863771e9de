"""FastICA: planted sources, agreement with scikit-learn and with the previous implementation, determinism,
numpy/torch in and out, numerics and errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from ica_testing import matched_abs_corr, planted, projections
from scipy.stats import kurtosis
from sklearn.decomposition import FastICA as SkFastICA

from tl_funcnet.errors import FuncnetError, NotFittedError, ShapeError
from tl_funcnet.funcnet.ica import ConvergenceWarning, FastICA


@pytest.mark.parametrize("fun", ["logcosh", "exp", "cube"])
@pytest.mark.parametrize("algorithm", ["parallel", "deflation"])
def test_recovers_planted_sources(fun, algorithm):
    X, S, _ = planted()
    est = FastICA(6, fun=fun, algorithm=algorithm, dtype="float64", max_iter=400).fit(X)
    assert est.converged_
    r = matched_abs_corr(est.transform(X), S)
    assert r.min() > 0.95, r


def test_wide_data_recovers_sources():
    """n_samples << n_features (temporal ICA shape), float32, randomized whitening."""
    X, S, _ = planted(n=300, f=2500, k=5, seed=1)
    est = FastICA(5, whiten_solver="randomized").fit(X)
    assert matched_abs_corr(est.transform(X), S).min() > 0.95


def test_fit_transform_equals_fit_then_transform():
    X, _, _ = planted(seed=2)
    a = FastICA(6, random_state=3, dtype="float64").fit_transform(X)
    b = FastICA(6, random_state=3, dtype="float64").fit(X).transform(X)
    assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
    np.testing.assert_allclose(a, b, atol=1e-8)


def test_same_seed_identical_and_torch_in_torch_out():
    X, _, _ = planted(seed=3)
    Xt = torch.from_numpy(X).float()
    a = FastICA(6, random_state=7).fit(Xt)
    b = FastICA(6, random_state=7).fit(Xt)
    for name in ("components_", "mixing_", "mean_", "whitening_"):
        assert isinstance(getattr(a, name), np.ndarray) and getattr(a, name).dtype == np.float32
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    out = a.transform(Xt)
    assert isinstance(out, torch.Tensor) and out.shape == (2000, 6) and out.dtype == torch.float32
    S = FastICA(6, random_state=7).fit_transform(Xt)
    assert isinstance(S, torch.Tensor) and S.dtype == torch.float32
    back = a.inverse_transform(out)
    assert isinstance(back, torch.Tensor) and back.shape == (2000, 60)
    # numpy in, numpy out; the default random_state (0) is a fixed seed too
    np.testing.assert_array_equal(FastICA(6).fit_transform(X), FastICA(6).fit_transform(X))


def test_numpy_and_array_likes_give_numpy_in_the_dtype_asked():
    X, _, _ = planted(n=300, f=20, k=4, seed=12)
    est = FastICA(4).fit(X)  # float64 in, dtype="float32"
    out = est.transform(X)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    assert isinstance(est.inverse_transform(out), np.ndarray)
    np.testing.assert_allclose(est.transform(X[:5].tolist()), out[:5], rtol=1e-6)
    est64 = FastICA(4, dtype=torch.float64).fit(X.astype(np.float32))  # a torch dtype is accepted too
    assert est64.transform(X).dtype == np.float64


def test_n_components_none_keeps_all():
    X, S, _ = planted(n=1000, f=8, k=8, seed=13, noise=0.01)
    est = FastICA().fit(X)  # min(n_samples, n_features) = 8 components
    assert est.components_.shape == (8, 8) and est.mixing_.shape == (8, 8)
    assert matched_abs_corr(est.transform(X), S).min() > 0.95
    assert est.get_feature_names_out().tolist() == [f"fastica{i}" for i in range(8)]


def test_canonical_order_and_sign():
    X, _, _ = planted(seed=4)
    est = FastICA(6).fit(X)
    var = (est.mixing_.astype(np.float64) ** 2).sum(0)
    assert (var[:-1] >= var[1:]).all()
    idx = np.abs(est.mixing_).argmax(0)
    assert (est.mixing_[idx, np.arange(6)] > 0).all()
    np.testing.assert_allclose(est.transform(X).std(0), 1.0, rtol=1e-4)  # unit-variance sources


@pytest.mark.parametrize("solver", ["gram", "randomized", "svd"])
def test_agrees_with_sklearn_float64(solver):
    X, _, _ = planted(n=600, f=1200, k=8, seed=5, noise=0.1)
    w_init = np.random.default_rng(0).normal(size=(8, 8))
    sk = SkFastICA(8, w_init=w_init, whiten="unit-variance", whiten_solver="svd", max_iter=400).fit(X)
    ours = FastICA(8, w_init=w_init, dtype="float64", whiten_solver=solver, max_iter=400, canonicalize=False)
    ours.fit(X)
    assert ours.n_iter_ == sk.n_iter_
    assert matched_abs_corr(ours.transform(X), sk.transform(X)).min() >= 0.99
    # without canonicalization the order and signs are scikit-learn's: same sources, same unmixing
    np.testing.assert_allclose(ours.transform(X), sk.transform(X), atol=1e-6)
    np.testing.assert_allclose(ours.components_, sk.components_, atol=1e-8)
    np.testing.assert_allclose(ours.mixing_, sk.mixing_, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(ours.mean_, sk.mean_, atol=1e-12)


def test_integer_seed_matches_sklearn_w_init():
    X, _, _ = planted(n=800, f=40, k=5, seed=6)
    sk = SkFastICA(5, random_state=11).fit(X)
    ours = FastICA(5, random_state=11, dtype="float64", canonicalize=False).fit(X)
    np.testing.assert_allclose(ours.transform(X), sk.transform(X), atol=1e-6)


# Values of the implementation before the estimators became a package (same data, same seeds): the
# numerics must not change. Sources' first two rows, and mixing_ / components_ projected on a fixed vector.
PREVIOUS = {
    "tall_f64": (
        dict(n=500, f=40, k=5, seed=21, noise=0.1), dict(n_components=5, random_state=3, dtype="float64"), 12,
        [[-0.0311326552, 0.0328246756, -0.049796458, 0.0321808845, 0.0325528656],
         [-0.046814673, 0.0154297292, 0.9362834686, -0.0907403167, 0.0848208247]],
        [-14.679906606, 1.716299038, 8.7486611748, 0.9504365844, -0.3356582988],
        [-0.140390482, 0.0338798451, 0.1081485337, -0.0006251529, 0.0095979469]),
    "wide_f32": (
        dict(n=120, f=700, k=6, seed=22, noise=0.2), dict(n_components=6), 9,
        [[-0.002906007, -1.4449865818, 4.4012875557, -0.285923928, -0.0708348975, 0.041362267],
         [-0.1091672555, 2.7429537773, -0.2215991616, 3.8881163597, 0.434830904, 0.2594512999]],
        [-15.1143657034, -24.0528354887, -65.8504560708, -33.2504319616, -25.482104, -2.8744908338],
        [-0.0149175793, -0.0309203606, -0.0564808319, -0.038151927, -0.0475735427, -0.0058805241]),
    "deflation_exp_f64": (
        dict(n=500, f=40, k=5, seed=21, noise=0.1),
        dict(n_components=5, random_state=4, dtype="float64", algorithm="deflation", fun="exp"), 14,
        [[-0.0299458036, 0.0312980625, -0.0489755184, 0.0364241429, 0.0319381859],
         [-0.0332176658, 0.0410538111, 0.9359599907, -0.1002868127, 0.0749494728]],
        [-14.4354536154, 1.9998823616, 8.9963562593, 1.575914759, -0.4479119129],
        [-0.1378545022, 0.0375708967, 0.110123619, 0.0058863895, 0.008285589]),
    "basis_free_f64": (
        dict(n=150, f=400, k=5, seed=11, noise=0.2),
        dict(n_components=5, dtype="float64", whiten_solver="gram", basis_free=True, tol=1e-8, max_iter=500),
        13,
        [[-0.5250230179, -2.3913788327, -0.046647839, -2.6288682989, 3.9170004865],
         [0.9671172164, 0.0135994514, -1.3185785099, -0.0071915148, -0.1203855176]],
        [24.3590034327, 3.891291088, -35.5677503242, -2.2606024608, -25.3689997823],
        [0.0488147556, -0.0015534025, -0.0906416299, -0.0060436179, -0.1050389376]),
    "randomized_f32": (
        dict(n=300, f=2500, k=5, seed=1), dict(n_components=5, whiten_solver="randomized"), 7,
        [[-0.1082134694, 0.036374744, 0.0032321971, 0.0391559675, -0.107908085],
         [-0.0763064548, -1.0544307232, -0.0175077561, -0.0366572887, -0.0743853822]],
        [-49.7234277105, -21.7542158226, 22.0985756237, -35.5243389483, 28.9197215486],
        [-0.010368184, -0.0050141867, 0.0072884275, -0.0109434965, 0.0092821718]),
}


@pytest.mark.parametrize("case", sorted(PREVIOUS))
def test_matches_the_previous_implementation(case):
    data, params, n_iter, head, mixing, components = PREVIOUS[case]
    X, _, _ = planted(**data)
    est = FastICA(**params)
    S = est.fit_transform(X)
    tol = dict(rtol=1e-5, atol=1e-6) if case.endswith("f32") else dict(rtol=1e-8, atol=1e-9)
    assert est.n_iter_ == n_iter and est.converged_
    np.testing.assert_allclose(S[:2], head, **tol)
    np.testing.assert_allclose(projections(est.mixing_.T), mixing, **tol)
    np.testing.assert_allclose(projections(est.components_), components, **tol)


def test_float32_stable_on_heavy_tails():
    rng = np.random.default_rng(7)
    n, f, k = 400, 3000, 16
    S = rng.standard_t(2.0, size=(n, k)) * (rng.random((n, k)) < 0.3)  # sparse, infinite-variance tails
    X = (S @ rng.normal(size=(k, f)) + rng.standard_t(2.0, size=(n, f)) * 0.1).astype(np.float32)
    X[:, :5] *= 1e3  # a few outlier neurons
    assert kurtosis(X[:, 7]) > 10  # heavy-tailed indeed
    for fun in ("cube", "logcosh", "exp"):
        est = FastICA(k, fun=fun, max_iter=50, tol=1e-3)
        est._fit(X, warn=False)  # converged or not, it must stay finite
        for name in ("components_", "mixing_", "mean_", "whitening_"):
            assert np.isfinite(getattr(est, name)).all(), (fun, name)
        assert np.isfinite(est.transform(X)).all()


def test_convergence_warning_and_the_quiet_internal_fit():
    X, _, _ = planted(n=500, f=30, k=5, seed=14)
    with pytest.warns(ConvergenceWarning, match="max_iter=2"):
        FastICA(5, max_iter=2).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails
        est = FastICA(5, max_iter=2)
        S = est._fit(torch.from_numpy(X), warn=False)
    assert not est.converged_ and est.n_iter_ == 2
    assert isinstance(S, torch.Tensor) and S.shape == (500, 5)
    assert FastICA(5).fit(X).converged_


def test_inverse_transform_is_pca_projection():
    X, _, _ = planted(n=500, f=80, k=6, seed=8, noise=0.3)
    est = FastICA(6, dtype="float64").fit(X)
    Xc = X - X.mean(0)
    _, _, Vt = np.linalg.svd(Xc, full_matrices=False)
    proj = Xc @ Vt[:6].T @ Vt[:6] + X.mean(0)
    np.testing.assert_allclose(est.inverse_transform(est.transform(X)), proj, atol=1e-8)


def test_wide_path_matches_direct_path():
    """The Gram (n x n) and randomized paths give the same sources as a full SVD and as X.T's path."""
    X, _, _ = planted(n=120, f=900, k=5, seed=9, noise=0.2)
    kw = dict(dtype="float64", canonicalize=False)
    ref = FastICA(5, whiten_solver="svd", **kw).fit_transform(X)
    for solver in ("gram", "randomized"):
        np.testing.assert_allclose(FastICA(5, whiten_solver=solver, **kw).fit_transform(X), ref, atol=1e-6)
    # a tall problem takes the feature-side Gram; compare with the full SVD there too
    Xt = np.ascontiguousarray(X[:, :40].repeat(3, axis=0) + np.random.default_rng(0).normal(size=(360, 40)))
    a = FastICA(5, whiten_solver="gram", **kw).fit_transform(Xt)
    b = FastICA(5, whiten_solver="svd", **kw).fit_transform(Xt)
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("shape", [(150, 400), (400, 60)])  # wide (sample Gram) and tall (feature Gram)
def test_basis_free_sources_survive_a_rotation_of_the_features(shape):
    n, f = shape
    X, S, _ = planted(n=n, f=f, k=5, seed=11, noise=0.2)
    Q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(f, f)))
    kw = dict(dtype="float64", whiten_solver="gram", basis_free=True, tol=1e-8, max_iter=500)
    a = FastICA(5, **kw).fit_transform(X)
    b = FastICA(5, **kw).fit_transform(X @ Q)
    np.testing.assert_allclose(a, b, atol=1e-6)  # same order and signs, no matching needed
    assert (a**3).mean(0).min() > 0  # sign-canonical: positive skew
    assert matched_abs_corr(a, S).min() > 0.95


def test_does_not_modify_or_need_to_write_the_input():
    X, _, _ = planted(seed=10)
    X32 = X.astype(np.float32)
    before = X32.copy()
    FastICA(6).fit(X32)
    np.testing.assert_array_equal(X32, before)
    X32.setflags(write=False)  # e.g. a read-only memmap
    est = FastICA(6).fit(X32)
    np.testing.assert_allclose(est.transform(X32), FastICA(6).fit_transform(before), atol=1e-5)


def test_errors():
    X, _, _ = planted(n=200, f=30, k=4, seed=11)
    bad = X.copy()
    bad[3, 4] = np.nan
    with pytest.raises(FuncnetError, match="NaN or infinite"):
        FastICA(4).fit(bad)
    bad[3, 4] = np.inf
    with pytest.raises(FuncnetError, match="NaN or infinite"):
        FastICA(4).fit(torch.from_numpy(bad))
    with pytest.raises(FuncnetError, match="NaN or infinite"):
        FastICA(4).fit(X).transform(bad)
    with pytest.raises(FuncnetError, match="constant"):
        FastICA(2).fit(np.ones((50, 10)))
    low_rank = np.random.default_rng(0).normal(size=(100, 3)) @ np.random.default_rng(1).normal(size=(3, 40))
    with pytest.raises(FuncnetError, match="numerical rank"):
        FastICA(6).fit(low_rank)
    with pytest.raises(FuncnetError, match="exceeds min"):
        FastICA(31).fit(X)
    with pytest.raises(ShapeError, match="2-D"):
        FastICA(2).fit(X[0])
    with pytest.raises(ShapeError, match="2-D"):
        FastICA(2).fit(torch.from_numpy(X[0]))
    with pytest.raises(FuncnetError, match="'fun' parameter of FastICA"):
        FastICA(2, fun="tanh").fit(X)
    with pytest.raises(FuncnetError, match="'dtype' parameter"):
        FastICA(2, dtype="float16").fit(X)
    with pytest.raises(FuncnetError, match="'random_state' parameter"):
        FastICA(2, random_state=np.random.RandomState(0)).fit(X)
    with pytest.raises(FuncnetError, match="Complex data not supported"):
        FastICA(2).fit(X + 1j)
    with pytest.raises(TypeError, match="Sparse data"):  # a FuncnetError that is also a TypeError
        import scipy.sparse

        FastICA(2).fit(scipy.sparse.csr_matrix(X))
    with pytest.raises(NotFittedError, match="not fitted"):
        FastICA(2).transform(X)
    est = FastICA(4).fit(X)
    with pytest.raises(ShapeError, match="X has 10 features, but FastICA is expecting 30"):
        est.transform(X[:, :10])
    with pytest.raises(ShapeError, match="expected n_components=4"):
        est.inverse_transform(X[:, :3])
    with pytest.raises(ShapeError, match="w_init"):
        FastICA(4, w_init=np.eye(3)).fit(X)


def test_get_params_roundtrip():
    est = FastICA(5, fun="cube", random_state=2)
    params = est.get_params()
    assert params["n_components"] == 5 and params["fun"] == "cube" and "whiten_solver" in params
    assert FastICA(**params).get_params() == params
    assert FastICA().get_params()["random_state"] == 0 and FastICA().get_params()["dtype"] == "float32"
