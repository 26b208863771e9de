"""Zoo transforms: function-preserving ones preserve the logits; shapes of the lossy ones; inputs and global
random generators are left as they were."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from tl_testing import make_llama_style
from tl_funcnet.errors import FuncnetError, ShapeError
from tl_funcnet.fingerprint import transforms as T
from tl_funcnet.models import mlp_widths


@pytest.fixture(scope="module")
def model():
    return make_llama_style(normalization_type="RMSPre").eval()


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_state(model, state) -> bool:
    now = model.state_dict()
    return set(now) == set(state) and all(torch.equal(now[k], state[k]) for k in state)


def _rng_states():
    return torch.random.get_rng_state(), np.random.get_state(), random.getstate()


def _same_rng(a, b) -> bool:
    (ta, na, pa), (tb, nb, pb) = a, b
    return (torch.equal(ta, tb) and na[0] == nb[0] and np.array_equal(na[1], nb[1]) and na[2:] == nb[2:]
            and pa == pb)


PRESERVING = {
    "rotate_residual": lambda m: T.rotate_residual(m, random_state=1),
    "permute_mlp": lambda m: T.permute_mlp(m, 2),
    "widen_mlp": lambda m: T.widen_mlp(m, 8),
}


@pytest.mark.parametrize("name", list(PRESERVING))
def test_function_preserving(model, name, tokens):
    state = _state(model)
    new = PRESERVING[name](model)
    assert torch.allclose(new(tokens), model(tokens), atol=1e-4)
    assert new is not model and _same_state(model, state)  # the input is never modified


def test_transforms_are_seeded_by_random_state(model):
    a, b = T.permute_mlp(model, random_state=2), T.permute_mlp(model, random_state=2)
    c = T.permute_mlp(model, random_state=3)

    def w(m):
        return m.blocks[0].mlp.W_in.detach()

    assert torch.equal(w(a), w(b)) and not torch.equal(w(a), w(c))
    assert torch.equal(w(T.permute_mlp(model)), w(T.permute_mlp(model, 0)))  # default 0
    assert torch.equal(T.random_orthogonal(6), T.random_orthogonal(6, random_state=0))
    assert not torch.equal(T.random_orthogonal(6, 1), T.random_orthogonal(6, 2))
    wide = T.widen_mlp(model, 8, random_state=5)
    assert mlp_widths(wide) == [40, 40] and wide.cfg.d_mlp == 40
    assert torch.equal(wide.blocks[0].mlp.W_out[32:], torch.zeros(8, 16))
    other = T.widen_mlp(model, 8, random_state=6)
    assert not torch.equal(wide.blocks[0].mlp.W_in[:, 32:], other.blocks[0].mlp.W_in[:, 32:])


def test_rotate_residual_checks_its_matrix(model):
    with pytest.raises(ShapeError, match="expected"):
        T.rotate_residual(model, torch.eye(5))
    same = T.rotate_residual(model, torch.eye(16, dtype=torch.float64))
    assert _same_state(same, _state(model))


def _pruned(model, ratio=0.25):
    from tl_funcnet.pruning import prune

    return prune(model, ratio, "magnitude", None, bias_compensation=False, protect_first=0, protect_last=0)[0]


def test_lossy_transforms_shapes(model, tokens):
    state = _state(model)
    assert [b.mlp.W_in.shape[1] for b in _pruned(model).blocks] == [24, 24]
    dropped = T.drop_layer(model, 0)
    assert dropped.cfg.n_layers == 1 and len(dropped.blocks) == 1
    # the remaining block is the old block 1
    assert torch.equal(dropped.blocks[0].mlp.W_in, model.blocks[1].mlp.W_in)
    assert dropped(tokens).shape == model(tokens).shape
    with pytest.raises(FuncnetError, match="out of range"):
        T.drop_layer(model, 2)
    q = T.quantize_int8(model)
    w = q.blocks[0].mlp.W_in
    assert len(torch.unique(w[0])) <= 255
    assert (q(tokens) - model(tokens)).abs().max() < 0.5
    assert not torch.equal(w, model.blocks[0].mlp.W_in)
    assert _same_state(model, state)  # input untouched by every transform above


def test_drop_layer_keeps_pruned_widths(model, tokens):
    from tl_funcnet.pruning import prune

    small, plan = prune(model, 0.3, "magnitude", None, bias_compensation=False, protect_first=0, protect_last=0,
                        allocation="global")
    assert len(set(plan.widths_after)) > 1, plan.widths_after
    dropped = T.drop_layer(small, 0)
    assert mlp_widths(dropped) == plan.widths_after[1:] and dropped.cfg.d_mlp == plan.widths_after[1]


@pytest.mark.parametrize("make", [lambda m: T.random_init(m, random_state=3), lambda m: T.drop_layer(m, 1),
                                  lambda m: T.permute_mlp(m, 4), lambda m: T.rotate_residual(m, random_state=4),
                                  lambda m: T.widen_mlp(m, 4, random_state=4)],
                         ids=["random_init", "drop_layer", "permute_mlp", "rotate_residual", "widen_mlp"])
def test_transforms_leave_global_random_state_unchanged(model, make):
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    before = _rng_states()
    make(model)
    assert _same_rng(before, _rng_states())
    # and the next draws are the ones an untouched program would get
    nxt = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    assert torch.equal(nxt[0], torch.rand(3)) and np.array_equal(nxt[1], np.random.rand(3))
    assert nxt[2] == random.random()


def test_random_init_is_an_independent_model_seeded_by_random_state(model, tokens):
    state = _state(model)
    a, b = T.random_init(model, random_state=3), T.random_init(model, random_state=3)
    c = T.random_init(model)
    assert _same_state(a, _state(b))  # same seed, same weights
    assert not torch.equal(a.blocks[0].mlp.W_in, c.blocks[0].mlp.W_in)
    assert not torch.equal(a.blocks[0].mlp.W_in, model.blocks[0].mlp.W_in)
    assert a.cfg.n_layers == model.cfg.n_layers and a.tokenizer is model.tokenizer
    assert _same_state(model, state)


def test_random_orthogonal_is_orthogonal():
    R = T.random_orthogonal(10, random_state=4)
    assert torch.allclose(R @ R.T, torch.eye(10, dtype=R.dtype), atol=1e-10)


def test_baselines_on_tiny_models(model):
    from tl_funcnet.fingerprint.baselines import output_similarity, parameter_cosine, weight_awm

    rot, pruned = T.rotate_residual(model, random_state=2), _pruned(model)
    other = make_llama_style(seed=3, normalization_type="RMSPre").eval()
    assert weight_awm(model, rot) == pytest.approx(1.0, abs=1e-6)  # Procrustes undoes the rotation
    assert weight_awm(model, other) < 0.8
    assert parameter_cosine(model, pruned) is None  # shapes differ: n/a
    assert parameter_cosine(model, model) == pytest.approx(1.0)
    lp = torch.log_softmax(torch.randn(5, 7), -1)
    assert output_similarity(lp, lp) == pytest.approx(1.0, abs=1e-6)
    assert output_similarity(lp, None) is None
