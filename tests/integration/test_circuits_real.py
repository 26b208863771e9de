"""``tl-funcnet circuit`` on SmolLM2 (slow): EAP-IG over all 123,211 edges of IOI, a 300-edge circuit, its
faithfulness curve, and the circuit saved, loaded and measured again."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow

FLAGS = ("use_split_qkv_input", "use_attn_result", "use_hook_mlp_in", "ungroup_grouped_query_attention")


def test_circuit_command_on_smollm2_ioi(smollm2, tmp_path, capsys, monkeypatch):
    import tl_funcnet.models
    from tl_funcnet.circuits import Circuit, Graph, faithfulness
    from tl_funcnet.cli import main
    from tl_funcnet.patching import load_task

    def loaded(spec, **kwargs):  # the session's model, not a second copy
        assert spec == "smollm2-135m" and kwargs in ({}, {"backend": "hooked"})
        return smollm2

    monkeypatch.setattr(tl_funcnet.models, "load", loaded)
    flags = {f: getattr(smollm2.cfg, f) for f in FLAGS}
    out, plot = tmp_path / "ioi_circuit", tmp_path / "ioi.png"
    code = main(["circuit", "--task", "ioi", "--method", "eap-ig-inputs", "--edges", "300", "--n-pairs", "2",
                 "--curve", "--json", "--out", str(out), "--plot", str(plot)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    data = json.loads(captured.out)
    assert {f: getattr(smollm2.cfg, f) for f in FLAGS} == flags  # the model is left as it was

    assert data["graph"]["n_edges"] == 123_211 and data["scores"]["n_scored"] == 123_211 and data["steps"] == 5
    assert data["task"]["answer_over_distractor"] == 1.0
    c = data["circuit"]
    assert 0 < c["n_edges"] <= 300 and not c["from_sample"] and 0.3 < c["faithfulness"] < 1.2, c["faithfulness"]
    assert any(e["edge"].endswith("->logits") for e in c["edges"])
    curve = data["curve"]
    assert curve["n_edges"] == [123, 246, 616, 1232, 2464, 6160, 12321, 24642, 61605, 123211]
    assert curve["faithfulness"][-1] == pytest.approx(1.0, abs=1e-3) and curve["cpr"] > 0.9 and curve["cmd"] < 0.1
    assert curve["edges_for_80"] is not None and curve["edges_for_80_bisection"] is not None
    assert set(data["seconds"]) >= {"load", "scores", "faithfulness", "curve", "total"}

    assert sorted(p.name for p in out.iterdir()) == ["circuit.json", "circuit.png", "faithfulness.png", "report.json"]
    assert plot.read_bytes()[:4] == b"\x89PNG"
    circuit = Circuit.load(out)
    assert circuit.graph.to_dict() == Graph.from_model(smollm2).to_dict()
    assert sorted(circuit.edge_names()) == sorted(e["edge"] for e in c["edges"])
    task = load_task("ioi", smollm2, n_pairs=2)
    again = faithfulness(smollm2, circuit, task.clean, task.metric(), corrupted=task.corrupted)
    assert again == pytest.approx(c["faithfulness"], abs=1e-4)
