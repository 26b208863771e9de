"""Exact edge patching: each edge's score is the metric of the circuit of all other edges (a second, independent
implementation: the circuit ops) and of a plain TransformerLens hook, in both directions and for every ablation."""

from __future__ import annotations

import pytest
import torch
from tl_testing import count_hooks, edge_flags as flags

from tl_funcnet.circuits import (AblatedValues, Circuit, Graph, ablated_values, circuit_metrics, edge_hooks,
                                 exact_edge_scores, sender_outputs)
from tl_funcnet.errors import FuncnetError, ShapeError
from tl_funcnet.patching import logit_diff

METRIC = logit_diff([1, 2, 3], [4, 5, 6])


@pytest.fixture
def pair():
    g = torch.Generator().manual_seed(9)
    clean = torch.randint(0, 50, (3, 6), generator=g)
    corr = clean.clone()
    corr[:, 1] = (clean[:, 1] + 17) % 50
    corr[:, 4] = (clean[:, 4] + 2) % 50
    return clean, corr


def sample(graph, k=24, seed=0):
    """Edges of every kind of receiver, plus a random few."""
    named = ["input->a0.h1<q>", "input->a0.h2<k>", "input->a0.h3<v>", "input->m0", "a0.h1->m0", "a0.h0->a1.h2<k>",
             "m0->a1.h1<q>", "a1.h3->m1", "input->logits", "a1.h0->logits", "m1->logits", "m0->logits"]
    idx = graph.edge_indices(named)
    extra = torch.randperm(graph.n_edges, generator=torch.Generator().manual_seed(seed))[:k].tolist()
    return sorted(set(idx + extra))


@pytest.mark.parametrize("direction", ["noise", "denoise"])
def test_exact_scores_are_the_metric_of_the_all_but_one_circuit(tiny_model, pair, direction):
    clean, corr = pair
    graph = Graph.from_model(tiny_model)
    edges = sample(graph)
    got = exact_edge_scores(tiny_model, graph, clean, corr, METRIC, edges=edges, direction=direction, max_rows=9)
    target, source = (clean, corr) if direction == "noise" else (corr, clean)
    ablated = ablated_values(tiny_model, graph, "patching", corrupted=source)
    circuits = []
    for i in edges:
        mask = torch.ones(graph.n_edges, dtype=torch.bool)
        mask[i] = False
        circuits.append(Circuit(graph, mask))
    base, *others = circuit_metrics(tiny_model, [Circuit(graph, torch.ones(graph.n_edges, dtype=torch.bool)),
                                                 *circuits], target, METRIC, ablated)
    want = torch.tensor(others, dtype=torch.float64) - base
    torch.testing.assert_close(got.scores[edges], want, atol=2e-5, rtol=0)
    assert got.baseline == pytest.approx(base, abs=1e-5)
    assert got.method == "exact" and got.direction == direction
    scored = torch.zeros(graph.n_edges, dtype=torch.bool)
    scored[edges] = True
    assert torch.equal(got.evaluated, scored) and bool(got.scores[~scored].isnan().all())
    assert got.info["n_scored"] == len(edges) and got.info["n_prompts"] == 3
    assert float(got.scores[edges].abs().max()) > 1e-3  # the sample holds edges that matter


@pytest.mark.parametrize("ablation", ["mean", "zero"])
def test_mean_and_zero_ablation(tiny_model, pair, ablation):
    clean, corr = pair
    graph = Graph.from_model(tiny_model)
    edges = sample(graph, 10)
    ablated = ablated_values(tiny_model, graph, ablation, texts=torch.cat([clean, corr]))
    got = exact_edge_scores(tiny_model, graph, clean, corr, METRIC, edges=edges, ablated=ablated)
    assert got.info["ablation"] == ablation
    circuits = []
    for i in edges:
        mask = torch.ones(graph.n_edges, dtype=torch.bool)
        mask[i] = False
        circuits.append(Circuit(graph, mask))
    ms = circuit_metrics(tiny_model, circuits, clean, METRIC, ablated)
    torch.testing.assert_close(got.scores[edges], torch.tensor(ms, dtype=torch.float64) - got.baseline, atol=2e-5,
                               rtol=0)


