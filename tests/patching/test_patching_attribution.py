"""AtP and RelP: formula checks against hand oracles, and the rules leave the model untouched."""

from __future__ import annotations

import pytest
import torch

from tl_funcnet.errors import FuncnetError
from tl_funcnet.hooks import capture
from tl_funcnet.patching import (attribution_patch, correlation, exact_patch, logit_diff, node_grid, relp_rules,
                                 units_nodes)

N_POS = 7
METRIC = logit_diff([1, 2, 3], [4, 5, 6])


@pytest.fixture
def pair():
    g = torch.Generator().manual_seed(3)
    clean = torch.randint(0, 50, (3, N_POS), generator=g)
    corr = clean.clone()
    corr[:, 2] = (clean[:, 2] + 7) % 50
    return clean, corr


def test_atp_is_exact_where_the_metric_is_linear(tiny_model, pair):
    # logits are linear in ln_final.hook_normalized, so first order is exact there
    clean, corr = pair
    ns = units_nodes("ln_final.hook_normalized", [[0, 1, 2], [5], list(range(16))], pos=N_POS - 1)
    for direction in ("denoise", "noise"):
        e = exact_patch(tiny_model, clean, corr, ns, METRIC, direction=direction)
        a = attribution_patch(tiny_model, clean, corr, ns, METRIC, direction=direction)
        torch.testing.assert_close(a.effects, e.effects, atol=1e-5, rtol=0)
        torch.testing.assert_close(a.per_prompt, e.per_prompt, atol=1e-5, rtol=0)
        # one meaning for every method: the same baseline, and patched = baseline + effects
        assert a.baseline == pytest.approx(e.baseline, abs=1e-6)
        torch.testing.assert_close(a.patched, e.patched, atol=1e-5, rtol=0)
        r = attribution_patch(tiny_model, clean, corr, ns, METRIC, direction=direction, method="relp")
        assert r.method == "relp" and r.baseline == pytest.approx(e.baseline, abs=1e-6)


def test_nodes_after_the_blocks_see_every_position(tiny_model, pair):
    # regression: with a last-position metric the sweeps computed ln_final on the last position only, so a
    # patch there did not fit (exact) or was compared with the wrong position (AtP)
    clean, corr = pair
    ns = units_nodes("ln_final.hook_normalized", {"early": [0, 1], "all_pos": list(range(16))}, pos=2)
    everywhere = units_nodes("ln_final.hook_normalized", [list(range(16))])
    for method in (exact_patch, attribution_patch):
        res = method(tiny_model, clean, corr, ns, METRIC)
        torch.testing.assert_close(res.effects, torch.zeros(2), atol=1e-6, rtol=0)  # the metric reads pos -1
    e = exact_patch(tiny_model, clean, corr, everywhere, METRIC)
    a = attribution_patch(tiny_model, clean, corr, everywhere, METRIC)
    with torch.no_grad():
        want = METRIC(tiny_model(clean)).mean() - METRIC(tiny_model(corr)).mean()
    assert e.effects[0].item() == pytest.approx(want.item(), abs=1e-5)
    assert a.effects[0].item() == pytest.approx(want.item(), abs=1e-5)  # logits are linear in it


def test_atp_matches_manual_gradient_formula(llama_tiny, pair):
    clean, corr = pair
    site = "blocks.1.attn.hook_z"
    _, c_cache = llama_tiny.run_with_cache(clean)
    store: dict = {}
    with capture(site, store, detach=False).applied(llama_tiny):
        out = METRIC(llama_tiny(corr)).sum()
    grad, = torch.autograd.grad(out, store[site])
    want = ((c_cache[site] - store[site].detach()) * grad).sum(-1)  # (batch, pos, head)
    res = attribution_patch(llama_tiny, clean, corr, node_grid(llama_tiny, "head_pos", N_POS, layers=[1]), METRIC)
    torch.testing.assert_close(res.per_prompt.reshape(N_POS, 4, 3).permute(2, 0, 1), want, atol=1e-6, rtol=0)
    assert res.grid().shape == (1, N_POS, 4)
    torch.testing.assert_close(res.grid()[0], want.mean(0), atol=1e-6, rtol=0)
    heads = attribution_patch(llama_tiny, clean, corr, node_grid(llama_tiny, "head", N_POS, by_pos=False), METRIC)
    torch.testing.assert_close(heads.grid()[1], want.sum(1).mean(0), atol=1e-6, rtol=0)
    with torch.no_grad():
        assert heads.baseline == pytest.approx(METRIC(llama_tiny(corr)).mean().item(), abs=1e-5)


