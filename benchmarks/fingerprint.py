"""FNF benchmark: every zoo pair's fingerprint score, p-value and verdict next to four baselines, AUCs, timing.

    python benchmarks/fingerprint.py           # full zoo (build it first: python benchmarks/zoo.py)
    python benchmarks/fingerprint.py --quick   # tiny random models, char-level tokens (CI, ~1 min)

Writes bench_out/fingerprint[_quick].json (write_result) and prints markdown tables: scores and verdicts per
pair, AUC per method, verdict accuracy and the score separation per victim, and timings (victim fingerprint,
suspect fingerprint + comparison, the comparison alone, both fingerprints from scratch, AWM, the whole pair).
"n/a" marks a baseline that cannot be applied to the pair (other tokenizer, depth, width or architecture).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import OUT_DIR, machine_info, peak_rss_mb, write_result  # noqa: E402

METHODS = ("fnf", "cka", "awm", "pcs", "output")


def log(msg: str) -> None:
    print(f"[fnf {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def profile(model: Any, texts: list[str], *, n_networks: int, tokenizer: Any = None,
            logprobs: bool = True) -> dict[str, Any]:
    """Everything a comparison needs from one model: fingerprint, CKA grams, token ids, next-token log-probs."""
    from tl_funcnet.fingerprint.baselines import layer_grams, next_token_logprobs
    from tl_funcnet.fingerprint.record import fingerprint_from_activations, record_texts, tokenize_with_offsets

    t0 = time.perf_counter()
    feats, offs = record_texts(model, texts, tokenizer=tokenizer)
    # random_state=666: the recorded figures in BENCHMARKS.md were measured with this seed (the fingerprint's
    # default before it became 0)
    fp = fingerprint_from_activations(model, texts, feats, offs, n_networks=n_networks, tokenizer=tokenizer,
                                      random_state=666)
    fp_seconds = time.perf_counter() - t0
    ids = [tokenize_with_offsets(model, t, tokenizer, 512)[0] for t in texts]
    grams = layer_grams(torch.cat(feats))
    lp = next_token_logprobs(model, ids) if logprobs else None
    return {"fp": fp, "grams": grams, "ids": ids, "lp": lp, "fp_seconds": fp_seconds}


def compare_pair(victim: Any, pv: dict, suspect: Any, ps: dict) -> dict[str, Any]:
    from tl_funcnet.fingerprint import compare
    from tl_funcnet.fingerprint.baselines import (output_similarity, parameter_cosine, representation_cka,
                                                  same_tokens, weight_awm)

    t0 = time.perf_counter()
    res = compare(pv["fp"], ps["fp"], random_state=0)  # the null's circular shifts, as recorded
    cmp_seconds = time.perf_counter() - t0
    same = same_tokens(pv["ids"], ps["ids"])
    t1 = time.perf_counter()
    awm = weight_awm(victim, suspect)
    awm_seconds = time.perf_counter() - t1
    return {
        "fnf": res.score, "p_value": res.p_value, "margin": res.margin, "verdict": res.verdict, "top1": res.top1,
        "mean_matched": res.mean_matched, "null_mean": res.null_mean,
        "cka": representation_cka(pv["grams"], ps["grams"]) if same else None,
        "awm": awm, "pcs": parameter_cosine(victim, suspect),
        "output": output_similarity(pv["lp"], ps["lp"]) if same else None,
        "fnf_seconds": ps["fp_seconds"] + cmp_seconds, "compare_seconds": cmp_seconds, "awm_seconds": awm_seconds,
        "victim_fp_seconds": pv["fp_seconds"],
        "both_from_scratch_seconds": pv["fp_seconds"] + ps["fp_seconds"] + cmp_seconds,
    }


def auc(rows: list[dict], method: str) -> dict[str, Any]:
    from sklearn.metrics import roc_auc_score

    usable = [r for r in rows if r[method] is not None]
    labels = [1 if r["kind"] == "derived" else 0 for r in usable]
    value = roc_auc_score(labels, [r[method] for r in usable]) if len(set(labels)) == 2 else None
    return {"auc": value, "applicable": len(usable), "of": len(rows)}


def fmt(x: Any, nd: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{nd}f}" if abs(x) >= 10 ** -nd or x == 0 else f"{x:.1e}"
    return str(x)


def table(rows: list[dict], aucs: dict) -> str:
    head = "| victim | suspect | kind | FNF | p | margin | verdict | CKA | AWM | PCS | output | FNF s |"
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        lines.append(f"| {r['victim']} | {r['suspect']} | {r['kind']} | {fmt(r['fnf'])} | {fmt(r['p_value'])} | "
                     f"{fmt(r['margin'])} | {r['verdict']} | {fmt(r['cka'])} | {fmt(r['awm'])} | {fmt(r['pcs'])} | "
                     f"{fmt(r['output'])} | {fmt(r['fnf_seconds'], 1)} |")
    lines.append("")
    lines.append("| method | AUC derived vs independent | pairs where applicable |")
    lines.append("|---|---|---|")
    for m in METHODS:
        a = aucs[m]
        lines.append(f"| {m} | {fmt(a['auc'])} | {a['applicable']}/{a['of']} |")
    return "\n".join(lines)


def correct(r: dict) -> bool:
    """Whether the verdict names the pair's true kind (an inconclusive verdict counts as wrong)."""
    return (r["verdict"] == "derived") == (r["kind"] == "derived") and r["verdict"] in ("derived", "independent")


