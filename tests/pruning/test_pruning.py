"""Pruning on tiny random models: selection, scores, soft == hard, compensation, pruned models as
first-class models (widths, collection, networks, save/load), bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tl_testing import count_hooks, guard, make_gpt2_style, make_llama_style
from tl_funcnet.errors import FuncnetError
from tl_funcnet.hooks import Intervention, ablate, capture
from tl_funcnet.hooks.sites import site_shape
from tl_funcnet.models import mlp_widths
from tl_funcnet.pruning import (
    ALLOCATION, METHODS, Calibration, PruningPlan, compensate, hard_prune, method_options, plan_from_scores,
    plan_pruning, prune, score, select,
)

ICA_OK = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
FN_OPTS = {"n_networks": 6, "n_restarts": 2}


def _model(kind: str, **kw):
    mk = make_llama_style if kind == "llama" else make_gpt2_style
    return guard(mk(0, n_layers=6, **kw).eval())


def _calib(model, n: int = 40, seed: int = 0) -> Calibration:
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(0, 50, (int(torch.randint(3, 13, (1,), generator=g)),), generator=g) for _ in range(n)]
    return Calibration.from_texts(model, seqs, max_tokens=None, batch_size=8)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_state(model, state) -> bool:
    now = model.state_dict()
    return set(now) == set(state) and all(torch.equal(now[k], state[k]) for k in state)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def setup(request):
    model = _model(request.param)
    return model, _calib(model)


_PLANS: dict = {}


def _plan(model, calib, method):
    key = (id(model), method)
    if key not in _PLANS:
        opts = FN_OPTS if method.startswith("fn") else {}
        _PLANS[key] = plan_pruning(model, 0.3, method, calib, protect_first=1, protect_last=1, **opts)
        assert _PLANS[key].means is not None  # bias_compensation=True (the default) measures the means
    return _PLANS[key]


# ------------------------------------------------------------------ soft == hard


@ICA_OK
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bias", [False, True])
def test_hard_prune_matches_intervention(setup, method, bias):
    model, calib = setup
    state = _state(model)
    plan = _plan(model, calib, method)
    small = guard(hard_prune(model, plan, bias_compensation=bias))
    toks = torch.randint(0, 50, (3, 11), generator=torch.Generator().manual_seed(5))
    with plan.to_intervention(bias_compensation=bias).applied(model):
        soft = model(toks)
    hard = small(toks)
    assert torch.allclose(soft, hard, atol=1e-5, rtol=1e-5)
    # the zero/mean ablation really changes the output, and the input model is untouched
    assert (soft - model(toks)).abs().max() > 1e-4
    assert _same_state(model, state)
    assert [int(b.mlp.W_out.shape[0]) for b in small.blocks] == plan.widths_after
    assert plan.widths_after[0] == 32 and plan.widths_after[-1] == 32
    assert plan.n_pruned == round(0.3 * 6 * 32)


def test_param_counts_match_the_hard_pruned_model(setup):
    model, calib = setup
    plan = plan_pruning(model, 0.25, "wanda", calib, protect_first=1, protect_last=1, bias_compensation=False)
    small = hard_prune(model, plan, bias_compensation=False)
    c = plan.param_counts(model)
    assert c["params_after"] == sum(p.numel() for p in small.parameters())
    assert c["mlp_params_after"] == sum(p.numel() for b in small.blocks for p in b.mlp.parameters())
    assert c["params_before"] == sum(p.numel() for p in model.parameters())
    assert 0 < c["param_ratio"] < c["mlp_param_ratio"] < 0.25 + 1e-9


# ------------------------------------------------------------------ compensation


def test_compensation_means_are_measured_with_earlier_layers_pruned(setup):
    """Oracle: under the compensated soft prune, the pruned units' mean over real tokens equals plan.means."""
    model, calib = setup
    bare = plan_pruning(model, 0.4, "random", calib, protect_first=0, protect_last=0, bias_compensation=False)
    assert bare.means is None
    plan = compensate(model, bare, calib)
    # plan_pruning's own compensation (the default) measures the same means
    direct = plan_pruning(model, 0.4, "random", calib, protect_first=0, protect_last=0)
    assert all(torch.equal(a, b) for a, b in zip(direct.pruned, plan.pruned))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(direct.means, plan.means))
    store: dict = {}
    iv = Intervention()
    for l in range(6):
        site = f"blocks.{l}.mlp.hook_post"
        iv = iv + capture(site, store, append=True)
        iv = iv + ablate(site, plan.pruned_units(l), mode="mean", values=plan.means[l])
    sums = [torch.zeros(32, dtype=torch.float64) for _ in range(6)]
    n = 0
    with iv.applied(model):
        for b in calib.batches(model):
            store.clear()
            model(b.tokens)
            m = b.mask.bool()
            for l in range(6):
                sums[l] += store[f"blocks.{l}.mlp.hook_post"][0][m].double().sum(0)
            n += b.n_real
    for l in range(6):
        p = plan.pruned[l]
        assert torch.allclose((sums[l] / n)[p].float(), plan.means[l][p], atol=1e-5)
        assert torch.all(plan.means[l][~p] == 0)
    # layer 0's means equal the unpruned model's means (nothing upstream is pruned)
    stats = calib.stats(model)
    assert torch.allclose(stats.mean[0][plan.pruned[0]].float(), plan.means[0][plan.pruned[0]], atol=1e-5)
    assert not torch.allclose(stats.mean[3][plan.pruned[3]].float(), plan.means[3][plan.pruned[3]], atol=1e-4)


