"""Unit groups (functional networks, any named MLP neuron sets) as graph senders: the MLP splits into its groups'
shares and the rest, every edge method and circuit run sees them, and they read back in network terms."""

from __future__ import annotations

import pytest
import torch
from tl_testing import count_hooks, make_gpt2_style, edge_flags as flags

from tl_funcnet.circuits import (Circuit, Graph, ablated_values, circuit_metrics, circuits_intervention, edge_hooks,
                                 edge_scores, exact_edge_scores, network_groups, sender_outputs)
from tl_funcnet.errors import FormatError, FuncnetError
from tl_funcnet.patching import logit_diff

METRIC = logit_diff([1, 2, 3], [4, 5, 6])
GROUPS = {"FN0": {0: [1, 5, 9], 1: [0, 31]}, "syntax": {1: [2, 3, 4, 7]}}


@pytest.fixture
def pair():
    g = torch.Generator().manual_seed(21)
    clean = torch.randint(0, 50, (3, 6), generator=g)
    corr = clean.clone()
    corr[:, 1] = (clean[:, 1] + 11) % 50
    corr[:, 4] = (clean[:, 4] + 5) % 50
    return clean, corr


def assert_reloads_the_same(model, iv, tokens, tmp_path):
    """The intervention saved and loaded back gives the same logits."""
    from tl_funcnet.hooks import Intervention

    back = Intervention.load(iv.save(tmp_path / "iv"))
    with torch.no_grad():
        with iv.applied(model):
            a = model(tokens)
        with back.applied(model):
            b = model(tokens)
    torch.testing.assert_close(a, b)


def all_but_one(model, graph, edges, clean, ablated):
    """For each edge, the metric of the circuit of every other edge minus that of the full circuit."""
    circuits = [Circuit(graph, torch.ones(graph.n_edges, dtype=torch.bool))]
    for i in edges:
        keep = torch.ones(graph.n_edges, dtype=torch.bool)
        keep[i] = False
        circuits.append(Circuit(graph, keep))
    base, *others = circuit_metrics(model, circuits, clean, METRIC, ablated)
    return torch.tensor(others, dtype=torch.float64) - base


def test_groups_split_the_mlp_senders(tiny_model):
    plain, graph = Graph.from_model(tiny_model), Graph.from_model(tiny_model, groups=GROUPS)
    assert graph.senders[: graph.sender_index("m0") + 1][-2:] == ("FN0.m0", "m0")
    assert graph.senders[-3:] == ("FN0.m1", "syntax.m1", "m1")
    assert [s for s in graph.senders if "." in s and not s.startswith("a")] == ["FN0.m0", "FN0.m1", "syntax.m1"]
    assert graph.n_senders == plain.n_senders + 3 and graph.receivers == plain.receivers
    # each group part is a sender to every receiver its MLP reaches, no more
    for name in ("FN0.m1", "syntax.m1"):
        assert {graph.receivers[int(v)] for u, v in graph.edges.tolist() if graph.senders[u] == name} == {"logits"}
    assert graph.group_of(graph.sender_index("syntax.m1")) == ("syntax", 1, (2, 3, 4, 7))
    assert graph.group_of(graph.sender_index("m1")) is None and graph.group_names == ("FN0", "syntax")
    assert graph.sender_site(graph.sender_index("FN0.m0")) == ("blocks.0.mlp.hook_post", None)
    assert graph.edge_index("FN0.m0->a1.h2<k>") >= 0
    with pytest.raises(FuncnetError, match="not an edge"):
        graph.edge_index("FN0.m1->m1")
    g = graph.to_networkx()
    assert g.nodes["FN0.m1"]["kind"] == "group" and g.nodes["FN0.m1"]["group"] == "FN0" and \
        g.nodes["FN0.m1"]["layer"] == 1