def test_atp_correlates_with_exact_on_a_tiny_model(tiny_model, pair):
    clean, corr = pair
    ns = node_grid(tiny_model, "head_pos", N_POS)
    r = correlation(exact_patch(tiny_model, clean, corr, ns, METRIC), attribution_patch(tiny_model, clean, corr, ns, METRIC))
    assert r["pearson"] > 0.9


def _grads(model, tokens, sites, rules):
    store: dict = {}
    iv = capture(sites, store, detach=False)
    if rules is not None:
        iv = relp_rules(model, rules) + iv
    with iv.applied(model):
        logits = model(tokens)
    g = torch.autograd.grad(METRIC(logits).sum(), [store[s] for s in sites], allow_unused=True)
    return logits, {s: (store[s].detach(), x) for s, x in zip(sites, g)}


def test_relp_rules_keep_forward_values_bit_identical(tiny_model, pair):
    clean, _ = pair
    with torch.no_grad():
        before = tiny_model(clean)
    logits, _ = _grads(tiny_model, clean, ["blocks.1.hook_resid_pre"], None)
    relp_logits, _ = _grads(tiny_model, clean, ["blocks.1.hook_resid_pre"], "LN AH Identity Half")
    assert torch.equal(relp_logits, logits) and torch.equal(before, logits)


def test_relp_leaves_model_outputs_and_gradients_unchanged(tiny_model, pair):
    clean, corr = pair
    sites = ["blocks.0.hook_resid_pre", "blocks.1.mlp.hook_post"]
    l0, g0 = _grads(tiny_model, clean, sites, None)
    attribution_patch(tiny_model, clean, corr, node_grid(tiny_model, "mlp", N_POS), METRIC, method="relp")
    l1, g1 = _grads(tiny_model, clean, sites, None)
    assert torch.equal(l0, l1)
    assert all(torch.equal(g0[s][1], g1[s][1]) for s in sites)
    assert all(p.grad is None for p in tiny_model.parameters())


def test_relp_ah_rule_stops_gradient_to_queries_and_keys(tiny_model, pair):
    clean, _ = pair
    _, g = _grads(tiny_model, clean, ["blocks.0.attn.hook_q", "blocks.0.attn.hook_k", "blocks.0.attn.hook_v"], "AH")
    assert g["blocks.0.attn.hook_q"][1] is None and g["blocks.0.attn.hook_k"][1] is None
    assert g["blocks.0.attn.hook_v"][1].abs().sum() > 0
    _, g = _grads(tiny_model, clean, ["blocks.0.attn.hook_q"], None)
    assert g["blocks.0.attn.hook_q"][1].abs().sum() > 0


def test_relp_ln_rule_makes_final_norm_linear(llama_tiny, pair):
    # RMSNorm with a constant scale: d(logit diff)/d(final resid) = w_ln * (W_U[:, a] - W_U[:, d]) / scale
    clean, _ = pair
    site = "blocks.1.hook_resid_post"
    store: dict = {}
    with capture("ln_final.hook_scale", store).applied(llama_tiny):
        _, g = _grads(llama_tiny, clean, [site], "LN")
    grad = g[site][1]
    w_u, w_ln = llama_tiny.W_U, llama_tiny.ln_final.w
    direction = (w_u[:, [1, 2, 3]] - w_u[:, [4, 5, 6]]).T * w_ln  # (batch, d_model)
    want = torch.zeros_like(grad)
    want[:, -1] = direction / store["ln_final.hook_scale"][:, -1]
    torch.testing.assert_close(grad, want, atol=1e-5, rtol=1e-5)


