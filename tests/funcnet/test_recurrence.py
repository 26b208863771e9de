"""recurrence(): fits on disjoint splits of the sequences, matched to the first split's networks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from networks_testing import planted_acts
from tl_funcnet.errors import FuncnetError
from tl_funcnet.funcnet import FunctionalNetworks, RecurrenceReport, recurrence
from tl_funcnet.funcnet.recurrence import iou_matrix, map_correlation, subset


@pytest.fixture(scope="module")
def acts():
    return planted_acts()


def test_planted_networks_recur_in_every_split(acts):
    rep = recurrence(acts, 3, networks=FunctionalNetworks(3), random_state=0)
    assert isinstance(rep, RecurrenceReport)
    assert rep.best_match.shape == (2, 3) and rep.recurrence.tolist() == [1.0, 1.0, 1.0]
    assert rep.best_match.min() > 0.9 and rep.similarity == "correlation" and rep.min_similarity == 0.5
    d = rep.to_dict()
    assert d["mean_recurrence"] == 1.0 and d["n_splits"] == 3 and sum(d["split_sizes"]) == acts.n_sequences
    iou = recurrence(acts, 2, similarity="iou", networks=FunctionalNetworks(3), random_state=0)
    assert iou.best_match.min() > 0.8 and iou.min_similarity == 0.2


def test_settings_come_from_the_template_and_random_state_shuffles(acts):
    # a template threshold that selects no unit gives empty masks: IoU 0 everywhere
    empty = recurrence(acts, 2, similarity="iou", networks=FunctionalNetworks(3, threshold=1e6))
    assert empty.best_match.max() == 0.0 and empty.recurrence.tolist() == [0.0, 0.0, 0.0]
    # n_networks comes from the template as well
    assert recurrence(acts, 2, networks=FunctionalNetworks(2)).best_match.shape == (1, 2)
    # min_similarity sets the bar
    strict = recurrence(acts, 2, networks=FunctionalNetworks(3), min_similarity=0.999999)
    assert strict.recurrence.max() < 1.0
    # random_state only changes which sequences go where; the default is 0
    a = recurrence(acts, 2, networks=FunctionalNetworks(3))
    b = recurrence(acts, 2, networks=FunctionalNetworks(3), random_state=0)
    c = recurrence(acts, 2, networks=FunctionalNetworks(3), random_state=1)
    assert np.array_equal(a.best_match, b.best_match) and not np.array_equal(a.best_match, c.best_match)


def test_the_template_is_not_fitted(acts):
    template = FunctionalNetworks(3)
    recurrence(acts, 2, networks=template)
    assert not hasattr(template, "maps_")


@pytest.mark.parametrize("kw,match", [({"n_splits": 1}, "n_splits"), ({"n_splits": 31}, "n_splits"),
                                      ({"n_splits": 2.0}, "n_splits"), ({"n_splits": True}, "n_splits"),
                                      ({"similarity": "cosine"}, "similarity"),
                                      ({"networks": {"n_networks": 3}}, "FunctionalNetworks")])
def test_bad_arguments(acts, kw, match):
    kw = {"n_splits": 2, **kw}
    with pytest.raises(FuncnetError, match=match):
        recurrence(acts, **kw)
    with pytest.raises(TypeError):  # settings no longer pass through **kwargs
        recurrence(acts, 2, n_networks=3)


def test_similarity_matrices_and_subset(acts):
    a = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1]], dtype=torch.bool)
    b = torch.tensor([[1, 0, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)
    np.testing.assert_allclose(iou_matrix(a, b), [[0.5, 0, 0], [0, 1, 0]])
    m = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    c = map_correlation(m, torch.cat([m[:1], -m[1:2]]))
    np.testing.assert_allclose(c, np.corrcoef(m.numpy(), torch.cat([m[:1], -m[1:2]]).numpy())[:3, 3:], atol=1e-6)
    sub = subset(acts, [2, 0])
    assert sub.n_sequences == 2 and sub.n_samples == 200 and sub.sites == acts.sites
    assert torch.equal(sub[acts.sites[0]][:100], acts[acts.sites[0]][200:300])
    assert torch.equal(sub[acts.sites[1]][100:], acts[acts.sites[1]][:100])
