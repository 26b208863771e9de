"""Task data validation, results (grid, pandas, Figures, correlation) and the CLI hook-up, on tiny models."""

from __future__ import annotations

import json
from importlib import resources

import matplotlib

import pytest
import torch

from tl_testing import count_hooks
from tl_funcnet.errors import FormatError, FuncnetError, ShapeError
from tl_funcnet.hooks import ablate
from matplotlib.figure import Figure

from tl_funcnet.patching import (TASKS, PatchResult, correlation, exact_patch, load_task, node_grid, run_patching,
                                 task_report)
from tl_funcnet.patching.tasks import check_task_spec


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


def _pairs(name):
    return json.loads(resources.files("tl_funcnet.data").joinpath(f"tasks/{name}.json").read_text())["pairs"]


def test_builtin_task_names():
    assert TASKS == ("ioi", "greater_than", "capital", "induction", "sva")


def test_ioi_mixes_templates_and_both_name_orders():
    pairs = _pairs("ioi")
    orders, templates = [], []
    for p in pairs:
        io, s = p["answer"].strip(), p["distractor"].strip()
        intro = p["clean"].split(",")[0].split(".")[0].split()
        first, second = intro[intro.index("and") - 1], intro[intro.index("and") + 1]
        assert {first, second} == {io, s} and p["clean"].count(f" {s} ") == 2  # the subject is repeated
        before, _, after = p["clean"].rpartition(f" {s} ")
        assert p["corrupted"] == f"{before} {io} {after}"  # the corrupted prompt repeats the other name
        orders.append("ABBA" if first == io else "BABA")
        templates.append(" ".join("_" if w.strip(",.") in (io, s) else w for w in p["clean"].split()[:5]))
    assert len(set(templates)) >= 4 and orders.count("ABBA") == orders.count("BABA")
    # the first pairs already mix templates and orders (tasks are often loaded with n_pairs=4 or 8)
    assert set(orders[:4]) == {"ABBA", "BABA"} and len(set(templates[:8])) >= 4


def test_sva_pairs_differ_only_in_the_subjects_number():
    pairs = _pairs("sva")
    for p in pairs:
        c, k = p["clean"].split(), p["corrupted"].split()
        diff = [i for i, (a, b) in enumerate(zip(c, k)) if a != b]
        assert len(c) == len(k) and diff == [1], p  # "The <subject> <prep> the <attractor>"
        plural = p["answer"] == " are"
        assert {p["answer"], p["distractor"]} == {" is", " are"}
        assert (c[1], k[1]) in {(k[1] + "s", k[1]) if plural else (c[1], c[1] + "s")}, p
    assert sum(p["answer"] == " are" for p in pairs) == len(pairs) // 2


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
    # under an intervention: the same numbers as a hand-applied one, and no hook left behind
    iv = ablate("blocks.1.hook_resid_post")
    with iv.applied(gpt2_tiny):
        by_hand = task_report(gpt2_tiny, t)
    assert task_report(gpt2_tiny, t, iv) == by_hand != rep
    assert count_hooks(gpt2_tiny) == 0
    with pytest.raises(FuncnetError, match="intervention should be an Intervention"):
        task_report(gpt2_tiny, t, "ablate everything")


def test_tasks_fit_the_model(gpt2_tiny):
    with pytest.raises(ShapeError, match="19 tokens, longer than the model's context of 12"):
        load_task("induction", gpt2_tiny)  # 2 x 10 - 1 tokens
    # a vocabulary smaller than the generator's range: tokens come from all of it
    t = load_task({"generator": {"kind": "induction", "n_pairs": 2, "seq_len": 5, "vocab_range": [1000, 10000]}},
                  gpt2_tiny)
    assert t.clean.shape == (2, 9) and int(t.clean.max()) < gpt2_tiny.cfg.d_vocab


def _induction(model, n_pairs=3, seq_len=4):
    return load_task({"name": "ind", "generator": {"kind": "induction", "n_pairs": n_pairs, "seq_len": seq_len}},
                     model)


def test_result_frame_dict_and_top(gpt2_tiny):
    t = _induction(gpt2_tiny)
    res = run_patching(gpt2_tiny, t, method="exact", nodes="resid")
    df = res.to_frame()
    assert list(df.columns[:2]) == ["layer", "pos"] and len(df) == 2 * t.n_pos
    assert df["effect"].tolist() == pytest.approx(res.effects.tolist())
    assert set(df["method"]) == {"exact"} and df["site"].iloc[0] == "blocks.0.hook_resid_pre"
    assert df.loc[(df["layer"] == 1) & (df["pos"] == 2), "effect"].item() == pytest.approx(res.grid()[1, 2].item())
    d = res.to_dict()
    json.dumps(d)  # JSON-able
    assert d["shape"] == [2, t.n_pos] and torch.equal(torch.tensor(d["effects"]), res.grid())
    assert d["baseline"] == res.baseline and d["method"] == "exact" and d["n_prompts"] == 3
    top = res.top(2)
    assert len(top) == 2 and abs(top[0][1]) == pytest.approx(float(res.effects.abs().max()))
    assert abs(top[0][1]) >= abs(top[1][1])
    assert not hasattr(res, "values") and not hasattr(res, "to_dataframe")


