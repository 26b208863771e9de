"""Task data validation, results (pandas, heatmaps) and the CLI hook-up, on tiny models."""

from __future__ import annotations

import argparse
import json
from importlib import resources

import pytest
import torch

from tl_funcnet.errors import FormatError, FuncnetError, ShapeError
from tl_funcnet.patching import (TASKS, correlation, exact_patch, load_task, node_grid, plot_heatmap, run_patching,
                                 task_report)
from tl_funcnet.patching.cli import add_patch_command


class CharTokenizerModel:
    """Stand-in with ``to_tokens`` splitting on spaces (one token per word, leading space kept)."""

    def __init__(self):
        self.tokenizer = object()
        self.vocab: dict[str, int] = {}

    def to_tokens(self, text, prepend_bos=False):
        words = text.replace(" ", "\0 ").split("\0")
        ids = [self.vocab.setdefault(w, len(self.vocab)) for w in words if w]
        return torch.tensor([ids])

    def to_str_tokens(self, text, prepend_bos=False):
        return [w for w in text.replace(" ", "\0 ").split("\0") if w]


def _pair(**kw):
    return {"clean": "a b c", "corrupted": "a x c", "answer": " d", "distractor": " e", **kw}


def test_builtin_task_files_are_well_formed():
    for name in TASKS:
        data = json.loads(resources.files("tl_funcnet.data").joinpath(f"tasks/{name}.json").read_text())
        assert data["name"] == name
        if "pairs" in data:
            assert len(data["pairs"]) >= 16
            assert all(set(p) == {"clean", "corrupted", "answer", "distractor"} for p in data["pairs"])


def test_load_task_tokenizes_and_validates():
    m = CharTokenizerModel()
    t = load_task({"name": "t", "pairs": [_pair(), _pair(clean="q b c", answer=" f")]}, m)
    assert t.clean.shape == (2, 3) and t.answer.tolist()[0] != t.answer.tolist()[1]
    with pytest.raises(ShapeError, match="corrupted is 2"):
        load_task({"pairs": [_pair(corrupted="a c")]}, m)
    with pytest.raises(ShapeError, match="share one token length"):
        load_task({"pairs": [_pair(), _pair(clean="a b c d", corrupted="a x c d")]}, m)
    with pytest.raises(ShapeError, match="one token"):
        load_task({"pairs": [_pair(answer=" two words")]}, m)
    with pytest.raises(FormatError, match="lacks"):
        load_task({"pairs": [{"clean": "a"}]}, m)
    with pytest.raises(FuncnetError, match="unknown task"):
        load_task("ioii", m)


def test_induction_task_is_generated(gpt2_tiny):
    t = load_task({"name": "ind", "generator": {"kind": "induction", "n_pairs": 4, "seq_len": 5}}, gpt2_tiny)
    assert t.clean.shape == (4, 9)
    assert torch.equal(t.clean[:, 5:], t.clean[:, :4]) and torch.equal(t.corrupted[:, 5:], t.clean[:, 5:])
    assert torch.equal(t.answer, t.clean[:, 4])
    rep = task_report(gpt2_tiny, t)
    assert rep["n_pairs"] == 4 and 0.0 <= rep["top1_accuracy"] <= 1.0


def test_result_dataframe_heatmap_and_correlation(gpt2_tiny, tmp_path):
    t = load_task({"name": "ind", "generator": {"kind": "induction", "n_pairs": 3, "seq_len": 4}}, gpt2_tiny)
    res = run_patching(gpt2_tiny, t, method="exact", nodes="resid")
    df = res.to_dataframe()
    assert list(df.columns[:2]) == ["layer", "pos"] and len(df) == 2 * t.n_pos
    assert df["effect"].tolist() == pytest.approx((res.values - res.baseline).tolist())
    png = tmp_path / "h.png"
    plot_heatmap(res, str(png))
    assert png.read_bytes()[:4] == b"\x89PNG"
    same = correlation(res, res)
    assert same["pearson"] == pytest.approx(1.0) and same["spearman"] == pytest.approx(1.0)
    assert correlation(torch.tensor([1.0, 2, 3]), torch.tensor([3.0, 2, 1]))["spearman"] == pytest.approx(-1.0)
    assert res.top(2)[0][1] == pytest.approx(float(res.effects.abs().max()) * (1 if res.top(2)[0][1] > 0 else -1))


def test_run_patching_methods_agree_in_shape(gpt2_tiny):
    t = load_task({"name": "ind", "generator": {"kind": "induction", "n_pairs": 2, "seq_len": 4}}, gpt2_tiny)
    shapes = {m: run_patching(gpt2_tiny, t, method=m, nodes="head").grid.shape for m in ("exact", "atp", "relp")}
    assert set(shapes.values()) == {(2, t.n_pos, 4)}
    with pytest.raises(FuncnetError, match="method"):
        run_patching(gpt2_tiny, t, method="ig")


def test_add_patch_command_parses():
    parser = argparse.ArgumentParser()
    add_patch_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["patch", "--task", "capital", "--method", "relp", "--node", "head", "--json"])
    assert (args.task, args.method, args.node, args.json) == ("capital", "relp", "head", True)
    assert callable(args.func)
    with pytest.raises(SystemExit):
        parser.parse_args(["patch", "--method", "ig"])


def test_exact_patch_grid_order_matches_node_grid(gpt2_tiny):
    t = load_task({"name": "ind", "generator": {"kind": "induction", "n_pairs": 2, "seq_len": 3}}, gpt2_tiny)
    ns = node_grid(gpt2_tiny, "mlp", t.n_pos)
    res = exact_patch(gpt2_tiny, t.clean, t.corrupted, ns, t.metric())
    assert [n.coords for n in ns.nodes][:3] == [(0, 0), (0, 1), (0, 2)]
    assert res.grid[1, 2].item() == res.values[1 * t.n_pos + 2].item()
