"""Circuit-discovery benchmark: edge attribution methods against exact edge patching, circuits judged by
faithfulness, and planted circuits with a known answer.

    python benchmarks/circuits.py              # SmolLM2 on the shipped tasks, plus the planted models
    python benchmarks/circuits.py --quick      # planted models and a tiny random model only (CI smoke)

For each task and method: Pearson / Spearman with exact edge patching on one common random sample of edges,
the faithfulness curve of the method's top-edge circuits on the benchmark's ten sizes (CPR: area under it,
CMD: area under |1 - f|), the circuit size reaching 80% faithfulness, the faithfulness at 5% of the edges, and
wall time. Planted models: AUROC of each method at recovering the true edges. Writes bench_out/circuits.json
and prints the markdown tables BENCHMARKS.md quotes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import machine_info, markdown_table, tiny_model_and_task, write_result  # noqa: E402

from tl_funcnet.circuits import (PLANTED_BLOCKS, PLANTED_KINDS, Graph, ablated_values, auroc,  # noqa: E402
                                 edge_correlation, edge_scores, edges_for_faithfulness, exact_edge_scores,
                                 faithfulness_curve, planted_circuit)

GRADIENT_METHODS = ("eap", "eap-ig-inputs", "eap-ig-activations", "clean-corrupted", "relp")


def _progress(line: str) -> None:
    """A progress line on stderr (the tables go to stdout)."""
    print(line, file=sys.stderr, flush=True)


def score_all(model, graph, clean, corrupted, metric, methods, steps):
    """Every method's scores on every edge, with wall time."""
    out = {}
    for m in methods:
        t0 = time.perf_counter()
        out[m] = edge_scores(model, graph, clean, corrupted, metric, method=m, steps=steps)
        out[m].info["wall_s"] = time.perf_counter() - t0
        _progress(f"  {m}: {out[m].info['wall_s']:.0f} s")
    return out


def run_planted(methods, steps, seeds=(0, 1, 2)) -> list[dict]:
    """AUROC of each method on each planted model (kind x block), the minimum over ``seeds``."""
    rows = []
    for kind in PLANTED_KINDS:
        for block in PLANTED_BLOCKS:
            row: dict = {"model": f"{kind} ({block})"}
            for seed in seeds:
                p = planted_circuit(kind, block=block, seed=seed)
                exact = exact_edge_scores(p.model, p.graph, p.clean, p.corrupted, p.metric)
                row.update({"edges": p.graph.n_edges, "true edges": int(p.true_edges.sum())})
                found = {"exact": auroc(exact, p.true_edges)}
                for m, s in score_all(p.model, p.graph, p.clean, p.corrupted, p.metric, methods, steps).items():
                    found[m] = auroc(s, p.true_edges)
                for m, v in found.items():
                    row[m] = min(row.get(m, 1.0), v)
            rows.append(row)
    return rows


def run_task(model, task, methods, steps, sample, max_rows, seed=0) -> dict:
    graph = Graph.from_model(model)
    clean, corrupted, metric = task.clean, task.corrupted, task.metric()
    g = torch.Generator().manual_seed(seed)
    picked = torch.randperm(graph.n_edges, generator=g)[: min(sample, graph.n_edges)].sort().values.tolist()
    t0 = time.perf_counter()
    exact = exact_edge_scores(model, graph, clean, corrupted, metric, edges=picked, max_rows=max_rows)
    exact_s = time.perf_counter() - t0
    _progress(f"{task.name}: exact patching of {len(picked)} edges, {exact_s:.0f} s")
    scores = score_all(model, graph, clean, corrupted, metric, methods, steps)
    ablated = ablated_values(model, graph, "patching", corrupted=corrupted)
    rows = [{"method": "exact (sample)", "edges scored": len(picked), "seconds": exact_s}]
    curves = {}
    for m, s in scores.items():
        corr = edge_correlation(s, exact)
        t0 = time.perf_counter()
        curve = faithfulness_curve(model, s, clean, metric, ablated=ablated)
        at5 = faithfulness_curve(model, s, clean, metric, ablated=ablated, fractions=(0.05,)).faithfulness[0]
        n80 = edges_for_faithfulness(model, s, clean, metric, ablated=ablated, target=0.8)
        curves[m] = curve.to_dict()
        rows.append({"method": m, "pearson": corr["pearson"], "spearman": corr["spearman"], "CPR": curve.cpr,
                     "CMD": curve.cmd, "edges for 80%": n80, "% edges for 80%":
                     None if n80 is None else 100 * n80 / graph.n_edges, "f at 5%": at5,
                     "seconds": s.info["wall_s"], "eval seconds": time.perf_counter() - t0})
        _progress(f"{task.name}: {m} scored in {s.info['wall_s']:.0f} s, Pearson {corr['pearson']:.3f}, "
                  f"curve in {time.perf_counter() - t0:.0f} s")
    return {"task": task.name, "n_pairs": len(task), "n_pos": task.n_pos, "n_edges": graph.n_edges,
            "sample": len(picked), "rows": rows, "curves": curves}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="planted models and a tiny random model only")
    ap.add_argument("--tasks", default="ioi,greater_than,capital,induction")
    ap.add_argument("--methods", default=",".join(GRADIENT_METHODS))
    ap.add_argument("--n-pairs", type=int, default=8)
    ap.add_argument("--sample", type=int, default=500, help="edges scored by exact patching (common sample)")
    ap.add_argument("--steps", type=int, default=5, help="integrated-gradient steps")
    ap.add_argument("--max-rows", type=int, default=256)
    ap.add_argument("--no-planted", action="store_true", help="skip the planted models (e.g. to add tasks to a run)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    result: dict = {"machine": machine_info(), "quick": args.quick, "methods": methods, "steps": args.steps}

    if not args.no_planted:
        planted = run_planted(methods, args.steps)
        result["planted"] = planted
        print("### Planted circuits: AUROC at recovering the true edges (minimum over 3 seeds)\n")
        print(markdown_table(planted, ["model", "edges", "true edges", "exact", *methods]), flush=True)

    tasks = []
    if args.quick:
        model, task = tiny_model_and_task()
        tasks.append(run_task(model, task, methods, args.steps, min(args.sample, 60), args.max_rows))
        print("\n### tiny random model (smoke run)\n")
        print(markdown_table(tasks[-1]["rows"], ["method", "pearson", "spearman", "CPR", "CMD", "edges for 80%",
                                                 "f at 5%", "seconds"]))
    else:
        from tl_funcnet.models import load
        from tl_funcnet.patching import load_task

        model = load("smollm2-135m")
        for name in [t for t in args.tasks.split(",") if t]:
            task = load_task(name, model, n_pairs=args.n_pairs)
            tasks.append(run_task(model, task, methods, args.steps, args.sample, args.max_rows))
            print(f"\n### {name} ({len(task)} pairs x {task.n_pos} tokens, {tasks[-1]['n_edges']} edges, "
                  f"exact on {tasks[-1]['sample']} sampled edges)\n")
            print(markdown_table(tasks[-1]["rows"], ["method", "pearson", "spearman", "CPR", "CMD", "edges for 80%",
                                                     "% edges for 80%", "f at 5%", "seconds", "eval seconds",
                                                     "edges scored"]), flush=True)
    result["tasks"] = tasks
    path = write_result(args.out or ("circuits_quick" if args.quick else "circuits"), result)
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
