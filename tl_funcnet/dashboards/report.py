"""A self-contained HTML report: sections of text, tables, interactive plotly figures, matplotlib figures and
cards, in one file that holds every script and image (it can be mailed, attached or opened offline).

>>> report = Report("Functional networks of SmolLM2")
>>> s = report.section("Networks", "Ten networks from ICA over 2048 tokens.")
>>> s.figure(network_sizes(networks)).cards(network_cards(model, networks, acts))
>>> report.save("report.html")            # atomic; replaces only a report, and only with overwrite=True
"""

from __future__ import annotations

import base64
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from .._io import Kind, atomic_file, check_target
from ..errors import FuncnetError
from .html import STYLE, esc, table

GENERATOR = "tl_funcnet report"
_MARK = f"<meta name='generator' content='{GENERATOR}'>"


def _is_report(path: Path) -> bool:
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as f:
            return _MARK in f.read(4096)
    except OSError:
        return False


KIND = Kind("HTML report", recognize=_is_report)


def _slug(title: str, taken: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section"
    slug, n = base, 2
    while slug in taken:
        slug, n = f"{base}-{n}", n + 1
    taken.add(slug)
    return slug


@dataclass
class Section:
    """One titled part of a :class:`Report`; every adder returns the section, so calls chain."""

    title: str
    slug: str
    report: "Report"
    parts: list[str] = field(default_factory=list)

    def text(self, text: str) -> "Section":
        """A paragraph of plain text (escaped)."""
        self.parts.append(f"<p>{esc(text)}</p>")
        return self

    def html(self, markup: str) -> "Section":
        """Raw HTML you trust (no script or external file, or the report stops being self-contained)."""
        self.parts.append(str(markup))
        return self

    def code(self, text: str) -> "Section":
        """Preformatted text, e.g. an intervention's description or generated text."""
        self.parts.append(f"<pre class='tlfn-pre'>{esc(text)}</pre>")
        return self

    def table(self, rows: Sequence[Mapping[str, Any]], *, digits: int = 4) -> "Section":
        """Rows of dicts (one key order) as a table."""
        self.parts.append(table(rows, digits=digits))
        return self

    def figure(self, fig: Any, *, image_format: str = "svg") -> "Section":
        """A plotly figure (interactive) or a matplotlib figure (inline SVG, or PNG with ``image_format="png"``)."""
        self.parts.append(self.report._figure_html(fig, image_format))
        return self

    def cards(self, cards: Sequence[Any]) -> "Section":
        """Network or feature cards (:mod:`tl_funcnet.dashboards.cards`)."""
        bad = [type(c).__name__ for c in cards if not callable(getattr(c, "to_html", None))]
        if bad:
            raise FuncnetError(f"cards should be Card objects (network_cards, feature_cards), got {bad[:3]}")
        self.parts.append("".join(c.to_html() for c in cards))
        return self


class Report:
    """Sections in order; :meth:`to_html` renders the page, :meth:`save` writes it atomically."""

    def __init__(self, title: str, *, subtitle: str = ""):
        if not isinstance(title, str) or not title.strip():
            raise FuncnetError(f"a report needs a non-empty title, got {title!r:.40}")
        self.title, self.subtitle = title, subtitle
        self.sections: list[Section] = []
        self._slugs: set[str] = set()
        self._n_figures = 0

    def section(self, title: str, text: str | None = None) -> Section:
        """Start a section (with an optional first paragraph) and return it."""
        if not isinstance(title, str) or not title.strip():
            raise FuncnetError(f"a section needs a non-empty title, got {title!r:.40}")
        s = Section(title, _slug(title, self._slugs), self)
        self.sections.append(s)
        return s.text(text) if text else s

    def _figure_html(self, fig: Any, image_format: str) -> str:
        self._n_figures += 1
        fid = f"tlfn-fig-{self._n_figures}"
        if hasattr(fig, "to_plotly_json"):
            return "<div class='tlfn-plotly'>" + fig.to_html(
                full_html=False, include_plotlyjs=False, div_id=fid,
                config={"displaylogo": False, "responsive": True}) + "</div>"
        if not hasattr(fig, "savefig"):
            raise FuncnetError(f"figure should be a plotly or matplotlib figure, got {type(fig).__name__}")
        if image_format not in ("svg", "png"):
            raise FuncnetError(f"image_format should be 'svg' or 'png', got {image_format!r}")
        buf = io.BytesIO()
        # no date and fixed SVG ids, so the same figure gives the same bytes (reports compare and diff cleanly)
        import matplotlib

        with matplotlib.rc_context({"svg.hashsalt": "tl_funcnet"}):
            fig.savefig(buf, format=image_format, dpi=100, bbox_inches="tight",
                        metadata={"Date": None} if image_format == "svg" else {"Software": None})
        if image_format == "png":
            data = base64.b64encode(buf.getvalue()).decode("ascii")
            return (f"<img class='tlfn-img' id='{fid}' alt='figure {self._n_figures}' "
                    f"src='data:image/png;base64,{data}'>")
        svg = buf.getvalue().decode("utf-8")
        return f"<div class='tlfn-svg' id='{fid}'>" + svg[svg.index("<svg"):] + "</div>"

    def to_html(self) -> str:
        """The whole page: plotly.js, the stylesheet and every figure inline; no external file or network."""
        from plotly.offline import get_plotlyjs

        from .. import __version__

        toc = "".join(f"<li><a href='#{s.slug}'>{esc(s.title)}</a></li>" for s in self.sections)
        body = "".join(f"<section id='{s.slug}' class='tlfn-section'><h2>{esc(s.title)}</h2>{''.join(s.parts)}"
                       f"</section>" for s in self.sections)
        sub = f"<p class='tlfn-subtitle'>{esc(self.subtitle)}</p>" if self.subtitle else ""
        return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>" + _MARK
                + f"<meta name='viewport' content='width=device-width'><title>{esc(self.title)}</title>"
                + f"<style>{STYLE}{_PAGE_STYLE}</style><script>{get_plotlyjs()}</script></head><body>"
                + f"<h1>{esc(self.title)}</h1>{sub}<nav><ol>{toc}</ol></nav>{body}"
                + f"<footer>Made with tl_funcnet {esc(__version__)}.</footer></body></html>")

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the page to ``path`` atomically. An existing report there is replaced only with
        ``overwrite=True``; any other file is never touched."""
        check_target(path, KIND, overwrite=overwrite, folder=False)
        page = self.to_html()
        with atomic_file(path, KIND, overwrite=overwrite) as tmp:
            tmp.write_text(page, encoding="utf-8")
        return Path(path)


_PAGE_STYLE = """
body{font-family:sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:2em}
.tlfn-pre{background:#f6f7f9;padding:8px;white-space:pre-wrap;font-size:12px}
.tlfn-svg svg{max-width:100%;height:auto}.tlfn-img{max-width:100%}
footer{color:#888;font-size:12px;margin:3em 0 1em 0}
"""

__all__ = ["KIND", "Report", "Section"]