def test_bias_compensation_lowers_loss_on_calibration_text():
    model = _model("llama")
    calib = _calib(model, n=60)
    plan = plan_pruning(model, 0.5, "random", calib, protect_first=0, protect_last=0)

    @torch.no_grad()
    def kl(iv):
        tot = 0.0
        for b in calib.batches(model):
            base = F.log_softmax(model(b.tokens), -1)
            with iv.applied(model):
                lp = F.log_softmax(model(b.tokens), -1)
            tot += float((base.exp() * (base - lp)).sum(-1)[b.mask.bool()].sum())
        return tot

    assert kl(plan.to_intervention(bias_compensation=True)) < kl(plan.to_intervention(bias_compensation=False))


# ------------------------------------------------------------------ scores


def test_activation_scores_match_run_with_cache_and_ignore_padding(setup):
    model, calib = setup
    xs = [[] for _ in range(6)]
    for s in calib.seqs:  # one sequence at a time: no padding at all
        _, cache = model.run_with_cache(s[None], names_filter=lambda n: n.endswith("mlp.hook_post"))
        for l in range(6):
            xs[l].append(cache[f"blocks.{l}.mlp.hook_post"][0].double())
    X = [torch.cat(x) for x in xs]
    w = score(model, calib, "wanda")
    f = score(model, calib, "flap")
    a = score(model, calib, "activation")
    m = score(model, None, "magnitude")
    for l in range(6):
        wout = model.blocks[l].mlp.W_out.detach().double().norm(dim=1)
        win = model.blocks[l].mlp.W_in.detach().double().norm(dim=0)
        assert torch.allclose(w[l], wout * X[l].norm(dim=0), rtol=1e-5)
        assert torch.allclose(f[l], X[l].var(0, correction=0) * wout ** 2, rtol=1e-4, atol=1e-9)
        assert torch.allclose(a[l], X[l].abs().mean(0), rtol=1e-5)
        gate = getattr(model.blocks[l].mlp, "W_gate", None)
        expect = wout * win * (gate.detach().double().norm(dim=0) if gate is not None else 1.0)
        assert torch.allclose(m[l], expect)
    assert ALLOCATION == {"random": "uniform", "magnitude": "uniform", "wanda": "uniform", "flap": "global",
                          "activation": "uniform", "fn": "global", "fn_guided": "uniform", "cfsp": "global",
                          "fn_cfsp": "global"}


