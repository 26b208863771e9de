"""Models with planted circuits: exact patching finds exactly the planted edges, the planted circuit is fully
faithful, and every attribution method ranks the planted edges first (AUROC >= 0.95)."""

from __future__ import annotations

import pytest
import torch
from tl_testing import guard

from tl_funcnet.circuits import (PLANTED_BLOCKS, PLANTED_KINDS, Circuit, PlantedCircuit, auroc, exact_edge_scores,
                                 faithfulness, planted_circuit)
from tl_funcnet.errors import FuncnetError

CASES = [(kind, block) for kind in PLANTED_KINDS for block in PLANTED_BLOCKS]
PATHS = {"chain": ["input->a0.h0<v>", "a0.h0->m1", "m1->a2.h0<v>", "a2.h0->logits"],
         "parallel": ["input->a0.h0<v>", "input->m0", "m0->a1.h0<v>", "a0.h0->m1", "a1.h0->logits", "m1->logits"]}


@pytest.fixture(scope="module", params=CASES, ids=[f"{k}-{b}" for k, b in CASES])
def planted(request):
    kind, block = request.param
    p = planted_circuit(kind, block=block, seed=3)
    guard(p.model)
    return p, exact_edge_scores(p.model, p.graph, p.clean, p.corrupted, p.metric)


def test_the_model_and_task_are_as_described(planted):
    p, _ = planted
    assert isinstance(p, PlantedCircuit) and p.kind in PLANTED_KINDS and p.block in PLANTED_BLOCKS
    assert p.model.cfg.normalization_type is None
    assert (p.model.cfg.n_key_value_heads == 2) == (p.block == "llama")
    assert p.model.cfg.gated_mlp == (p.block == "llama")
    p.graph.check_model(p.model)
    assert p.true_edge_names() == sorted(PATHS[p.kind], key=p.graph.edge_index)
    assert p.true_edges.dtype == torch.bool and p.true_edges.shape == (p.graph.n_edges,)
    assert p.clean.shape == p.corrupted.shape and p.clean.shape[0] == 8
    differs = (p.clean != p.corrupted).any(0)
    assert differs.tolist() == [i in ((1,) if p.kind == "chain" else (1, 2)) for i in range(p.clean.shape[1])]
    with torch.no_grad():
        clean, corrupted = p.metric(p.model(p.clean)), p.metric(p.model(p.corrupted))
    assert bool((clean > 0.3).all()) and bool((corrupted < -0.3).all())  # the right answer wins on every prompt
    assert "Distractors" in p.description and p.kind in repr(p)


def test_exact_patching_finds_exactly_the_planted_edges(planted):
    p, exact = planted
    assert bool(exact.evaluated.all())
    true_effects = exact.scores[p.true_edges].abs()
    assert float(true_effects.min()) > 0.5  # clearly not zero ...
    assert float(exact.scores[~p.true_edges].abs().max()) < 1e-5 * float(true_effects.max())  # ... and the rest is
    assert auroc(exact, p.true_edges) == 1.0


def test_the_planted_circuit_is_fully_faithful(planted):
    p, _ = planted
    assert torch.equal(p.circuit.pruned().edges, p.true_edges)  # the path connects input and logits
    empty = Circuit(p.graph, torch.zeros_like(p.true_edges))
    f_planted, f_empty = faithfulness(p.model, [p.circuit, empty], p.clean, p.metric, corrupted=p.corrupted)
    assert f_planted == pytest.approx(1.0, abs=1e-5) and f_empty == 0.0
    # and no smaller circuit is: dropping any planted edge cuts the path it was on
    fewer = []
    for i in p.true_edges.nonzero().flatten().tolist():
        mask = p.true_edges.clone()
        mask[i] = False
        fewer.append(Circuit(p.graph, mask))
    assert max(faithfulness(p.model, fewer, p.clean, p.metric, corrupted=p.corrupted)) < 0.9


def test_seeds_change_the_model_but_not_the_truth():
    state = torch.random.get_rng_state()
    a, b, again = (planted_circuit("parallel", block="llama", seed=s) for s in (1, 2, 1))
    assert torch.equal(torch.random.get_rng_state(), state)  # the global random state is not touched
    assert torch.equal(a.clean, again.clean) and torch.equal(a.true_edges, b.true_edges)
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), again.model.state_dict().values()))
    assert not torch.equal(a.model.embed.W_E, b.model.embed.W_E) and not torch.equal(a.clean, b.clean)


def test_bad_requests_are_refused():
    for kwargs in ({"kind": "tree"}, {"block": "bert"}, {"seed": 1.5}, {"seed": True}, {"n_prompts": 1}):
        with pytest.raises(FuncnetError):
            planted_circuit(**{"kind": "chain", **kwargs})


@pytest.mark.parametrize("method", ["eap", "eap-ig-inputs", "eap-ig-activations", "clean-corrupted", "relp"])
def test_attribution_methods_rank_the_planted_edges_first(planted, method):
    edge_scores = pytest.importorskip("tl_funcnet.circuits.attribution").edge_scores
    p, _ = planted
    scores = edge_scores(p.model, p.graph, p.clean, p.corrupted, p.metric, method=method)
    assert auroc(scores, p.true_edges) >= 0.95


def test_linear_attribution_sees_a_gradient_where_patching_sees_no_effect(planted):
    # the distractor that is flat in value but not in slope: an odd function, zero at both signs' values
    edge_scores = pytest.importorskip("tl_funcnet.circuits.attribution").edge_scores
    p, exact = planted
    trap = p.graph.edge_index("a0.h0->m2" if p.kind == "chain" else "a0.h1->m1")
    eap = edge_scores(p.model, p.graph, p.clean, p.corrupted, p.metric, method="eap")
    assert abs(float(exact.scores[trap])) < 1e-5
    assert abs(float(eap.scores[trap])) > 0.05 * float(exact.scores[p.true_edges].abs().max())
