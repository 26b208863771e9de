"""The main job and its report: wall time of ``tl-funcnet demo`` (the goal: under 3 minutes on this machine after
install), seconds per section, the report's size and contents, and how fast it renders offline in headless
Chromium (navigation to every plotly figure drawn).

    python benchmarks/report.py [--quick] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import machine_info, markdown_table, write_result  # noqa: E402

GOAL_S = 180.0


def run_demo(out: Path, quick: bool) -> tuple[float, dict[str, Any]]:
    """One ``tl-funcnet demo`` in a fresh process (model loading included, as ``make demo`` runs it)."""
    argv = [sys.executable, "-m", "tl_funcnet", "demo", "--out", str(out), "--json"] + (["--quick"] if quick else [])
    t = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "MPLBACKEND": "Agg"})
    wall = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"the demo failed:\n{proc.stderr[-3000:]}")
    return wall, json.loads(proc.stdout)


def render(path: Path) -> dict[str, Any] | None:
    """Open the report offline in Debian's chromium; None when no browser is installed."""
    exe = shutil.which("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    if not exe:
        return None
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu",
                                                                "--disable-background-networking"])
        context = browser.new_context(offline=True)
        errors: list[str] = []
        page = context.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        t = time.perf_counter()
        page.goto(f"file://{path.resolve()}", wait_until="load")
        loaded = time.perf_counter() - t
        page.wait_for_function("""() => Array.from(document.querySelectorAll('.tlfn-plotly .js-plotly-plot'))
                                       .every(d => d._fullData && d.querySelector('.main-svg'))""")
        drawn = time.perf_counter() - t
        counts = page.evaluate("""() => ({sections: document.querySelectorAll('section.tlfn-section').length,
            plotly: document.querySelectorAll('.tlfn-plotly').length, cards: document.querySelectorAll('.tlfn-card').length,
            svg: document.querySelectorAll('.tlfn-svg svg').length})""")
        browser.close()
    return {"load_s": loaded, "all_figures_drawn_s": drawn, "errors": errors, **counts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the demo's --quick sizes")
    ap.add_argument("--rounds", type=int, default=1, help="demo runs (each about 2 minutes)")
    args = ap.parse_args()
    info = machine_info()
    walls, summaries = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            out = Path(tmp) / f"demo{r}"
            wall, summary = run_demo(out, args.quick)
            walls.append(wall)
            summaries.append(summary)
        page = Path(tmp) / "demo0" / "report.html"
        size_mb = page.stat().st_size / 1e6
        browser = render(page)
    sections = summaries[0]["seconds_per_section"]
    rows = [{"section": k, "seconds": round(v, 1)} for k, v in sections.items()]
    wall = statistics.median(walls)
    result = {"machine": info, "quick": args.quick, "rounds": args.rounds, "wall_s": walls, "wall_median_s": wall,
              "goal_s": GOAL_S, "goal_met": wall < GOAL_S, "in_run_s": summaries[0]["seconds"],
              "seconds_per_section": sections, "report_mb": size_mb, "browser": browser}
    write_result("report_quick" if args.quick else "report", result)
    print(f"machine load (1/5/15 min): {info['loadavg_1m_5m_15m']}")
    print(f"tl-funcnet demo{' --quick' if args.quick else ''}: wall {wall:.0f} s (median of {len(walls)}; "
          f"goal < {GOAL_S:.0f} s: {'met' if wall < GOAL_S else 'MISSED'}); {summaries[0]['seconds']:.0f} s after loading "
          f"the package")
    print(markdown_table(rows, ["section", "seconds"]))
    print(f"report.html: {size_mb:.1f} MB (plotly.js inside)")
    if browser is None:
        print("browser: not measured (Debian's chromium or Playwright is missing)")
    else:
        print(f"browser (offline): load {browser['load_s']:.2f} s, every figure drawn {browser['all_figures_drawn_s']:.2f} s; "
              f"{browser['sections']} sections, {browser['plotly']} plotly figures, {browser['svg']} SVG figure(s), "
              f"{browser['cards']} cards, {len(browser['errors'])} JavaScript errors")


if __name__ == "__main__":
    main()
