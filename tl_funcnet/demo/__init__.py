"""The main job (``tl-funcnet demo``): every feature of tl_funcnet on SmolLM2, as one self-contained HTML report.

:func:`run_demo` loads the embedded model offline, runs each section of :mod:`tl_funcnet.demo.sections` and
writes ``report.html`` (plotly figures, cards and images inside it), ``summary.json`` (the numbers) and the fitted
``networks`` into one output folder, atomically: an earlier demo's folder is replaced only when asked, anything
else is never touched.
"""

from .run import KIND as KIND
from .run import run_demo as run_demo

__all__ = ["KIND", "run_demo"]
