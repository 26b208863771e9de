"""Overhead of Interventions against raw TransformerLens hooks, side by side in one run.

Two measurements, each interleaved and repeated (median of rounds), comparing
  bare forward | raw ``run_with_hooks`` with lambdas | the same edit as an Intervention (``applied``)
for 1 hook and for one hook per layer (``steer``: add a vector at ``hook_resid_post``):

1. the full model (SmolLM2 by default): seconds per forward and the overhead of the Intervention over raw
   hooks in percent. Goal: the Intervention adds at most 5% over raw TL hooks.
2. a micro-benchmark on a tiny model (a forward of a few hundred microseconds, so the cost of hooks is
   visible): microseconds per forward and the overhead per hook in microseconds, for raw hooks and for the
   Intervention (attach, validate, run, detach: everything ``applied`` does on each call).

    python benchmarks/hook_overhead.py [--model smollm2-135m] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import machine_info, write_result  # noqa: E402

#: the micro-benchmark's model: small enough that a forward costs about as much as a handful of hooks
MICRO_CFG = dict(n_layers=4, d_model=32, n_heads=2, d_head=16, d_mlp=64, d_vocab=100, n_ctx=16, act_fn="gelu",
                 seed=0)
MICRO_TOKENS = (1, 8)  # batch x positions


def _model(name: str):
    if name == "tiny":
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        return HookedTransformer(HookedTransformerConfig(n_layers=4, d_model=64, n_heads=4, d_head=16, d_mlp=256,
                                                         d_vocab=500, n_ctx=128, act_fn="gelu", seed=0))
    from tl_funcnet.models import load

    return load(name)


def _setups(model: Any, vecs: list[torch.Tensor]) -> dict[str, tuple[int, list, Any]]:
    """Per config: (number of hooks, raw TL hook list, the same edit as an Intervention)."""
    from tl_funcnet.hooks import Intervention, steer

    n_layers = model.cfg.n_layers
    out = {}
    for label, layers in (("1 hook", [n_layers // 2]), (f"1 hook per layer ({n_layers})", list(range(n_layers)))):
        raw = [(f"blocks.{l}.hook_resid_post", (lambda v: (lambda x, hook: x + v))(vecs[l])) for l in layers]
        iv = Intervention()
        for l in layers:
            iv = iv + steer(f"blocks.{l}.hook_resid_post", vecs[l])
        out[label] = (len(layers), raw, iv)
    return out


def _runners(model: Any, tokens: torch.Tensor, setups: dict) -> dict[str, Callable[[], Any]]:
    """One callable per measured variant: bare, then raw TL and Intervention for each config."""

    def bare() -> None:
        model(tokens)

    def raw_tl(raw: list) -> Callable[[], Any]:
        return lambda: model.run_with_hooks(tokens, fwd_hooks=raw)

    def with_iv(iv: Any) -> Callable[[], Any]:
        def run() -> None:
            with iv.applied(model):
                model(tokens)
        return run

    runs: dict[str, Callable[[], Any]] = {"bare": bare}
    for c, (_, raw, iv) in setups.items():
        runs[f"raw TL, {c}"] = raw_tl(raw)
        runs[f"Intervention, {c}"] = with_iv(iv)
    return runs


def _interleaved(runs: dict[str, Callable[[], Any]], rounds: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per call of every variant, one number per round: the median of ``repeats`` timed calls.

    In each round the variants run one after another, so slow drifts of the machine hit all of them alike;
    the median within a round drops calls that were preempted.
    """
    times: dict[str, list[float]] = {k: [] for k in runs}
    with torch.no_grad():
        for fn in runs.values():  # warm-up
            fn()
        for _ in range(rounds):
            for key, fn in runs.items():
                calls = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    fn()
                    calls.append(time.perf_counter() - t0)
                times[key].append(statistics.median(calls))
    return times


def _max_diff(model: Any, tokens: torch.Tensor, setups: dict) -> float:
    """Largest |raw - Intervention| logit over the configs: both paths must compute the same thing."""
    worst = 0.0
    with torch.no_grad():
        for _, raw, iv in setups.values():
            a = model.run_with_hooks(tokens, fwd_hooks=raw)
            with iv.applied(model):
                b = model(tokens)
            worst = max(worst, float((a - b).abs().max()))
    return worst


def full_model(args: argparse.Namespace) -> dict:
    """Seconds per forward on the chosen model and the Intervention's overhead over raw hooks in percent."""
    torch.manual_seed(0)
    model = _model(args.model).eval()
    tokens = torch.randint(0, model.cfg.d_vocab, (args.batch, args.seq))
    vecs = [torch.randn(model.cfg.d_model) * 0.1 for _ in range(model.cfg.n_layers)]
    setups = _setups(model, vecs)
    times = _interleaved(_runners(model, tokens, setups), args.rounds, 1)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = []
    for c, (n_hooks, _, _) in setups.items():
        raw, ours = med[f"raw TL, {c}"], med[f"Intervention, {c}"]
        rows.append({"config": c, "n_hooks": n_hooks, "bare_s": med["bare"], "raw_tl_s": raw,
                     "intervention_s": ours, "overhead_vs_raw_pct": 100 * (ours / raw - 1)})
    return {"model": args.model, "batch": args.batch, "seq": args.seq, "rounds": args.rounds, "rows": rows,
            "times_s": times, "max_abs_diff_raw_vs_intervention": _max_diff(model, tokens, setups)}


