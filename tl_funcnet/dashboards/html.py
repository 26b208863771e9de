"""HTML pieces shared by cards and reports: tokens coloured by a value, small tables, and the stylesheet.

Every piece is self-contained HTML (no script, no external file), so it shows the same in a notebook
(``_repr_html_``), in a saved report and in an e-mail attachment.
"""

from __future__ import annotations

import html
import math
from typing import Any, Mapping, Sequence

#: the stylesheet of cards and reports; every class is prefixed ``tlfn-`` so it cannot clash with a notebook's
STYLE = """
.tlfn-card{border:1px solid #d0d4da;border-radius:6px;padding:10px 12px;margin:10px 0;font-family:sans-serif;
  font-size:13px;background:#fff;color:#222;max-width:940px}
.tlfn-card h3{margin:0 0 6px 0;font-size:15px}
.tlfn-sub{color:#666;font-weight:normal;font-size:12px;margin-left:6px}
.tlfn-facts td{padding:1px 10px 1px 0;border:none}
.tlfn-label{color:#555;font-size:12px;margin:8px 0 3px 0;font-weight:bold}
.tlfn-text{font-family:monospace;font-size:12px;line-height:1.9;white-space:pre-wrap;word-break:break-word}
.tlfn-tok{border-radius:2px;padding:1px 0}
.tlfn-peak{outline:2px solid #222;outline-offset:0}
.tlfn-strip{display:flex;gap:1px;align-items:flex-end}
.tlfn-cell{width:14px;text-align:center;font-size:9px;color:#333}
.tlfn-ctx td{padding:1px 8px 1px 0;border:none;vertical-align:top}
.tlfn-ctx td.tlfn-v{font-family:monospace;color:#444;text-align:right;white-space:nowrap}
.tlfn-table{border-collapse:collapse;margin:6px 0}
.tlfn-table td,.tlfn-table th{border:1px solid #ccc;padding:3px 8px;text-align:left}
"""

_NEWLINE = "\u23ce"  # a visible newline inside token text


def esc(x: Any) -> str:
    """``x`` as escaped HTML text."""
    return html.escape(str(x), quote=True)


def fmt(v: Any, digits: int = 4) -> str:
    """A value as short text: floats to ``digits`` significant figures, the rest as ``str``."""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.{digits}g}"
    return str(v)


def token_text(token: str) -> str:
    """A token as shown inside coloured text: newlines and tabs made visible, everything else kept."""
    return token.replace("\n", _NEWLINE).replace("\t", "\u21e5")


def shade(value: float, scale: float) -> str:
    """Background colour of a token: orange for positive values, blue for negative, stronger towards ``scale``."""
    if not math.isfinite(value) or scale <= 0:
        return "transparent"
    a = min(1.0, abs(value) / scale) * 0.85
    return f"rgba(255,128,0,{a:.3f})" if value >= 0 else f"rgba(40,110,255,{a:.3f})"


def colored_tokens(tokens: Sequence[str], values: Sequence[float], *, scale: float | None = None,
                   peak: int | None = None) -> str:
    """Tokens as spans coloured by ``values`` (hover shows the value); the ``peak``-th token is outlined."""
    if len(tokens) != len(values):
        raise ValueError(f"{len(tokens)} tokens but {len(values)} values")
    finite = [abs(v) for v in values if math.isfinite(v)]
    scale = scale if scale is not None else (max(finite) if finite else 1.0)
    spans = []
    for i, (t, v) in enumerate(zip(tokens, values)):
        cls = "tlfn-tok tlfn-peak" if i == peak else "tlfn-tok"
        spans.append(f"<span class='{cls}' style='background:{shade(float(v), scale)}' "
                     f"title='{esc(repr(t))}: {fmt(float(v), 3)}'>{esc(token_text(t))}</span>")
    return "<span class='tlfn-text'>" + "".join(spans) + "</span>"


def table(rows: Sequence[Mapping[str, Any]], *, digits: int = 4) -> str:
    """Rows of dicts (one key order) as an HTML table."""
    if not rows:
        return "<p>(no rows)</p>"
    head = "".join(f"<th>{esc(k)}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{esc(fmt(v, digits))}</td>" for v in r.values()) + "</tr>" for r in rows)
    return f"<table class='tlfn-table'><tr>{head}</tr>{body}</table>"


def styled(body: str) -> str:
    """``body`` with the stylesheet in front (for HTML shown outside a report, e.g. in a notebook)."""
    return f"<style>{STYLE}</style>{body}"


__all__ = ["STYLE", "colored_tokens", "esc", "fmt", "shade", "styled", "table", "token_text"]
