"""Zoo transforms: function-preserving ones preserve the logits; shapes of the lossy ones."""

from __future__ import annotations

import pytest
import torch

from tl_testing import make_llama_style
from tl_funcnet.fingerprint import transforms as T


@pytest.fixture(scope="module")
def model():
    return make_llama_style(normalization_type="RMSPre").eval()


@pytest.mark.parametrize("fn", [lambda m: T.rotate_residual(m, seed=1), lambda m: T.permute_mlp(m, 2),
                                lambda m: T.widen_mlp(m, 8)])
def test_function_preserving(model, fn, tokens):
    assert torch.allclose(fn(model)(tokens), model(tokens), atol=1e-4)


def _pruned(model, ratio=0.25):
    from tl_funcnet.pruning import prune

    return prune(model, ratio, "magnitude", calib=None, bias_compensation=False, protect_first=0, protect_last=0)[0]


def test_lossy_transforms_shapes(model, tokens):
    assert [b.mlp.W_in.shape[1] for b in _pruned(model).blocks] == [24, 24]
    assert T.drop_layer(model, 0).cfg.n_layers == 1
    q = T.quantize_int8(model)
    w = q.blocks[0].mlp.W_in
    assert len(torch.unique(w[0])) <= 255
    assert (q(tokens) - model(tokens)).abs().max() < 0.5
    assert torch.equal(model.blocks[0].mlp.W_in, model.blocks[0].mlp.W_in)  # input untouched


def test_random_orthogonal_is_orthogonal():
    R = T.random_orthogonal(10, seed=4)
    assert torch.allclose(R @ R.T, torch.eye(10, dtype=R.dtype), atol=1e-10)


def test_baselines_on_tiny_models(model):
    from tl_funcnet.fingerprint.baselines import output_similarity, parameter_cosine, weight_awm

    rot, pruned = T.rotate_residual(model, seed=2), _pruned(model)
    other = make_llama_style(seed=3, normalization_type="RMSPre").eval()
    assert weight_awm(model, rot) == pytest.approx(1.0, abs=1e-6)  # Procrustes undoes the rotation
    assert weight_awm(model, other) < 0.8
    assert parameter_cosine(model, pruned) is None  # shapes differ: n/a
    assert parameter_cosine(model, model) == pytest.approx(1.0)
    lp = torch.log_softmax(torch.randn(5, 7), -1)
    assert output_similarity(lp, lp) == pytest.approx(1.0, abs=1e-6)
    assert output_similarity(lp, None) is None
