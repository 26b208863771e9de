"""Activation sparsity (magnitude / WINA / CHESS, each plain and FN-aware) and CFSP beside the other pruners.

SmolLM2-135M. Calibration: 2048 tokens of the calibration split; evaluation: perplexity on 16 held-out passages
(128 tokens each) and top-1 accuracy on the four circuit tasks (IOI, greater-than, capitals, induction).

- ``sparsity``: thresholds calibrated at 25%, 40% and 50% activation sparsity in every layer's MLP neurons
  (and, for magnitude and WINA, in every layer's MLP input, ``where="input"``); the sparsity reached is
  measured on the held-out passages. FN-aware rows never zero each layer's top 5% of
  neurons by FN score (the key units ``fn_guided`` protects; CanICA, 128 components, seed 666 as in
  ``benchmarks/prune.py``), and zero more of the others to reach the same sparsity.
- ``pruning``: CFSP and FN-aware CFSP (the same 5% pruned last) beside wanda, flap, fn_guided (its tuned knobs:
  wanda base, 2%) and random at 10-50% of all MLP neurons, first 3 and last 2 layers protected, FLAP-style bias
  compensation for all (soft pruning; the pruning benchmark shows it equals the hard prune).

    python benchmarks/sparsity.py [--quick] [--stages sparsity,pruning]   # ≈ 20 min on 2 cores
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import machine_info, markdown_table, write_result  # noqa: E402
from prune import _setup, _tasks  # noqa: E402

SPARSITIES = (0.25, 0.4, 0.5)
RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5)
KEY_FRACTION = 0.05
PRUNERS = ("cfsp", "fn_cfsp", "wanda", "flap", "fn_guided", "random")


def top_units(scores: list, fraction: float) -> dict[int, torch.Tensor]:
    """Per layer, the indices of the top ``fraction`` of neurons by ``scores``."""
    return {l: torch.argsort(s.double(), descending=True, stable=True)[: int(round(fraction * s.numel()))]
            for l, s in enumerate(scores) if s is not None}


def _shown(rows: list[dict]) -> list[dict]:
    """Rows as printed: perplexity to 2 decimals and the reached sparsity to 4 (the methods differ by little)."""
    return [{**r, "ppl": f"{r['ppl']:.2f}", **({"reached": f"{r['reached']:.4f}"} if "reached" in r else {})}
            for r in rows]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--stages", default="sparsity,pruning")
    args = ap.parse_args(argv)
    from tl_funcnet.evaluate import evaluate
    from tl_funcnet.patching import task_report
    from tl_funcnet.pruning import Calibration, compensate, plan_from_scores, protected_layers, score
    from tl_funcnet.pruning.scores import cfsp_ranked, guided
    from tl_funcnet.sparsity import METHODS, calibrate_sparsity

    t0 = time.perf_counter()
    log = lambda s: print(f"[{time.perf_counter() - t0:7.1f}s] {s}", flush=True)  # noqa: E731
    model, calib_src, evals, _, fn_opts, max_tokens = _setup(args.quick)
    calib = Calibration.from_texts(model, calib_src, max_tokens=max_tokens, max_tokens_per_seq=128)
    tasks = _tasks(model, args.quick)

    def measure(iv=None) -> dict:
        out = {"ppl": round(evaluate(model, evals, iv, compare_to_base=False, progress=False).perplexity, 3)}
        for name, task in tasks.items():
            out[name] = round(task_report(model, task, iv)["top1_accuracy"], 3)
        return out

    dense = measure()
    log(f"dense: {dense}")
    all_layers = list(range(len(model.blocks)))
    fn = score(model, calib, "fn", layers=all_layers, **fn_opts)
    key = top_units(fn, KEY_FRACTION)
    log("FN scores done")
    result: dict = {"machine": machine_info(), "quick": args.quick, "dense": dense, "key_fraction": KEY_FRACTION,
                    "calibration_tokens": calib.n_tokens, "fn_options": fn_opts}
    stages = set(args.stages.split(","))
    if "sparsity" in stages:
        rows = []
        configs = [(m, "hidden", aware) for m in METHODS for aware in (False, True)]
        configs += [(m, "input", False) for m in ("magnitude", "wina")]
        for target in SPARSITIES:
            for method, where, aware in configs:
                sp = calibrate_sparsity(model, calib, method, target, where=where, protect=key if aware else None)
                reached = sp.measure(model, evals)["mean"]
                label = method + (" (FN-aware)" if aware else "") + (" @ MLP input" if where == "input" else "")
                row = {"method": label, "target": target, "reached": round(reached, 4),
                       **measure(sp.to_intervention(model))}
                rows.append(row)
                log(str(row))
        result["sparsity"] = rows
        print("\n" + markdown_table(_shown(rows), ["method", "target", "reached", "ppl", *tasks]))
        wina_ok = {t: next(r["ppl"] for r in rows if r["method"] == "wina" and r["target"] == t)
                   <= next(r["ppl"] for r in rows if r["method"] == "magnitude" and r["target"] == t)
                   for t in SPARSITIES}
        worst = max(abs(r["reached"] - r["target"]) for r in rows)
        result["wina_at_or_below_magnitude"], result["max_reached_gap"] = wina_ok, worst
        print(f"\nWINA perplexity <= magnitude's at every sparsity: {all(wina_ok.values())} {wina_ok}; "
              f"largest |reached - target| on held-out text: {worst:.4f}")
    if "pruning" in stages:
        prot = protected_layers(len(model.blocks), 3, 2)
        layers = [l for l in all_layers if l not in prot]
        scores = {"cfsp": cfsp_ranked(model, calib, layers),
                  "fn_cfsp": cfsp_ranked(model, calib, layers, keep_first=fn, key_fraction=KEY_FRACTION),
                  "wanda": score(model, calib, "wanda", layers=layers),
                  "flap": score(model, calib, "flap", layers=layers),
                  "random": score(model, calib, "random", layers=layers)}
        scores["fn_guided"] = guided(fn, scores["wanda"], 0.02)
        log("pruning scores done")
        rows = []
        for ratio in RATIOS:
            for method in PRUNERS:
                plan = compensate(model, plan_from_scores(model, scores[method], ratio, method, protect_first=3,
                                                          protect_last=2), calib)
                row = {"method": method, "ratio": ratio, **measure(plan.to_intervention())}
                rows.append(row)
                log(str(row))
        result["pruning"] = rows
        print("\n" + markdown_table(_shown(rows), ["method", "ratio", "ppl", *tasks]))
    result["total_s"] = round(time.perf_counter() - t0, 1)
    path = write_result("sparsity_quick" if args.quick else "sparsity", result)
    print(f"\ndense: {dense}; total {result['total_s']} s -> {path}")
    return result


if __name__ == "__main__":
    main()
