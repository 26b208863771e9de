"""``tl-funcnet circuit``: score every edge of a model on a task, keep the best edges as a circuit, and measure it
(faithfulness, and with ``--curve`` the faithfulness curve with CPR, CMD and the edges needed for 80%)."""

from __future__ import annotations

import argparse
from typing import Any

from ._base import Handler, add_json, add_model, add_out, check_model, command, emit, log_for, positive_int

#: edge-scoring methods (tl_funcnet.circuits.METHODS, kept here so --help imports no torch) and exact patching
METHODS = ("eap", "eap-ig-inputs", "eap-ig-activations", "clean-corrupted", "relp", "exact")
IG_METHODS = ("eap-ig-inputs", "eap-ig-activations")
ABLATIONS = ("patching", "mean", "zero")
IMAGE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def sample_size(text: str) -> int | str:
    """``--sample``: a number of edges >= 1, or ``all``."""
    if text.strip().lower() == "all":
        return "all"
    return positive_int(text)


def check_plot_file(path: str, overwrite: bool, out: str | None) -> None:
    """Raise now unless a picture may be written to ``path`` (nothing is created)."""
    from pathlib import Path

    from ..errors import FuncnetError, OverwriteError

    target = Path(path).expanduser()
    if target.suffix.lower() not in IMAGE_SUFFIXES:
        raise FuncnetError(f"--plot {path}: name a picture file ending in one of {', '.join(IMAGE_SUFFIXES)}")
    for parent in target.parents:
        if parent.exists() and not parent.is_dir():
            raise OverwriteError(f"--plot {path}: {parent} is a file, not a folder")
    if not target.parent.is_dir():
        raise FuncnetError(f"--plot {path}: the folder {target.parent} does not exist")
    if target.is_dir():
        raise OverwriteError(f"--plot {path} is a folder; name the picture file to write")
    if target.exists() and not overwrite:
        raise OverwriteError(f"--plot {path} already exists; pass --overwrite to replace it, or choose another name")
    if out is not None:
        folder = Path(out).expanduser().resolve()
        if folder == target.resolve().parent or folder in target.resolve().parents:
            raise FuncnetError(f"--plot {path} is inside --out {out}, which is replaced as a whole; the circuit "
                               f"picture is saved there anyway (circuit.png)")


def _save_figure(fig: Any, path: Any, dpi: int = 110) -> None:
    from .._io import atomic_path

    suffix = str(path).rsplit(".", 1)[-1]
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=suffix)


def load_groups(path: str, ids: list[int] | None) -> dict[str, dict[int, list[int]]]:
    """``--networks``: saved functional networks (fitted at ``mlp.hook_post``) as the graph's unit groups."""
    from ..circuits import network_groups
    from ..funcnet import FunctionalNetworks

    return network_groups(FunctionalNetworks.load(path), ids)


def _ids(text: str) -> list[int]:
    """``--network-ids 0,3,5``."""
    try:
        ids = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected network numbers separated by commas, e.g. 0,3,5; got {text!r}") \
            from None
    if not ids or min(ids) < 0:
        raise argparse.ArgumentTypeError(f"expected network numbers >= 0 separated by commas, got {text!r}")
    return ids


def _check(args: argparse.Namespace) -> None:
    """Every check that needs no model."""
    from ..errors import FuncnetError
    from ..models import resolve
    from ..patching.tasks import check_task_spec

    check_model(args.model, args.backend)
    if resolve(args.model) == ("embedded", "minilm-l6"):
        raise FuncnetError("circuits are defined for causal decoders such as smollm2-135m; minilm-l6 is an encoder "
                           "without next-token logits")
    check_task_spec(args.task)
    if args.method == "exact":
        if args.sample is None:
            raise FuncnetError("--method exact patches one edge at a time (about 123,000 edges on SmolLM2); give "
                               "--sample K to patch K random edges, or --sample all")
        if args.curve and args.sample != "all":
            raise FuncnetError("--curve needs a score for every edge; --method exact --sample K scores only K edges "
                               "(use --sample all, or an attribution method)")
    elif args.sample is not None:
        raise FuncnetError(f"--sample applies to --method exact; {args.method} scores every edge at once")
    if args.steps is not None and args.method not in IG_METHODS:
        raise FuncnetError(f"--steps applies to {' and '.join(IG_METHODS)} (integrated gradients), not to "
                           f"{args.method}")
    if args.network_ids is not None and args.networks is None:
        raise FuncnetError("--network-ids picks networks of --networks; give --networks FOLDER too")
    if args.networks is not None:
        load_groups(args.networks, args.network_ids)
    if args.plot is not None:
        check_plot_file(args.plot, args.overwrite, args.out)
    if args.out is not None:
        from .._io import check_target
        from ..circuits.circuit import KIND

        check_target(args.out, KIND, overwrite=args.overwrite)


