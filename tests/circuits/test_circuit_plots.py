"""Circuit pictures: a layered drawing of a circuit (nodes, labels, edge colours, widths and q/k/v marks) and
faithfulness curves, as matplotlib Figures made without pyplot and without touching the global backend."""

from __future__ import annotations

import math
import subprocess
import sys

import matplotlib
import pytest
import torch
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

from tl_funcnet.circuits import Circuit, EdgeScores, FaithfulnessCurve, Graph, plot_circuit, plot_faithfulness
from tl_funcnet.circuits.plots import QKV_STYLE, circuit_layout, node_label
from tl_funcnet.errors import FuncnetError

EDGES = {"input->a0.h1<q>": 2.0, "input->a0.h1<k>": -1.0, "a0.h1->m0": 0.5, "m0->a1.h2<v>": -0.25,
         "a1.h2->logits": 1.0, "m0->logits": float("nan")}  # the last one not scored


@pytest.fixture(scope="module")
def graph():
    return Graph(2, 4)  # the graph of the tiny test models: 2 layers x 4 heads with MLPs


@pytest.fixture(scope="module")
def small(graph):
    circuit = Circuit.from_edges(graph, list(EDGES))
    scores = torch.zeros(graph.n_edges, dtype=torch.float64)
    for name, value in EDGES.items():
        scores[graph.edge_index(name)] = value
    return circuit, EdgeScores(graph, scores, "test")


def _nodes(fig):
    return {t.get_gid(): t for t in fig.axes[0].texts if t.get_gid()}


def _arrows(fig):
    return {p.get_gid(): p for p in fig.axes[0].patches}


def _legend(fig):
    legend = fig.axes[0].get_legend()
    return [] if legend is None else [t.get_text() for t in legend.get_texts()]


def test_node_labels():
    assert [node_label(n) for n in ("input", "a5.h3", "m12", "FN4.m12", "logits")] == \
        ["input", "L5.H3", "MLP12", "FN4 (L12)", "logits"]


