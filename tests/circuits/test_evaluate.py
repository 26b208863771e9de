"""Judging circuits: faithfulness, the curve over MIB's ten sizes with CPR and CMD (checked by hand), the size
needed for a target faithfulness, the plot, and the score summaries AUROC and edge correlation."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import scipy.stats
import torch
from tl_testing import (count_hooks, guard, make_gpt2_style,
                        edge_flags as flags, full_circuit as full, empty_circuit as empty)

from tl_funcnet.circuits import (FRACTIONS, AblatedValues, Circuit, EdgeScores, FaithfulnessCurve, Graph,
                                 ablated_values, auroc, circuit_metrics, edge_correlation, edges_for_faithfulness,
                                 exact_edge_scores, faithfulness, faithfulness_curve)
from tl_funcnet.errors import FuncnetError
from tl_funcnet.patching import logit_diff

METRIC = logit_diff([1, 2, 3], [4, 5, 6])


def make_pair():
    g = torch.Generator().manual_seed(4)
    clean = torch.randint(0, 50, (3, 6), generator=g)
    corr = clean.clone()
    corr[:, 1] = (clean[:, 1] + 5) % 50
    corr[:, 3] = (clean[:, 3] + 8) % 50
    return clean, corr


@pytest.fixture
def pair():
    return make_pair()


@pytest.fixture(scope="module")
def exact_scores():
    """A tiny GPT-2-style model and the exact scores of all its edges on :func:`make_pair`."""
    model = guard(make_gpt2_style().eval())
    return model, exact_edge_scores(model, Graph.from_model(model), *make_pair(), METRIC)


@pytest.mark.parametrize("ablation", ["patching", "mean", "zero"])
def test_faithfulness_of_the_full_and_empty_circuits(tiny_model, pair, ablation):
    clean, corr = pair
    graph = Graph.from_model(tiny_model)
    f_full, f_empty, f_some = faithfulness(tiny_model, [full(graph), empty(graph),
                                                        Circuit.top_n(graph, torch.rand(graph.n_edges), 30)],
                                           clean, METRIC, corrupted=corr, ablation=ablation)
    assert f_full == pytest.approx(1.0, abs=1e-4) and f_empty == pytest.approx(0.0, abs=1e-9)
    assert np.isfinite(f_some)
    assert faithfulness(tiny_model, full(graph), clean, METRIC, corrupted=corr, ablation=ablation) == \
        pytest.approx(f_full, abs=1e-9)


def test_faithfulness_is_a_ratio_of_mean_metrics(gpt2_tiny, pair):
    clean, corr = pair
    graph = Graph.from_model(gpt2_tiny)
    circuit = Circuit.top_n(graph, torch.rand(graph.n_edges, generator=torch.Generator().manual_seed(1)), 40)
    ablated = ablated_values(gpt2_tiny, graph, "patching", corrupted=corr)
    m_c, m_empty = circuit_metrics(gpt2_tiny, [circuit, empty(graph)], clean, METRIC, ablated)
    with torch.no_grad():
        m_model = METRIC(gpt2_tiny(clean)).mean().item()
    f = faithfulness(gpt2_tiny, circuit, clean, METRIC, ablated=ablated)
    assert f == pytest.approx((m_c - m_empty) / (m_model - m_empty), abs=1e-5)


def hand_curve(f, n_edges=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)):
    return FaithfulnessCurve(FRACTIONS, n_edges, tuple(f), tuple(f), 1.0, 0.0, "hand")


def test_cpr_and_cmd_of_a_perfect_curve():
    curve = hand_curve([1.0] * 10)
    assert curve.cpr == pytest.approx(0.999, abs=1e-12) and curve.cmd == pytest.approx(0.0, abs=1e-12)
    assert hand_curve([0.0] * 10).cpr == 0.0 and hand_curve([0.0] * 10).cmd == pytest.approx(0.999, abs=1e-12)


def test_cpr_and_cmd_by_hand():
    # x = 0.001 0.002 0.005 0.01 0.02 0.05 0.1 0.2 0.5 1, so dx = .001 .003 .005 .01 .03 .05 .1 .3 .5
    # f midpoints .05 .15 .3 .45 .55 .7 .95 1.0 .95
    #   -> CPR = .00005 + .00045 + .0015 + .0045 + .0165 + .035 + .095 + .3 + .475 = .928
    # |1-f| midpoints .95 .85 .7 .55 .45 .3 .15 .1 .05
    #   -> CMD = .00095 + .00255 + .0035 + .0055 + .0135 + .015 + .015 + .03 + .025 = .111
    curve = hand_curve([0.0, 0.1, 0.2, 0.4, 0.5, 0.6, 0.8, 1.1, 0.9, 1.0])
    assert curve.cpr == pytest.approx(0.928, abs=1e-12)
    assert curve.cmd == pytest.approx(0.111, abs=1e-12)
    assert curve.edges_for(0.8) == 100 and curve.edges_for() == 100
    assert curve.edges_for(1.05) == 200 and curve.edges_for(1.2) is None and curve.edges_for(0.0) == 1
    d = curve.to_dict()
    assert d["cpr"] == curve.cpr and d["edges_for_80"] == 100 and d["faithfulness"][7] == 1.1
    assert list(curve.to_frame()["n_edges"]) == [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]


def test_the_plot_is_a_figure_and_leaves_the_backend_alone():
    import matplotlib
    from matplotlib.figure import Figure

    backend = matplotlib.get_backend()
    had_pyplot = "matplotlib.pyplot" in sys.modules
    fig = hand_curve([0.0, 0.1, 0.2, 0.4, 0.5, 0.6, 0.8, 1.1, 0.9, 1.0]).plot()
    assert isinstance(fig, Figure) and fig.axes
    assert matplotlib.get_backend() == backend
    assert ("matplotlib.pyplot" in sys.modules) == had_pyplot


def test_faithfulness_curve(exact_scores):
    model, scores = exact_scores
    clean, corr = make_pair()
    graph = scores.graph
    curve = faithfulness_curve(model, scores, clean, METRIC, corrupted=corr, max_rows=12)
    assert curve.fractions == FRACTIONS
    assert curve.n_edges == tuple(int(x * graph.n_edges) for x in FRACTIONS)
    assert all(m <= n for m, n in zip(curve.info["n_edges_after_pruning"], curve.n_edges))
    assert curve.faithfulness[-1] == pytest.approx(1.0, abs=1e-4)
    assert curve.faithfulness[0] == pytest.approx(0.0, abs=1e-9)  # int(0.001 * 110) = 0 edges
    circuits = [scores.circuit(n) for n in curve.n_edges]
    f = faithfulness(model, circuits, clean, METRIC, corrupted=corr)
    assert list(curve.faithfulness) == pytest.approx(f, abs=1e-6)
    assert curve.method == "exact" and curve.ablation == "patching"
    assert curve.cpr == pytest.approx(hand_curve(curve.faithfulness, curve.n_edges).cpr, abs=1e-12)
    greedy = faithfulness_curve(model, scores, clean, METRIC, corrupted=corr, fractions=(0.1, 0.5, 1.0), greedy=True)
    assert greedy.info["greedy"] and len(greedy.faithfulness) == 3
    with pytest.raises(FuncnetError, match="fractions"):
        faithfulness_curve(model, scores, clean, METRIC, corrupted=corr, fractions=(0.5, 0.1))
    with pytest.raises(FuncnetError, match="fractions"):
        faithfulness_curve(model, scores, clean, METRIC, corrupted=corr, fractions=(0.5, 1.5))


def test_edges_for_faithfulness(exact_scores):
    model, scores = exact_scores
    clean, corr = make_pair()
    n = edges_for_faithfulness(model, scores, clean, METRIC, target=0.8, corrupted=corr)
    assert n is not None
    f_n, f_less = faithfulness(model, [scores.circuit(n), scores.circuit(n - 1)], clean, METRIC, corrupted=corr)
    assert f_n >= 0.8 > f_less  # the smallest size (1% resolution is exact below 100 edges)
    assert edges_for_faithfulness(model, scores, clean, METRIC, target=1.5, corrupted=corr) is None


def test_auroc_by_hand():
    # |scores| 3 1 2 2 0, true edges {0, 2}: pairs (3,1) (3,2) (3,0) (2,1) (2,2) (2,0) -> 5 wins, 1 tie -> 5.5 / 6
    assert auroc(torch.tensor([3.0, -1.0, -2.0, 2.0, 0.0]), torch.tensor([True, False, True, False, False])) == \
        pytest.approx(5.5 / 6)
    assert auroc(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([False, True, True])) == 1.0
    assert auroc(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([True, False, False])) == 0.0
    assert auroc(torch.ones(4), torch.tensor([True, False, True, False])) == 0.5
    graph = Graph(1, 1)
    s = EdgeScores(graph, torch.arange(graph.n_edges, dtype=torch.float64), "hand")
    truth = torch.zeros(graph.n_edges, dtype=torch.bool)
    truth[-2:] = True
    assert auroc(s, truth) == 1.0


def test_auroc_refuses_what_it_cannot_rank():
    for scores, truth in ((torch.ones(3), torch.tensor([True, False])), (torch.ones(2), torch.tensor([True, True])),
                          (torch.ones(2), torch.tensor([False, False])),
                          (torch.tensor([1.0, float("nan")]), torch.tensor([True, False]))):
        with pytest.raises(FuncnetError):
            auroc(scores, truth)


def test_edge_correlation_by_hand():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(40, generator=g, dtype=torch.float64)
    b = a ** 3 + 0.3 * torch.randn(40, generator=g, dtype=torch.float64)
    got = edge_correlation(a, b)
    assert got["pearson"] == pytest.approx(float(np.corrcoef(a.numpy(), b.numpy())[0, 1]), abs=1e-9)
    assert got["spearman"] == pytest.approx(float(scipy.stats.spearmanr(a.numpy(), b.numpy())[0]), abs=1e-9)
    assert got["n_edges"] == 40
    holes = b.clone()
    holes[:10] = float("nan")  # a sample of exact scores: correlate where both are scored
    partial = edge_correlation(a, holes)
    assert partial["n_edges"] == 30
    assert partial["pearson"] == pytest.approx(float(np.corrcoef(a[10:].numpy(), b[10:].numpy())[0, 1]), abs=1e-9)
    graph = Graph(1, 1)
    x = EdgeScores(graph, a[:graph.n_edges], "x")
    assert edge_correlation(x, x)["pearson"] == pytest.approx(1.0)
    with pytest.raises(FuncnetError, match="fewer than 2"):
        edge_correlation(a[:3], torch.tensor([1.0, float("nan"), float("nan")], dtype=torch.float64))


def test_edge_scores_views():
    graph = Graph(2, 2)
    s = torch.linspace(-1, 1, graph.n_edges, dtype=torch.float64)
    scores = EdgeScores(graph, s, "hand")
    assert scores.top(2) == [(graph.edge_name(0), -1.0), (graph.edge_name(graph.n_edges - 1), 1.0)]
    assert scores.top(1, absolute=False) == [(graph.edge_name(graph.n_edges - 1), 1.0)]
    frame = scores.to_frame()
    assert len(frame) == graph.n_edges and list(frame.columns) == ["edge", "sender", "receiver", "score"]
    assert scores.to_dict(top=3)["n_scored"] == graph.n_edges and len(scores.to_dict(top=3)["top"]) == 3
    with pytest.raises(FuncnetError, match="shape"):
        EdgeScores(graph, s[:-1], "hand")


def test_bad_inputs_are_refused_and_nothing_is_left_behind(gpt2_tiny, pair):
    clean, corr = pair
    graph = Graph.from_model(gpt2_tiny)
    scores = EdgeScores(graph, torch.rand(graph.n_edges, dtype=torch.float64), "random")
    before = flags(gpt2_tiny)
    oov = clean.clone()
    oov[1, 2] = 50
    other = Graph(3, 4)
    calls = [
        lambda: faithfulness(gpt2_tiny, full(graph), clean, METRIC, corrupted=corr[:, :5]),
        lambda: faithfulness(gpt2_tiny, full(graph), clean, METRIC, corrupted=corr[:1]),
        lambda: faithfulness(gpt2_tiny, full(graph), oov, METRIC, corrupted=corr),
        lambda: faithfulness(gpt2_tiny, full(graph), clean, METRIC, corrupted=oov),
        lambda: faithfulness(gpt2_tiny, [full(graph), full(other)], clean, METRIC, corrupted=corr),
        lambda: faithfulness(gpt2_tiny, full(other), clean, METRIC, corrupted=corr),
        lambda: faithfulness(gpt2_tiny, full(other), clean, METRIC, ablated=AblatedValues(other, "zero", None)),
        lambda: faithfulness(gpt2_tiny, [], clean, METRIC, corrupted=corr),
        lambda: faithfulness(gpt2_tiny, full(graph), clean, METRIC, corrupted=corr, ablation="resample"),
        lambda: faithfulness(gpt2_tiny, full(graph), clean, METRIC, ablation="mean"),
        lambda: faithfulness(gpt2_tiny, full(graph), clean, METRIC, corrupted=clean),  # no difference to explain
        lambda: circuit_metrics(gpt2_tiny, [full(graph)], clean, METRIC,
                                ablated_values(gpt2_tiny, graph, "mean", texts=corr[:, :4], positional=True)),
        lambda: faithfulness_curve(gpt2_tiny, torch.rand(graph.n_edges), clean, METRIC, corrupted=corr),
        lambda: faithfulness_curve(gpt2_tiny, scores, clean, METRIC, corrupted=corr[:, 1:]),
        lambda: faithfulness_curve(gpt2_tiny, EdgeScores(graph, torch.full((graph.n_edges,), float("nan")), "x"),
                                   clean, METRIC, corrupted=corr),
        lambda: faithfulness_curve(gpt2_tiny, EdgeScores(other, torch.rand(other.n_edges), "x"), clean, METRIC,
                                   corrupted=corr),
        lambda: edges_for_faithfulness(gpt2_tiny, torch.rand(graph.n_edges), clean, METRIC, corrupted=corr),
        lambda: edges_for_faithfulness(gpt2_tiny, scores, oov, METRIC, corrupted=corr),
    ]
    for call in calls:
        with pytest.raises(FuncnetError):
            call()
        assert flags(gpt2_tiny) == before and count_hooks(gpt2_tiny) == 0