def summary(rows: list[dict], thresholds: dict) -> str:
    """Verdict accuracy and, per victim, the lowest derived and highest independent FNF score."""
    n_ok = sum(correct(r) for r in rows)
    lines = [f"Verdicts (derived at FNF >= {thresholds['derived_at']} with p <= {thresholds['alpha']}, independent "
             f"below {thresholds['independent_below']}): {n_ok}/{len(rows)} correct"
             + (f"; wrong: {', '.join(r['suspect'] + ' (' + r['verdict'] + ')' for r in rows if not correct(r))}"
                if n_ok < len(rows) else "") + ".", "",
             "| victim | lowest derived FNF | lowest derived FNF called derived | highest independent FNF |",
             "|---|---|---|---|"]

    def pick(sub: list[dict], best: Any) -> str:
        if not sub:
            return "n/a"
        r = best(sub, key=lambda r: r["fnf"])
        return f"{fmt(r['fnf'])} ({r['suspect']})"

    for v in dict.fromkeys(r["victim"] for r in rows):
        mine = [r for r in rows if r["victim"] == v]
        der = [r for r in mine if r["kind"] == "derived"]
        lines.append(f"| {v} | {pick(der, min)} | {pick([r for r in der if correct(r)], min)} | "
                     f"{pick([r for r in mine if r['kind'] == 'independent'], max)} |")
    return "\n".join(lines)


def timing_table(rows: list[dict]) -> str:
    """Seconds per pair: victim fingerprint (done once), suspect fingerprint + comparison, the comparison with
    its null alone, both fingerprints from scratch, AWM, and the whole pair (load, profile, every baseline)."""
    lines = [f"Timings ({torch.get_num_threads()} torch threads):", "",
             "| victim | suspect | victim fingerprint s | suspect fingerprint + compare s | compare s "
             "| both from scratch s | AWM s | whole pair s |", "|---|---|---|---|---|---|---|---|"]
    def sec(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.1f}" if x >= 1 else f"{x:.2f}"

    for r in rows:
        lines.append(f"| {r['victim']} | {r['suspect']} | {sec(r['victim_fp_seconds'])} | {sec(r['fnf_seconds'])} | "
                     f"{sec(r['compare_seconds'])} | {sec(r['both_from_scratch_seconds'])} | {sec(r['awm_seconds'])} | "
                     f"{sec(r.get('pair_seconds'))} |")
    return "\n".join(lines)


def run_quick() -> tuple[list[dict], dict]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from zoo import build_quick

    from tl_funcnet.fingerprint import default_texts

    texts = [t[:400] for t in default_texts(4)]
    zoo = build_quick()
    victim, _ = zoo.pop("q-victim")
    pv = profile(victim, texts, n_networks=16, tokenizer="chars")
    rows = []
    for name, (model, meta) in zoo.items():
        t0 = time.perf_counter()
        ps = profile(model, texts, n_networks=16, tokenizer="chars")
        rows.append({"victim": "q-victim", "suspect": name, "kind": meta["kind"],
                     **compare_pair(victim, pv, model, ps)})
        rows[-1]["pair_seconds"] = time.perf_counter() - t0
    return rows, {"texts": "4 built-in passages cut to 400 chars", "n_networks": 16, "tokenizer": "chars"}