@ICA_OK
def test_fn_scores_are_max_abs_z_over_both_signals(setup):
    """Oracle: CanICA on [up | act(gate)] (gated) or hook_post, then max |z| over components and signals."""
    from tl_funcnet.funcnet.ica import CanICA

    model, calib = setup
    gated = bool(model.cfg.gated_mlp)
    rows = []
    for b in calib.batches(model):
        _, cache = model.run_with_cache(b.tokens, names_filter=lambda n: "blocks.2.mlp" in n)
        m = b.mask.bool()
        if gated:
            up = cache["blocks.2.mlp.hook_pre_linear"][m]
            act = F.silu(cache["blocks.2.mlp.hook_pre"][m])
            rows.append(torch.cat([up, act], 1))
        else:
            rows.append(cache["blocks.2.mlp.hook_post"][m])
    X = torch.cat(rows)
    assert X.shape == (calib.n_tokens, 64 if gated else 32)
    # the scorer seeds layer l's (only) run with random_state + l; the default random_state is 0
    maps = torch.from_numpy(CanICA(6, n_restarts=2, standardize=True, fun="cube", random_state=0 + 2).fit(X).maps_)
    expect = maps.abs().amax(0).view(-1, 32).amax(0).double()
    got = score(model, calib, "fn", layers=[2], **FN_OPTS)
    assert got[0] is None and got[3] is None
    assert torch.allclose(got[2], expect, atol=1e-4)
    other_seed = score(model, calib, "fn", layers=[2], random_state=5, **FN_OPTS)
    assert not torch.equal(other_seed[2], got[2])
    # the keep rule: in a global FN plan, kept prunable neurons score above T, pruned ones at or below
    s = score(model, calib, "fn", layers=[1, 2, 3, 4], **FN_OPTS)
    plan = plan_from_scores(model, s, 0.3, "fn", protect_first=1, protect_last=1)
    for l in (1, 2, 3, 4):
        assert torch.all(s[l][plan.pruned[l]] <= plan.threshold)
        assert torch.all(s[l][~plan.pruned[l]] >= plan.threshold)


@ICA_OK
def test_fn_several_runs_take_the_union(setup):
    model, calib = setup
    one = score(model, calib, "fn", layers=[2], n_runs=1, **FN_OPTS)[2]
    two = score(model, calib, "fn", layers=[2], n_runs=2, **FN_OPTS)[2]
    assert one.shape == two.shape == (32,) and not torch.equal(one, two)
    with pytest.raises(FuncnetError, match="calibration tokens per"):
        score(model, calib, "fn", layers=[2], n_runs=50, **FN_OPTS)


@ICA_OK
def test_fn_signals_read_in_layer_groups_equal_one_pass(setup):
    from tl_funcnet.pruning.calibration import fn_signals

    model, calib = setup
    whole = dict(fn_signals(model, calib, [1, 2, 4]))
    per_layer_budget = 4 * calib.n_tokens * (2 if model.cfg.gated_mlp else 1) * 32  # one layer per pass
    parts = list(fn_signals(model, calib, [1, 2, 4], budget=per_layer_budget))
    assert [l for l, _ in parts] == [1, 2, 4]
    assert all(torch.equal(whole[l], x) for l, x in parts)


@ICA_OK
def test_fn_guided_protects_top_fn_units_and_ranks_the_rest_by_the_base(setup):
    from tl_funcnet.pruning.scores import guided

    model, calib = setup
    layers = [1, 2, 3, 4]
    fn = score(model, calib, "fn", layers=layers, **FN_OPTS)
    wanda = score(model, calib, "wanda", layers=layers)
    got = score(model, calib, "fn_guided", layers=layers, key_fraction=0.25, **FN_OPTS)
    assert all(torch.equal(a, b) for a, b in zip(got[1:5], guided(fn, wanda, 0.25)[1:5]))
    plan = plan_from_scores(model, got, 0.5, "fn_guided", protect_first=1, protect_last=1)
    same_as_base = plan_from_scores(model, score(model, calib, "fn_guided", layers=layers, key_fraction=0.0, **FN_OPTS),
                                    0.5, "fn_guided", protect_first=1, protect_last=1)
    base = plan_from_scores(model, wanda, 0.5, "wanda", protect_first=1, protect_last=1)
    assert all(torch.equal(a, b) for a, b in zip(same_as_base.pruned, base.pruned))
    for l in layers:
        top = torch.argsort(fn[l], descending=True, stable=True)[:8]  # 25% of 32
        assert not plan.pruned[l][top].any()  # protected units survive a 50% prune of the layer
        rest = torch.ones(32, dtype=torch.bool)
        rest[top] = False
        kept = ~plan.pruned[l] & rest
        if kept.any():  # among unprotected neurons the base score decides
            assert wanda[l][kept].min() >= wanda[l][plan.pruned[l]].max()
    # without compensation the calibration text is still read (fn_guided reads activations)
    bare = plan_pruning(model, 0.5, "fn_guided", calib, protect_first=1, protect_last=1, bias_compensation=False,
                        key_fraction=0.25, **FN_OPTS)
    assert all(torch.equal(a, b) for a, b in zip(bare.pruned, plan.pruned)) and bare.means is None
    with pytest.raises(FuncnetError, match="key_fraction"):
        score(model, calib, "fn_guided", layers=layers, key_fraction=1.5, **FN_OPTS)
    with pytest.raises(FuncnetError, match="base"):
        score(model, calib, "fn_guided", layers=layers, base="magnitude", **FN_OPTS)


