"""Helpers shared by the benchmarks: machine and library description, JSON results in bench_out/."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Iterator

OUT_DIR = Path(os.environ.get("TLFN_BENCH_OUT", Path(__file__).resolve().parent.parent / "bench_out"))


def machine_info() -> dict[str, Any]:
    """CPU, cores, memory, Python and library versions of this run."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    libs = {}
    for pkg in ("torch", "transformer-lens", "sae-lens", "scikit-learn", "numpy", "scipy", "nilearn", "tl_funcnet"):
        try:
            libs[pkg] = version(pkg)
        except PackageNotFoundError:
            libs[pkg] = None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "memory_gb": mem_gb,
            "python": platform.python_version(), "libraries": libs,
            # other processes on the machine skew timings: record the load the run saw
            "loadavg_1m_5m_15m": [round(x, 2) for x in os.getloadavg()]}


def write_result(name: str, result: dict[str, Any]) -> Path:
    """Write ``bench_out/<name>.json`` (atomically)."""
    from tl_funcnet._io import write_json_atomic

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{name}.json"
    write_json_atomic(path, result, default=str)
    return path


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB.

    Read from ``VmHWM`` on Linux: ``ru_maxrss`` survives ``exec``, so a worker started by a large parent would
    report the parent's peak as its own.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def anon_rss_mb() -> float:
    """Current anonymous resident memory (heap, not file-backed pages such as a memmap), in MB (Linux)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@contextmanager
def peak_anon_sampler(interval_s: float = 0.02) -> Iterator[dict[str, float]]:
    """``with peak_anon_sampler() as m: ...`` then ``m["peak_anon_mb"]``: the largest RssAnon seen, sampled."""
    import threading

    out = {"peak_anon_mb": anon_rss_mb()}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval_s):
            out["peak_anon_mb"] = max(out["peak_anon_mb"], anon_rss_mb())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join()
        out["peak_anon_mb"] = max(out["peak_anon_mb"], anon_rss_mb())


@contextmanager
def timer() -> Iterator[dict[str, float]]:
    """``with timer() as t: ...`` then ``t["s"]`` holds the elapsed wall-clock seconds."""
    out: dict[str, float] = {}
    start = time.perf_counter()
    try:
        yield out
    finally:
        out["s"] = time.perf_counter() - start


def current_rss_mb() -> float:
    """Current resident memory of this process, in MB."""
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:  # pragma: no cover
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_worker(argv: list[str], timeout: float | None = None) -> dict[str, Any]:
    """Run ``python <argv>`` in a fresh process; it must print one JSON object as its last stdout line.

    A fresh process per implementation gives each its own peak RSS. Failures come back as
    ``{"error": ...}`` instead of raising, so one broken reference does not sink the whole run.
    """
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, *argv], capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout} s"}
    wall = time.perf_counter() - start
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr or proc.stdout)[-2000:], "returncode": proc.returncode}
    out = json.loads(lines[-1])
    out["process_wall_s"] = wall
    return out


def token_chunks(model: Any, passages: list[str], n_chunks: int | None, chunk_len: int) -> list[Any]:
    """Join passages (blank line between) into one token stream and cut it into chunks of ``chunk_len`` tokens,
    each starting with BOS; at most ``n_chunks`` (None: as many as the passages give)."""
    import torch

    tok = model.tokenizer
    bos = tok.bos_token_id
    body = chunk_len - (1 if bos is not None else 0)
    stream: list[int] = []
    for p in passages:
        stream.extend(tok(p + "\n\n", add_special_tokens=False)["input_ids"])
        if n_chunks is not None and len(stream) >= body * n_chunks:
            break
    n = len(stream) // body if n_chunks is None else min(n_chunks, len(stream) // body)
    return [torch.tensor(([bos] if bos is not None else []) + stream[i * body:(i + 1) * body], dtype=torch.long)
            for i in range(n)]


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """``rows`` as a markdown table of ``columns`` (floats to 3 significant digits, missing cells empty)."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return "" if v is None else str(v)

    head = "| " + " | ".join(columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def tiny_model_and_task(n_prompts: int = 6, changed: int = 2):
    """A 2-layer random GPT-style model and a random task whose corrupted prompts change token ``changed``
    (the smoke runs of the patching and circuit benchmarks)."""
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from tl_funcnet._rng import global_rng_preserved
    from tl_funcnet.patching import Task

    with global_rng_preserved():
        model = HookedTransformer(HookedTransformerConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64,
                                                          d_vocab=50, n_ctx=16, act_fn="gelu", seed=0)).eval()
    g = torch.Generator().manual_seed(3)
    clean = torch.randint(0, 50, (n_prompts, 8), generator=g)
    corrupted = clean.clone()
    corrupted[:, changed] = torch.randint(0, 50, (n_prompts,), generator=g)
    return model, Task("tiny", clean, corrupted, clean[:, changed].clone(), corrupted[:, changed].clone())
