"""Circuits run as interventions (the ``edge_source`` / ``edge_sink`` ops): what the full and the empty circuit
give under each ablation, several circuits per batch, saving, and nothing left behind."""

from __future__ import annotations

import pytest
import torch
from tl_testing import (count_hooks, make_gpt2_style, make_llama_style,
                        edge_flags as flags, full_circuit as full, empty_circuit as empty)

from tl_funcnet.circuits import (AblatedValues, Circuit, Graph, ablated_values, circuit_metrics, circuits_intervention,
                                 edge_hooks, sender_outputs)
from tl_funcnet.errors import FuncnetError, ShapeError
from tl_funcnet.hooks import Hook, Intervention, capture
from tl_funcnet.patching import logit_diff
from tl_funcnet.patching._common import logits_from_resid

METRIC = logit_diff([1, 2, 3], [4, 5, 6])


@pytest.fixture
def pair():
    g = torch.Generator().manual_seed(7)
    clean = torch.randint(0, 50, (3, 6), generator=g)
    corr = clean.clone()
    corr[:, 2] = (clean[:, 2] + 13) % 50
    corr[:, 5] = (clean[:, 5] + 1) % 50
    return clean, corr


def some_circuits(graph, k=3):
    g = torch.Generator().manual_seed(graph.n_edges)
    return [Circuit.top_n(graph, torch.randn(graph.n_edges, generator=g), n) for n in (10, 40, 80)[:k]]


def run(model, circuits, clean, ablated):
    iv = circuits_intervention(circuits, ablated)
    with torch.no_grad(), iv.applied(model):
        return model(clean.repeat(len(circuits), 1))


def make_ablated(model, graph, ablation, corr, texts):
    if ablation == "mean-positional":
        return ablated_values(model, graph, "mean", texts=texts, positional=True)
    return ablated_values(model, graph, ablation, corrupted=corr, texts=texts)


def test_full_circuit_is_the_clean_run_and_empty_the_corrupted_run(tiny_model, pair):
    clean, corr = pair
    graph = Graph.from_model(tiny_model)
    ablated = ablated_values(tiny_model, graph, "patching", corrupted=corr)
    with torch.no_grad():
        want_clean, want_corr = tiny_model(clean), tiny_model(corr)
    got = run(tiny_model, [full(graph), empty(graph)], clean, ablated)
    torch.testing.assert_close(got[:3], want_clean, atol=1e-4, rtol=0)
    torch.testing.assert_close(got[3:], want_corr, atol=1e-4, rtol=0)
    m_full, m_empty = circuit_metrics(tiny_model, [full(graph), empty(graph)], clean, METRIC, ablated)
    assert m_full == pytest.approx(METRIC(want_clean).mean().item(), abs=1e-4)
    assert m_empty == pytest.approx(METRIC(want_corr).mean().item(), abs=1e-4)


