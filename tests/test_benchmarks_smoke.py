"""The benchmark harness in quick mode (tiny models): every benchmark script still runs end to end, and the
results it writes hold the figures it is there to measure (rows present, numbers finite and sane)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["hook_overhead", "collect", "funcnet_masking", "steering", "prune", "bridge", "illusion", "concept_neurons",
         "snmf", "lineas", "topafa", "sparsity"]


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_hook_overhead(data: dict) -> None:
    rows = {r["config"]: r for r in data["rows"]}
    assert len(rows) == 2 and "1 hook" in rows and any(c.startswith("1 hook per layer") for c in rows), rows
    for r in rows.values():
        for key in ("bare_s", "raw_tl_s", "intervention_s"):
            assert finite(r[key]) and r[key] > 0, (key, r)
        assert finite(r["overhead_vs_raw_pct"]), r
    assert data["max_abs_diff_raw_vs_intervention"] == 0.0  # the same edit gives the same logits
    micro = data["micro"]
    rows = {r["config"]: r for r in micro["rows"]}
    assert len(rows) == 2 and "1 hook" in rows, rows
    assert sorted(r["n_hooks"] for r in rows.values()) == [1, micro["model_config"]["n_layers"]]
    for r in rows.values():
        for key in ("bare_us", "raw_tl_us", "intervention_us"):
            assert finite(r[key]) and r[key] > 0, (key, r)
        for key in ("raw_per_hook_us", "intervention_per_hook_us", "intervention_minus_raw_per_hook_us"):
            assert finite(r[key]), (key, r)
        assert r["intervention_minus_raw_per_hook_us"] == pytest.approx(
            (r["intervention_us"] - r["raw_tl_us"]) / r["n_hooks"])
    assert micro["max_abs_diff_raw_vs_intervention"] == 0.0


def check_bridge(data: dict) -> None:
    rows = data["rows"]
    assert len(rows) >= 10 and {"forward", "RelP (mlp grid)"} <= {r["feature"] for r in rows}, rows
    for r in rows:
        assert finite(r["hooked_s"]) and finite(r["bridge_s"]) and r["hooked_s"] > 0 and r["bridge_s"] > 0, r
        assert r["bridge_over_hooked"] == pytest.approx(r["bridge_s"] / r["hooked_s"], rel=0.01, abs=0.01), r
        assert len(r["hooked_rounds"]) == len(r["bridge_rounds"]) == data["rounds"], r
        assert r["goal_met"] == (r["bridge_s"] / r["hooked_s"] <= data["goal"]), r
    p = data["parity"]
    assert p["logits, forward: max relative difference"] < 1e-4, p
    assert p["pruning plan: same pruned/kept decision (fraction of neurons)"] > 0.99, p
    assert p["steered generation: same text"] is True, p


def check_collect(data: dict) -> None:
    rows = {r["mode"]: r for r in data["rows"]}
    assert set(rows) == {"plain", "memory", "stream"}, rows
    for mode, r in rows.items():
        assert finite(r["tokens_per_s"]) and r["tokens_per_s"] > 0, r
        assert len(r["tokens_per_s_rounds"]) == data["rounds"]
        assert finite(r["throughput_vs_plain_pct"]) and r["throughput_vs_plain_pct"] > 0, r
        assert finite(r["peak_anon_mb"]) and r["peak_anon_mb"] >= r["anon_before_mb"] > 0, r
        assert r["tokens"] == rows["plain"]["tokens"] > 0, (mode, r["tokens"])
    assert rows["plain"]["throughput_vs_plain_pct"] == pytest.approx(100)
    assert data["activation_data_mb"] == pytest.approx(rows["memory"]["tokens"] * rows["memory"]["units"] * 4 / 2**20)
    fresh = data["fresh_memory"]
    assert len(fresh["seconds_rounds"]) == data["rounds"] and all(finite(x) for x in fresh["seconds_rounds"])


def check_funcnet_masking(data: dict) -> None:
    assert finite(data["baseline_loss"]) and data["baseline_loss"] > 0
    assert data["eval_tokens"] > 0 and data["calib_tokens"] > 0
    assert set(data["sites"]) == {"mlp.hook_post", "hook_mlp_out"}
    for site, R in data["sites"].items():
        assert set(R["mask"]) == {"one", "two", "one|z", "two|z"}, site  # raw and z-scored units
        for key, m in R["mask"].items():
            assert sum(m["per_layer_counts"]) == m["units"] and (m["units"] > 0 or key.endswith("|z")), m
            assert finite(m["networks"]) and finite(m["top_variance"]) and finite(m["per_layer_random_mean"])
            assert len(m["per_layer_random"]) == 2 and len(m["global_random"]) == 1 and len(m["variance_matched"]) == 1
            assert all(finite(x) for x in m["per_layer_random"] + m["global_random"] + m["variance_matched"])
            for ratio in (m["ratio_vs_per_layer_random"], m["ratio_vs_variance_matched"]):
                assert ratio is None or finite(ratio)
            assert 0 <= m["jaccard_top_variance"] <= 1
        assert {"2", "3"} <= set(R["preserve"]), site
        for p in R["preserve"].values():
            assert finite(p["networks"]) and 0 < p["fraction"] <= 1 and isinstance(p["networks_below_every_control"], bool)
            assert all(finite(x) for x in p["variance_matched"])
    # the preserve curve reaches half of the units on the largest fit's maps
    assert data["sites"]["mlp.hook_post"]["preserve"]["3@0.5"]["fraction"] == pytest.approx(0.5, abs=0.02)
    amp = data["amplify"]["induction"]
    assert amp["units"] > 0 and len(amp["networks"]) == 1
    for row in amp["gains"].values():
        for r in [row["networks"], *row["per_layer"], *row["variance_matched"]]:
            assert finite(r["logit_diff_clean"]) and 0 <= r["top1_accuracy"] <= 1
        assert R["networks_below_every_control_count"] == sum(p["networks_below_every_control"]
                                                              for p in R["preserve"].values())
        assert all(finite(f["fit_s"]) for f in R["fits"].values())


def check_steering(data: dict) -> None:
    sweep = data["sweep"]
    kinds = [r["kind"] for r in sweep]
    assert kinds.count("base") == 1 and kinds[0] == "base"
    steer = [r for r in sweep if r["kind"] == "steer"]
    rand = [r for r in sweep if r["kind"] == "random"]
    assert {(r["layer"], r["scale"]) for r in steer} == {(l, s) for l in (1, 2) for s in (1.0, 4.0)}
    assert {(r["layer"], r["scale"]) for r in rand} == {(r["layer"], r["scale"]) for r in steer}
    for r in steer + rand:
        for key in ("shift", "kl", "delta_loss", "norm"):
            assert finite(r[key]), (key, r)
        assert r["kl"] >= -1e-6
    assert data["best"]["kind"] == "steer" and data["best"]["layer"] in (1, 2)
    assert data["random_at_best"]["kind"] == "random" and data["random_at_best"]["layer"] == data["best"]["layer"]
    pca = data["pca_at_best"]
    assert finite(pca["shift"]) and -1 <= pca["cosine_with_mean_difference"] <= 1
    assert data["generation_cache_equal"] == [True, True]


def check_prune(data: dict) -> None:
    labels, ratios = data["methods"], data["ratios"]
    assert {"fn", "flap", "wanda", "magnitude", "activation", "random", "fn-uniform"} <= set(labels)
    assert data["fn_options"]["random_state"] == 666
    assert finite(data["ppl_unpruned"]) and data["ppl_unpruned"] > 1
    for m in labels:
        for bias in ("nobias", "bias"):
            for r in ratios:
                v = data["ppl"][f"{m}|{bias}|{r}"]
                assert finite(v) and v > 1, (m, bias, r, v)
    assert set(data["score_seconds"]) == {m.split("-")[0] for m in labels} - {"fn_guided"}
    assert "fn_guided" in labels and data["knobs"]["chosen"] == data["fn_guided_knobs"]
    assert data["fn_guided_knobs"]["key_fraction"] in (0.02, 0.05, 0.1, 0.2, 0.3)
    for t, rows in data["tasks"].items():
        assert set(rows) == {"unpruned"} | {f"{m}|{r}" for m in labels for r in ratios}, t
        assert all(finite(x["logit_diff_clean"]) for x in rows.values())
    rows = data["sweep"]["rows"].values()
    assert {r["method"] for r in rows} == {"fn", "fn_guided", "wanda", "flap", "activation"}
    assert {r["runs"] for r in rows} == {1, 4} and all(finite(v) for r in rows for v in r["ppl"].values())
    for r in ratios:
        s, p = data["speed"][str(r)], data["params"][str(r)]
        assert s["hard_ppl"] == pytest.approx(s["soft_ppl"], rel=1e-3)  # hard prune = soft prune
        assert finite(s["speedup"]) and s["speedup"] > 0
        assert 0 < p["params_after"] < p["params_before"] and 0 < p["mlp_param_ratio"] <= r + 0.05


def check_illusion(data: dict) -> None:
    rows = data["rows"]
    assert {r["direction"] for r in rows} == {"mean difference", "gradient", "top neuron", "random"}, rows
    for r in rows:
        assert 0 <= r["null fraction"] <= 1 and 0 <= r["coefficient from null space"] <= 1, r
        assert abs(r["null space"]) < 1e-6, r  # nothing reads the null space of W_out
        assert all(finite(r[k]) for k in ("subspace", "row space", "whole MLP")), r
        if r["direction"] == "gradient":  # the gradient lies in W_out's row space
            assert r["null fraction"] < 1e-6 and r["subspace"] == pytest.approx(r["row space"], abs=1e-4), r


def check_concept_neurons(data: dict) -> None:
    rows = data["rows"]
    assert rows[0]["neurons"] == "none" and {r["method"] for r in rows[1:]} == {"attribution", "contrast"}, rows
    kinds = {r["neurons"] for r in rows[1:]}
    assert kinds == {"top (concept)", "random per layer (0)", "random per layer (1)", "top variance per layer"}
    for r in rows:
        assert 0 <= r["P(capital)"] <= 1 and 0 <= r["capital top-1"] <= 1 and finite(r["loss"]), r
        assert 0 <= r["agreement right over wrong"] <= 1, r


def check_snmf(data: dict) -> None:
    rows = data["masking"]
    assert {r["method"] for r in rows} == {"ica", "snmf"} and len(rows) == 8, rows
    assert all(finite(r["loss"]) and finite(r["d loss"]) for r in rows), rows
    assert set(data["fit_seconds"]) == {"ica", "snmf"} and data["steering"] == []  # quick: masking only


def check_lineas(data: dict) -> None:
    rows = data["rows"]
    assert {r["method"] for r in rows} == {"LinEAS", "mean difference"}, rows
    assert all(finite(r["shift"]) and finite(r["KL"]) and r["KL"] >= 0 for r in rows), rows
    assert data["losses"][-1] < data["losses"][0]  # training lowers the Wasserstein loss
    lineas = [r["KL"] for r in rows if r["method"] == "LinEAS"]
    assert lineas == sorted(lineas)  # more strength, more change


def check_topafa(data: dict) -> None:
    rows = {r["sae"]: r for r in data["rows"]}
    assert {"topafa", "topafa_no_afa_loss", "topk_4"} <= set(rows) and data["k_matched"] >= 1, rows
    afa = rows["topafa"]
    assert afa["l0 p10"] < afa["l0 p90"]  # the active count varies per token
    assert rows["topk_4"]["l0"] <= 4
    for r in rows.values():
        assert all(finite(r[k]) for k in ("mse", "explained_variance", "afa_ratio_mean", "eps_lbo")), r
        assert 0 <= r["eps_lbo"] <= r["max_decoder_cos"] + 1e-6, r


def check_sparsity(data: dict) -> None:
    rows = data["sparsity"]
    assert len(rows) == 24 and {r["method"] for r in rows} >= {"wina", "chess (FN-aware)", "wina @ MLP input"}, rows
    assert all(abs(r["reached"] - r["target"]) < 0.02 and finite(r["ppl"]) for r in rows), rows
    pruning = data["pruning"]
    assert {r["method"] for r in pruning} == {"cfsp", "fn_cfsp", "wanda", "flap", "fn_guided", "random"}
    assert all(finite(r["ppl"]) for r in pruning) and finite(data["dense"]["ppl"])


CHECKS = {"hook_overhead": check_hook_overhead, "collect": check_collect, "funcnet_masking": check_funcnet_masking,
          "steering": check_steering, "prune": check_prune, "bridge": check_bridge, "illusion": check_illusion,
          "concept_neurons": check_concept_neurons, "snmf": check_snmf,
          "lineas": check_lineas, "topafa": check_topafa,
          "sparsity": check_sparsity}


@pytest.mark.slow
def test_benchmarks_quick_mode_runs(tmp_path):
    env = {**os.environ, "TLFN_BENCH_OUT": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--quick", "--no-write",
                           "--jobs", "2", "--only", *QUICK], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    for name in QUICK:
        data = json.loads((tmp_path / f"{name}_quick.json").read_text())
        assert data["machine"]["cores"] >= 1
        CHECKS[name](data)