def test_correlation_of_results_and_tensors(gpt2_tiny):
    t = _induction(gpt2_tiny)
    exact = run_patching(gpt2_tiny, t, method="exact", nodes="mlp")
    atp = run_patching(gpt2_tiny, t, method="atp", nodes="mlp")
    same = correlation(exact, exact)
    assert same["pearson"] == pytest.approx(1.0) and same["spearman"] == pytest.approx(1.0)
    r = correlation(exact, atp)
    x, y = exact.effects.double(), atp.effects.double()
    assert r["pearson"] == pytest.approx(float(torch.corrcoef(torch.stack([x, y]))[0, 1]), abs=1e-9)
    assert correlation(exact, atp.effects) == r  # a result or its effects
    assert correlation(torch.tensor([1.0, 2, 3]), torch.tensor([3.0, 2, 1]))["spearman"] == pytest.approx(-1.0)
    assert correlation(torch.tensor([1.0, 2, 2, 5]), torch.tensor([1.0, 3, 3, 4]))["spearman"] == pytest.approx(1.0)
    flat = correlation(torch.tensor([1.0, 2, 3]), torch.ones(3))
    assert flat["pearson"] != flat["pearson"]  # NaN where one side is constant
    assert correlation(torch.tensor([1.0, 2, 3]), torch.tensor([1.0, 4, 9]))["pearson"] < 1.0


def test_plot_returns_a_figure_without_touching_the_backend(gpt2_tiny, tmp_path):
    t = _induction(gpt2_tiny)
    backend = matplotlib.get_backend()
    for nodes in ("resid", "head", "neuron"):  # 2-D, 3-D (summed over heads) and 3-D neuron grids
        res = run_patching(gpt2_tiny, t, method="atp", nodes=nodes)
        fig = res.plot(title=f"{nodes} effects")
        assert isinstance(fig, Figure) and matplotlib.get_backend() == backend
        assert fig.axes[0].get_title() == f"{nodes} effects"
        img = fig.axes[0].images[0].get_array()
        assert img.shape == res.grid().shape[:2]
    assert "atp patching" in res.plot().axes[0].get_title()
    res.plot().savefig(tmp_path / "h.png")
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
    flat = run_patching(gpt2_tiny, t, method="exact", nodes=node_grid(gpt2_tiny, "head", t.n_pos, by_pos=False))
    assert isinstance(flat.plot(), Figure)
    assert matplotlib.get_backend() == backend


def test_run_patching_methods_agree_in_shape_and_meaning(gpt2_tiny):
    t = _induction(gpt2_tiny, n_pairs=2)
    res = {m: run_patching(gpt2_tiny, t, method=m, nodes="head") for m in ("exact", "atp", "relp")}
    assert {r.grid().shape for r in res.values()} == {(2, t.n_pos, 4)}
    assert all(isinstance(r, PatchResult) and r.method == m for m, r in res.items())
    # one baseline (the unpatched corrupted run) for every method
    assert res["atp"].baseline == pytest.approx(res["exact"].baseline, abs=1e-5)
    assert res["relp"].baseline == pytest.approx(res["exact"].baseline, abs=1e-5)
    torch.testing.assert_close(res["atp"].patched, res["atp"].baseline + res["atp"].effects)
    with pytest.raises(FuncnetError, match="method"):
        run_patching(gpt2_tiny, t, method="ig")
    with pytest.raises(FuncnetError, match="rules"):
        run_patching(gpt2_tiny, t, method="atp", rules="LN")
    with pytest.raises(FuncnetError, match="Task"):
        run_patching(gpt2_tiny, {"name": "ind"}, method="exact")
    with pytest.raises(TypeError):  # no **kwargs any more
        run_patching(gpt2_tiny, t, method="exact", reuse_prefix=False)
    assert run_patching(gpt2_tiny, t, method="relp", nodes="mlp", rules="LN").info["rules"] == ["LN"]


def test_check_task_spec_needs_no_model(tmp_path):
    for name in TASKS:
        check_task_spec(name)
    check_task_spec({"generator": {"kind": "induction"}})
    with pytest.raises(FuncnetError, match="unknown task"):
        check_task_spec("ioii")
    with pytest.raises(FormatError, match="pairs"):
        check_task_spec({"name": "t"})
    bad = tmp_path / "t.json"
    bad.write_text("{not json")
    with pytest.raises(FormatError, match="JSON"):
        check_task_spec(bad)
    with pytest.raises(FuncnetError, match="does not exist"):
        check_task_spec(tmp_path / "missing.json")


def test_patch_command_parses_and_checks_before_loading(capsys, tmp_path):
    from tl_funcnet.cli import build_parser, main

    parser, handlers = build_parser()
    args = parser.parse_args(["patch", "--task", "capital", "--method", "relp", "--node", "head", "--json"])
    assert (args.task, args.method, args.node, args.json) == ("capital", "relp", "head", True)
    assert callable(handlers["patch"])
    assert main(["patch", "--method", "ig"]) == 2
    assert "ig" in capsys.readouterr().err
    assert main(["patch", "--model", str(tmp_path / "nope"), "--task", "capital"]) == 2
    assert "error" in capsys.readouterr().err
    assert main(["patch", "--task", "ioii"]) == 2  # the task is checked before the model is loaded
    assert "unknown task" in capsys.readouterr().err


def test_exact_patch_grid_order_matches_node_grid(gpt2_tiny):
    t = load_task({"name": "ind", "generator": {"kind": "induction", "n_pairs": 2, "seq_len": 3}}, gpt2_tiny)
    ns = node_grid(gpt2_tiny, "mlp", t.n_pos)
    res = exact_patch(gpt2_tiny, t.clean, t.corrupted, ns, t.metric())
    assert [n.coords for n in ns.nodes][:3] == [(0, 0), (0, 1), (0, 2)]
    assert res.grid()[1, 2].item() == res.effects[1 * t.n_pos + 2].item()