@command("circuit", "edge-level circuit discovery (EAP, EAP-IG, RelP or exact edge patching) of a task, with the "
                    "circuit's faithfulness")
def _circuit(p: argparse.ArgumentParser) -> Handler:
    add_model(p)
    p.add_argument("--task", default="ioi", help="ioi, greater_than, capital, induction, sva, or a JSON file")
    p.add_argument("--method", choices=METHODS, default="eap-ig-inputs",
                   help="how edges are scored (exact: patch each edge of a --sample; slow)")
    p.add_argument("--edges", type=positive_int, required=True,
                   help="circuit size: the number of best edges (by |score|) kept before pruning")
    p.add_argument("--n-pairs", type=positive_int, default=8, help="clean/corrupted prompt pairs of the task")
    p.add_argument("--steps", type=positive_int, default=None, help="integrated-gradient steps (default 5)")
    p.add_argument("--sample", type=sample_size, default=None,
                   help="--method exact: patch this many random edges (or 'all')")
    p.add_argument("--random-state", type=int, default=0, help="draws the --sample of edges")
    p.add_argument("--ablation", choices=ABLATIONS, default="patching",
                   help="what an edge outside the circuit carries when faithfulness is measured: its value on the "
                        "corrupted prompt (patching), its mean over the corrupted prompts, or zero")
    p.add_argument("--curve", action="store_true", help="also the faithfulness curve over the MIB circuit sizes "
                   "(0.1%% ... 100%% of edges) with CPR, CMD and the edges needed for 80%% faithfulness")
    p.add_argument("--networks", default=None, help="a folder saved by FunctionalNetworks.save (fitted at "
                   "mlp.hook_post): each MLP is split into these networks' neurons and the rest, so the circuit is "
                   "read in network terms (senders FN<i>.m<layer>)")
    p.add_argument("--network-ids", type=_ids, default=None, help="only these networks of --networks (e.g. 0,3,5)")
    p.add_argument("--top", type=positive_int, default=20, help="edges listed in the text output")
    p.add_argument("--plot", default=None, help="draw the circuit into this picture file (.png, .pdf, .svg; an "
                   "existing file is replaced only with --overwrite)")
    add_out(p, "save the circuit into this folder (Circuit.save; with report.json, circuit.png and, with --curve, "
            "faithfulness.png)", required=False)
    add_json(p)

    def run(args: argparse.Namespace) -> int:
        import time

        t_start = time.perf_counter()
        _check(args)
        log = log_for(args)
        import torch

        from ..circuits import (Circuit, EdgeScores, Graph, ablated_values, edge_scores, edges_for_faithfulness,
                                exact_edge_scores, faithfulness, faithfulness_curve, plot_circuit)
        from ..errors import FuncnetError
        from ..models import load
        from ..patching import load_task, task_report

        seconds: dict[str, float] = {}
        t0 = time.perf_counter()
        log(f"loading {args.model}")
        model = load(args.model, backend=args.backend)
        task = load_task(args.task, model, n_pairs=args.n_pairs)
        groups = None if args.networks is None else load_groups(args.networks, args.network_ids)
        graph = Graph.from_model(model, groups=groups)
        seconds["load"] = time.perf_counter() - t0
        if args.edges > graph.n_edges:
            raise FuncnetError(f"--edges {args.edges} is more than the {graph.n_edges} edges of {args.model}'s graph")
        report = task_report(model, task)
        metric = task.metric()
        ablated = ablated_values(model, graph, args.ablation, corrupted=task.corrupted, texts=task.corrupted)

        t0 = time.perf_counter()
        if args.method == "exact":
            if args.sample == "all" or args.sample >= graph.n_edges:
                chosen = None
            else:
                g = torch.Generator().manual_seed(args.random_state)
                chosen = torch.randperm(graph.n_edges, generator=g)[: args.sample].sort().values
            log(f"exact patching of {graph.n_edges if chosen is None else len(chosen)} edges")
            scores: EdgeScores = exact_edge_scores(model, graph, task.clean, task.corrupted, metric, edges=chosen,
                                                   ablated=None if args.ablation == "patching" else ablated)
        else:
            log(f"scoring {graph.n_edges} edges with {args.method}")
            kw = {"steps": args.steps or 5} if args.method in IG_METHODS else {}
            scores = edge_scores(model, graph, task.clean, task.corrupted, metric, method=args.method, **kw)
        seconds["scores"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        scored = scores.evaluated
        complete = bool(scored.all())
        if complete:
            circuit = scores.circuit(args.edges)
        else:  # the best of the sampled edges; the others are unknown, not zero
            order = torch.argsort(scores.scores.nan_to_num(0.0).abs(), descending=True, stable=True)
            keep = order[scored[order]][: args.edges]
            mask = torch.zeros(graph.n_edges, dtype=torch.bool)
            mask[keep] = True
            circuit = Circuit(graph, mask).pruned()
        faith = float(faithfulness(model, circuit, task.clean, metric, ablated=ablated))
        seconds["faithfulness"] = time.perf_counter() - t0

        curve = n80 = None
        if args.curve:
            t0 = time.perf_counter()
            curve = faithfulness_curve(model, scores, task.clean, metric, ablated=ablated)
            n80 = edges_for_faithfulness(model, scores, task.clean, metric, target=0.8, ablated=ablated)
            seconds["curve"] = time.perf_counter() - t0

        s = scores.scores
        edges = sorted(((graph.edge_name(i), float(s[i])) for i in circuit.edges.nonzero().flatten().tolist()),
                       key=lambda e: -abs(e[1]))
        payload: dict[str, Any] = {
            "model": args.model, "task": report, "method": args.method, "ablation": args.ablation,
            "graph": graph.to_dict(),
            "scores": scores.to_dict(top=args.top),
            "circuit": {"edges_requested": args.edges, "n_edges": circuit.n_edges, "n_nodes": len(circuit.nodes()),
                        "fraction": circuit.fraction, "faithfulness": faith, "from_sample": not complete,
                        "edges": [{"edge": e, "score": v} for e, v in edges]},
        }
        if args.method in IG_METHODS:
            payload["steps"] = args.steps or 5
        if groups is not None:
            payload["networks"] = scores.by_group(circuit)
        if curve is not None:
            payload["curve"] = {**curve.to_dict(), "edges_for_80_bisection": n80}

        if args.plot is not None or args.out is not None:
            t0 = time.perf_counter()
            fig = plot_circuit(circuit, scores, title=f"{task.name}, {args.method}: {circuit.n_edges} edges, "
                                                      f"faithfulness {faith:.2f}")
            if args.plot is not None:
                _save_figure(fig, args.plot)
                payload["plot"] = args.plot
            if args.out is not None:
                out = circuit.save(args.out, overwrite=args.overwrite)
                _save_figure(fig, out / "circuit.png")
                if curve is not None:
                    _save_figure(curve.plot(title=f"{task.name}: {args.method} circuits"), out / "faithfulness.png")
                payload["out"] = str(out)
            seconds["saving"] = time.perf_counter() - t0
        seconds["total"] = time.perf_counter() - t_start
        payload["seconds"] = seconds
        if args.out is not None:
            from .._io import write_json_atomic

            write_json_atomic(out / "report.json", payload)

        lines = [f"{task.name}: {len(task)} pairs x {task.n_pos} tokens; logit diff clean "
                 f"{report['logit_diff_clean']:.3f}, corrupted {report['logit_diff_corrupted']:.3f}",
                 f"graph: {graph.n_edges} edges; {args.method}"
                 + (f" ({payload['steps']} steps)" if "steps" in payload else "")
                 + f" scored {int(scored.sum())} edges in {seconds['scores']:.1f} s",
                 f"circuit: {'the best sampled' if not complete else 'top'} {args.edges} edges -> {circuit.n_edges} "
                 f"after pruning, {len(circuit.nodes())} nodes; faithfulness {faith:.3f} ({args.ablation} ablation)"]
        if curve is not None:
            lines.append(f"faithfulness curve: CPR {curve.cpr:.3f}, CMD {curve.cmd:.3f}; 80% at "
                         + (f"{n80} edges (bisection), " if n80 is not None else "no size (bisection), ")
                         + (f"{curve.edges_for(0.8)} edges (grid)" if curve.edges_for(0.8) is not None
                            else "no grid size"))
            lines += [f"  {100 * x:6.1f}%  {n:>7} edges  f = {f:.3f}"
                      for x, n, f in zip(curve.fractions, curve.n_edges, curve.faithfulness)]
        if groups is not None:
            lines.append("networks (summed score of their edges over all layers; edges in the circuit):")
            lines += [f"  {name}: layers {','.join(map(str, row['layers']))}; score {row['score']:+.4f}, "
                      f"|score| {row['abs_score']:.4f}; {row['circuit_edges']} circuit edges"
                      for name, row in sorted(payload["networks"].items(), key=lambda kv: -kv[1]["abs_score"])]
        lines.append(f"top {min(args.top, len(edges))} circuit edges (score = change of the mean logit difference "
                     f"when the edge is patched):")
        lines += [f"  {v:+.4f}  {e}" for e, v in edges[: args.top]]
        lines.append("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))
        if "plot" in payload:
            lines.append(f"circuit drawn to {args.plot}")
        if "out" in payload:
            lines.append(f"saved to {payload['out']}")
        emit(args, payload, lines)
        return 0

    return run
