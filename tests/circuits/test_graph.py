"""The edge graph: sizes (MIB's edge counts), names and numbers, who reads whom, networkx and JSON views."""

from __future__ import annotations

import json

import networkx as nx
import pytest
import torch
from tl_testing import check_save_rules, make_gpt2_style

from tl_funcnet.circuits import Graph
from tl_funcnet.errors import FormatError, FuncnetError


def closed_form(L: int, H: int, receivers_per_head: int, parallel: bool = False) -> int:
    """E = (R+1) [L + (H+1) L (L-1) / 2] + L H + 1 + L (H+1), minus L H when attention and MLP run in parallel."""
    R = receivers_per_head * H
    e = (R + 1) * (L + (H + 1) * L * (L - 1) // 2) + L * H + 1 + L * (H + 1)
    return e - L * H if parallel else e


@pytest.mark.parametrize("L,H,split,expected", [(12, 12, True, 32_491), (30, 9, True, 123_211),
                                                 (30, 9, False, 44_371)])
def test_edge_counts_of_real_model_shapes(L, H, split, expected):
    graph = Graph(L, H, split_qkv=split)
    assert graph.n_edges == len(graph) == expected == closed_form(L, H, 3 if split else 1)


def test_smollm2_shape_has_the_documented_sizes():
    graph = Graph(30, 9)
    assert graph.n_senders == 301 and graph.n_receivers == 841 and len(graph.nodes) == 302
    assert graph.edge_mask().shape == (301, 841)
    assert int(graph.edge_mask().sum()) == graph.n_edges


@pytest.mark.parametrize("L,H", [(1, 1), (2, 4), (3, 2), (5, 3)])
@pytest.mark.parametrize("split", [True, False])
@pytest.mark.parametrize("parallel", [False, True])
def test_edge_counts_follow_the_closed_form(L, H, split, parallel):
    assert Graph(L, H, split_qkv=split, parallel_attn_mlp=parallel).n_edges == \
        closed_form(L, H, 3 if split else 1, parallel)


def test_from_model(gpt2_tiny, llama_tiny):
    for model in (gpt2_tiny, llama_tiny):  # GQA is ungrouped: every query head has its own k and v receiver
        graph = Graph.from_model(model)
        assert (graph.n_layers, graph.n_heads, graph.has_mlp, graph.split_qkv) == (2, 4, True, True)
        assert graph.n_edges == closed_form(2, 4, 3) == 110
    assert Graph.from_model(gpt2_tiny, split_qkv=False).n_edges == closed_form(2, 4, 1)
    attn_only = Graph.from_model(make_gpt2_style(attn_only=True))
    assert not attn_only.has_mlp and "m0" not in attn_only.senders and "m1" not in attn_only.receivers
    parallel = Graph.from_model(make_gpt2_style(parallel_attn_mlp=True))
    assert parallel.parallel_attn_mlp and parallel.n_edges == closed_form(2, 4, 3, parallel=True)


def test_from_model_refuses_what_it_cannot_describe(gpt2_tiny):
    with pytest.raises(FuncnetError, match="HookedTransformer"):
        Graph.from_model(object())
    with pytest.raises(FuncnetError, match="split_qkv"):
        Graph.from_model(gpt2_tiny, split_qkv="yes")
    with pytest.raises(FuncnetError, match="at least one layer"):
        Graph(0, 4)


def test_upstream_sets():
    graph = Graph(3, 2)
    for v, name in enumerate(graph.receivers):
        senders = {graph.senders[int(u)] for u in graph.edges[graph.edges_into(v), 0]}
        layer = graph.receiver_layer(v)
        expected = {"input"} | {f"a{l}.h{h}" for l in range(layer) for h in range(2)} | \
            {f"m{l}" for l in range(layer)}
        if name.startswith("m"):
            expected |= {f"a{layer}.h{h}" for h in range(2)}  # an MLP reads its own layer's heads
        if name == "logits":
            expected = set(graph.senders)
        assert senders == expected, name
    parallel = Graph(3, 2, parallel_attn_mlp=True)
    assert {parallel.senders[int(u)] for u in parallel.edges[parallel.edges_into(parallel.receiver_index("m1")), 0]} \
        == {"input", "a0.h0", "a0.h1", "m0"}


def test_edges_are_numbered_receiver_by_receiver():
    graph = Graph(3, 2)
    receivers = graph.edges[:, 1]
    assert bool((receivers[1:] >= receivers[:-1]).all())
    for v in range(graph.n_receivers):
        idx = graph.edges_into(v)
        assert idx.tolist() == list(range(int(idx[0]), int(idx[-1]) + 1))


@pytest.mark.parametrize("split", [True, False])
def test_names_and_numbers_round_trip(split):
    graph = Graph(3, 2, split_qkv=split)
    names = graph.edge_names()
    assert len(names) == len(set(names)) == graph.n_edges
    for i, (name, (_, u, v)) in enumerate(zip(names, graph.iter_edges())):
        assert graph.edge_name(i) == name
        assert graph.edge_index(name) == i
        s, r = name.split("->")
        assert graph.edge_index((s, r)) == i
        assert graph.sender_index(s) == u and graph.receiver_index(r) == v
    assert graph.edge_indices(names[:5]) == list(range(5))
    assert graph.node_of_receiver(graph.receiver_index("a1.h0<k>" if split else "a1.h0")) == "a1.h0"
    assert graph.nodes == (*graph.senders, "logits")


def test_sites_of_senders_and_receivers():
    graph = Graph(2, 3)
    assert graph.sender_site(graph.sender_index("input")) == ("hook_embed", None)
    assert graph.sender_site(graph.sender_index("a1.h2")) == ("blocks.1.attn.hook_result", 2)
    assert graph.sender_site(graph.sender_index("m0")) == ("blocks.0.hook_mlp_out", None)
    assert graph.receiver_sites_of(graph.receiver_index("a1.h2<k>")) == [("blocks.1.hook_k_input", 2)]
    assert graph.receiver_sites_of(graph.receiver_index("m1")) == [("blocks.1.hook_mlp_in", None)]
    assert graph.receiver_sites_of(graph.receiver_index("logits")) == [("blocks.1.hook_resid_post", None)]
    unsplit = Graph(2, 3, split_qkv=False)
    assert unsplit.receiver_sites_of(unsplit.receiver_index("a0.h1")) == [
        ("blocks.0.hook_q_input", 1), ("blocks.0.hook_k_input", 1), ("blocks.0.hook_v_input", 1)]
    assert graph.sender_sites()[0] == "hook_embed" and len(graph.sender_sites()) == 1 + 2 * 2
    assert [v for v, _ in graph.receivers_at("blocks.0.hook_q_input")] == \
        [graph.receiver_index(f"a0.h{h}<q>") for h in range(3)]


@pytest.mark.parametrize("edge", ["m1->a0.h0<q>", "a1.h0->a0.h1<v>", "a0.h0->a0.h1<q>", "m0->a0.h0<k>", "m0->m0",
                                  "a1.h0->m0", ("m1", "m0")])
def test_a_receiver_upstream_of_its_sender_is_not_an_edge(edge):
    with pytest.raises(FuncnetError, match="not downstream"):
        Graph(2, 2).edge_index(edge)


@pytest.mark.parametrize("edge", ["a0.h9->m1", "a5.h0->logits", "input->m7", "input->a0.h0", "input->a0.h0<x>",
                                  "input", "x->y", "logits->m1", "input->input"])
def test_nonexistent_edges_are_refused(edge):
    with pytest.raises(FuncnetError):
        Graph(2, 2).edge_index(edge)
    with pytest.raises(FuncnetError):
        Graph(2, 2, split_qkv=False).edge_index("input->a0.h0<q>")


def test_to_networkx():
    graph = Graph(2, 2)
    g = graph.to_networkx()
    assert isinstance(g, nx.MultiDiGraph)
    assert set(g.nodes) == set(graph.nodes) and g.number_of_edges() == graph.n_edges
    assert g.nodes["a1.h0"]["layer"] == 1 and g.nodes["m0"]["kind"] == "mlp" and g.nodes["logits"]["layer"] == 2
    arcs = g.get_edge_data("input", "a1.h0")  # three arcs, one per q/k/v receiver
    assert set(arcs) == {"a1.h0<q>", "a1.h0<k>", "a1.h0<v>"}
    assert arcs["a1.h0<k>"]["input"] == "k" and arcs["a1.h0<k>"]["index"] == graph.edge_index("input->a1.h0<k>")
    assert g.get_edge_data("m0", "logits")["logits"]["input"] == ""
    assert nx.is_directed_acyclic_graph(g)
    scores = torch.arange(graph.n_edges, dtype=torch.float64)
    some = graph.to_networkx([3, 7], scores)
    assert some.number_of_edges() == 2 and some.number_of_nodes() == len(graph.nodes)
    assert sorted(d["score"] for *_, d in some.edges(data=True)) == [3.0, 7.0]


@pytest.mark.parametrize("graph", [Graph(2, 4), Graph(3, 2, split_qkv=False), Graph(2, 3, has_mlp=False),
                                   Graph(2, 2, parallel_attn_mlp=True)])
def test_json_round_trip(tmp_path, graph):
    path = graph.save(tmp_path / "graph.json")
    data = json.loads(path.read_text())
    assert data["format"] == "tl_funcnet.graph" and data["n_edges"] == graph.n_edges
    back = Graph.load(path)
    assert back.to_dict() == graph.to_dict() and back.edge_names() == graph.edge_names()
    assert torch.equal(back.edges, graph.edges)
    assert Graph.from_dict(graph.to_dict()).to_dict() == graph.to_dict()


def test_saving_follows_the_rules(tmp_path):
    check_save_rules(lambda p, o: Graph(2, 4).save(p, overwrite=o), lambda p, o: Graph(3, 4).save(p, overwrite=o),
                     tmp_path, folder=False)


def test_foreign_files_are_refused(tmp_path):
    good = Graph(2, 4).to_dict()
    cases = {"other_format.json": {**good, "format": "tl_funcnet.circuit"},
             "other_version.json": {**good, "version": 9},
             "wrong_count.json": {**good, "n_edges": 5},
             "missing_key.json": {k: v for k, v in good.items() if k != "n_heads"},
             "bad_type.json": {**good, "n_layers": "2"},
             "bool_layers.json": {**good, "n_layers": True},
             "list.json": [1, 2]}
    for name, data in cases.items():
        (tmp_path / name).write_text(json.dumps(data))
        with pytest.raises(FormatError):
            Graph.load(tmp_path / name)
    (tmp_path / "not_json.json").write_text("{graph")
    with pytest.raises(FormatError, match="not valid JSON"):
        Graph.load(tmp_path / "not_json.json")
    with pytest.raises(FormatError, match="missing"):
        Graph.load(tmp_path / "absent.json")


def test_check_model(gpt2_tiny, llama_tiny):
    Graph.from_model(gpt2_tiny).check_model(llama_tiny)  # same shape of graph
    Graph.from_model(gpt2_tiny, split_qkv=False).check_model(gpt2_tiny)
    for other in (Graph(3, 4), Graph(2, 2), Graph(2, 4, has_mlp=False), Graph(2, 4, parallel_attn_mlp=True)):
        with pytest.raises(FuncnetError, match="Graph.from_model"):
            other.check_model(gpt2_tiny)
