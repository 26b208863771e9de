"""Exact batched patching equals transformer_lens.patching on the same grid: ``effects`` are TL's patched
metric minus the unpatched (baseline) metric."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import patching as tlp

from tl_funcnet.errors import FuncnetError, ShapeError, UnknownSiteError
from tl_funcnet.hooks import patch
from tl_funcnet.patching import (AnswerProb, Normalized, exact_patch, logit_diff, node_grid, units_nodes)

N_POS = 7


@pytest.fixture
def pair():
    g = torch.Generator().manual_seed(3)
    clean = torch.randint(0, 50, (3, N_POS), generator=g)
    corr = clean.clone()
    corr[:, 2] = (clean[:, 2] + 7) % 50
    corr[:, 4] = (clean[:, 4] + 11) % 50
    return clean, corr


METRIC = logit_diff([1, 2, 3], [4, 5, 6])
TL_FNS = {
    "resid": tlp.get_act_patch_resid_pre,
    "mlp": tlp.get_act_patch_mlp_out,
    "head_pos": tlp.get_act_patch_attn_head_out_by_pos,
}


@pytest.mark.parametrize("kind,direction", [("resid", "denoise"), ("resid", "noise"), ("mlp", "denoise"),
                                            ("mlp", "noise"), ("head_pos", "denoise")])
def test_exact_patch_matches_transformer_lens(tiny_model, pair, kind, direction):
    clean, corr = pair
    target, source = (corr, clean) if direction == "denoise" else (clean, corr)
    _, cache = tiny_model.run_with_cache(source)
    ref = TL_FNS[kind](tiny_model, target, cache, lambda lg: METRIC(lg).mean())
    with torch.no_grad():
        baseline = METRIC(tiny_model(target)).mean().item()
    res = exact_patch(tiny_model, clean, corr, node_grid(tiny_model, kind, N_POS), METRIC,
                      direction=direction, max_rows=7)  # 2 nodes per forward: forces chunking
    assert res.method == "exact" and res.direction == direction
    assert res.baseline == pytest.approx(baseline, abs=1e-5)
    grid = res.grid()
    assert grid.shape == ref.shape and not grid.isnan().any()
    # effects: the change of the mean metric, i.e. TL's patched metric minus the unpatched run's
    torch.testing.assert_close(grid, ref.float() - baseline, atol=1e-5, rtol=0)
    torch.testing.assert_close(res.patched, ref.float().flatten(), atol=1e-5, rtol=0)
    torch.testing.assert_close(res.per_prompt.mean(1), res.effects, atol=1e-6, rtol=0)
    assert res.per_prompt.shape == (len(res.nodes), 3)
    # positions before the first changed token hold the same values in both runs: not run, effect exactly 0
    assert res.info["n_run"] < len(res.nodes)
    assert (res.per_prompt[[nd.pos in (0, 1) for nd in res.nodes.nodes]] == 0).all()


def test_exact_patch_heads_all_positions_match_transformer_lens(tiny_model, pair):
    clean, corr = pair
    _, cache = tiny_model.run_with_cache(clean)
    ref = tlp.get_act_patch_attn_head_out_all_pos(tiny_model, corr, cache, lambda lg: METRIC(lg).mean())
    res = exact_patch(tiny_model, clean, corr, node_grid(tiny_model, "head", N_POS, by_pos=False), METRIC)
    torch.testing.assert_close(res.grid(), ref.float() - res.baseline, atol=1e-5, rtol=0)


def test_exact_patch_prefix_reuse_and_full_logits_agree(llama_tiny, pair):
    clean, corr = pair
    ns = node_grid(llama_tiny, "mlp", N_POS)
    fast = exact_patch(llama_tiny, clean, corr, ns, METRIC)
    slow = exact_patch(llama_tiny, clean, corr, ns, lambda lg: METRIC(lg), reuse_prefix=False)
    torch.testing.assert_close(fast.per_prompt, slow.per_prompt, atol=1e-5, rtol=0)
    assert fast.baseline == pytest.approx(slow.baseline, abs=1e-5)


def test_exact_patch_neurons_and_unit_groups_match_single_patches(llama_tiny, pair):
    clean, corr = pair
    site = "blocks.1.mlp.hook_post"
    ns = units_nodes(site, {"a": [0, 5, 9], "b": [3]}, pos=4)
    res = exact_patch(llama_tiny, clean, corr, ns, METRIC, direction="noise")
    _, cache = llama_tiny.run_with_cache(corr)
    for i, units in enumerate([[0, 5, 9], [3]]):
        with patch(site, cache[site], units=units, pos=4).applied(llama_tiny), torch.no_grad():
            want = METRIC(llama_tiny(clean)).mean()
        assert res.patched[i].item() == pytest.approx(want.item(), abs=1e-5)
        assert res.effects[i].item() == pytest.approx(want.item() - res.baseline, abs=1e-5)
    neurons = exact_patch(llama_tiny, clean, corr, node_grid(llama_tiny, "neuron", N_POS, layers=[1],
                                                             neurons=[3], by_pos=True), METRIC, direction="noise")
    assert neurons.grid().shape == (1, N_POS, 1)
    assert neurons.grid()[0, 4, 0].item() == pytest.approx(res.effects[1].item(), abs=1e-6)
    assert neurons.baseline == pytest.approx(res.baseline)


def test_exact_patch_other_metrics(gpt2_tiny, pair):
    clean, corr = pair
    ns = node_grid(gpt2_tiny, "resid", N_POS, layers=[0])
    prob = exact_patch(gpt2_tiny, clean, corr, ns, AnswerProb([1, 2, 3]))
    assert ((prob.patched > 0) & (prob.patched < 1)).all() and 0 < prob.baseline < 1
    norm = Normalized(METRIC, clean=2.0, corrupted=-1.0)
    a = exact_patch(gpt2_tiny, clean, corr, ns, METRIC)
    b = exact_patch(gpt2_tiny, clean, corr, ns, norm)
    torch.testing.assert_close(b.patched, (a.patched + 1.0) / 3.0)
    torch.testing.assert_close(b.effects, a.effects / 3.0)  # a change of the metric scales, not shifts
    # a patch at every clean-differing position of layer 0 restores the clean run exactly
    full = exact_patch(gpt2_tiny, clean, corr, units_nodes("blocks.0.hook_resid_pre", [list(range(16))]), METRIC)
    with torch.no_grad():
        clean_metric = METRIC(gpt2_tiny(clean)).mean().item()
        corr_metric = METRIC(gpt2_tiny(corr)).mean().item()
    assert full.patched[0].item() == pytest.approx(clean_metric, abs=1e-5)
    assert full.effects[0].item() == pytest.approx(clean_metric - corr_metric, abs=1e-5)


def test_exact_patch_errors_before_running(gpt2_tiny, pair):
    clean, corr = pair
    with pytest.raises(ShapeError, match="same shape"):
        exact_patch(gpt2_tiny, clean, corr[:, :5], node_grid(gpt2_tiny, "resid", N_POS), METRIC)
    with pytest.raises(FuncnetError, match="max_rows"):
        exact_patch(gpt2_tiny, clean, corr, node_grid(gpt2_tiny, "resid", N_POS), METRIC, max_rows=2)
    with pytest.raises(FuncnetError, match="direction"):
        exact_patch(gpt2_tiny, clean, corr, node_grid(gpt2_tiny, "resid", N_POS), METRIC, direction="up")
    with pytest.raises(ShapeError, match="out of range"):
        exact_patch(gpt2_tiny, clean, corr, units_nodes("blocks.0.mlp.hook_post", [[99]]), METRIC)
    with pytest.raises(ShapeError, match="position 9"):
        exact_patch(gpt2_tiny, clean, corr, units_nodes("blocks.0.mlp.hook_post", [[1]], pos=9), METRIC)
    with pytest.raises(UnknownSiteError):
        exact_patch(gpt2_tiny, clean, corr, units_nodes("blocks.0.mlp.hook_pots", [[1]]), METRIC)
    with pytest.raises(ShapeError, match="one value per"):
        exact_patch(gpt2_tiny, clean, corr, node_grid(gpt2_tiny, "resid", N_POS), lambda lg: lg.sum())
    with pytest.raises(FuncnetError, match="unknown node kind"):
        node_grid(gpt2_tiny, "edges", N_POS)