def test_pruning_reads_a_group_from_its_mlps_input(gpt2_tiny):
    graph = Graph.from_model(gpt2_tiny, groups=GROUPS)
    path = ["input->m0", "FN0.m0->a1.h1<q>", "a1.h1->m1", "syntax.m1->logits"]
    circuit = Circuit.from_edges(graph, path + ["a0.h2->a1.h3<k>", "FN0.m0->a1.h0<q>"])
    assert circuit.edge_names() == sorted(path, key=graph.edge_index)  # the dangling two are pruned
    # greedy growth from the logits reaches through a group into its MLP's inputs
    scores = torch.zeros(graph.n_edges)
    scores[graph.edge_indices(path)] = 1.0
    assert set(Circuit.greedy(graph, scores, 4).edge_names()) == set(path)


def test_groups_save_and_load(tmp_path, tiny_model):
    graph = Graph.from_model(tiny_model, groups=GROUPS)
    back = Graph.load(graph.save(tmp_path / "g.json"))
    assert back.to_dict() == graph.to_dict() and back.senders == graph.senders
    circuit = Circuit.top_n(graph, torch.randn(graph.n_edges, generator=torch.Generator().manual_seed(0)), 30)
    assert torch.equal(Circuit.load(circuit.save(tmp_path / "c")).edges, circuit.edges)
    # a plain graph file (no groups key) still loads, and a broken groups entry is a FormatError
    assert Graph.from_dict(Graph(2, 4).to_dict()).groups == ()
    bad = {**graph.to_dict(), "groups": [["FN0", 0, [1, 1]]]}
    with pytest.raises(FormatError, match="twice"):
        Graph.from_dict(bad)


@pytest.mark.parametrize("groups,match", [
    ({"FN0": {0: [1]}, "FN1": {0: [1, 2]}}, "both"),
    ({"m3": {0: [1]}}, "names"),
    ({"a.b": {0: [1]}}, "names"),
    ({"FN0": {5: [1]}}, "layer"),
    ({"FN0": {0: [32]}}, "neuron 32"),
    ({"FN0": {0: []}}, "no neurons"),
    ({"FN0": {0: [-1]}}, "FN0"),
    ({"FN0": [1, 2]}, "map layers"),
    ([1, 2], "groups should be"),
])
def test_bad_groups_are_refused(gpt2_tiny, groups, match):
    with pytest.raises(FuncnetError, match=match):
        Graph.from_model(gpt2_tiny, groups=groups)


def test_an_attention_only_model_has_no_groups():
    with pytest.raises(FuncnetError, match="no MLPs"):
        Graph.from_model(make_gpt2_style(seed=1, attn_only=True), groups={"FN0": {0: [1]}})


def test_group_outputs_sum_with_the_rest_to_the_mlp(tiny_model, pair):
    plain, graph = Graph.from_model(tiny_model), Graph.from_model(tiny_model, groups=GROUPS)
    z0, z = sender_outputs(tiny_model, plain, pair[0]), sender_outputs(tiny_model, graph, pair[0])
    with edge_hooks(tiny_model), torch.no_grad():
        _, cache = tiny_model.run_with_cache(pair[0])
    for layer in (0, 1):
        parts = [u for u in range(graph.n_senders) if graph.sender_layer(u) == layer and
                 (graph.group_of(u) or graph.senders[u] == f"m{layer}")]
        torch.testing.assert_close(z[:, :, parts].sum(2), z0[:, :, plain.sender_index(f"m{layer}")], atol=1e-5, rtol=0)
    u = graph.sender_index("syntax.m1")
    want = cache["blocks.1.mlp.hook_post"][..., [2, 3, 4, 7]] @ tiny_model.blocks[1].mlp.W_out[[2, 3, 4, 7]]
    torch.testing.assert_close(z[:, :, u], want)
    # every other sender is unchanged
    same = [plain.sender_index(s) for s in plain.senders if not s.startswith("m")]
    torch.testing.assert_close(z[:, :, [graph.sender_index(plain.senders[i]) for i in same]], z0[:, :, same])