# ------------------------------------------------------------------ selection


def test_select_uniform_and_global_allocation():
    widths = [10, 20, 30, 40]
    scores = [torch.arange(w, dtype=torch.float64) * (l + 1) for l, w in enumerate(widths)]
    plan = select(scores, widths, 0.3, allocation="uniform", protected=(0,))
    assert plan.n_pruned == 30 and plan.widths_after[0] == 10
    assert [int(p.sum()) for p in plan.pruned] == [0, 7, 10, 13]
    assert all(torch.equal(p.nonzero().flatten(), torch.arange(int(p.sum()))) for p in plan.pruned)
    g = select(scores, widths, 0.3, allocation="global", protected=(0,))
    assert g.n_pruned == 30 and int(g.pruned[3].sum()) < int(g.pruned[1].sum())
    assert g.threshold is not None and math.isfinite(g.threshold)
    # min_keep: a layer can never lose every neuron, even with global selection
    low = [s.clone() for s in scores]
    low[1] = low[1] - 1000
    g2 = select(low, widths, 0.5, allocation="global", protected=())
    assert g2.widths_after[1] == 1


@pytest.mark.parametrize("ratio", [0, 0.0, 1, 1.0, -0.1, 1.5, float("nan"), True, "0.2", None])
def test_bad_ratio_errors_and_changes_nothing(setup, ratio):
    model, calib = setup
    state, hooks = _state(model), count_hooks(model)
    with pytest.raises(FuncnetError, match="ratio"):
        prune(model, ratio, "wanda", calib)
    assert _same_state(model, state) and count_hooks(model) == hooks


def test_unreachable_ratio_and_bad_protection_error(setup):
    model, calib = setup
    state = _state(model)
    with pytest.raises(FuncnetError, match="only .* are prunable"):  # 5 of 6 layers protected
        prune(model, 0.5, "fn", calib)
    with pytest.raises(FuncnetError, match="all 6 layers are protected"):
        prune(model, 0.1, "magnitude", calib, protect_first=4, protect_last=2)
    with pytest.raises(FuncnetError, match="out of range"):
        prune(model, 0.1, "magnitude", calib, protect=[9])
    with pytest.raises(FuncnetError, match="unknown pruning method"):
        prune(model, 0.1, "obs", calib)
    other = _calib(_model("llama"))
    with pytest.raises(FuncnetError, match="another model"):
        prune(model, 0.1, "wanda", other, protect_first=1, protect_last=1)
    assert _same_state(model, state)


@pytest.mark.parametrize("overrides,match", [({"attn_only": True}, "attention-only"),
                                             ({"act_fn": "solu_ln"}, "normalizes across")])
def test_models_without_prunable_mlps_error(overrides, match):
    model = guard(make_gpt2_style(0, n_layers=6, **overrides).eval())
    with pytest.raises(FuncnetError, match=match):
        prune(model, 0.2, "magnitude", None, bias_compensation=False)


def test_compensation_needs_means():
    model = _model("gpt2")
    plan = plan_pruning(model, 0.2, "magnitude", None, protect_first=1, protect_last=1, bias_compensation=False)
    assert plan.means is None
    with pytest.raises(FuncnetError, match="needs the plan.s means"):
        hard_prune(model, plan)
    with pytest.raises(FuncnetError, match="needs the plan.s means"):
        plan.to_intervention()
    small, _ = prune(model, 0.2, "magnitude", None, bias_compensation=False, protect_first=1, protect_last=1)
    with pytest.raises(FuncnetError, match="widths"):
        hard_prune(small, plan, bias_compensation=False)


