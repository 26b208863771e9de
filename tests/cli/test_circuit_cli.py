"""``tl-funcnet circuit`` end to end on a tiny saved model (the induction task needs no tokenizer): the edge list,
faithfulness and curve it prints, the circuit it saves, and the saving rules. Bad command lines are in
tests/test_cli.py (BAD_ARGS)."""

from __future__ import annotations

import json
import math

import pytest

from tl_funcnet.cli import main


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from tl_testing import make_gpt2_style

    from tl_funcnet.models import save

    return save(make_gpt2_style(n_ctx=32).eval(), tmp_path_factory.mktemp("model") / "tiny")


def _run(capsys, *argv):
    code = main(["circuit", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _args(folder, *extra):
    return ["--model", str(folder), "--task", "induction", "--n-pairs", "3", *extra]


def test_cli_methods_are_the_librarys():
    from tl_funcnet.circuits import METHODS
    from tl_funcnet.circuits.circuit import ABLATIONS
    from tl_funcnet.cli import circuits as cli

    assert cli.METHODS == (*METHODS, "exact") and cli.ABLATIONS == ABLATIONS
    assert set(cli.IG_METHODS) <= set(METHODS)


def test_json_report_saved_circuit_and_pictures(tiny_folder, tmp_path, capsys):
    from tl_funcnet.circuits import Circuit, Graph, faithfulness
    from tl_funcnet.models import load
    from tl_funcnet.patching import load_task

    out, plot = tmp_path / "circ", tmp_path / "circuit.png"
    code, stdout, err = _run(capsys, *_args(tiny_folder, "--method", "eap", "--edges", "30", "--curve", "--json",
                                            "--plot", str(plot), "--out", str(out)))
    assert code == 0, err
    data = json.loads(stdout)  # stdout holds only the JSON; progress went to stderr
    assert "loading" in err
    assert data["method"] == "eap" and data["ablation"] == "patching" and data["task"]["n_pairs"] == 3
    g = data["graph"]
    assert g["n_edges"] == 110 and data["scores"]["n_scored"] == 110 and len(data["scores"]["top"]) == 20
    c = data["circuit"]
    assert c["edges_requested"] == 30 and 0 < c["n_edges"] <= 30 and not c["from_sample"]
    assert len(c["edges"]) == c["n_edges"] and math.isfinite(c["faithfulness"])
    mags = [abs(e["score"]) for e in c["edges"]]
    assert mags == sorted(mags, reverse=True)  # the edge list, best first
    curve = data["curve"]
    assert len(curve["faithfulness"]) == 10 and curve["faithfulness"][-1] == pytest.approx(1.0, abs=1e-4)
    assert {"cpr", "cmd", "edges_for_80", "edges_for_80_bisection"} <= set(curve)
    assert set(data["seconds"]) >= {"load", "scores", "faithfulness", "curve", "total"}
    assert data["plot"] == str(plot) and plot.read_bytes()[:4] == b"\x89PNG"
    # the saved folder: the circuit (loads back), the report, and the pictures
    assert sorted(p.name for p in out.iterdir()) == ["circuit.json", "circuit.png", "faithfulness.png", "report.json"]
    assert json.loads((out / "report.json").read_text())["circuit"] == c
    circuit = Circuit.load(out)
    assert sorted(circuit.edge_names()) == sorted(e["edge"] for e in c["edges"])
    model = load(tiny_folder)
    task = load_task("induction", model, n_pairs=3)
    assert circuit.graph.to_dict() == Graph.from_model(model).to_dict()
    f = faithfulness(model, circuit, task.clean, task.metric(), corrupted=task.corrupted)
    assert f == pytest.approx(c["faithfulness"], abs=1e-4)  # the saved circuit is the one measured


def test_text_output_lists_the_edges_faithfulness_and_time(tiny_folder, capsys):
    code, stdout, err = _run(capsys, *_args(tiny_folder, "--edges", "20", "--top", "5", "--steps", "2",
                                            "--ablation", "zero"))
    assert code == 0, err
    lines = stdout.splitlines()
    assert lines[0].startswith("loading ") and lines[1].startswith("scoring 110 edges with eap-ig-inputs")
    assert any(line.startswith("graph: 110 edges; eap-ig-inputs (2 steps)") for line in lines)
    assert any("faithfulness" in line and "(zero ablation)" in line for line in lines)
    i = next(i for i, line in enumerate(lines) if line.startswith("top "))
    edges = lines[i + 1:i + 6]
    assert len(edges) == 5 and all("->" in e for e in edges)
    assert lines[-1].startswith("time: load ")


def test_exact_patching_of_a_sample(tiny_folder, capsys):
    code, stdout, err = _run(capsys, *_args(tiny_folder, "--method", "exact", "--sample", "25", "--edges", "10",
                                            "--json"))
    assert code == 0, err
    data = json.loads(stdout)
    assert data["scores"]["n_scored"] == 25 and data["circuit"]["from_sample"]
    assert data["circuit"]["n_edges"] <= 10 and all(math.isfinite(e["score"]) for e in data["circuit"]["edges"])
    code, stdout, err = _run(capsys, *_args(tiny_folder, "--method", "exact", "--sample", "all", "--edges", "10",
                                            "--json"))
    assert code == 0, err
    assert json.loads(stdout)["scores"]["n_scored"] == 110 and not json.loads(stdout)["circuit"]["from_sample"]


def test_edges_above_the_graph_size_is_one_line(tiny_folder, capsys):
    code, stdout, err = _run(capsys, *_args(tiny_folder, "--edges", "500"))
    assert code == 2 and err.splitlines()[-1] == ("tl-funcnet circuit: error: --edges 500 is more than the 110 "
                                                  f"edges of {tiny_folder}'s graph")


def test_results_are_replaced_only_with_overwrite(tiny_folder, tmp_path, capsys, monkeypatch):
    out, plot = tmp_path / "circ", tmp_path / "c.png"
    base = _args(tiny_folder, "--method", "eap")
    assert _run(capsys, *base, "--edges", "15", "--out", str(out), "--plot", str(plot))[0] == 0
    first, picture = (out / "circuit.json").read_text(), plot.read_bytes()
    (tmp_path / "folder.png").mkdir()

    import tl_funcnet.models
    import tl_funcnet.models._load as loading

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(loading, "load", refuse)
    monkeypatch.setattr(tl_funcnet.models, "load", refuse)
    for extra, message in [(["--out", str(tmp_path / "new"), "--plot", str(plot)], "already exists; pass --overwrite"),
                           (["--out", str(out), "--plot", str(tmp_path / "new.png")],
                            "already holds a saved circuit; pass --overwrite"),
                           (["--plot", str(tmp_path / "folder.png"), "--overwrite"], "is a folder")]:
        code, stdout, err = _run(capsys, *base, "--edges", "15", *extra)
        assert code == 2 and stdout == "" and len(err.splitlines()) == 1 and message in err, err
    assert (out / "circuit.json").read_text() == first and plot.read_bytes() == picture
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png", "circ", "folder.png"]
    monkeypatch.undo()
    assert _run(capsys, *base, "--edges", "25", "--out", str(out), "--plot", str(plot), "--overwrite")[0] == 0
    assert json.loads((out / "report.json").read_text())["circuit"]["edges_requested"] == 25


def test_help_names_every_option():
    from tl_funcnet.cli import build_parser

    parser, _ = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["circuit"]
    text = sub.format_help()
    for option in ("--task", "--method", "--edges", "--model", "--n-pairs", "--steps", "--ablation", "--curve",
                   "--plot", "--out", "--overwrite", "--json", "--sample"):
        assert option in text


def test_functional_networks_as_senders(tiny_folder, tmp_path, capsys):
    import torch

    from tl_funcnet.activations import collect
    from tl_funcnet.circuits import Circuit, network_groups
    from tl_funcnet.funcnet import FunctionalNetworks
    from tl_funcnet.models import load

    model = load(tiny_folder)
    g = torch.Generator().manual_seed(0)
    acts = collect(model, [torch.randint(0, 50, (12,), generator=g) for _ in range(12)], "mlp.hook_post",
                   progress=False)
    nets = FunctionalNetworks(3, threshold=1.5, max_iter=50).fit(acts)
    nets.save(tmp_path / "nets")
    groups = network_groups(nets, [0, 2])
    code, stdout, err = _run(capsys, *_args(tiny_folder, "--method", "eap", "--edges", "40", "--json",
                                            "--networks", str(tmp_path / "nets"), "--network-ids", "0,2",
                                            "--out", str(tmp_path / "c")))
    assert code == 0, err
    data = json.loads(stdout)
    assert set(data["networks"]) == set(groups) and data["graph"]["groups"]
    for name, row in data["networks"].items():
        assert row["layers"] == sorted(groups[name]) and row["edges"] > 0 and row["abs_score"] >= abs(row["score"])
    assert Circuit.load(tmp_path / "c").graph.to_dict() == data["graph"]
    code, stdout, _ = _run(capsys, *_args(tiny_folder, "--edges", "20", "--networks", str(tmp_path / "nets")))
    assert code == 0 and "networks (summed score" in stdout and "FN1: layers" in stdout