def test_relp_identity_and_half_rules_give_the_lrp_local_gradients(llama_tiny, gpt2_tiny, pair):
    clean, _ = pair
    b = "blocks.1.mlp."
    # gated (llama): identity on silu and half on the product
    _, g = _grads(llama_tiny, clean, [b + "hook_pre", b + "hook_pre_linear", b + "hook_post"], "Identity Half")
    (pre, g_pre), (up, g_up), (_, g_post) = g[b + "hook_pre"], g[b + "hook_pre_linear"], g[b + "hook_post"]
    act = torch.nn.functional.silu(pre)
    safe = torch.where(pre >= 0, pre + 1e-6, pre - 1e-6)
    torch.testing.assert_close(g_up, g_post * act / 2, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(g_pre, g_post * up * (act / safe) / 2, atol=1e-6, rtol=1e-5)
    # plain MLP (gpt2, gelu): identity only
    _, g = _grads(gpt2_tiny, clean, [b + "hook_pre", b + "hook_post"], "Identity-rule")
    (pre, g_pre), (_, g_post) = g[b + "hook_pre"], g[b + "hook_post"]
    safe = torch.where(pre >= 0, pre + 1e-6, pre - 1e-6)
    act = gpt2_tiny.blocks[1].mlp.act_fn(pre)
    torch.testing.assert_close(g_pre, g_post * act / safe, atol=1e-6, rtol=1e-5)


def test_relp_rule_names_are_checked(gpt2_tiny, pair):
    clean, corr = pair
    with pytest.raises(FuncnetError, match="unknown RelP rule"):
        relp_rules(gpt2_tiny, ["LN", "Gamma"])
    with pytest.raises(FuncnetError, match="'atp' or 'relp'"):
        attribution_patch(gpt2_tiny, clean, corr, node_grid(gpt2_tiny, "mlp", N_POS), METRIC, method="ig")
    only_ln = attribution_patch(gpt2_tiny, clean, corr, node_grid(gpt2_tiny, "mlp", N_POS), METRIC,
                                method="relp", rules="LN-rule")
    assert only_ln.info["rules"] == ["LN"]


def test_relp_rules_save_load_and_give_identical_gradients(tiny_model, pair, tmp_path):
    from tl_funcnet.errors import OverwriteError
    from tl_funcnet.hooks import Intervention

    clean, _ = pair
    iv = relp_rules(tiny_model)
    assert iv.serializable and {h.op for h in iv.hooks} >= {"detach", "relp_mlp"}
    iv.save(tmp_path / "relp")
    back = Intervention.load(tmp_path / "relp")
    assert back.to_dict() == iv.to_dict() and back.allclose(iv)
    with pytest.raises(OverwriteError):
        iv.save(tmp_path / "relp")
    sites = ["blocks.0.hook_resid_pre", "blocks.0.mlp.hook_pre", "blocks.1.mlp.hook_post",
             "blocks.0.attn.hook_q"]
    grads = []
    for rules_iv in (iv, back):
        store: dict = {}
        with (rules_iv + capture(sites, store, detach=False)).applied(tiny_model):
            logits = tiny_model(clean)
        g = torch.autograd.grad(METRIC(logits).sum(), [store[s] for s in sites], allow_unused=True)
        grads.append((logits.detach(), g))
    (l0, g0), (l1, g1) = grads
    assert torch.equal(l0, l1)
    assert g0[3] is None and g1[3] is None  # AH rule: no gradient reaches the queries
    assert all(torch.equal(a, b) for a, b in zip(g0[:3], g1[:3]))
    # the loaded rules differ from plain gradients (they are really applied)
    _, plain = _grads(tiny_model, clean, sites[:1], None)
    assert not torch.allclose(plain[sites[0]][1], g1[0])
    # each rule subset round-trips too
    for rules in ("LN", "AH", "Identity Half"):
        one = relp_rules(tiny_model, rules)
        one.save(tmp_path / rules.replace(" ", "_"))
        assert Intervention.load(tmp_path / rules.replace(" ", "_")).allclose(one)


def test_relp_rules_refuse_a_model_of_another_architecture(llama_tiny, gpt2_tiny):
    iv = relp_rules(gpt2_tiny, "Identity")  # gelu, not gated: its sites exist on the llama model too
    with pytest.raises(FuncnetError, match="relp_rules"):
        iv.validate(llama_tiny)
    with pytest.raises(FuncnetError):  # the gated model's rules need hook_pre_linear, which gpt2 lacks
        relp_rules(llama_tiny, "Identity Half").validate(gpt2_tiny)