@pytest.mark.parametrize("ablation", ["mean", "mean-positional", "zero"])
def test_the_empty_circuit_reads_only_ablated_values(tiny_model, pair, ablation):
    # with every edge ablated, the final residual stream is its constant part plus the senders' ablated values
    clean, corr = pair
    graph = Graph.from_model(tiny_model)
    L = tiny_model.cfg.n_layers
    texts = torch.cat([clean, corr])
    ablated = make_ablated(tiny_model, graph, ablation, corr, texts)
    store: dict = {}
    with torch.no_grad(), edge_hooks(tiny_model), capture(f"blocks.{L - 1}.hook_resid_post", store).applied(tiny_model):
        tiny_model(clean, return_type=None)
    constant = store[f"blocks.{L - 1}.hook_resid_post"] - sender_outputs(tiny_model, graph, clean).sum(2)
    values = torch.zeros(1, 1, graph.n_senders, tiny_model.cfg.d_model) if ablated.values is None else ablated.values
    with torch.no_grad():
        want = logits_from_resid(tiny_model, constant + values.sum(2))
    torch.testing.assert_close(run(tiny_model, [empty(graph)], clean, ablated), want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("receiver", ["a1.h2<k>", "a1.h0<q>", "a0.h3<v>", "m0", "m1", "logits"])
def test_ablating_every_edge_into_a_receiver_patches_its_input(tiny_model, pair, receiver):
    clean, corr = pair
    graph = Graph.from_model(tiny_model)
    v = graph.receiver_index(receiver)
    mask = torch.ones(graph.n_edges, dtype=torch.bool)
    mask[graph.edges_into(v)] = False
    got = run(tiny_model, [Circuit(graph, mask)], clean, ablated_values(tiny_model, graph, "patching", corrupted=corr))
    (site, slot), = graph.receiver_sites_of(v)
    store: dict = {}
    with torch.no_grad(), edge_hooks(tiny_model), capture(site, store).applied(tiny_model):
        tiny_model(corr, return_type=None)

    def put_corrupted(act, hook):
        out = act.clone()
        if slot is None:
            out[:] = store[site]
        else:
            out[:, :, slot] = store[site][:, :, slot]
        return out

    with torch.no_grad(), edge_hooks(tiny_model):
        want = tiny_model.run_with_hooks(clean, fwd_hooks=[(site, put_corrupted)])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("ablation", ["patching", "mean", "mean-positional", "zero"])
def test_several_circuits_in_one_batch_equal_one_at_a_time(tiny_model, pair, ablation):
    clean, corr = pair
    graph = Graph.from_model(tiny_model)
    ablated = make_ablated(tiny_model, graph, ablation, corr, torch.cat([clean, corr]))
    circuits = [full(graph), *some_circuits(graph), empty(graph)]
    alone = [run(tiny_model, [c], clean, ablated) for c in circuits]
    together = run(tiny_model, circuits, clean, ablated)
    for k, logits in enumerate(alone):
        torch.testing.assert_close(together[3 * k:3 * k + 3], logits, atol=1e-5, rtol=0)
    one_by_one = [circuit_metrics(tiny_model, [c], clean, METRIC, ablated)[0] for c in circuits]
    for max_rows in (3, 7, 64):  # one, two, or all circuits per forward
        assert circuit_metrics(tiny_model, circuits, clean, METRIC, ablated, max_rows=max_rows) == \
            pytest.approx(one_by_one, abs=1e-5)
    if ablation != "patching":  # the ablation matters: the curve is not flat
        assert len({round(m, 4) for m in one_by_one}) > 2


def test_the_circuit_intervention_saves_and_loads(tiny_model, pair, tmp_path):
    clean, corr = pair
    graph = Graph.from_model(tiny_model)
    for ablation in ("patching", "mean", "zero"):
        ablated = make_ablated(tiny_model, graph, ablation, corr, corr)
        circuits = some_circuits(graph, 2)
        iv = circuits[0].to_intervention(ablated, also=circuits[1:])
        assert iv.serializable and {h.op for h in iv} == {"edge_source", "edge_sink"}
        iv.save(tmp_path / ablation)
        back = Intervention.load(tmp_path / ablation)
        assert back.allclose(iv)
        batch = clean.repeat(2, 1)
        with torch.no_grad():
            with iv.applied(tiny_model):
                want = tiny_model(batch)
            with back.applied(tiny_model):
                got = tiny_model(batch)
        torch.testing.assert_close(got, want, atol=0, rtol=0)
        torch.testing.assert_close(got, run(tiny_model, circuits, clean, ablated), atol=0, rtol=0)
    assert count_hooks(tiny_model) == 0


def test_nothing_is_left_behind(pair):
    for model in (make_gpt2_style(seed=1).eval(), make_llama_style(seed=1).eval()):
        clean, corr = pair
        graph = Graph.from_model(model)
        before = flags(model)
        with torch.no_grad():
            plain = model(clean)
        ablated = ablated_values(model, graph, "patching", corrupted=corr)
        circuit_metrics(model, some_circuits(graph), clean, METRIC, ablated)
        iv = circuits_intervention(some_circuits(graph, 2), ablated)
        # an error inside the forward: 2 circuits x 3 prompts != 4 rows
        with pytest.raises(ShapeError, match="rows"), iv.applied(model):
            model(clean[:2].repeat(2, 1))
        assert flags(model) == before and count_hooks(model) == 0
        with torch.no_grad():
            torch.testing.assert_close(model(clean), plain, atol=0, rtol=0)
        assert all(p.grad is None for p in model.parameters())


def test_gradients_flow_through_a_circuit(pair):
    model = make_gpt2_style(seed=3).eval()
    clean, corr = pair
    graph = Graph.from_model(model)

    def grad_of_embedding(iv):
        model.zero_grad(set_to_none=True)
        with iv.applied(model):
            value = METRIC(model(clean)).mean()
            value.backward()
        return value.item(), model.embed.W_E.grad.clone()

    plain = grad_of_embedding(Intervention())
    ablated = ablated_values(model, graph, "patching", corrupted=corr)
    whole = grad_of_embedding(full(graph).to_intervention(ablated))
    assert whole[0] == pytest.approx(plain[0], abs=1e-5)
    torch.testing.assert_close(whole[1], plain[1], atol=1e-5, rtol=0)
    nothing = grad_of_embedding(empty(graph).to_intervention(ablated))  # the clean tokens no longer matter
    assert nothing[0] == pytest.approx(circuit_metrics(model, [empty(graph)], clean, METRIC, ablated)[0], abs=1e-5)
    assert float(nothing[1].abs().max()) < 1e-6
    mean = ablated_values(model, graph, "mean", texts=corr)
    part = Circuit.top_n(graph, torch.randn(graph.n_edges, generator=torch.Generator().manual_seed(0)), 60)
    some = grad_of_embedding(part.to_intervention(mean))
    assert some[0] == pytest.approx(circuit_metrics(model, [part], clean, METRIC, mean)[0], abs=1e-5)
    assert float(some[1].abs().max()) > 1e-4


def test_a_sink_without_its_sources_is_refused(gpt2_tiny, pair):
    graph = Graph.from_model(gpt2_tiny)
    iv = circuits_intervention([empty(graph)], ablated_values(gpt2_tiny, graph, "zero"))
    sinks = Intervention(tuple(h for h in iv if h.op == "edge_sink"))
    with pytest.raises(FuncnetError, match="before any edge_source"), sinks.applied(gpt2_tiny):
        gpt2_tiny(pair[0])
    assert count_hooks(gpt2_tiny) == 0


def test_op_parameters_are_checked():
    with pytest.raises(FuncnetError, match="one slot"):
        Hook("hook_embed", "edge_source", {"senders": [0], "slots": [None, 1], "n_senders": 11})
    with pytest.raises(ShapeError, match="ablated"):
        Hook("hook_embed", "edge_source", {"senders": [0], "slots": [None], "n_senders": 11,
                                           "ablated": torch.zeros(2, 3, 16)})
    with pytest.raises(FuncnetError, match="n_senders"):
        Hook("hook_embed", "edge_source", {"senders": [0], "slots": [None], "n_senders": 0})
    with pytest.raises(FuncnetError, match="ablate should be a bool tensor"):
        Hook("blocks.0.hook_mlp_in", "edge_sink", {"receivers": [4], "slots": [None], "ablate": torch.ones(1, 1, 11)})
    with pytest.raises(FuncnetError, match="ablate should be a bool tensor"):
        Hook("blocks.0.hook_mlp_in", "edge_sink", {"receivers": [4, 5], "slots": [None, None],
                                                   "ablate": torch.ones(1, 1, 11, dtype=torch.bool)})


def test_circuits_intervention_refuses_bad_inputs(gpt2_tiny, pair):
    graph = Graph.from_model(gpt2_tiny)
    ablated = ablated_values(gpt2_tiny, graph, "zero")
    with pytest.raises(FuncnetError, match="at least one circuit"):
        circuits_intervention([], ablated)
    with pytest.raises(FuncnetError, match="Circuit"):
        circuits_intervention([graph], ablated)
    with pytest.raises(FuncnetError, match="same graph"):
        circuits_intervention([full(graph), full(Graph(3, 4))], ablated)
    with pytest.raises(FuncnetError, match="AblatedValues of this graph"):
        circuits_intervention([full(graph)], AblatedValues(Graph(3, 4), "zero", None))
    with pytest.raises(FuncnetError, match="AblatedValues"):
        circuits_intervention([full(graph)], None)
