"""Edges per position: attribution scores split over the prompt's positions, and exact edge patching at one
position (its oracle)."""

from __future__ import annotations

import pytest
import torch

from tl_funcnet.circuits import METHODS, Graph, edge_scores, exact_edge_scores
from tl_funcnet.errors import FuncnetError
from tl_funcnet.patching import logit_diff

METRIC = logit_diff([1, 2, 3], [4, 5, 6])
FIRST_CHANGE = 2


@pytest.fixture
def pair():
    g = torch.Generator().manual_seed(31)
    clean = torch.randint(0, 50, (3, 7), generator=g)
    corr = clean.clone()
    corr[:, FIRST_CHANGE] = (clean[:, FIRST_CHANGE] + 7) % 50
    corr[:, 5] = (clean[:, 5] + 3) % 50
    return clean, corr


@pytest.mark.parametrize("method", METHODS)
def test_per_position_scores_sum_to_the_scores(tiny_model, pair, method):
    graph = Graph.from_model(tiny_model)
    plain = edge_scores(tiny_model, graph, *pair, METRIC, method=method, steps=2)
    s = edge_scores(tiny_model, graph, *pair, METRIC, method=method, steps=2, per_position=True)
    assert s.per_position.shape == (graph.n_edges, 7) and plain.per_position is None
    torch.testing.assert_close(s.per_position.sum(1), s.scores, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(s.scores, plain.scores, atol=1e-5, rtol=1e-4)
    # in a causal model nothing differs before the first changed token, so no edge acts there
    assert bool((s.per_position[:, :FIRST_CHANGE] == 0).all())
    assert float(s.per_position[:, FIRST_CHANGE:].abs().max()) > 0


def test_exact_at_one_position(tiny_model, pair):
    graph = Graph.from_model(tiny_model)
    edges = [i for i in range(graph.n_edges) if graph.receivers[int(graph.edges[i, 1])] == "logits"]
    everywhere = exact_edge_scores(tiny_model, graph, *pair, METRIC, edges=edges)
    last = exact_edge_scores(tiny_model, graph, *pair, METRIC, edges=edges, position=-1)
    early = exact_edge_scores(tiny_model, graph, *pair, METRIC, edges=edges, position=FIRST_CHANGE - 1)
    # the metric reads the last position's logits, which read the logits receiver there only
    torch.testing.assert_close(last.scores[edges], everywhere.scores[edges], atol=1e-5, rtol=0)
    assert float(early.scores[edges].abs().max()) < 1e-5 and last.info["position"] == -1  # (float noise only)
    # and attribution per position estimates it (first order)
    s = edge_scores(tiny_model, graph, *pair, METRIC, method="eap", per_position=True)
    assert bool((s.per_position[edges, :-1] == 0).all())


@pytest.mark.parametrize("position", [7, -8, 1.5, True, "last"])
def test_bad_positions_are_refused(gpt2_tiny, pair, position):
    graph = Graph.from_model(gpt2_tiny)
    with pytest.raises(FuncnetError, match="position"):
        exact_edge_scores(gpt2_tiny, graph, *pair, METRIC, edges=[0], position=position)


def test_per_position_flag_is_checked(gpt2_tiny, pair):
    with pytest.raises(FuncnetError, match="per_position"):
        edge_scores(gpt2_tiny, Graph.from_model(gpt2_tiny), *pair, METRIC, per_position="yes")
