"""Collection throughput and memory: the 30 ``mlp.hook_post`` sites of SmolLM2 over >= 20k tokens.

Side by side, each in its own subprocess (so peak RSS is per mode): a plain forward over the same token
batches, collection in memory, and collection streamed to disk under a memory budget.
Goal: collection at >= 90% of plain-forward throughput, memory bounded by the budget when streaming.

Also, per round, the time to allocate and fault in fresh memory the size of the in-memory result
(``torch.zeros``, in the plain-forward process after its measurements): the floor of in-memory collection,
reported as a share of its run time.

    python benchmarks/collect.py [--tokens 20480] [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import anon_rss_mb, machine_info, peak_anon_sampler, peak_rss_mb, write_result  # noqa: E402


def _worker(mode: str, model_name: str, n_tokens: int, budget_mb: float) -> dict:
    import torch

    from tl_funcnet.activations import collect
    from tl_funcnet.activations.tokens import batches, pad_id, tokenize
    from tl_funcnet.data import load_corpus
    from tl_funcnet.hooks import resolve_sites

    if model_name == "tiny":
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        model = HookedTransformer(HookedTransformerConfig(n_layers=4, d_model=64, n_heads=4, d_head=16, d_mlp=256,
                                                          d_vocab=500, n_ctx=128, act_fn="gelu", seed=0))
        g = torch.Generator().manual_seed(0)
        texts = [torch.randint(0, 500, (128,), generator=g) for _ in range(n_tokens // 128)]
    else:
        from tl_funcnet.models import load

        model = load(model_name)
        passages = load_corpus("calibration") + load_corpus("evaluation") + load_corpus("finetune")
        texts = passages * 4  # repeated passes over the built-in texts reach the token count
    model.eval()
    seqs = tokenize(model, texts, max_tokens_per_seq=128)
    out, total = [], 0
    for s in seqs:
        if total >= n_tokens:
            break
        out.append(s)
        total += len(s)
    seqs = out
    sites = resolve_sites(model, "mlp.hook_post")
    units = len(sites) * model.cfg.d_mlp
    rss0, anon0 = peak_rss_mb(), anon_rss_mb()
    sampler = peak_anon_sampler()
    mem = sampler.__enter__()
    t0 = time.perf_counter()
    if mode == "plain":
        with torch.no_grad():
            for b in batches(seqs, 8, pad_id=pad_id(model)):
                model(b.tokens, return_type=None)
        n = total
    elif mode == "memory":
        acts = collect(model, seqs, sites, batch_size=8, max_tokens_per_seq=None, memory_budget_mb=1e9,
                       stop_at_layer=None, progress=False)
        n = acts.n_samples
    else:
        store = Path(tempfile.mkdtemp()) / "store"
        acts = collect(model, seqs, sites, batch_size=8, max_tokens_per_seq=None, memory_budget_mb=budget_mb,
                       store_dir=store, stop_at_layer=None, progress=False)
        n = acts.n_samples
    dt = time.perf_counter() - t0
    sampler.__exit__(None, None, None)
    if mode == "stream":
        del acts
        shutil.rmtree(store.parent)
    # peak RSS also counts file pages mapped when a streamed store is opened; peak anonymous memory is the heap
    out = {"mode": mode, "tokens": n, "seconds": dt, "tokens_per_s": n / dt, "peak_rss_mb": peak_rss_mb(),
           "rss_before_mb": rss0, "anon_before_mb": anon0, "peak_anon_mb": mem["peak_anon_mb"],
           "anon_over_model_mb": mem["peak_anon_mb"] - anon0, "units": units}
    if mode == "plain":  # after the memory figures: fresh memory the size of the in-memory result, every page touched
        t0 = time.perf_counter()
        buf = torch.zeros(total, units, dtype=torch.float32)
        out["alloc_seconds"] = time.perf_counter() - t0
        del buf
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, default=20480)
    ap.add_argument("--budget-mb", type=float, default=512)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--worker", nargs=4, metavar=("MODE", "MODEL", "TOKENS", "BUDGET"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        mode, model, tokens, budget = args.worker
        print(json.dumps(_worker(mode, model, int(tokens), float(budget))))
        return {}
    if args.quick:
        args.model, args.tokens, args.budget_mb, args.rounds = "tiny", 2048, 1, 1
    modes = ("plain", "memory", "stream")
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for _ in range(args.rounds):  # interleaved rounds: slow drifts of the machine hit every mode alike
        for mode in modes:
            proc = subprocess.run([sys.executable, __file__, "--worker", mode, args.model, str(args.tokens),
                                   str(args.budget_mb)], capture_output=True, text=True, check=True)
            runs[mode].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    rows = []
    for mode in modes:
        rates = [r["tokens_per_s"] for r in runs[mode]]
        row = dict(runs[mode][0], tokens_per_s=statistics.median(rates), tokens_per_s_rounds=rates)
        for key in ("peak_rss_mb", "peak_anon_mb", "anon_before_mb", "rss_before_mb", "anon_over_model_mb"):
            row[key] = max(r[key] for r in runs[mode])
        rows.append(row)
    plain = rows[0]["tokens_per_s"]
    for r in rows:
        r["throughput_vs_plain_pct"] = 100 * r["tokens_per_s"] / plain
    data_mb = rows[1]["tokens"] * rows[1]["units"] * 4 / 2**20
    # fresh memory: allocation time per round against the in-memory collection of the same round
    alloc = [{"seconds": p["alloc_seconds"], "share_of_memory_run_pct": 100 * p["alloc_seconds"] / m["seconds"]}
             for p, m in zip(runs["plain"], runs["memory"], strict=True)]
    fresh = {"mb": data_mb, "seconds_rounds": [a["seconds"] for a in alloc],
             "seconds_median": statistics.median(a["seconds"] for a in alloc),
             "share_of_memory_run_pct_rounds": [a["share_of_memory_run_pct"] for a in alloc]}
    result = {"benchmark": "collect", "model": args.model, "sites": "all mlp.hook_post", "rows": rows,
              "rounds": args.rounds, "fresh_memory": fresh,
              "activation_data_mb": data_mb, "budget_mb": args.budget_mb,
              "goal": ">= 90% of plain-forward throughput; streaming memory bounded by the budget",
              "machine": machine_info()}
    print(f"collecting every mlp.hook_post of {args.model}: {rows[1]['tokens']} tokens x {rows[1]['units']} units "
          f"= {data_mb:.0f} MB of float32 activations; stream budget {args.budget_mb:.0f} MB")
    print(f"median of {args.rounds} interleaved rounds, each mode in its own process")
    print("| mode | tokens/s (median) | rounds | vs plain forward | peak RSS (MB) | peak anonymous (MB) "
          "| anonymous before, model alone (MB) | peak anonymous over the model (MB) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        rounds = " / ".join(f"{x:.0f}" for x in r["tokens_per_s_rounds"])
        print(f"| {r['mode']} | {r['tokens_per_s']:.0f} | {rounds} | {r['throughput_vs_plain_pct']:.0f}% "
              f"| {r['peak_rss_mb']:.0f} | {r['peak_anon_mb']:.0f} | {r['anon_before_mb']:.0f} "
              f"| {r['anon_over_model_mb']:+.0f} |")
    secs = " / ".join(f"{x:.2f}" for x in fresh["seconds_rounds"])
    shares = " / ".join(f"{x:.0f}%" for x in fresh["share_of_memory_run_pct_rounds"])
    print(f"fresh memory: allocating and faulting in {data_mb:.0f} MB (torch.zeros) took {secs} s "
          f"per round = {shares} of the in-memory collection's time")
    write_result("collect" + ("_quick" if args.quick else ""), result)
    return result


if __name__ == "__main__":
    main()
