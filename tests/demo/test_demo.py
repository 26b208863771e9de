"""The main job end to end (``tl-funcnet demo --quick``): every section runs on SmolLM2 and the report renders
offline in headless Chromium with every section, figure and card in place."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from browser_testing import open_page, rendered
from tl_funcnet.demo.sections import SECTIONS, TITLES
from tl_funcnet.funcnet import FunctionalNetworks

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "report"
    env = {**os.environ, "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, "-m", "tl_funcnet", "demo", "--quick", "--out", str(out), "--json"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads(proc.stdout)


def test_every_section_ran_and_the_folder_holds_only_its_files(demo):
    out, summary = demo
    assert list(summary["sections"]) == [name for name, _ in SECTIONS]
    assert not [n for n, s in summary["sections"].items() if "skipped" in s]
    assert sorted(p.name for p in out.iterdir()) == ["networks", "report.html", "summary.json"]
    assert json.loads((out / "summary.json").read_text())["sections"] == summary["sections"]
    fn = FunctionalNetworks.load(out / "networks")
    assert fn.n_networks_total == summary["sections"]["networks"]["n_networks"]
    masking = summary["sections"]["masking"]
    assert masking["rows"][1]["loss"] > masking["rows"][2]["loss"]  # networks hurt more than random units
    patching = {r["method"]: r for r in summary["sections"]["patching"]["methods"]}
    assert set(patching) == {"exact", "atp", "relp"}
    fingerprint = {r["suspect"]: r["verdict"] for r in summary["sections"]["fingerprint"]["rows"]}
    assert list(fingerprint.values()) == ["derived", "independent"]


def test_the_report_renders_offline_with_every_section(demo):
    out, summary = demo
    with open_page(out / "report.html") as (page, log):
        seen = rendered(page)
        toc = page.evaluate("Array.from(document.querySelectorAll('nav a')).map(a => a.getAttribute('href'))")
        heat_x = page.evaluate("document.querySelector('#activation-patching-on-ioi .js-plotly-plot')"
                               ".data[0].x.slice(0, 3)")
    assert log.errors == [], log.errors
    assert log.requests == [], log.requests
    assert seen["sections"] == list(TITLES.values())
    assert len(toc) == len(TITLES)
    # network sizes, masking bars, three patching heatmaps, the pruning curve
    assert seen["plotly_divs"] == seen["plotly_drawn"] == 6
    assert seen["broken_images"] == 0 and seen["svg_figures"] >= 1  # the circuit drawing
    assert seen["cards"] == summary["sections"]["networks"]["n_networks"] + len(summary["sections"]["sae"]["features"])
    assert heat_x[0].startswith("0 '") and "When" in heat_x[0]  # the prompt's tokens label the positions
