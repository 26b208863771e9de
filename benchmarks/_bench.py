"""Helpers shared by the benchmarks: machine and library description, JSON results in bench_out/."""

from __future__ import annotations

import json
import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

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
    for pkg in ("torch", "transformer-lens", "sae-lens", "scikit-learn", "numpy", "tl_funcnet"):
        try:
            libs[pkg] = version(pkg)
        except PackageNotFoundError:
            libs[pkg] = None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "memory_gb": mem_gb,
            "python": platform.python_version(), "libraries": libs}


def write_result(name: str, result: dict[str, Any]) -> Path:
    """Write ``bench_out/<name>.json`` (atomically)."""
    from tl_funcnet._io import write_json_atomic

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{name}.json"
    write_json_atomic(path, result)
    return path


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
