"""SAE metrics on oracles: a perfect SAE, planted features, and the ε bounds."""

from __future__ import annotations

import math

import pytest
import torch

from sae_testing import make_sae
from tl_funcnet.evaluate import evaluate
from tl_funcnet.hooks import ablate, capture
from tl_funcnet.sae import evaluate_sae, max_decoder_cos, sae_params
from tl_funcnet.sae.metrics import token_afa

SITE = "blocks.0.hook_resid_post"


def _identity_sae(d: int = 16):
    """A ReLU SAE with features ±e_i: reconstructs any input exactly, with orthogonal-or-opposite atoms."""
    sae = make_sae("standard", d_in=d, d_sae=2 * d, hook_name=SITE)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_perfect_sae_metrics(gpt2_tiny):
    toks = torch.randint(0, 50, (4, 12), generator=torch.Generator().manual_seed(0))
    m = evaluate_sae(gpt2_tiny, _identity_sae(), toks)
    assert m.n_tokens == 48 and m.d_sae == 32
    assert m.mse < 1e-10 and m.explained_variance == pytest.approx(1.0, abs=1e-6)
    assert m.ce_loss_sae == pytest.approx(m.ce_loss_base, abs=1e-5)
    assert m.ce_loss_recovered == pytest.approx(1.0, abs=1e-4)
    assert m.l0 == pytest.approx(16.0, abs=0.1)  # one of ±e_i per dimension (almost surely non-zero)
    assert m.afa_ratio_mean == pytest.approx(1.0, abs=1e-5)  # orthogonal atoms: ‖f‖ = ‖x‖ exactly
    assert m.eps_lbo == pytest.approx(0.0, abs=1e-5) and m.max_decoder_cos == pytest.approx(1.0)  # e_i vs -e_i


def test_ce_losses_agree_with_evaluate(gpt2_tiny):
    toks = torch.randint(0, 50, (3, 12), generator=torch.Generator().manual_seed(2))
    m = evaluate_sae(gpt2_tiny, make_sae("standard", hook_name=SITE), toks)
    assert m.ce_loss_base == pytest.approx(evaluate(gpt2_tiny, toks, progress=False).loss, rel=1e-5)
    assert m.ce_loss_zero == pytest.approx(evaluate(gpt2_tiny, toks, ablate(SITE), progress=False).loss, rel=1e-5)
    gap = m.ce_loss_zero - m.ce_loss_base
    assert m.ce_loss_recovered == pytest.approx((m.ce_loss_zero - m.ce_loss_sae) / gap, rel=1e-6)


def test_dead_fraction_counts_never_active_features(gpt2_tiny, tokens):
    sae = make_sae("standard", hook_name=SITE)
    with torch.no_grad():
        sae.b_enc[:10] = -1e4  # ten features can never fire
    m = evaluate_sae(gpt2_tiny, sae, tokens, compute_ce=False)
    assert m.ce_loss_base is None
    store = {}
    with capture(SITE, store).applied(gpt2_tiny):
        gpt2_tiny(tokens)
    f = sae.encode(store[SITE]).detach().reshape(-1, 48)
    n_dead = int((~(f != 0).any(0)).sum())
    assert n_dead >= 10 and int((f[:, :10] != 0).sum()) == 0
    assert m.dead_fraction == pytest.approx(n_dead / 48)


def test_mse_and_explained_variance_match_direct_computation(gpt2_tiny, tokens):
    sae = make_sae("topk", k=5, hook_name=SITE)
    store = {}
    with capture(SITE, store).applied(gpt2_tiny):
        gpt2_tiny(tokens)
    x = store[SITE].reshape(-1, 16)
    x_hat = sae.decode(sae.encode(x)).detach()
    m = evaluate_sae(gpt2_tiny, sae, tokens, compute_ce=False)
    assert m.mse == pytest.approx(float(((x - x_hat) ** 2).mean()), rel=1e-4)
    ev = 1 - float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    assert m.explained_variance == pytest.approx(ev, rel=1e-4, abs=1e-6)
    assert m.l0 == pytest.approx(5.0, abs=1e-6)


@pytest.mark.parametrize("arch", ["standard", "topk"])
def test_eps_lbo_never_exceeds_max_decoder_cos(arch):
    sae = make_sae(arch, k=6) if arch == "topk" else make_sae(arch)
    p = sae_params(sae)
    afa = token_afa(p, torch.randn(500, 16) * 3)
    eps = afa["eps"][~torch.isnan(afa["eps"])]
    assert eps.numel() > 100
    assert float(eps.max()) <= max_decoder_cos(p["W_dec"]) + 1e-5
    assert float(eps.max()) > 0.01  # random atoms are far from orthogonal: the bound is not vacuous


def test_max_decoder_cos_chunked_matches_dense():
    W = torch.randn(300, 20)
    U = torch.nn.functional.normalize(W, dim=-1)
    c = (U @ U.T).abs().fill_diagonal_(0)
    assert max_decoder_cos(W, chunk=64) == pytest.approx(float(c.max()), rel=1e-6)
    assert not math.isnan(max_decoder_cos(W))


def _manual_nll(model, seq, iv=None):
    """Summed next-token loss of one unpadded sequence (and the number of predicted tokens)."""
    from tl_funcnet.hooks import Intervention

    with torch.no_grad(), (iv or Intervention()).applied(model):
        logp = model(seq[None])[0, :-1].log_softmax(-1)
    return float(-logp.gather(-1, seq[1:, None]).sum()), len(seq) - 1


def test_padding_is_never_counted(gpt2_tiny):
    from tl_funcnet.sae import splice

    sae = make_sae("topk", k=5, hook_name=SITE)
    g = torch.Generator().manual_seed(4)
    seqs = [torch.randint(0, 50, (n,), generator=g) for n in (3, 12, 7)]
    m = evaluate_sae(gpt2_tiny, sae, seqs, batch_size=3)  # one right-padded batch
    assert m.n_tokens == 22
    xs = []
    for s in seqs:
        store = {}
        with capture(SITE, store).applied(gpt2_tiny):
            gpt2_tiny(s[None])
        xs.append(store[SITE][0])
    x = torch.cat(xs)
    x_hat = sae.decode(sae.encode(x)).detach()
    assert m.mse == pytest.approx(float(((x - x_hat) ** 2).mean()), rel=1e-4)
    assert m.l0 == pytest.approx(5.0)
    base = [_manual_nll(gpt2_tiny, s) for s in seqs]
    spliced = [_manual_nll(gpt2_tiny, s, splice(sae)) for s in seqs]
    n_pred = sum(n for _, n in base)
    assert n_pred == 19
    assert m.ce_loss_base == pytest.approx(sum(v for v, _ in base) / n_pred, rel=1e-5)
    assert m.ce_loss_sae == pytest.approx(sum(v for v, _ in spliced) / n_pred, rel=1e-5)
    one_by_one = evaluate_sae(gpt2_tiny, sae, seqs, batch_size=1)
    for key in ("mse", "explained_variance", "l0", "ce_loss_base", "ce_loss_sae", "ce_loss_zero", "afa_ratio_mean"):
        assert getattr(one_by_one, key) == pytest.approx(getattr(m, key), rel=1e-5, abs=1e-7), key


def test_to_dict_has_scalars_only(gpt2_tiny, tokens):
    m = evaluate_sae(gpt2_tiny, make_sae("standard", hook_name=SITE), tokens, compute_ce=False)
    d = m.to_dict()
    assert "zf_x_norm" not in d and d["site"] == SITE and d["n_tokens"] == 30
    assert m.zf_x_norm.shape == m.zf_f_norm.shape == (30,)