@pytest.mark.parametrize("method", ["eap", "eap-ig-inputs", "clean-corrupted", "relp"])
def test_attribution_splits_an_mlp_edge_into_its_groups_and_rest(tiny_model, pair, method):
    """Attribution is linear in the sender's change, so group edges plus the rest's edge give the MLP's edge."""
    clean, corr = pair
    plain, graph = Graph.from_model(tiny_model), Graph.from_model(tiny_model, groups=GROUPS)
    s0 = edge_scores(tiny_model, plain, clean, corr, METRIC, method=method, steps=2)
    s = edge_scores(tiny_model, graph, clean, corr, METRIC, method=method, steps=2)
    for recv in ("a1.h0<q>", "a1.h3<v>", "m1", "logits"):
        want = float(s0.scores[plain.edge_index(f"m0->{recv}")])
        got = sum(float(s.scores[graph.edge_index(f"{u}->{recv}")]) for u in ("FN0.m0", "m0"))
        assert got == pytest.approx(want, abs=1e-5)
    want = float(s0.scores[plain.edge_index("m1->logits")])
    got = sum(float(s.scores[graph.edge_index(f"{u}->logits")]) for u in ("FN0.m1", "syntax.m1", "m1"))
    assert got == pytest.approx(want, abs=1e-5)
    assert float(s.scores[graph.edge_index("syntax.m1->logits")]) != 0.0
    # edges that do not touch the split MLPs are unchanged
    for e in ("input->a0.h1<k>", "a0.h2->m1", "a1.h1->logits"):
        assert float(s.scores[graph.edge_index(e)]) == pytest.approx(float(s0.scores[plain.edge_index(e)]), abs=1e-6)


def test_ig_activations_interpolates_whole_mlps(tiny_model, pair):
    clean, corr = pair
    plain, graph = Graph.from_model(tiny_model), Graph.from_model(tiny_model, groups=GROUPS)
    s0 = edge_scores(tiny_model, plain, clean, corr, METRIC, method="eap-ig-activations", steps=2)
    s = edge_scores(tiny_model, graph, clean, corr, METRIC, method="eap-ig-activations", steps=2)
    assert s.info["forwards"] == s0.info["forwards"]
    got = sum(float(s.scores[graph.edge_index(f"{u}->logits")]) for u in ("FN0.m1", "syntax.m1", "m1"))
    assert got == pytest.approx(float(s0.scores[plain.edge_index("m1->logits")]), abs=1e-5)


@pytest.mark.parametrize("ablation", ["patching", "mean", "zero"])
def test_circuits_with_groups_run_as_interventions(tiny_model, pair, ablation):
    clean, corr = pair
    graph = Graph.from_model(tiny_model, groups=GROUPS)
    ablated = ablated_values(tiny_model, graph, ablation, corrupted=corr, texts=corr)
    full = Circuit(graph, torch.ones(graph.n_edges, dtype=torch.bool))
    empty = Circuit(graph, torch.zeros(graph.n_edges, dtype=torch.bool))
    before = flags(tiny_model)
    with torch.no_grad():
        iv = circuits_intervention([full, empty], ablated)
        with iv.applied(tiny_model):
            got = tiny_model(clean.repeat(2, 1))
        want = tiny_model(clean)
    torch.testing.assert_close(got[:3], want, atol=1e-4, rtol=0)
    if ablation == "patching":
        torch.testing.assert_close(got[3:], tiny_model(corr).detach(), atol=1e-4, rtol=0)
    assert count_hooks(tiny_model) == 0 and flags(tiny_model) == before
    # ablating a group's edge differs from ablating nothing, and equals the plain graph's circuit when the
    # group's edges and the rest's edge are ablated together
    plain = Graph.from_model(tiny_model)
    a0 = ablated_values(tiny_model, plain, ablation, corrupted=corr, texts=corr)
    keep0 = torch.ones(plain.n_edges, dtype=torch.bool)
    keep0[plain.edge_index("m0->a1.h2<q>")] = False
    keep = torch.ones(graph.n_edges, dtype=torch.bool)
    keep[graph.edge_indices(["m0->a1.h2<q>", "FN0.m0->a1.h2<q>"])] = False
    one = torch.ones(graph.n_edges, dtype=torch.bool)
    one[graph.edge_index("FN0.m0->a1.h2<q>")] = False
    m_plain, = circuit_metrics(tiny_model, [Circuit(plain, keep0)], clean, METRIC, a0)
    m_both, m_one = circuit_metrics(tiny_model, [Circuit(graph, keep), Circuit(graph, one)], clean, METRIC, ablated)
    assert m_both == pytest.approx(m_plain, abs=1e-4)
    assert m_one != pytest.approx(m_both, abs=1e-6) or ablation == "zero"