# ------------------------------------------------------------------ options and return values


def test_method_options_are_checked_before_any_text_is_read(setup):
    model, calib = setup
    state, hooks = _state(model), count_hooks(model)
    # the tiny models have no tokenizer: reaching the "calibration" texts would fail differently
    with pytest.raises(FuncnetError, match="options"):
        plan_pruning(model, 0.2, "wanda", n_networks=8)
    with pytest.raises(FuncnetError, match="options"):
        prune(model, 0.2, "fn", calib, n_components=8)  # the old name of n_networks
    with pytest.raises(FuncnetError, match="options"):
        prune(model, 0.2, "random", calib, seed=3)  # the old name of random_state
    with pytest.raises(FuncnetError, match="options"):
        score(model, None, "magnitude", random_state=1)
    with pytest.raises(FuncnetError, match="bias_compensation"):
        plan_pruning(model, 0.2, "magnitude", calib, bias_compensation="yes")
    assert method_options("fn") == ("n_networks", "n_restarts", "n_runs", "random_state")
    assert method_options("random") == ("random_state",)
    assert method_options("wanda") == method_options("magnitude") == ()
    with pytest.raises(FuncnetError, match="unknown pruning method"):
        method_options("obs")
    assert _same_state(model, state) and count_hooks(model) == hooks


def test_random_method_is_seeded_by_random_state(setup):
    model, calib = setup
    kw = dict(protect_first=1, protect_last=1, bias_compensation=False)
    a = plan_pruning(model, 0.3, "random", calib, **kw)
    b = plan_pruning(model, 0.3, "random", calib, random_state=0, **kw)
    c = plan_pruning(model, 0.3, "random", calib, random_state=1, **kw)
    assert all(torch.equal(x, y) for x, y in zip(a.pruned, b.pruned))  # the default is 0
    assert not all(torch.equal(x, y) for x, y in zip(a.pruned, c.pruned))


@pytest.mark.parametrize("bias", [True, False])
def test_prune_returns_model_and_plan_and_soft_equals_hard(setup, bias):
    model, calib = setup
    state = _state(model)
    out = prune(model, 0.3, "flap", calib, bias_compensation=bias, protect_first=0, protect_last=0)
    assert isinstance(out, tuple) and len(out) == 2
    small, plan = out
    small = guard(small)
    assert isinstance(plan, PruningPlan) and (plan.means is not None) == bias
    assert mlp_widths(small) == plan.widths_after
    # soft pruning: the plan's intervention on the unpruned model computes the hard-pruned model's logits
    iv = plan_pruning(model, 0.3, "flap", calib, bias_compensation=bias, protect_first=0,
                      protect_last=0).to_intervention(bias_compensation=bias)
    assert isinstance(iv, Intervention)
    assert sorted(iv.sites) == [f"blocks.{l}.mlp.hook_post" for l in range(6)]
    assert {h.params["mode"] for h in iv.hooks} == {"mean" if bias else "zero"}
    toks = torch.randint(0, 50, (3, 11), generator=torch.Generator().manual_seed(7))
    with iv.applied(model):
        soft = model(toks)
    assert torch.allclose(soft, small(toks), atol=1e-5, rtol=1e-5)
    assert _same_state(model, state)


# ------------------------------------------------------------------ pruned models are first-class


@pytest.fixture(scope="module")
def pruned(setup):
    """A hard-pruned copy with non-uniform widths (global FLAP allocation, every layer prunable)."""
    model, calib = setup
    small, plan = prune(model, 0.3, "flap", calib, protect_first=0, protect_last=0)
    assert plan.allocation == "global"
    assert len(set(plan.widths_after)) > 1 and max(plan.widths_after) < 32, plan.widths_after
    return guard(small), plan


