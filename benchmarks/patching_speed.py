"""Node sweeps: tl_funcnet's exact_patch against transformer_lens.patching on the same grid, side by side.

    python benchmarks/patching_speed.py                      # SmolLM2, capital task, MLP outputs and residual
    python benchmarks/patching_speed.py --quick              # a tiny random model (CI smoke)

Each round times ours and then TransformerLens's ``get_act_patch_mlp_out`` / ``get_act_patch_resid_pre`` on
the same (layer, position) grid of the same prompts (denoising, mean logit difference); rounds are interleaved
and the medians are reported, with the largest difference between the two results (they must agree).
Writes bench_out/patching_speed[_quick].json and prints the table BENCHMARKS.md quotes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import machine_info, markdown_table, tiny_model_and_task, write_result  # noqa: E402

from tl_funcnet.patching import exact_patch, load_task, node_grid  # noqa: E402

TL_FUNCTIONS = {"mlp": "get_act_patch_mlp_out", "resid": "get_act_patch_resid_pre"}


def time_pair(model, task, kind: str, max_rows: int) -> dict:
    """One round: ours, then TransformerLens's, on the same grid."""
    from transformer_lens import patching as tlp

    metric = task.metric()
    nodes = node_grid(model, kind, task.n_pos)
    t0 = time.perf_counter()
    ours = exact_patch(model, task.clean, task.corrupted, nodes, metric, max_rows=max_rows)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, cache = model.run_with_cache(task.clean)
    with torch.no_grad():
        ref = getattr(tlp, TL_FUNCTIONS[kind])(model, task.corrupted, cache, lambda lg: metric(lg).mean())
    t_tl = time.perf_counter() - t0
    # TransformerLens returns the patched metric per cell; ours the change, so add the unpatched baseline back
    diff = float((ours.grid() + ours.baseline - ref).abs().max())
    return {"ours_s": t_ours, "tl_s": t_tl, "max_abs_diff": diff, "n_nodes": len(nodes),
            "n_run": ours.info.get("n_run", len(nodes))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="a tiny random model only")
    ap.add_argument("--task", default="capital")
    ap.add_argument("--nodes", default="mlp,resid")
    ap.add_argument("--n-pairs", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-rows", type=int, default=128)
    args = ap.parse_args()
    if args.quick:
        model, task = tiny_model_and_task(4, changed=3)
        rounds = 1
    else:
        from tl_funcnet.models import load

        model = load("smollm2-135m")
        task = load_task(args.task, model, n_pairs=args.n_pairs)
        rounds = args.rounds
    kinds = [k for k in args.nodes.split(",") if k]
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    for r in range(rounds):
        for kind in kinds:
            runs[kind].append(time_pair(model, task, kind, args.max_rows))
            print(f"round {r + 1} {kind}: {runs[kind][-1]}", file=sys.stderr, flush=True)
    rows = []
    for kind, items in runs.items():
        ours, tl = statistics.median(x["ours_s"] for x in items), statistics.median(x["tl_s"] for x in items)
        rows.append({"task": task.name, "nodes": kind, "grid": items[0]["n_nodes"], "run": items[0]["n_run"],
                     "pairs": len(task), "ours s (median)": ours, "TL s (median)": tl, "speedup": tl / ours,
                     "max diff": max(x["max_abs_diff"] for x in items), "rounds": len(items)})
    result = {"machine": machine_info(), "args": vars(args), "rows": rows, "runs": runs}
    path = write_result("patching_speed_quick" if args.quick else "patching_speed", result)
    print(markdown_table(rows, ["task", "nodes", "grid", "run", "pairs", "ours s (median)", "TL s (median)",
                                "speedup", "max diff", "rounds"]))
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