def test_saved_group_circuits_reload_and_run_the_same(tmp_path, gpt2_tiny, pair):
    clean, corr = pair
    graph = Graph.from_model(gpt2_tiny, groups=GROUPS)
    circuit = Circuit.top_n(graph, torch.randn(graph.n_edges, generator=torch.Generator().manual_seed(3)), 40)
    iv = circuit.to_intervention(ablated_values(gpt2_tiny, graph, "patching", corrupted=corr))
    assert_reloads_the_same(gpt2_tiny, iv, clean, tmp_path)


def test_exact_group_edges_are_all_but_one_circuits(tiny_model, pair):
    clean, corr = pair
    graph = Graph.from_model(tiny_model, groups=GROUPS)
    edges = graph.edge_indices(["FN0.m0->a1.h0<k>", "FN0.m0->m1", "syntax.m1->logits", "m1->logits", "FN0.m1->logits"])
    got = exact_edge_scores(tiny_model, graph, clean, corr, METRIC, edges=edges)
    ablated = ablated_values(tiny_model, graph, "patching", corrupted=corr)
    torch.testing.assert_close(got.scores[edges], all_but_one(tiny_model, graph, edges, clean, ablated), atol=2e-5,
                               rtol=0)


def test_ablated_values_of_a_plain_graph_cannot_run_a_group_circuit(gpt2_tiny, pair):
    graph = Graph.from_model(gpt2_tiny, groups=GROUPS)
    with pytest.raises(FuncnetError, match="another graph|this graph"):
        circuits_intervention([Circuit(graph, torch.ones(graph.n_edges, dtype=torch.bool))],
                              ablated_values(gpt2_tiny, Graph.from_model(gpt2_tiny), "zero"))


class _Networks:
    """A fitted-FunctionalNetworks stand-in: two networks over both layers' MLP neurons, sharing neuron 3."""
    sites_ = ["blocks.0.mlp.hook_post", "blocks.1.mlp.hook_post"]
    widths_ = [32, 32]

    def __init__(self):
        self.maps_ = torch.zeros(2, 64)
        self.maps_[0, [3, 5, 40]] = torch.tensor([4.0, 5.0, 4.0])
        self.maps_[1, [3, 6]] = torch.tensor([6.0, 4.0])
        self.masks_ = self.maps_ >= 3.6

    def network_ids(self, ids=None):
        return [0, 1] if ids is None else list(ids)


def test_network_groups_give_shared_neurons_to_the_strongest_network(gpt2_tiny):
    groups = network_groups(_Networks())
    assert groups == {"FN0": {0: [5], 1: [8]}, "FN1": {0: [3, 6]}}
    graph = Graph.from_model(gpt2_tiny, groups=_Networks())
    assert [s for s in graph.senders if s.startswith("FN")] == ["FN0.m0", "FN1.m0", "FN0.m1"]


def test_network_groups_need_mlp_neuron_sites():
    nets = _Networks()
    nets.sites_ = ["blocks.0.hook_resid_post", "blocks.1.mlp.hook_post"]
    with pytest.raises(FuncnetError, match="hook_post"):
        network_groups(nets)


# --------------------------------------------------------------------------- SAE features as senders