@pytest.mark.parametrize("edge", ["input->a0.h2<k>", "a0.h1->a1.h3<q>", "m0->a1.h0<v>", "a1.h2->m1", "input->logits"])
def test_exact_scores_match_a_plain_transformer_lens_hook(tiny_model, pair, edge):
    clean, corr = pair
    graph = Graph.from_model(tiny_model)
    i = graph.edge_index(edge)
    u, v = (int(x) for x in graph.edges[i])
    delta = (sender_outputs(tiny_model, graph, corr) - sender_outputs(tiny_model, graph, clean))[:, :, u]
    (site, slot), = graph.receiver_sites_of(v)

    def add_delta(act, hook):
        out = act.clone()
        if slot is None:
            out += delta
        else:
            out[:, :, slot] += delta
        return out

    with torch.no_grad(), edge_hooks(tiny_model):
        base = METRIC(tiny_model(clean)).mean().item()
        patched = METRIC(tiny_model.run_with_hooks(clean, fwd_hooks=[(site, add_delta)])).mean().item()
    got = exact_edge_scores(tiny_model, graph, clean, corr, METRIC, edges=[i])
    assert float(got.scores[i]) == pytest.approx(patched - base, abs=2e-5)


def test_chunking_gives_the_same_numbers(llama_tiny, pair):
    clean, corr = pair
    graph = Graph.from_model(llama_tiny)
    whole = exact_edge_scores(llama_tiny, graph, clean, corr, METRIC)
    assert bool(whole.evaluated.all())
    chunked = exact_edge_scores(llama_tiny, graph, clean, corr, METRIC, max_rows=31)  # 10 edges per forward
    torch.testing.assert_close(chunked.scores, whole.scores, atol=1e-5, rtol=0)
    edges = sample(graph, 6)
    one_by_one = exact_edge_scores(llama_tiny, graph, clean, corr, METRIC, edges=torch.tensor(edges), max_rows=3)
    torch.testing.assert_close(one_by_one.scores[edges], whole.scores[edges], atol=1e-5, rtol=0)


def test_unsplit_graph_patches_a_heads_q_k_v_together(gpt2_tiny, pair):
    clean, corr = pair
    graph = Graph.from_model(gpt2_tiny, split_qkv=False)
    i = graph.edge_index("input->a1.h2")
    got = exact_edge_scores(gpt2_tiny, graph, clean, corr, METRIC, edges=[i])
    split = Graph.from_model(gpt2_tiny)
    mask = torch.ones(split.n_edges, dtype=torch.bool)
    mask[split.edge_indices([f"input->a1.h2<{c}>" for c in "qkv"])] = False
    ablated = ablated_values(gpt2_tiny, split, "patching", corrupted=corr)
    m = circuit_metrics(gpt2_tiny, [Circuit(split, mask)], clean, METRIC, ablated)[0]
    assert float(got.scores[i]) == pytest.approx(m - got.baseline, abs=2e-5)


def test_bad_inputs_are_refused_and_nothing_is_left_behind(gpt2_tiny, pair):
    clean, corr = pair
    graph = Graph.from_model(gpt2_tiny)
    before = flags(gpt2_tiny)
    oov = clean.clone()
    oov[0, 0] = 50
    cases = [
        ({"corrupted": corr[:, :5]}, FuncnetError, "same shape"),
        ({"corrupted": corr[:2]}, FuncnetError, "same shape"),
        ({"clean": oov}, FuncnetError, "vocabulary"),
        ({"corrupted": -corr - 1}, FuncnetError, "vocabulary"),
        ({"clean": clean.float()}, ShapeError, "token ids"),
        ({"direction": "both"}, FuncnetError, "direction"),
        ({"max_rows": 2}, FuncnetError, "max_rows"),
        ({"edges": [graph.n_edges]}, FuncnetError, "does not exist"),
        ({"edges": [-3]}, FuncnetError, "negative"),
        ({"ablated": AblatedValues(Graph(3, 4), "zero", None)}, FuncnetError, "another graph"),
        ({"graph": Graph(3, 4)}, FuncnetError, "Graph.from_model"),
        ({"ablated": ablated_values(gpt2_tiny, graph, "mean", texts=torch.randint(0, 50, (2, 9)), positional=True)},
         FuncnetError, "positions"),
        ({"metric": lambda logits: logits[:, -1, :2]}, ShapeError, "one value per"),
    ]
    for change, error, match in cases:
        kw = {"model": gpt2_tiny, "graph": graph, "clean": clean, "corrupted": corr, "metric": METRIC, "edges": [0, 1]}
        kw.update(change)
        with pytest.raises(error, match=match):
            exact_edge_scores(kw.pop("model"), kw.pop("graph"), kw.pop("clean"), kw.pop("corrupted"),
                              kw.pop("metric"), **kw)
        assert flags(gpt2_tiny) == before and count_hooks(gpt2_tiny) == 0
