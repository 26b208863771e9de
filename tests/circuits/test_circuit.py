"""Circuits as sets of edges: top-n, greedy growth, pruning to input->logits paths, set operations, files."""

from __future__ import annotations

import json

import networkx as nx
import pytest
import torch
from tl_testing import check_save_rules

from tl_funcnet.circuits import Circuit, EdgeScores, Graph
from tl_funcnet.errors import FormatError, FuncnetError

GRAPH = Graph(3, 3)


def scores(seed: int, graph: Graph = GRAPH) -> torch.Tensor:
    return torch.randn(graph.n_edges, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def random_mask(seed: int, p: float, graph: Graph = GRAPH) -> torch.Tensor:
    return torch.rand(graph.n_edges, generator=torch.Generator().manual_seed(seed)) < p


def on_paths(graph: Graph, mask: torch.Tensor) -> torch.Tensor:
    """Reference pruning with networkx: the edges on some input -> logits path of the circuit."""
    g = graph.to_networkx(mask.nonzero().flatten())
    reach = nx.descendants(g, "input") | {"input"}
    live = nx.ancestors(g, "logits") | {"logits"}
    keep = torch.zeros_like(mask)
    for i in mask.nonzero().flatten().tolist():
        u, v = graph.senders[int(graph.edges[i, 0])], graph.node_of_receiver(int(graph.edges[i, 1]))
        keep[i] = u in reach and v in live
    return keep


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("p", [0.03, 0.1, 0.3, 0.8])
def test_pruning_keeps_exactly_the_edges_on_input_logits_paths(seed, p):
    circuit = Circuit(GRAPH, random_mask(seed, p))
    pruned = circuit.pruned()
    assert torch.equal(pruned.edges, on_paths(GRAPH, circuit.edges))
    assert torch.equal(pruned.pruned().edges, pruned.edges)  # idempotent
    assert not bool((pruned.edges & ~circuit.edges).any())  # only removes


def test_pruning_counts_a_heads_q_k_v_inputs_together():
    # input -> a0.h0<q> makes a0.h0 reachable even though its k and v inputs are not in the circuit
    circuit = Circuit.from_edges(GRAPH, ["input->a0.h0<q>", "a0.h0->m1", "m1->logits"])
    assert circuit.n_edges == 3
    assert Circuit.from_edges(GRAPH, ["input->a0.h0<q>", "a0.h0->m1", "m1->logits", "a2.h1->logits"]).n_edges == 3


@pytest.mark.parametrize("n", [0, 1, 5, 40, 150, GRAPH.n_edges])
@pytest.mark.parametrize("absolute", [True, False])
def test_top_n(n, absolute):
    s = scores(n)
    circuit = Circuit.top_n(GRAPH, s, n, absolute=absolute)
    assert circuit.n_edges <= n
    key = s.abs() if absolute else s
    raw = torch.zeros(GRAPH.n_edges, dtype=torch.bool)
    raw[torch.argsort(key, descending=True)[:n]] = True
    assert torch.equal(circuit.edges, Circuit(GRAPH, raw).pruned().edges)
    if n == GRAPH.n_edges:
        assert circuit.n_edges == GRAPH.n_edges and circuit.fraction == 1.0  # every edge is on some path


def test_top_n_signed_prefers_positive_scores():
    s = torch.zeros(GRAPH.n_edges, dtype=torch.float64)
    good, bad = GRAPH.edge_index("input->logits"), GRAPH.edge_index("m0->logits")
    s[good], s[bad] = 1.0, -5.0
    assert Circuit.top_n(GRAPH, s, 1, absolute=False).edge_names() == ["input->logits"]
    assert Circuit.top_n(GRAPH, s, 1).n_edges == 0  # |-5| wins, and m0->logits alone has no input
    assert Circuit.top_n(GRAPH, EdgeScores(GRAPH, s, "hand"), 1, absolute=False).n_edges == 1


def connected_to_logits(circuit: Circuit) -> set[str]:
    g = circuit.to_networkx()
    return nx.ancestors(g, "logits") | {"logits"}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n", [1, 3, 10, 60, GRAPH.n_edges])
def test_greedy(seed, n):
    s = scores(100 + seed)
    circuit = Circuit.greedy(GRAPH, s, n)
    assert circuit.n_edges <= n
    connected = connected_to_logits(circuit)
    for i in circuit.edges.nonzero().flatten().tolist():
        assert GRAPH.node_of_receiver(int(GRAPH.edges[i, 1])) in connected
    assert torch.equal(circuit.pruned().edges, circuit.edges)


def test_greedy_grows_from_the_logits():
    s = torch.zeros(GRAPH.n_edges, dtype=torch.float64)
    for name, value in (("input->a1.h0<v>", 9.0), ("a0.h0->m1", 8.0), ("input->a0.h0<v>", 7.0), ("m1->logits", 1.0),
                        ("input->logits", 0.5)):
        s[GRAPH.edge_index(name)] = value
    path = ["input->a0.h0<v>", "a0.h0->m1", "m1->logits"]
    # the top 3 by score do not reach the logits; greedy takes m1->logits first, then the best edges into m1, a0.h0
    assert Circuit.top_n(GRAPH, s, 3).n_edges == 0
    assert Circuit.greedy(GRAPH, s, 2).n_edges == 0  # m1->logits and a0.h0->m1: no input yet, pruned away
    assert Circuit.greedy(GRAPH, s, 3).edge_names() == path
    assert sorted(Circuit.greedy(GRAPH, s, 4).edge_names()) == sorted(path + ["input->logits"])


def test_from_edges():
    names = ["input->a0.h1<v>", "a0.h1->m2", "m2->logits"]
    circuit = Circuit.from_edges(GRAPH, names)
    assert circuit.edge_names() == names and circuit.nodes() == ["input", "a0.h1", "m2", "logits"]
    numbered = Circuit.from_edges(GRAPH, [GRAPH.edge_index(e) for e in names])
    assert torch.equal(numbered.edges, circuit.edges)
    assert Circuit.from_edges(GRAPH, [("input", "logits")]).edge_names() == ["input->logits"]
    assert Circuit.from_edges(GRAPH, names + ["a1.h0->m2"]).edge_names() == names  # a dangling edge is pruned
    assert Circuit.from_edges(GRAPH, []).n_edges == 0
    with pytest.raises(FuncnetError, match="no path from 'input' to 'logits'"):
        Circuit.from_edges(GRAPH, ["a0.h1->m2", "m2->logits"])
    with pytest.raises(FuncnetError, match="does not exist"):
        Circuit.from_edges(GRAPH, [GRAPH.n_edges])
    with pytest.raises(FuncnetError, match="does not exist"):
        Circuit.from_edges(GRAPH, [-1])
    with pytest.raises(FuncnetError, match="not downstream"):
        Circuit.from_edges(GRAPH, ["m2->a0.h0<q>"])


def test_set_operations():
    a, b = Circuit(GRAPH, random_mask(1, 0.3)), Circuit(GRAPH, random_mask(2, 0.3))
    assert torch.equal((a | b).edges, a.edges | b.edges)
    assert torch.equal((a & b).edges, a.edges & b.edges)
    assert (a | b).n_edges == a.n_edges + b.n_edges - (a & b).n_edges
    same_shape = Circuit(Graph(3, 3), b.edges)  # an equal graph built separately is the same graph
    assert torch.equal((a | same_shape).edges, (a | b).edges)
    for other in (Circuit(Graph(3, 3, split_qkv=False), torch.zeros(Graph(3, 3, split_qkv=False).n_edges,
                                                                     dtype=torch.bool)),
                  Circuit(Graph(2, 3), torch.zeros(Graph(2, 3).n_edges, dtype=torch.bool))):
        with pytest.raises(FuncnetError, match="same graph"):
            a | other
        with pytest.raises(FuncnetError, match="same graph"):
            a & other


def test_a_circuit_holds_a_private_bool_mask():
    mask = random_mask(3, 0.5)
    circuit = Circuit(GRAPH, mask)
    mask[:] = False
    assert circuit.n_edges > 0
    assert "edges" in repr(circuit) and 0 < circuit.fraction < 1
    for bad in (torch.ones(GRAPH.n_edges), torch.ones(GRAPH.n_edges + 1, dtype=torch.bool)):
        with pytest.raises(FuncnetError, match="bool mask"):
            Circuit(GRAPH, bad)


@pytest.mark.parametrize("make", [Circuit.top_n, Circuit.greedy])
def test_sizes_and_scores_are_checked(make):
    s = scores(0)
    for n in (-1, GRAPH.n_edges + 1, 2.0, True, None, "3"):
        with pytest.raises(FuncnetError, match="circuit size"):
            make(GRAPH, s, n)
    for bad in (s[:-1], s[None], torch.tensor(1.0)):
        with pytest.raises(FuncnetError, match="one value per edge"):
            make(GRAPH, bad, 3)
    for value in (float("nan"), float("inf")):
        broken = s.clone()
        broken[4] = value
        with pytest.raises(FuncnetError, match="NaN or infinite"):
            make(GRAPH, broken, 3)
    partial = EdgeScores(GRAPH, s.clone(), "exact")
    partial.scores[0] = float("nan")
    with pytest.raises(FuncnetError, match="only some edges"):
        partial.circuit(3)


def test_to_networkx_of_a_circuit():
    circuit = Circuit.from_edges(GRAPH, ["input->a0.h1<v>", "input->a0.h1<q>", "a0.h1->logits"])
    g = circuit.to_networkx(scores(0))
    assert g.number_of_edges() == 3 and set(g.get_edge_data("input", "a0.h1")) == {"a0.h1<v>", "a0.h1<q>"}
    assert all(isinstance(d["score"], float) for *_, d in g.edges(data=True))


def test_save_and_load(tmp_path):
    circuit = Circuit.top_n(GRAPH, scores(7), 30)
    circuit.save(tmp_path / "c")
    data = json.loads((tmp_path / "c" / "circuit.json").read_text())
    assert data["format"] == "tl_funcnet.circuit" and data["edges"] == circuit.edge_names()
    back = Circuit.load(tmp_path / "c")
    assert torch.equal(back.edges, circuit.edges) and back.graph.to_dict() == GRAPH.to_dict()
    check_save_rules(lambda p, o: circuit.save(p, overwrite=o),
                     lambda p, o: Circuit.top_n(GRAPH, scores(8), 30).save(p, overwrite=o), tmp_path / "rules")


def test_load_refuses_foreign_or_broken_folders(tmp_path):
    good = {"format": "tl_funcnet.circuit", "version": 1, "graph": GRAPH.to_dict(),
            "edges": ["input->a0.h1<v>", "a0.h1->logits"]}
    cases = {"format": {**good, "format": "tl_funcnet.intervention"}, "version": {**good, "version": 2},
             "graph": {**good, "graph": {"format": "x"}}, "edges_type": {**good, "edges": "input->logits"},
             "edge_name": {**good, "edges": ["input->a0.h9<v>"]}, "no_path": {**good, "edges": ["a0.h1->logits"]},
             "edge_numbers": {**good, "edges": [3, 4]}}
    for name, data in cases.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "circuit.json").write_text(json.dumps(data))
        with pytest.raises(FormatError):
            Circuit.load(tmp_path / name)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FormatError, match="missing"):
        Circuit.load(tmp_path / "empty")