def test_pruned_model_reports_each_layer_width(setup, pruned):
    model, _ = setup
    small, plan = pruned
    widths = plan.widths_after
    assert mlp_widths(small) == widths
    assert small.cfg.d_mlp == max(widths)  # TransformerLens holds one number: the widest layer
    assert model.cfg.d_mlp == 32 and mlp_widths(model) == [32] * 6  # the input is untouched
    for l, block in enumerate(small.blocks):
        mlp = block.mlp
        assert mlp.W_in.shape[-1] == mlp.b_in.shape[0] == mlp.W_out.shape[0] == widths[l] == mlp.d_mlp
        if getattr(mlp, "W_gate", None) is not None:
            assert mlp.W_gate.shape[-1] == widths[l]
        assert site_shape(small, f"blocks.{l}.mlp.hook_post") == (widths[l],)
    # the kept neurons keep their weights, in order
    l = 1
    kept = (~plan.pruned[l]).nonzero().flatten()
    assert torch.equal(small.blocks[l].mlp.W_in.detach(), model.blocks[l].mlp.W_in.detach()[:, kept])


def test_pruned_model_collects_per_layer_widths_and_fits_networks(pruned):
    from tl_funcnet.activations import collect
    from tl_funcnet.funcnet import FunctionalNetworks

    small, plan = pruned
    g = torch.Generator().manual_seed(2)
    seqs = [torch.randint(0, 50, (12,), generator=g) for _ in range(30)]
    acts = collect(small, seqs, "mlp.hook_post", progress=False)
    sites = [f"blocks.{l}.mlp.hook_post" for l in range(6)]
    assert list(acts.sites) == sites
    for l, s in enumerate(sites):
        assert acts.width(s) == plan.widths_after[l] and acts[s].shape == (360, plan.widths_after[l])
    # the recorded activations are the pruned model's own
    _, cache = small.run_with_cache(seqs[0][None], names_filter=sites[2])
    torch.testing.assert_close(acts[sites[2]][:12], cache[sites[2]][0], atol=1e-6, rtol=0)
    fn = FunctionalNetworks(4, threshold=2.0).fit(acts)
    assert fn.widths_ == tuple(plan.widths_after) and fn.maps_.shape == (4, sum(plan.widths_after))
    assert set(fn.per_site_counts()) == set(sites)
    assert all(len(u) == 0 or int(u.max()) < plan.widths_after[l]
               for l, u in enumerate(fn.site_units(fn.union()).values()))
    iv = fn.to_intervention("mask")
    iv.validate(small)
    with iv.applied(small):
        small(seqs[0][None])


def test_pruned_model_saves_loads_and_takes_interventions(pruned, tmp_path):
    from tl_funcnet.models import load, save

    small, plan = pruned
    save(small, tmp_path / "m")
    back = guard(load(tmp_path / "m"))
    assert mlp_widths(back) == plan.widths_after and back.cfg.d_mlp == max(plan.widths_after)
    now, then = back.state_dict(), small.state_dict()
    assert set(now) == set(then) and all(torch.equal(now[k], then[k]) for k in then)
    toks = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(3))
    assert torch.allclose(back(toks), small(toks), atol=1e-6)
    l = 1
    iv = ablate(f"blocks.{l}.mlp.hook_post", [0, plan.widths_after[l] - 1])
    with iv.applied(back):
        a = back(toks)
    with iv.applied(small):
        b = small(toks)
    assert torch.allclose(a, b, atol=1e-6) and not torch.allclose(a, back(toks))
    with pytest.raises(FuncnetError):
        ablate(f"blocks.{l}.mlp.hook_post", [plan.widths_after[l]]).validate(back)
    # saving again needs overwrite=True
    with pytest.raises(FuncnetError, match="overwrite"):
        save(small, tmp_path / "m")
    save(back, tmp_path / "m", overwrite=True)
    # a pruned model can be pruned again (ratio relative to its current widths)
    again, plan2 = prune(back, 0.1, "magnitude", None, bias_compensation=False, protect_first=1, protect_last=1)
    assert plan2.widths_before == plan.widths_after
    assert sum(plan2.widths_after) == sum(plan.widths_after) - round(0.1 * sum(plan.widths_after))
    assert mlp_widths(again) == plan2.widths_after and again.cfg.d_mlp == max(plan2.widths_after)


def test_cli_rejects_a_bad_ratio_before_loading(capsys, tmp_path):
    from tl_funcnet.cli import main

    assert main(["prune", "--model", str(tmp_path / "nope"), "--ratio", "1.5", "--out", str(tmp_path / "o")]) == 2
    assert "ratio" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    # a method option that does not exist is refused by argparse, before loading anything
    assert main(["prune", "--model", str(tmp_path / "nope"), "--ratio", "0.2", "--n-components", "8",
                 "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()
