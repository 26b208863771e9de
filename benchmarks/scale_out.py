"""Scale-out overhead: the same exact edge-patching sweep in process, on a Dask local cluster and on Ray.

    python benchmarks/scale_out.py                 # SmolLM2, IOI, a random sample of edges, 3 interleaved rounds
    python benchmarks/scale_out.py --quick         # a tiny random model, Dask only unless --engines (CI smoke)

All three run on this machine's two cores: in process (torch with 2 threads), a Dask ``LocalCluster`` of 2
process workers with 1 thread each, and Ray started with ``num_cpus=2`` (tasks of 1 CPU). The clusters start
once and a first, cold sweep loads the model in each worker; then the rounds are interleaved (the order rotates
each round) and the medians are reported. Overhead = distributed / in-process - 1. The values are compared with
the in-process run (2 threads) and with an in-process run at the workers' 1 thread, which they equal bit for bit.

The registry part fingerprints SmolLM2 once, fills a registry with ``--registry-size`` entries (copies of that
fingerprint under other names: the cost of a comparison does not depend on which model made it) and ranks a
suspect against it in process and on Dask. From the measured per-edge and per-comparison costs it projects the
full SmolLM2 edge sweep and a 100-model registry on 8 and 64 workers (one core each, as measured here).
Writes bench_out/scale_out[_quick].json and prints the tables BENCHMARKS.md quotes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import machine_info, markdown_table, tiny_model_and_task, write_result  # noqa: E402

from tl_funcnet.circuits import Graph, exact_edge_scores  # noqa: E402
from tl_funcnet.models import load, save  # noqa: E402
from tl_funcnet.models.ref import ModelRef  # noqa: E402


@contextmanager
def torch_threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def start_engines(names: list[str]) -> tuple[dict, dict, list]:
    """``{name: executor}``, their start-up seconds and what to close at the end."""
    executors, startup, closers = {}, {}, []
    if "dask" in names:
        from dask.distributed import Client, LocalCluster

        t0 = time.perf_counter()
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
        executors["dask"], startup["dask"] = client.get_executor(), time.perf_counter() - t0
        closers += [client.close, cluster.close]
    if "ray" in names:
        try:
            import ray
        except ImportError:
            print("Ray is not installed: its rows are skipped")
        else:
            from tl_funcnet.executors import RayExecutor

            t0 = time.perf_counter()
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            executors["ray"], startup["ray"] = RayExecutor(), time.perf_counter() - t0
            closers.append(ray.shutdown)
    return executors, startup, closers


def edge_sweep(args, model, ref, task, executors) -> dict:
    graph = Graph.from_model(model)
    g = torch.Generator().manual_seed(0)
    edges = sorted(torch.randperm(graph.n_edges, generator=g)[:args.edges].tolist())
    kw = dict(edges=edges, max_rows=args.max_rows)
    metric = task.metric()

    def run(mode: str):
        t0 = time.perf_counter()
        if mode == "in process":
            res = exact_edge_scores(model, graph, task.clean, task.corrupted, metric, **kw)
        else:
            res = exact_edge_scores(ref, graph, task.clean, task.corrupted, metric, executor=executors[mode],
                                    chunk_size=args.chunk_size, **kw)
        return time.perf_counter() - t0, res.scores[edges]

    cold = {m: run(m)[0] for m in executors}  # each worker loads the model (and checks its digest) here
    times: dict[str, list[float]] = {m: [] for m in ["in process", *executors]}
    values = {}
    modes = list(times)
    for r in range(args.rounds):
        for mode in modes[r % len(modes):] + modes[:r % len(modes)]:
            seconds, values[mode] = run(mode)
            times[mode].append(seconds)
            print(f"[round {r + 1}] {mode}: {seconds:.1f} s", flush=True)
    with torch_threads(1):
        t1, one_thread = run("in process")
    med = {m: statistics.median(t) for m, t in times.items()}
    rows = [{"mode": "in process, 2 threads", "median s": med["in process"], "overhead": 0.0,
             "max abs diff": 0.0, "equal to 1-thread run": bool(torch.equal(values["in process"], one_thread))}]
    for m in executors:
        rows.append({"mode": f"{m}, 2 workers x 1 thread", "median s": med[m], "overhead": med[m] / med["in process"] - 1,
                     "cold s": cold[m], "max abs diff": float((values[m] - values["in process"]).abs().max()),
                     "equal to 1-thread run": bool(torch.equal(values[m], one_thread))})
    rows.append({"mode": "in process, 1 thread", "median s": t1, "overhead": t1 / med["in process"] - 1})
    per_forward = max(1, args.max_rows // task.clean.shape[0])
    size = per_forward * -(-args.chunk_size // per_forward)
    return {"n_edges_graph": graph.n_edges, "n_edges": len(edges), "n_chunks": -(-len(edges) // size),
            "chunk_edges": size, "times": times, "cold": cold, "rows": rows}


def registry_ranking(args, model, executors, workdir: Path) -> dict:
    from tl_funcnet.fingerprint import FingerprintRegistry, fingerprint

    t0 = time.perf_counter()
    fp = fingerprint(model, n_networks=args.n_networks, name="model")
    t_fp = time.perf_counter() - t0
    registry = FingerprintRegistry.create(workdir / "registry")
    registry.add_many({f"model-{i:03d}": fp for i in range(args.registry_size)})

    def run(mode: str):
        t0 = time.perf_counter()
        ranking = registry.rank(fp, executor=executors.get(mode), n_null=args.n_null)
        return time.perf_counter() - t0, [c.score for _, c in ranking.rows]

    times: dict[str, list[float]] = {m: [] for m in ["in process", *executors]}
    scores = {}
    modes = list(times)
    run("in process")
    for m in executors:
        run(m)  # cold
    for r in range(args.rounds):
        for mode in modes[r % len(modes):] + modes[:r % len(modes)]:
            seconds, scores[mode] = run(mode)
            times[mode].append(seconds)
    med = {m: statistics.median(t) for m, t in times.items()}
    rows = [{"mode": m, "median s": med[m], "per comparison s": med[m] / args.registry_size,
             "overhead": med[m] / med["in process"] - 1, "same scores": scores[m] == scores["in process"]}
            for m in modes]
    return {"fingerprint_s": t_fp, "registry_size": args.registry_size, "times": times, "rows": rows}


def projections(edges: dict, reg: dict | None, engine: str) -> list[dict]:
    """Full edge sweep and a 100-model registry on W one-core workers, from this run's per-item costs."""
    per_edge = statistics.median(edges["times"][engine]) * 2 / edges["n_edges"]  # worker-seconds per edge
    load_s = edges["cold"][engine] - statistics.median(edges["times"][engine])  # a worker's first model load
    full = edges["n_edges_graph"]
    out = []
    for w in (1, 8, 64):
        row = {"workers": w, "edge sweep h": (full * per_edge / w + max(load_s, 0.0)) / 3600}
        if reg is not None:
            cmp_s = [r for r in reg["rows"] if r["mode"] == engine][0]["per comparison s"] * 2  # worker-seconds
            row["fingerprint 100 models min"] = (100 * reg["fingerprint_s"] * 2 / w) / 60
            row["rank 100 entries s"] = 100 * cmp_s / w
        out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="a tiny random model, one round (CI smoke)")
    ap.add_argument("--engines", default="dask,ray")
    ap.add_argument("--task", default="ioi")
    ap.add_argument("--n-pairs", type=int, default=2)
    ap.add_argument("--edges", type=int, default=512, help="random sample of edges swept")
    ap.add_argument("--max-rows", type=int, default=64)
    ap.add_argument("--chunk-size", type=int, default=64, help="edges per chunk (rounded up to whole forwards)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--registry-size", type=int, default=32)
    ap.add_argument("--n-networks", type=int, default=64)
    ap.add_argument("--n-null", type=int, default=200)
    ap.add_argument("--no-registry", action="store_true")
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="scale_out_"))
    if args.quick:
        model, task = tiny_model_and_task(4, changed=3)
        save(model, workdir / "tiny")
        model = load(workdir / "tiny")
        args.edges, args.max_rows, args.chunk_size, args.rounds = 96, 16, 16, 1
        args.engines = "dask" if args.engines == ap.get_default("engines") else args.engines  # Ray: tests/executors
        args.registry_size, args.n_networks, args.n_null, args.no_registry = 4, 4, 20, True
    else:
        from tl_funcnet.patching import load_task

        model = load("smollm2-135m")
        task = load_task(args.task, model, n_pairs=args.n_pairs)
    ref = ModelRef.of(model)
    executors, startup, closers = start_engines([e for e in args.engines.split(",") if e])
    try:
        edges = edge_sweep(args, model, ref, task, executors)
        reg = None if args.no_registry else registry_ranking(args, model, executors, workdir)
    finally:
        for close in closers:
            close()
    engine = "dask" if "dask" in executors else next(iter(executors), None)
    proj = projections(edges, reg, engine) if engine else []
    name = "scale_out_quick" if args.quick else "scale_out"
    write_result(name, {"machine": machine_info(), "args": vars(args), "startup_s": startup, "edges": edges,
                        "registry": reg, "projections": proj})
    print(f"\n### Exact edge patching, {edges['n_edges']} of {edges['n_edges_graph']} edges, "
          f"{task.clean.shape[0]} prompts, {edges['n_chunks']} chunks of {edges['chunk_edges']} edges "
          f"(medians of {args.rounds} interleaved rounds; engine start-up {', '.join(f'{k} {v:.1f} s' for k, v in startup.items())})\n")
    print(markdown_table(edges["rows"], ["mode", "median s", "overhead", "cold s", "max abs diff",
                                         "equal to 1-thread run"]))
    if reg is not None:
        print(f"\n### Ranking a suspect against a {reg['registry_size']}-entry registry (n_null {args.n_null}; "
              f"fingerprinting SmolLM2 took {reg['fingerprint_s']:.1f} s)\n")
        print(markdown_table(reg["rows"], ["mode", "median s", "per comparison s", "overhead", "same scores"]))
    if proj:
        print(f"\n### Projected from the {engine} per-item costs (one core per worker)\n")
        print(markdown_table(proj, ["workers", "edge sweep h", "fingerprint 100 models min", "rank 100 entries s"]))


if __name__ == "__main__":
    main()