SAE_CASES = {"standard": {}, "jumprelu": {}, "topk": {"k": 6}, "topk-rescaled": {"k": 6,
                                                                                  "rescale_acts_by_decoder_norm": True}}


def _sae(model, layer=0, kind="standard", seed=0, **kw):
    from sae_testing import make_sae

    arch = kind.split("-")[0]
    return make_sae(arch, d_in=model.cfg.d_model, d_sae=40, hook_name=f"blocks.{layer}.hook_mlp_out", seed=seed,
                    **{**SAE_CASES.get(kind, {}), **kw})


@pytest.mark.parametrize("kind", list(SAE_CASES))
def test_sae_features_split_the_mlp_output(tiny_model, pair, kind):
    from tl_funcnet.circuits import feature_groups

    sae = _sae(tiny_model, 1, kind)
    groups = {**feature_groups({1: [3, 17]}), "rest_of_sae": {1: [i for i in range(40) if i not in (3, 17)]}}
    graph = Graph.from_model(tiny_model, groups=groups, saes={1: sae})
    assert [s for s in graph.senders if s.endswith(".m1")] == ["L1F3.m1", "L1F17.m1", "rest_of_sae.m1"]
    assert graph.sender_site(graph.sender_index("L1F3.m1")) == ("blocks.1.hook_mlp_out", None)
    assert graph.to_dict()["saes"] == {"1": {"architecture": kind.split("-")[0], "d_sae": 40,
                                             "hook_name": "blocks.1.hook_mlp_out"}}
    z = sender_outputs(tiny_model, graph, pair[0])
    with edge_hooks(tiny_model), torch.no_grad():
        _, cache = tiny_model.run_with_cache(pair[0])
        x = cache["blocks.1.hook_mlp_out"]
        f = sae.encode(x)
        recon = sae.decode(f)
    names = ["L1F3.m1", "L1F17.m1", "rest_of_sae.m1"]
    idx = [graph.sender_index(n) for n in names]
    # all features together are the reconstruction without its bias; the MLP's rest is the bias plus the error
    torch.testing.assert_close(z[:, :, idx].sum(2), recon - sae.b_dec, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(z[:, :, graph.sender_index("m1")], x - recon + sae.b_dec, atol=1e-5, rtol=1e-5)
    if kind != "topk-rescaled":
        torch.testing.assert_close(z[:, :, idx[0]], f[..., 3:4] * sae.W_dec[3], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("ablation", ["patching", "mean"])
def test_sae_feature_circuits_run_and_match_exact_patching(gpt2_tiny, pair, ablation, tmp_path):
    from tl_funcnet.circuits import feature_groups

    clean, corr = pair
    # SAE features in layer 1, a neuron group in layer 0
    groups = {**feature_groups({1: [0, 9]}), "FN0": {0: [7, 8, 11]}}
    graph = Graph.from_model(gpt2_tiny, groups=groups, saes={1: _sae(gpt2_tiny, 1, "topk", seed=2)})
    ablated = ablated_values(gpt2_tiny, graph, ablation, corrupted=corr, texts=corr)
    full = Circuit(graph, torch.ones(graph.n_edges, dtype=torch.bool))
    empty = Circuit(graph, torch.zeros(graph.n_edges, dtype=torch.bool))
    with torch.no_grad():
        with circuits_intervention([full, empty], ablated).applied(gpt2_tiny):
            got = gpt2_tiny(clean.repeat(2, 1))
        torch.testing.assert_close(got[:3], gpt2_tiny(clean), atol=1e-4, rtol=0)
        if ablation == "patching":
            torch.testing.assert_close(got[3:], gpt2_tiny(corr), atol=1e-4, rtol=0)
    edges = graph.edge_indices(["FN0.m0->a1.h2<q>", "FN0.m0->m1", "m0->logits", "L1F9.m1->logits", "m1->logits"])
    exact = exact_edge_scores(gpt2_tiny, graph, clean, corr, METRIC, edges=edges,
                              ablated=None if ablation == "patching" else ablated)
    torch.testing.assert_close(exact.scores[edges], all_but_one(gpt2_tiny, graph, edges, clean, ablated), atol=2e-5,
                               rtol=0)
    # attribution: features plus the rest give the plain MLP edge
    plain = Graph.from_model(gpt2_tiny)
    s0 = edge_scores(gpt2_tiny, plain, clean, corr, METRIC, method="eap")
    s = edge_scores(gpt2_tiny, graph, clean, corr, METRIC, method="eap")
    got = sum(float(s.scores[graph.edge_index(f"{u}->logits")]) for u in ("L1F0.m1", "L1F9.m1", "m1"))
    assert got == pytest.approx(float(s0.scores[plain.edge_index("m1->logits")]), abs=1e-5)
    # the intervention saves with its SAEs and runs the same after loading
    assert_reloads_the_same(gpt2_tiny, Circuit.top_n(graph, s.scores, 30).to_intervention(ablated), clean, tmp_path)


def test_a_loaded_sae_graph_asks_for_its_saes(gpt2_tiny, pair, tmp_path):
    from tl_funcnet.circuits import feature_groups

    sae = _sae(gpt2_tiny, 1)
    graph = Graph.from_model(gpt2_tiny, groups=feature_groups({1: [4, 6]}), saes={1: sae})
    circuit = Circuit.top_n(graph, torch.randn(graph.n_edges, generator=torch.Generator().manual_seed(1)), 25)
    circuit.save(tmp_path / "c")
    loaded = Circuit.load(tmp_path / "c")
    assert loaded.edge_names() == circuit.edge_names()
    with pytest.raises(FuncnetError, match="does not hold their weights"):
        ablated_values(gpt2_tiny, loaded.graph, "zero")
    again = Circuit.load(tmp_path / "c", graph=Graph.from_model(gpt2_tiny, groups=feature_groups({1: [4, 6]}),
                                                                 saes={1: sae}))
    ablated = ablated_values(gpt2_tiny, again.graph, "patching", corrupted=pair[1])
    assert circuit_metrics(gpt2_tiny, [again], pair[0], METRIC, ablated)
    with pytest.raises(FuncnetError, match="another graph"):
        Circuit.load(tmp_path / "c", graph=Graph.from_model(gpt2_tiny))


@pytest.mark.parametrize("make,match", [
    (lambda m: dict(groups={"L1F3": {1: [3]}}, saes={1: _sae(m, 0)}), "blocks.1.hook_mlp_out"),
    (lambda m: dict(groups={"L1F3": {1: [40]}}, saes={1: _sae(m, 1)}), "feature 40"),
    (lambda m: dict(groups={"L0F3": {0: [3]}}, saes={0: _sae(m, 0), 1: _sae(m, 1)}), "no group names features"),
    (lambda m: dict(groups={"L0F3": {0: [3]}}, saes={0: _sae(m, 0, normalize_activations="layer_norm")}),
     "normalizes"),
    (lambda m: dict(groups={"L0F3": {0: [3]}}, saes={5: _sae(m, 0)}), "blocks.5|layer 5"),
    (lambda m: dict(groups={"L0F3": {0: [3]}}, saes=[_sae(m, 0)]), "saes should map"),
    (lambda m: dict(groups={"L0F3": {0: [3]}}, saes={0: "sae"}), "sae-lens SAE"),
])
def test_bad_saes_are_refused(gpt2_tiny, make, match):
    with pytest.raises(FuncnetError, match=match):
        Graph.from_model(gpt2_tiny, **make(gpt2_tiny))


def test_an_sae_of_another_width_is_refused(gpt2_tiny):
    from sae_testing import make_sae

    with pytest.raises(FuncnetError, match="d_model"):
        Graph.from_model(gpt2_tiny, groups={"L0F3": {0: [3]}}, saes={0: make_sae(d_in=8)})
