"""Network plots are matplotlib Figures, made without pyplot and without touching the global backend."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from networks_testing import PLANTED, SITES, planted_acts
from tl_funcnet.activations import Activations
from tl_funcnet.errors import FuncnetError, NotFittedError
from tl_funcnet.funcnet import FunctionalNetworks
from tl_funcnet.funcnet.plots import plot_layer_counts, plot_network_map


@pytest.fixture(scope="module")
def fitted():
    return FunctionalNetworks(3).fit(planted_acts())


def test_network_map_is_a_figure_of_key_units(fitted, tmp_path):
    backend = matplotlib.get_backend()
    fig = plot_network_map(fitted, title="planted")
    assert isinstance(fig, Figure) and matplotlib.get_backend() == backend
    ax = fig.axes[0]
    assert ax.get_title() == "planted"
    img = np.asarray(ax.images[0].get_array(), dtype=float)
    assert img.shape == (2, 200)
    counts = np.nan_to_num(img)
    want = np.zeros((2, 200))
    for units in PLANTED:
        for u in units:
            want[u // 200, u % 200] += 1
    assert np.array_equal(counts, want)  # each key unit counts the networks containing it; the rest is empty
    assert "18 key units" in plot_network_map(fitted).axes[0].get_title()
    sub = plot_network_map(fitted, [0])
    assert int(np.isfinite(np.asarray(sub.axes[0].images[0].get_array(), dtype=float)).sum()) == 6
    fig.savefig(tmp_path / "map.png")
    assert (tmp_path / "map.png").read_bytes()[:4] == b"\x89PNG"
    assert matplotlib.get_backend() == backend


def test_layer_counts_bars_match_per_site_counts(fitted, tmp_path):
    backend = matplotlib.get_backend()
    fig = plot_layer_counts(fitted)
    assert isinstance(fig, Figure) and matplotlib.get_backend() == backend
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert heights == list(fitted.per_site_counts().values()) == [12, 6]
    assert [p.get_height() for p in plot_layer_counts(fitted, [2, 1]).axes[0].patches] == \
        list(fitted.per_site_counts([2, 1]).values())
    fig.savefig(tmp_path / "counts.png")
    assert (tmp_path / "counts.png").stat().st_size > 0


def test_plots_of_sites_with_different_widths():
    # a hard-pruned model's layers differ in width: missing cells stay empty (NaN)
    g = torch.Generator().manual_seed(0)
    X0, X1 = torch.randn(400, 30, generator=g), torch.randn(400, 12, generator=g)
    acts = Activations({SITES[0]: X0, SITES[1]: X1}, torch.zeros(400, dtype=torch.long), torch.tensor([0, 200, 400]))
    fn = FunctionalNetworks(3, threshold=1.0).fit(acts)
    img = np.asarray(plot_network_map(fn).axes[0].images[0].get_array(), dtype=float)
    assert img.shape == (2, 30) and np.isnan(img[1, 12:]).all()
    assert [p.get_height() for p in plot_layer_counts(fn).axes[0].patches] == list(fn.per_site_counts().values())


def test_plots_need_a_fitted_model_and_valid_ids(fitted):
    with pytest.raises(NotFittedError):
        plot_network_map(FunctionalNetworks(3))
    with pytest.raises(NotFittedError):
        plot_layer_counts(FunctionalNetworks(3))
    with pytest.raises(FuncnetError, match="out of range"):
        plot_network_map(fitted, [7])
