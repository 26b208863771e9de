"""The HTML report: one self-contained file (scripts, figures, cards inside), saved atomically, checked in a browser."""

from __future__ import annotations

import os
import re

import pytest
import torch
from matplotlib.figure import Figure

from browser_testing import open_page, rendered
from tl_funcnet.dashboards import Card, Context, Report, curves
from tl_funcnet.dashboards.report import KIND
from tl_funcnet.errors import FuncnetError, OverwriteError
from tl_testing import check_save_rules


def _matplotlib_figure():
    fig = Figure(figsize=(3, 2))
    fig.subplots().plot([0, 1, 2], [1, 0, 2])
    return fig


def _card():
    ctx = Context(0, 1, 2.0, ("a", " b<", "\nc"), (0.5, 2.0, -1.0), 1)
    return Card("Network 7", "3 key units", {"key units": "3"}, {"L0": 1, "L1": 2}, ctx, "Activity", [ctx])


def make_report(seed: int = 0) -> Report:
    report = Report("A <test> report", subtitle="for the tests")
    s = report.section("Numbers", "Plain text & more.")
    s.table([{"name": "a", "value": 1.234567}, {"name": "b", "value": float(seed)}])
    s.code("1. blocks.0.mlp.hook_post: ablate(units=[1])")
    report.section("Pictures").figure(curves({"m": [(0.1, 1.0), (0.2, float(seed) + 2)]}, title="curve",
                                             x_title="x", y_title="y")) \
        .figure(_matplotlib_figure()).figure(_matplotlib_figure(), image_format="png")
    report.section("Cards").cards([_card()])
    report.section("Numbers")  # a repeated title gets its own anchor
    return report


def test_the_page_holds_everything_it_shows():
    page = make_report().to_html()
    assert page.count("<script>") == 1 + 1  # plotly.js once, one plotly figure
    markup = re.sub(r"<script>.*?</script>", "", page, flags=re.S)  # plotly.js's own code mentions URLs
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", markup)  # no external file or CDN
    assert "A &lt;test&gt; report" in page and "Plain text &amp; more." in page
    assert "id='numbers'" in page and "id='numbers-2'" in page and "href='#cards'" in page
    assert "data:image/png;base64," in page and page.count("<svg") >= 1
    assert " b&lt;" in markup and " b<" not in markup  # token text is escaped
    assert "\u23ce" in page  # newlines inside tokens are shown


def test_figures_of_another_kind_and_bad_titles_are_refused():
    report = Report("r")
    with pytest.raises(FuncnetError, match="plotly or matplotlib"):
        report.section("s").figure(torch.zeros(3))
    with pytest.raises(FuncnetError, match="image_format"):
        report.section("t").figure(_matplotlib_figure(), image_format="jpg")
    with pytest.raises(FuncnetError, match="Card objects"):
        report.section("u").cards(["not a card"])
    for bad in ("", "  ", None):
        with pytest.raises(FuncnetError):
            Report(bad)
        with pytest.raises(FuncnetError):
            report.section(bad)


def test_saving_follows_the_rules_of_every_writer(tmp_path):
    check_save_rules(lambda p, o: make_report(0).save(p, overwrite=o),
                     lambda p, o: make_report(1).save(p, overwrite=o), tmp_path, folder=False)
    assert KIND.holds(tmp_path / "art")


def test_an_unwritable_folder_is_refused_before_any_work(tmp_path):
    report = make_report()
    with pytest.raises(OverwriteError, match="not writable"):
        report.save("/proc/tl_funcnet_report.html")
    if os.geteuid() != 0:  # root may write anywhere, so a read-only folder only stops other users
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(OverwriteError, match="not writable"):
                report.save(ro / "sub" / "report.html")
            assert list(ro.iterdir()) == []
        finally:
            ro.chmod(0o700)


def test_the_report_renders_offline_in_a_real_browser(tmp_path):
    path = make_report().save(tmp_path / "report.html")
    with open_page(path) as (page, log):
        seen = rendered(page)
    assert log.errors == [] and log.requests == []
    assert seen["sections"] == ["Numbers", "Pictures", "Cards", "Numbers"]
    assert seen["plotly_divs"] == seen["plotly_drawn"] == 1
    assert seen["images"] == 1 and seen["broken_images"] == 0 and seen["svg_figures"] == 1
    assert seen["cards"] == 1
