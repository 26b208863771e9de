"""``tl-funcnet patch``: exact, AtP or RelP patching of a built-in task on a model (wired in by tl_funcnet.cli)."""

from __future__ import annotations

import argparse
from typing import Any


def add_patch_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``patch`` subcommand to an argparse subparsers object; its handler is ``args.func``."""
    p = subparsers.add_parser("patch", help="activation patching (exact, AtP, RelP) of a task",
                              description="activation patching (exact, AtP, RelP) of a task")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--task", default="ioi", help="ioi, greater_than, capital, induction, or a JSON file")
    p.add_argument("--method", choices=["exact", "atp", "relp"], default="exact")
    p.add_argument("--node", choices=["resid", "head", "mlp", "neuron"], default="mlp")
    p.add_argument("--direction", choices=["denoise", "noise"], default="denoise")
    p.add_argument("--n-pairs", type=int, default=8)
    p.add_argument("--layers", default=None, help="comma-separated layers (default all; exact neuron sweeps "
                   "cost one row per neuron x prompt, so restrict them)")
    p.add_argument("--max-rows", type=int, default=128, help="exact: rows per forward (memory cap)")
    p.add_argument("--plot", default=None, help="write a heatmap PNG here")
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_patch_command)
    return p


def run_patch_command(args: argparse.Namespace) -> int:
    import json

    from ..models import load
    from . import load_task, node_grid, plot_heatmap, run_patching, task_report

    model = load(args.model)
    task = load_task(args.task, model, n_pairs=args.n_pairs)
    by_pos = args.node != "neuron"  # neuron x position grids are huge: per (layer, neuron) by default
    layers = None if not args.layers else [int(x) for x in args.layers.split(",")]
    nodes = node_grid(model, args.node, task.n_pos, by_pos=by_pos, layers=layers)
    kw = {"max_rows": max(args.max_rows, len(task))} if args.method == "exact" else {}
    res = run_patching(model, task, method=args.method, nodes=nodes, direction=args.direction, **kw)
    if args.plot:
        plot_heatmap(res, args.plot)
    report = task_report(model, task)
    payload = {"task": report, **res.to_dict(), "top": res.top(args.top)}
    if args.json:
        print(json.dumps(payload))
    else:
        print(f"{task.name}: {len(task)} pairs x {task.n_pos} tokens; logit diff clean "
              f"{report['logit_diff_clean']:.3f}, corrupted {report['logit_diff_corrupted']:.3f}")
        print(f"{args.method} {args.direction} over {len(nodes)} {args.node} nodes in {res.seconds:.1f} s; "
              f"baseline metric {res.baseline:.3f}")
        for label, eff in res.top(args.top):
            print(f"  {eff:+.4f}  {label}")
    return 0


__all__ = ["add_patch_command", "run_patch_command"]
