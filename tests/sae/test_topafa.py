"""Top-AFA SAEs: the selection rule, the sae-lens architecture (inference, training, saving) and bad settings."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sae_testing import make_sae
from tl_funcnet.errors import FuncnetError
from tl_funcnet.sae import encode, evaluate_sae, load_sae, sae_params, save_sae, train_sae
from tl_funcnet.sae.topafa import top_afa

SITE = "blocks.0.hook_resid_post"
values = st.lists(st.floats(-3, 5, allow_nan=False, width=32), min_size=1, max_size=24)


@settings(max_examples=200, deadline=None)
@given(values, st.floats(0, 12, allow_nan=False))
def test_top_afa_keeps_the_largest_coefficients_whose_norm_best_matches_the_target(coeffs, target):
    g = torch.tensor(coeffs)
    keep = top_afa(g, torch.tensor(target))
    kept, positive = g[keep], g[g > 0]
    assert bool((g[keep] > 0).all())
    if positive.numel() == 0:
        assert int(keep.sum()) == 0
        return
    n = int(keep.sum())
    assert n >= 1
    assert float(kept.min()) >= float(g[~keep & (g > 0)].max()) if n < positive.numel() else True
    ordered = positive.sort(descending=True).values
    errors = [abs(math.sqrt(float((ordered[:j] ** 2).sum())) - target) for j in range(1, positive.numel() + 1)]
    assert abs(float(kept.norm()) - target) <= min(errors) + 1e-4


@settings(max_examples=100, deadline=None)
@given(values, st.floats(0, 6, allow_nan=False), st.floats(0, 6, allow_nan=False))
def test_a_larger_input_norm_never_activates_fewer_latents(coeffs, t1, t2):
    g = torch.tensor(coeffs)
    small, large = sorted((t1, t2))
    assert int(top_afa(g, torch.tensor(small)).sum()) <= int(top_afa(g, torch.tensor(large)).sum())


def test_top_afa_works_row_by_row_on_batched_coefficients():
    g = torch.rand(4, 5, 30)
    target = torch.rand(4, 5) * 3
    keep = top_afa(g, target)
    for i in range(4):
        for j in range(5):
            assert torch.equal(keep[i, j], top_afa(g[i, j], target[i, j]))


def _small_topafa(**kw):
    """A random top-AFA SAE whose coefficients are small next to the input, so the active count varies."""
    sae = make_sae("topafa", **kw)
    with torch.no_grad():
        sae.W_enc.mul_(0.05)
    return sae


@pytest.mark.parametrize("rescale", [False, True])
def test_active_count_varies_with_the_input_and_matches_sae_lens(rescale):
    sae = _small_topafa(rescale_acts_by_decoder_norm=rescale)
    x = torch.randn(200, 16) * torch.linspace(0.2, 3.0, 200)[:, None]
    with torch.no_grad():
        ref = sae.encode(x)
    f = encode(sae_params(sae), x)
    torch.testing.assert_close(f, ref)
    l0 = (f != 0).sum(-1).float()
    assert l0.min() < l0.max()
    assert torch.corrcoef(torch.stack([l0, x.norm(dim=-1)]))[0, 1] > 0.3  # bigger inputs, more latents


def test_folding_decoder_norms_keeps_the_sae_function():
    sae = _small_topafa()
    x = torch.randn(400, 16)
    with torch.no_grad():
        f0 = sae.encode(x)
        before = sae.decode(f0)
        sae.fold_W_dec_norm()
        f1 = sae.encode(x)
        after = sae.decode(f1)
    same = torch.isclose(before, after, atol=1e-5, rtol=1e-5).all(-1)
    assert float(same.float().mean()) > 0.97  # the rest are rounding-level ties between two active counts
    assert int(((f0 != 0).sum(-1) - (f1 != 0).sum(-1)).abs().max()) <= 1


def test_afa_loss_enters_training_by_default_and_can_be_turned_off():
    from sae_lens.saes.sae import TrainStepInput

    from tl_funcnet.sae.lens_topafa import TopAFATrainingSAE, TopAFATrainingSAEConfig

    x = torch.randn(32, 16)
    assert TopAFATrainingSAEConfig(d_in=16, d_sae=48).afa_loss_coefficient == 16 / 128  # the paper's 1/128
    for coef, present in ((0.0, False), (None, True), (0.5, True)):
        torch.manual_seed(0)
        sae = TopAFATrainingSAE(TopAFATrainingSAEConfig(d_in=16, d_sae=48, afa_loss_coefficient=coef))
        out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=None,
                                                       n_training_steps=0, is_logging_step=False))
        assert ("afa_loss" in out.losses) is present
        if present:
            assert float(out.losses["afa_loss"].detach()) > 0
            out.loss.backward()
            assert sae.W_enc.grad is not None and float(sae.W_enc.grad.abs().sum()) > 0


@pytest.fixture(scope="module")
def trained_topafa(gpt2_tiny):
    toks = torch.randint(0, 50, (48, 12), generator=torch.Generator().manual_seed(0))
    sae = train_sae(gpt2_tiny, SITE, toks, architecture="topafa", d_sae=32, training_tokens=2048, context_size=8,
                    train_batch_size_tokens=64, n_batches_in_buffer=8, store_batch_size_prompts=4, lr=3e-3)
    return sae, toks


def test_train_sae_trains_a_top_afa_sae(trained_topafa, gpt2_tiny):
    from tl_funcnet.sae.lens_topafa import TopAFASAE

    sae, toks = trained_topafa
    assert isinstance(sae, TopAFASAE) and sae.cfg.metadata.hook_name == SITE
    m = evaluate_sae(gpt2_tiny, sae, toks, site=SITE, compute_ce=False)
    assert m.token_l0.min() < m.token_l0.max()  # no fixed k
    assert m.explained_variance > 0.2 and 0 < m.afa_ratio_mean


def test_top_afa_sae_saves_and_loads_identically(trained_topafa, tmp_path):
    sae, _ = trained_topafa
    save_sae(sae, tmp_path / "sae")
    back = load_sae(tmp_path / "sae")
    x = torch.randn(20, 16)
    with torch.no_grad():
        torch.testing.assert_close(back.encode(x), sae.encode(x))
    assert sae_params(back)["architecture"] == "topafa"


@pytest.mark.parametrize("bad", [-0.1, float("nan"), "1"])
def test_bad_afa_loss_coefficient_is_refused_before_training(gpt2_tiny, bad):
    toks = torch.randint(0, 50, (8, 12), generator=torch.Generator().manual_seed(0))
    with pytest.raises(FuncnetError, match="afa_loss_coefficient"):
        train_sae(gpt2_tiny, SITE, toks, architecture="topafa", d_sae=32, training_tokens=256, context_size=8,
                  train_batch_size_tokens=64, afa_loss_coefficient=bad)


def test_top_afa_params_without_an_encoder_bias_are_refused():
    p = sae_params(make_sae("topafa"))
    del p["b_enc"]
    with pytest.raises(FuncnetError, match="lack the tensors"):
        sae_params(p)
