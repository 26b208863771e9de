"""``tl-funcnet patch``: exact, AtP or RelP patching of a task on a model."""

from __future__ import annotations

import argparse

from ._base import Handler, add_json, add_model, check_model, command, emit, int_list, positive_int


@command("patch", "activation patching (exact, AtP, RelP) of a task")
def _patch(p: argparse.ArgumentParser) -> Handler:
    add_model(p)
    p.add_argument("--task", default="ioi", help="ioi, greater_than, capital, induction, sva, or a JSON file")
    p.add_argument("--method", choices=["exact", "atp", "relp"], default="exact")
    p.add_argument("--node", choices=["resid", "head", "mlp", "neuron"], default="mlp")
    p.add_argument("--direction", choices=["denoise", "noise"], default="denoise")
    p.add_argument("--n-pairs", type=positive_int, default=8)
    p.add_argument("--layers", type=int_list, default=None, help="comma-separated layers (default all; exact neuron "
                   "sweeps cost one row per neuron x prompt, so restrict them)")
    p.add_argument("--max-rows", type=positive_int, default=128, help="exact: rows per forward (memory cap)")
    p.add_argument("--plot", default=None, help="write a heatmap PNG here")
    p.add_argument("--top", type=positive_int, default=10)
    add_json(p)

    def run(args: argparse.Namespace) -> int:
        from ..models import load
        from ..patching import load_task, node_grid, run_patching, task_report
        from ..patching.tasks import check_task_spec

        check_model(args.model, args.backend)
        check_task_spec(args.task)
        model = load(args.model, backend=args.backend)
        task = load_task(args.task, model, n_pairs=args.n_pairs)
        by_pos = args.node != "neuron"  # neuron x position grids are huge: per (layer, neuron) by default
        nodes = node_grid(model, args.node, task.n_pos, by_pos=by_pos, layers=args.layers)
        res = run_patching(model, task, method=args.method, nodes=nodes, direction=args.direction,
                           max_rows=max(args.max_rows, len(task)))
        if args.plot:
            res.plot().savefig(args.plot, dpi=100)
        report = task_report(model, task)
        payload = {"task": report, **res.to_dict(), "top": res.top(args.top)}
        emit(args, payload, [
            f"{task.name}: {len(task)} pairs x {task.n_pos} tokens; logit diff clean "
            f"{report['logit_diff_clean']:.3f}, corrupted {report['logit_diff_corrupted']:.3f}",
            f"{args.method} {args.direction} over {len(nodes)} {args.node} nodes in {res.seconds:.1f} s; "
            f"baseline metric {res.baseline:.3f}",
            *[f"  {eff:+.4f}  {label}" for label, eff in res.top(args.top)]])
        return 0

    return run
