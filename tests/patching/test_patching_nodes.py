"""Composite patching nodes: functional networks (units in several layers at once) and SAE features."""

from __future__ import annotations

import pytest
import torch

from sae_testing import make_sae
from tl_testing import count_hooks, guard
from tl_funcnet.errors import ShapeError, UnknownSiteError
from tl_funcnet.hooks import Intervention, patch
from tl_funcnet.patching import (attribution_patch, exact_patch, logit_diff, network_nodes, sae_feature_nodes,
                                 units_nodes)

N_POS = 7
METRIC = logit_diff([1, 2, 3], [4, 5, 6])


@pytest.fixture
def pair():
    g = torch.Generator().manual_seed(5)
    clean = torch.randint(0, 50, (3, N_POS), generator=g)
    corr = clean.clone()
    corr[:, 3] = (clean[:, 3] + 9) % 50
    return clean, corr


@pytest.fixture(scope="module")
def networks(llama_tiny):
    from tl_funcnet.activations import collect
    from tl_funcnet.funcnet import FunctionalNetworks

    g = torch.Generator().manual_seed(0)
    texts = [torch.randint(0, 50, (12,), generator=g) for _ in range(40)]
    acts = collect(llama_tiny, texts, "mlp.hook_post", progress=False)
    return FunctionalNetworks(4, threshold=2.0, sides="two").fit(acts)


def test_network_nodes_patch_every_layer_of_a_network_at_once(llama_tiny, pair, networks):
    clean, corr = pair
    ns = network_nodes(networks)
    assert any(n.also for n in ns.nodes), "expected at least one network spanning both layers"
    res = exact_patch(llama_tiny, clean, corr, ns, METRIC)
    _, cache = llama_tiny.run_with_cache(clean)
    for i, parts in enumerate(networks.networks()):
        iv = Intervention()
        for site, units in parts.items():
            iv = iv + patch(site, cache[site], units=units)
        with iv.applied(llama_tiny), torch.no_grad():
            want = METRIC(llama_tiny(corr)).mean()
        assert res.patched[i].item() == pytest.approx(want.item(), abs=1e-5)
        assert res.effects[i].item() == pytest.approx(want.item() - res.baseline, abs=1e-5)
    assert count_hooks(llama_tiny) == 0


def test_network_attribution_is_the_sum_over_its_parts(llama_tiny, pair, networks):
    clean, corr = pair
    ns = network_nodes(networks)
    whole = attribution_patch(llama_tiny, clean, corr, ns, METRIC)
    for i, parts in enumerate(networks.networks()):
        per_part = attribution_patch(llama_tiny, clean, corr, _parts_as_nodes(parts), METRIC)
        assert whole.effects[i].item() == pytest.approx(per_part.effects.sum().item(), abs=1e-5)
        assert per_part.baseline == pytest.approx(whole.baseline)


def _parts_as_nodes(parts):
    from tl_funcnet.patching import concat

    return concat(*[units_nodes(site, [units]) for site, units in parts.items()])


@pytest.fixture
def sae_model():
    from tl_testing import make_sae_transformer

    return guard(make_sae_transformer())


def test_sae_feature_nodes_equal_patching_the_feature_activation(sae_model, pair):
    clean, corr = pair
    site = "blocks.1.hook_resid_post"
    sae = make_sae("standard", hook_name=site)
    sae.use_error_term = True
    sae_model.add_sae(sae)
    try:
        feats = list(range(0, 48, 6))
        ns = sae_feature_nodes(site, feats, pos=N_POS - 1)
        res = exact_patch(sae_model, clean, corr, ns, METRIC)
        fsite = f"{site}.hook_sae_acts_post"
        _, cache = sae_model.run_with_cache(clean, names_filter=[fsite])
        for i, f in enumerate(feats):
            with patch(fsite, cache[fsite], units=[f], pos=N_POS - 1).applied(sae_model), torch.no_grad():
                want = METRIC(sae_model(corr)).mean()
            assert res.patched[i].item() == pytest.approx(want.item(), abs=1e-5)
        atp = attribution_patch(sae_model, clean, corr, ns, METRIC)
        assert torch.isfinite(atp.effects).all() and atp.baseline == pytest.approx(res.baseline, abs=1e-5)
        with pytest.raises(ShapeError, match="out of range"):
            exact_patch(sae_model, clean, corr, sae_feature_nodes(site, [48]), METRIC)
    finally:
        sae_model.reset_saes()
    with pytest.raises(UnknownSiteError, match="add_sae"):  # no SAE attached any more
        exact_patch(sae_model, clean, corr, sae_feature_nodes(site, [0]), METRIC)
    assert count_hooks(sae_model) == 0