def run_full(only: list[str] | None) -> tuple[list[dict], dict]:
    from tl_funcnet.fingerprint import default_texts
    from tl_funcnet.models import load

    zoo_dir = OUT_DIR / "zoo"
    manifest = json.loads((zoo_dir / "manifest.json").read_text())
    texts = default_texts()
    victims: dict[str, tuple[Any, dict]] = {}
    rows = []
    plan = [(n, m) for n, m in manifest.items()] + [("minilm-l6", {"kind": "independent", "victim": "smollm2-135m",
                                                                   "how": "other architecture and tokenizer"})]
    # an independent pair of the same small architecture: the tiny victim's own derivatives must be told apart
    # from a model that only shares its architecture, tokenizer and training data
    if "tiny-s1" in manifest and "tiny-s0" in manifest:
        plan.append(("tiny-s1", {**manifest["tiny-s1"], "victim": "tiny-s0",
                                 "how": "same architecture and data, other seed"}))
    for name, meta in plan:
        if only and name not in only:
            continue
        vname = meta["victim"]
        if vname not in victims:
            t0 = time.perf_counter()
            vm = load(vname if vname == "smollm2-135m" else zoo_dir / vname)
            log(f"victim {vname} loaded in {time.perf_counter() - t0:.1f} s")
            victims[vname] = (vm, profile(vm, texts, n_networks=64))
            log(f"victim {vname} profiled; fingerprint {victims[vname][1]['fp_seconds']:.1f} s")
        vm, pv = victims[vname]
        t0 = time.perf_counter()
        model = load(name if name == "minilm-l6" else zoo_dir / name)
        load_s = time.perf_counter() - t0
        ps = profile(model, texts, n_networks=64)
        row = {"victim": vname, "suspect": name, "kind": meta["kind"], "how": meta.get("how"),
               "suspect_eval_loss": meta.get("eval_loss"), "load_seconds": load_s,
               **compare_pair(vm, pv, model, ps)}
        row["pair_seconds"] = time.perf_counter() - t0  # load, profile, fingerprint comparison and baselines
        rows.append(row)
        log(f"{vname} vs {name}: FNF {row['fnf']:.3f} p {row['p_value']:.4f} {row['verdict']} "
            f"(fingerprint+compare {row['fnf_seconds']:.1f} s) cka {fmt(row['cka'])} awm {fmt(row['awm'])}")
        del model, ps
        gc.collect()
    return rows, {"texts": "10 built-in evaluation passages", "n_networks": 64, "zoo": manifest}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", nargs="*", default=None, help="zoo entries to run (default: all)")
    p.add_argument("--name", default=None, help="result name in bench_out/ (default fingerprint[_quick])")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows, settings = run_quick() if args.quick else run_full(args.only)
    aucs = {m: auc(rows, m) for m in METHODS}
    from tl_funcnet.fingerprint.compare import ALPHA, DERIVED_AT, INDEPENDENT_BELOW

    der = [r["fnf"] for r in rows if r["kind"] == "derived"]
    ind = [r["fnf"] for r in rows if r["kind"] == "independent"]
    thresholds = {"derived_at": DERIVED_AT, "independent_below": INDEPENDENT_BELOW, "alpha": ALPHA}
    result = {"machine": machine_info(), "settings": settings, "rows": rows, "auc": aucs, "thresholds": thresholds,
              "min_derived_fnf": min(der) if der else None, "max_independent_fnf": max(ind) if ind else None,
              "verdicts_correct": sum(correct(r) for r in rows), "n_pairs": len(rows),
              "verdict_accuracy": sum(correct(r) for r in rows) / max(len(rows), 1),
              "total_seconds": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb(),
              "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]}
    name = args.name or ("fingerprint_quick" if args.quick else "fingerprint")
    path = write_result(name, result)
    md = "\n\n".join([table(rows, aucs), summary(rows, thresholds), timing_table(rows)])
    (OUT_DIR / f"{name}.md").write_text(md + "\n")
    print(md)
    print(f"\nwritten {path}; total {result['total_seconds']:.0f} s")


if __name__ == "__main__":
    main()
