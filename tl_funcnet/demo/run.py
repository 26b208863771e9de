"""Run the demo's sections into one report and one output folder (see :mod:`tl_funcnet.demo`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from .._io import Kind, atomic_dir, check_target, write_json_atomic
from ..errors import FuncnetError

# "*.png": folders written by earlier versions of the demo (plots as files) are still recognised as demo reports
KIND = Kind("demo report", "summary.json", "tl_funcnet.demo", ("report.html", "summary.json", "*.png", "networks"))


def run_demo(model_name: str = "smollm2-135m", out: str | Path = "demo_out", *, quick: bool = False,
             overwrite: bool = False, backend: str | None = None,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every section and write ``report.html`` (self-contained), ``summary.json`` and ``networks`` into
    ``out``; the folder appears only when everything succeeded."""
    from ..models import resolve

    resolve(model_name, backend)  # an unknown model fails before anything is written
    check_target(out, KIND, overwrite=overwrite)
    with atomic_dir(out, KIND, overwrite=overwrite) as tmp:
        result = _run(model_name, tmp, quick=quick, backend=backend, log=log)
    log(result["headline"])
    log(f"report: {(Path(out) / 'report.html').resolve()}  ({result['seconds']:.0f} s)")
    return result


def _run(model_name: str, out: Path, *, quick: bool, backend: str | None,
         log: Callable[[str], None]) -> dict[str, Any]:
    from ..dashboards import Report
    from ..data import load_corpus
    from ..models import load
    from .sections import FULL, QUICK, SECTIONS, TITLES, DemoState

    t0 = time.perf_counter()
    log(f"[1/{len(SECTIONS) + 1}] loading {model_name} (offline)")
    model = load(model_name, backend=backend)
    report = Report(f"tl_funcnet demo on {model_name}",
                    subtitle="Functional networks, masking, steering, patching, circuits, pruning, SAE features and "
                             "fingerprints, each run as composable hooks on the model. Figures are interactive: hover "
                             "for values, drag to zoom.")
    st = DemoState(model, model_name, report, out, QUICK if quick else FULL, log,
                   calibration=load_corpus("calibration"), evaluation=load_corpus("evaluation"))
    result: dict[str, Any] = {"model": model_name, "quick": quick, "sections": {}, "seconds_per_section": {}}
    for i, (name, section) in enumerate(SECTIONS, 2):
        log(f"[{i}/{len(SECTIONS) + 1}] {name}")
        t = time.perf_counter()
        try:
            result["sections"][name] = section(st)
        except FuncnetError as e:  # a method this model cannot run (e.g. edge circuits of a GQA bridge)
            if name in ("networks", "masking"):
                raise
            log(f"      skipped: {e}")
            report.section(TITLES[name], f"Not run on this model: {e}")
            result["sections"][name] = {"skipped": str(e)}
        result["seconds_per_section"][name] = round(time.perf_counter() - t, 2)
    masking = result["sections"]["masking"]
    rows = masking["rows"]
    result["headline"] = (f"baseline loss {rows[0]['loss']:.3f}; masking {rows[1]['units']} network units -> "
                          f"{rows[1]['loss']:.3f}; random per layer -> {rows[2]['loss']:.3f}-{rows[3]['loss']:.3f} "
                          f"({masking['ratio_vs_random_per_layer']:.1f}x)")
    result["seconds"] = time.perf_counter() - t0
    report.save(out / "report.html")
    write_json_atomic(out / "summary.json", {"format": KIND.format, **result})
    return result


__all__ = ["KIND", "run_demo"]