# ------------------------------------------------------------------ hard-pruned models (layers of different widths)


@pytest.fixture(scope="module")
def pruned_tiny():
    from tl_funcnet.models import mlp_widths
    from tl_funcnet.pruning import prune
    from tl_testing import make_gpt2_style

    small, plan = prune(make_gpt2_style(0).eval(), 0.3, "magnitude", None, bias_compensation=False,
                        protect_first=0, protect_last=0, allocation="global")
    widths = plan.widths_after
    assert len(set(widths)) == 2 and mlp_widths(small) == widths, widths
    return guard(small), widths


def test_neuron_grid_of_a_pruned_model_has_only_existing_neurons(pruned_tiny):
    from tl_funcnet.patching import node_grid

    model, widths = pruned_tiny
    flat = node_grid(model, "neuron", N_POS, by_pos=False)
    assert flat.shape == (2, max(widths)) and len(flat) == sum(widths)
    assert flat.meta["neurons"] == list(range(max(widths)))
    for nd in flat.nodes:
        layer = int(nd.site.split(".")[1])
        assert nd.units[0] < widths[layer] and nd.coords == (layer, nd.units[0])
    by_pos = node_grid(model, "neuron", N_POS)
    assert by_pos.shape == (2, N_POS, max(widths)) and len(by_pos) == sum(widths) * N_POS
    # explicit neurons must exist in every chosen layer
    with pytest.raises(ShapeError, match="does not exist"):
        node_grid(model, "neuron", N_POS, neurons=[max(widths) - 1])
    narrow = widths.index(min(widths))
    ok = node_grid(model, "neuron", N_POS, layers=[1 - narrow], neurons=[max(widths) - 1], by_pos=False)
    assert len(ok) == 1


@pytest.mark.parametrize("method", ["exact", "atp", "relp"])
def test_pruned_model_grid_is_nan_exactly_in_missing_cells(pruned_tiny, pair, method):
    import matplotlib

    from tl_funcnet.patching import node_grid

    model, widths = pruned_tiny
    clean, corr = pair
    ns = node_grid(model, "neuron", N_POS, by_pos=False)
    res = (exact_patch(model, clean, corr, ns, METRIC) if method == "exact"
           else attribution_patch(model, clean, corr, ns, METRIC, method=method))
    grid = res.grid()
    missing = torch.zeros(2, max(widths), dtype=torch.bool)
    for layer, w in enumerate(widths):
        missing[layer, w:] = True
    assert missing.any() and torch.equal(grid.isnan(), missing)
    assert res.effects.shape == (sum(widths),) and torch.isfinite(res.effects).all()
    d = res.to_dict()
    narrow = widths.index(min(widths))
    assert d["effects"][narrow][min(widths):] == [None] * (max(widths) - min(widths))
    assert res.to_frame()["effect"].notna().all() and len(res.to_frame()) == sum(widths)
    backend = matplotlib.get_backend()
    res.plot()
    assert matplotlib.get_backend() == backend
    if method == "exact":  # each cell is the effect of patching that neuron of the pruned model
        site = f"blocks.{narrow}.mlp.hook_post"
        _, cache = model.run_with_cache(clean, names_filter=site)
        j = min(widths) - 1
        with patch(site, cache[site], units=[j]).applied(model), torch.no_grad():
            want = METRIC(model(corr)).mean().item()
        assert grid[narrow, j].item() == pytest.approx(want - res.baseline, abs=1e-5)