def micro(rounds: int, repeats: int) -> dict:
    """Microseconds per forward of a tiny model and the overhead per hook, raw hooks vs Intervention."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from tl_funcnet._rng import global_rng_preserved

    with global_rng_preserved():  # TransformerLens reseeds the global generators from cfg.seed
        model = HookedTransformer(HookedTransformerConfig(**MICRO_CFG)).eval()
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, model.cfg.d_vocab, MICRO_TOKENS, generator=g)
    vecs = [torch.randn(model.cfg.d_model, generator=g) * 0.1 for _ in range(model.cfg.n_layers)]
    setups = _setups(model, vecs)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tensors this small gain nothing from intra-op threads, only scheduling noise
    try:
        times = _interleaved(_runners(model, tokens, setups), rounds, repeats)
    finally:
        torch.set_num_threads(threads)
    med = {k: statistics.median(v) * 1e6 for k, v in times.items()}
    rows = []
    for c, (n_hooks, _, _) in setups.items():
        raw, ours = med[f"raw TL, {c}"], med[f"Intervention, {c}"]
        rows.append({"config": c, "n_hooks": n_hooks, "bare_us": med["bare"], "raw_tl_us": raw,
                     "intervention_us": ours, "raw_per_hook_us": (raw - med["bare"]) / n_hooks,
                     "intervention_per_hook_us": (ours - med["bare"]) / n_hooks,
                     "intervention_minus_raw_per_hook_us": (ours - raw) / n_hooks})
    return {"model_config": {k: v for k, v in MICRO_CFG.items() if k != "seed"}, "tokens": list(MICRO_TOKENS),
            "rounds": rounds, "forwards_per_round": repeats, "torch_threads": 1, "rows": rows,
            "max_abs_diff_raw_vs_intervention": _max_diff(model, tokens, setups)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--micro-rounds", type=int, default=15, help="rounds of the tiny-model micro-benchmark")
    ap.add_argument("--micro-forwards", type=int, default=200, help="forwards per variant and round (micro)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads for the full model (0: torch's default)")
    ap.add_argument("--quick", action="store_true", help="tiny random model, few rounds, 1 thread (CI smoke run)")
    args = ap.parse_args(argv)
    if args.quick:  # one thread: a smoke run on a busy machine must not wait on contended thread pools
        args.model, args.rounds, args.seq, args.threads = "tiny", 5, 64, 1
        args.micro_rounds, args.micro_forwards = 3, 10
    if args.threads:
        torch.set_num_threads(args.threads)

    full = full_model(args)
    small = micro(args.micro_rounds, args.micro_forwards)
    result = {"benchmark": "hook_overhead", **{k: v for k, v in full.items() if k != "times_s"},
              "times_s": full["times_s"], "micro": small,
              "goal": "Intervention within 5% of raw TransformerLens hooks", "machine": machine_info()}

    print(f"hook overhead on {args.model}, batch {args.batch} x {args.seq} tokens, median of {args.rounds} "
          f"interleaved rounds, torch threads {torch.get_num_threads()}, steer (add a vector) at hook_resid_post")
    print("| config | bare forward (s) | raw TL hooks (s) | Intervention (s) | overhead vs raw |")
    print("|---|---|---|---|---|")
    for r in full["rows"]:
        print(f"| {r['config']} | {r['bare_s']:.4f} | {r['raw_tl_s']:.4f} | {r['intervention_s']:.4f} | "
              f"{r['overhead_vs_raw_pct']:+.1f}% |")
    print(f"max |raw - Intervention| logits: {full['max_abs_diff_raw_vs_intervention']:.2e}")
    cfg = small["model_config"]
    print()
    print(f"per-hook overhead on a tiny model ({cfg['n_layers']} layers, d_model {cfg['d_model']}, "
          f"{small['tokens'][0]} x {small['tokens'][1]} tokens), median of {small['rounds']} interleaved rounds "
          f"(each the median of {small['forwards_per_round']} timed forwards), 1 torch thread; times per forward, "
          f"overhead per hook = (time - bare forward) / hooks")
    print("| config | bare forward (us) | raw TL hooks (us) | Intervention (us) | raw TL per hook (us) "
          "| Intervention per hook (us) | Intervention - raw per hook (us) |")
    print("|---|---|---|---|---|---|---|")
    for r in small["rows"]:
        print(f"| {r['config']} | {r['bare_us']:.1f} | {r['raw_tl_us']:.1f} | {r['intervention_us']:.1f} | "
              f"{r['raw_per_hook_us']:+.1f} | {r['intervention_per_hook_us']:+.1f} | "
              f"{r['intervention_minus_raw_per_hook_us']:+.1f} |")
    print(f"max |raw - Intervention| logits (tiny model): {small['max_abs_diff_raw_vs_intervention']:.2e}")
    write_result("hook_overhead" + ("_quick" if args.quick else ""), result)
    return result


if __name__ == "__main__":
    main()