def test_circuit_drawing_has_the_nodes_by_layer_and_the_edges(small, tmp_path):
    circuit, scores = small
    assert circuit.n_edges == len(EDGES)
    backend = matplotlib.get_backend()
    fig = plot_circuit(circuit, scores)
    assert isinstance(fig, Figure) and matplotlib.get_backend() == backend
    nodes = _nodes(fig)
    assert {n: t.get_text() for n, t in nodes.items()} == {"input": "input", "a0.h1": "L0.H1", "m0": "MLP0",
                                                          "a1.h2": "L1.H2", "logits": "logits"}
    # rows by depth: input, layer 0's heads, its MLP, layer 1's heads (layer 1's MLP is unused), logits
    assert [nodes[n].get_position()[1] for n in ("input", "a0.h1", "m0", "a1.h2", "logits")] == [0, 1, 2, 3, 4]
    arrows = _arrows(fig)
    assert set(arrows) == set(EDGES) == set(circuit.edge_names())
    # q / k / v receivers are marked by the line style (and, in small circuits, by a letter at the arrowhead)
    assert arrows["input->a0.h1<q>"].get_linestyle() == QKV_STYLE["q"] == "-"
    assert arrows["input->a0.h1<k>"].get_linestyle() == "--" and arrows["m0->a1.h2<v>"].get_linestyle() == ":"
    letters = sorted(t.get_text() for t in fig.axes[0].texts if not t.get_gid())
    assert letters == ["k", "q", "v"]
    # colour by sign, width by magnitude, grey where not scored
    red, blue = to_rgba("tab:red")[:3], to_rgba("tab:blue")[:3]
    assert arrows["input->a0.h1<q>"].get_edgecolor()[:3] == pytest.approx(red)
    assert arrows["input->a0.h1<k>"].get_edgecolor()[:3] == pytest.approx(blue)
    assert arrows["m0->logits"].get_edgecolor()[:3] == pytest.approx(to_rgba("0.45")[:3])
    widths = [arrows[e].get_linewidth() for e in ("input->a0.h1<q>", "input->a0.h1<k>", "a0.h1->m0", "m0->a1.h2<v>")]
    assert widths == sorted(widths, reverse=True) and widths[0] == pytest.approx(4.0)
    assert _legend(fig) == ["score > 0", "score < 0", "not scored", "q (query)", "k (key)", "v (value)"]
    assert fig.axes[0].get_title() == "circuit: 6 of 110 edges, 5 nodes"
    assert plot_circuit(circuit, scores, title="IOI").axes[0].get_title() == "IOI"
    fig.savefig(tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    fig.savefig(tmp_path / "c.svg")
    svg = (tmp_path / "c.svg").read_text()
    assert 'id="a0.h1-&gt;m0"' in svg and 'id="a1.h2"' in svg  # edges and nodes keep their names
    assert matplotlib.get_backend() == backend


def test_without_scores_edges_are_grey_and_scores_may_be_a_tensor(small, graph):
    circuit, scores = small
    fig = plot_circuit(circuit)
    grey = to_rgba("0.45")[:3]
    assert all(p.get_edgecolor()[:3] == pytest.approx(grey) for p in _arrows(fig).values())
    assert _legend(fig) == ["q (query)", "k (key)", "v (value)"]
    as_tensor = plot_circuit(circuit, scores.scores)
    assert [p.get_linewidth() for p in _arrows(as_tensor).values()] == \
        [p.get_linewidth() for p in _arrows(plot_circuit(circuit, scores)).values()]


def test_empty_and_large_circuits(graph):
    empty = plot_circuit(Circuit(graph, torch.zeros(graph.n_edges, dtype=torch.bool)))
    assert set(_nodes(empty)) == {"input", "logits"} and not empty.axes[0].patches
    assert empty.axes[0].get_title().startswith("empty circuit")
    full = Circuit(graph, torch.ones(graph.n_edges, dtype=torch.bool))
    fig = plot_circuit(full, torch.randn(graph.n_edges))
    assert len(_arrows(fig)) == graph.n_edges and len(_nodes(fig)) == len(graph.nodes)
    assert all(t.get_gid() for t in fig.axes[0].texts)  # no q/k/v letters on a large circuit, only line styles
    g, pos = circuit_layout(full)
    assert set(g.nodes) == set(graph.nodes) and g.number_of_edges() == graph.n_edges
    for row in {y for _, y in pos.values()}:  # each row is centred, heads in order
        xs = [pos[n][0] for n in graph.nodes if pos[n][1] == row]
        assert sum(xs) == pytest.approx(0.0) and xs == sorted(xs)
    assert [pos[f"a1.h{h}"][0] for h in range(4)] == [-1.5, -0.5, 0.5, 1.5]


def test_a_real_tiny_model_with_grouped_query_attention(llama_tiny):
    graph = Graph.from_model(llama_tiny)
    scores = EdgeScores(graph, torch.randn(graph.n_edges, generator=torch.Generator().manual_seed(0)), "random")
    circuit = scores.circuit(40)
    assert circuit.n_edges > 0
    fig = plot_circuit(circuit, scores)
    assert set(_arrows(fig)) == set(circuit.edge_names())
    assert {t.get_text() for t in _nodes(fig).values()} == {node_label(n) for n in circuit.nodes()}


def test_bad_input_is_a_clear_error(small, graph):
    circuit, scores = small
    with pytest.raises(FuncnetError, match="draws a Circuit"):
        plot_circuit(scores)
    with pytest.raises(FuncnetError, match="one value per edge"):
        plot_circuit(circuit, torch.zeros(3))
    with pytest.raises(FuncnetError, match="another graph"):
        plot_circuit(circuit, EdgeScores(Graph(3, 4), torch.zeros(Graph(3, 4).n_edges), "x"))


def test_drawing_needs_no_pyplot():
    code = """
import sys, torch, matplotlib
from tl_funcnet.circuits import Circuit, FaithfulnessCurve, Graph, plot_circuit, plot_faithfulness
backend = matplotlib.rcParams._get_backend_or_none()
g = Graph(2, 2)
full = Circuit(g, torch.ones(g.n_edges, dtype=torch.bool))
plot_circuit(full, torch.randn(g.n_edges)).savefig("/dev/null", format="png")
c = FaithfulnessCurve((0.1, 1.0), (1, 10), (0.0, 1.0), (0.5, 1.0), 1.0, 0.0, "eap")
plot_faithfulness([c, c]).savefig("/dev/null", format="png")
assert "matplotlib.pyplot" not in sys.modules, "pyplot was imported"
assert matplotlib.rcParams._get_backend_or_none() == backend
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# --------------------------------------------------------------------------- faithfulness curves

FR = (0.001, 0.01, 0.1, 0.5, 1.0)


def _curve(f, method="eap", ablation="patching", fractions=FR):
    return FaithfulnessCurve(tuple(fractions), tuple(int(x * 1000) for x in fractions), tuple(f), tuple(f), 1.0, 0.0,
                             method, ablation)


def test_several_curves_in_one_figure():
    a, b = _curve([0.1, 0.5, 0.9, 1.0, 1.0]), _curve([0.0, 0.2, 0.4, 0.7, 1.0], method="exact")
    backend = matplotlib.get_backend()
    fig = plot_faithfulness([a, b])
    assert isinstance(fig, Figure) and matplotlib.get_backend() == backend
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_title() == "faithfulness of circuits by size"
    labels = _legend(fig)
    assert labels[0] == f"eap: CPR {a.cpr:.3f}, CMD {a.cmd:.3f}" and labels[1].startswith("exact: CPR")
    assert labels[2] == "first size with faithfulness >= 0.8"
    data = [line for line in ax.lines if line.get_marker() == "o"]
    assert [list(line.get_ydata()) for line in data] == [list(a.faithfulness), list(b.faithfulness)]
    assert list(data[0].get_xdata()) == pytest.approx([100 * x for x in FR])
    stars = [line for line in ax.lines if line.get_marker() == "*"]
    assert [(line.get_xdata()[0], line.get_ydata()[0]) for line in stars] == [(10.0, 0.9), (100.0, 1.0)]
    assert a.edges_for(0.8) == 100 and b.edges_for(0.8) == 1000


def test_labels_from_a_dict_or_from_ablations_and_a_linear_or_symlog_axis():
    a, z = _curve([0.1] * 5), _curve([0.2] * 5, ablation="zero")
    assert _legend(plot_faithfulness({"mine": a, "theirs": z}))[:2] == \
        [f"mine: CPR {a.cpr:.3f}, CMD {a.cmd:.3f}", f"theirs: CPR {z.cpr:.3f}, CMD {z.cmd:.3f}"]
    assert [t.split(":")[0] for t in _legend(plot_faithfulness([a, z]))] == ["eap (patching)", "eap (zero)"]
    assert "first size" not in " ".join(_legend(plot_faithfulness([a, z])))  # neither reaches 80%
    assert plot_faithfulness(a, log_x=False).axes[0].get_xscale() == "linear"
    with_zero = _curve([0.0, 0.1, 0.5, 1.0], fractions=(0.0, 0.01, 0.1, 1.0))
    assert plot_faithfulness(with_zero).axes[0].get_xscale() == "symlog"  # size 0 drawn, no warning


def test_curve_plot_method_and_bad_input():
    a = _curve([0.1, 0.5, 0.9, 1.0, 1.0])
    fig = a.plot()
    assert isinstance(fig, Figure) and fig.axes[0].get_title() == f"eap circuits: CPR {a.cpr:.3f}, CMD {a.cmd:.3f}"
    assert a.plot(title="IOI").axes[0].get_title() == "IOI" and a.plot(log_x=False).axes[0].get_xscale() == "linear"
    assert math.isclose(a.cpr, sum((FR[i + 1] - FR[i]) * (a.faithfulness[i] + a.faithfulness[i + 1]) / 2
                                   for i in range(4)))
    for bad, message in [([], "at least one"), ([a, 3], "FaithfulnessCurve values"), ("eap", "takes a Faithfulness"),
                         (None, "takes a Faithfulness")]:
        with pytest.raises(FuncnetError, match=message):
            plot_faithfulness(bad)
    with pytest.raises(FuncnetError, match="target"):
        plot_faithfulness(a, target=float("nan"))


def test_unit_group_nodes_are_drawn_with_their_network_name(gpt2_tiny):
    graph = Graph.from_model(gpt2_tiny, groups={"FN4": {0: [1, 2], 1: [3]}})
    keep = torch.zeros(graph.n_edges, dtype=torch.bool)
    keep[graph.edge_indices(["input->m0", "FN4.m0->a1.h1<q>", "a1.h1->m1", "FN4.m1->logits"])] = True
    circuit = Circuit(graph, keep)
    fig = plot_circuit(circuit)
    labels = {t.get_text() for t in _nodes(fig).values()}
    assert {"FN4 (L0)", "FN4 (L1)"} <= labels and set(_arrows(fig)) == set(circuit.edge_names())
