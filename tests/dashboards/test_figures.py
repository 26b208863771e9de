"""Interactive figures: token-labelled patching heatmaps, network sizes, curves and bars."""

from __future__ import annotations

import pytest
import torch

from tl_funcnet.dashboards import bars, curves, network_sizes, patching_heatmap, position_labels
from tl_funcnet.errors import FuncnetError, ShapeError
from tl_funcnet.funcnet import FunctionalNetworks
from tl_funcnet.patching import run_patching
from tl_funcnet.patching.tasks import Task


class _Tok:
    def batch_decode(self, ids, clean_up_tokenization_spaces=False):
        return [f"w{i[0]}" for i in ids]


@pytest.fixture
def task(gpt2_tiny):
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 50, (3, 6), generator=g)
    corrupted = clean.clone()
    corrupted[:, 2] = (clean[:, 2] + 1) % 50
    return Task("toy", clean, corrupted, torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6]))


def test_position_labels_show_the_first_prompt_and_every_token_on_hover():
    class M:
        tokenizer = _Tok()

    tokens = torch.tensor([[1, 2, 3], [1, 9, 3]])
    labels, hover = position_labels(M(), tokens)
    assert labels == ["0 'w1'", "1 'w2'", "2 'w3'"]
    assert hover == ["'w1'", "'w2', 'w9'", "'w3'"]
    with pytest.raises(ShapeError):
        position_labels(M(), torch.tensor([1, 2]))


def test_patching_heatmap_puts_tokens_on_the_position_axis(gpt2_tiny, task):
    r = run_patching(gpt2_tiny, task, method="atp", nodes="mlp")
    fig = patching_heatmap(r, model=gpt2_tiny, tokens=task.clean)
    heat = fig.data[0]
    assert list(heat.x) == [f"{p} '<{int(t)}>'" for p, t in enumerate(task.clean[0])]
    assert list(heat.y) == ["L0", "L1"]
    torch.testing.assert_close(torch.tensor(heat.z), r.grid())
    assert heat.zmin == -heat.zmax and "tokens:" in heat.hovertemplate
    assert len(heat.customdata[0]) == task.n_pos
    plain = patching_heatmap(r)  # no tokens: numbered positions
    assert list(plain.data[0].x) == [str(i) for i in range(task.n_pos)]
    with pytest.raises(FuncnetError, match="pass model="):
        patching_heatmap(r, tokens=task.clean)
    with pytest.raises(ShapeError, match="positions"):
        patching_heatmap(r, model=gpt2_tiny, tokens=task.clean[:, :3])


def test_patching_heatmap_sums_a_third_axis_and_draws_flat_results_as_bars(gpt2_tiny, task):
    heads = run_patching(gpt2_tiny, task, method="atp", nodes="head_pos")
    fig = patching_heatmap(heads, model=gpt2_tiny, tokens=task.clean)
    torch.testing.assert_close(torch.tensor(fig.data[0].z), heads.grid().nansum(-1))
    assert "summed over head" in fig.layout.title.text
    from tl_funcnet.patching.nodes import units_nodes

    flat = run_patching(gpt2_tiny, task, method="atp", nodes=units_nodes("blocks.0.mlp.hook_post", [[0, 1], [2]]))
    bar = patching_heatmap(flat)
    assert bar.data[0].type == "bar" and len(bar.data[0].y) == 2


def test_network_sizes_stack_each_networks_units_per_layer(gpt2_tiny):
    from tl_funcnet.activations import collect

    seqs = list(torch.randint(0, 50, (30, 12), generator=torch.Generator().manual_seed(1)))
    acts = collect(gpt2_tiny, seqs, "mlp.hook_post", progress=False)
    fn = FunctionalNetworks(3, threshold=2.0).fit(acts)
    fig = network_sizes(fn)
    assert len(fig.data) == fn.n_networks_total
    for i, trace in enumerate(fig.data):
        assert list(trace.y) == [fn.per_site_counts([i])[s] for s in fn.sites_]
    with pytest.raises(FuncnetError, match="out of range"):
        network_sizes(fn, ids=[99])


def test_curves_and_bars():
    fig = curves({"a": [(0.1, 2.0), (0.2, 3.0)], "b": [(0.1, 1.0)]}, title="t", x_title="x", y_title="y", log_y=True)
    assert [t.name for t in fig.data] == ["a", "b"] and fig.layout.yaxis.type == "log"
    with pytest.raises(FuncnetError):
        curves({}, title="t", x_title="x", y_title="y")
    fig = bars({"one": 1.0, "two": 2.0}, title="t", x_title="x", reference=0.5)
    assert list(fig.data[0].y) == ["one", "two"] and fig.layout.shapes
