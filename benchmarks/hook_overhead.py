"""Overhead of Interventions against raw TransformerLens hooks, side by side in one run.

Measures, interleaved and repeated (median of rounds):
  bare forward | raw ``run_with_hooks`` with lambdas | the same edit as an Intervention (``applied``)
for 1 hook and for one hook per layer. Goal: the Intervention adds at most 5% over raw TL hooks.

    python benchmarks/hook_overhead.py [--model smollm2-135m] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import machine_info, write_result  # noqa: E402


def _model(name: str):
    if name == "tiny":
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        return HookedTransformer(HookedTransformerConfig(n_layers=4, d_model=64, n_heads=4, d_head=16, d_mlp=256,
                                                         d_vocab=500, n_ctx=128, act_fn="gelu", seed=0))
    from tl_funcnet.models import load

    return load(name)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="tiny random model, few rounds (CI smoke run)")
    args = ap.parse_args(argv)
    if args.quick:
        args.model, args.rounds, args.seq = "tiny", 5, 64
    from tl_funcnet.hooks import Intervention, steer

    torch.manual_seed(0)
    model = _model(args.model).eval()
    n_layers, d_model = model.cfg.n_layers, model.cfg.d_model
    tokens = torch.randint(0, model.cfg.d_vocab, (args.batch, args.seq))
    vecs = [torch.randn(d_model) * 0.1 for _ in range(n_layers)]

    def raw_hooks(layers):
        return [(f"blocks.{l}.hook_resid_post", (lambda v: (lambda x, hook: x + v))(vecs[l])) for l in layers]

    def iv_for(layers):
        iv = Intervention()
        for l in layers:
            iv = iv + steer(f"blocks.{l}.hook_resid_post", vecs[l])
        return iv

    configs = {"1 hook": [n_layers // 2], "1 hook per layer": list(range(n_layers))}
    times: dict[str, list[float]] = {"bare": []}
    for c in configs:
        times[f"raw TL, {c}"] = []
        times[f"Intervention, {c}"] = []

    def timed(fn) -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            fn()
        return time.perf_counter() - t0

    with torch.no_grad():
        model(tokens)  # warm-up
    for _ in range(args.rounds):
        times["bare"].append(timed(lambda: model(tokens)))
        for c, layers in configs.items():
            raw = raw_hooks(layers)
            times[f"raw TL, {c}"].append(timed(lambda: model.run_with_hooks(tokens, fwd_hooks=raw)))
            iv = iv_for(layers)

            def with_iv():
                with iv.applied(model):
                    model(tokens)

            times[f"Intervention, {c}"].append(timed(with_iv))
        # equality check: both paths compute the same thing
    with torch.no_grad():
        a = model.run_with_hooks(tokens, fwd_hooks=raw_hooks(range(n_layers)))
        with iv_for(range(n_layers)).applied(model):
            b = model(tokens)
    max_diff = float((a - b).abs().max())

    med = {k: statistics.median(v) for k, v in times.items()}
    rows = []
    for c in configs:
        raw, ours = med[f"raw TL, {c}"], med[f"Intervention, {c}"]
        rows.append({"config": c, "bare_s": med["bare"], "raw_tl_s": raw, "intervention_s": ours,
                     "overhead_vs_raw_pct": 100 * (ours / raw - 1)})
    result = {"benchmark": "hook_overhead", "model": args.model, "batch": args.batch, "seq": args.seq,
              "rounds": args.rounds, "rows": rows, "max_abs_diff_raw_vs_intervention": max_diff,
              "goal": "Intervention within 5% of raw TransformerLens hooks", "machine": machine_info()}
    print(f"hook overhead on {args.model}, batch {args.batch} x {args.seq} tokens, median of {args.rounds} rounds")
    print("| config | bare forward (s) | raw TL hooks (s) | Intervention (s) | overhead vs raw |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['bare_s']:.4f} | {r['raw_tl_s']:.4f} | {r['intervention_s']:.4f} | "
              f"{r['overhead_vs_raw_pct']:+.1f}% |")
    print(f"max |raw - Intervention| logits: {max_diff:.2e}")
    write_result("hook_overhead" + ("_quick" if args.quick else ""), result)
    return result


if __name__ == "__main__":
    main()
