"""The reliability suite's tally: every bad input tried, and whether it was rejected cleanly.

"Cleanly" means: a ``FuncnetError`` (or, on the command line, a non-zero exit with one line on stderr and no
traceback), no hook left on any model, no file written, and no file of the user's lost or changed.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

RESULTS: list["Outcome"] = []


@dataclass(frozen=True)
class Outcome:
    case: str
    rejected: bool
    hooks_left: int
    files_written: tuple[str, ...]
    files_lost: tuple[str, ...]
    error: str
    area: str = field(default_factory=lambda: _area())

    @property
    def clean(self) -> bool:
        return self.rejected and not self.hooks_left and not self.files_written and not self.files_lost


_AREAS = {"test_kernel_inputs": "kernel", "test_loader_inputs": "files and saves", "test_feature_inputs": "features",
          "test_cli_inputs": "command line", "test_properties": "random (Hypothesis)"}


def _area() -> str:
    """The reliability test module running now (from pytest's PYTEST_CURRENT_TEST)."""
    current = os.environ.get("PYTEST_CURRENT_TEST", "")
    stem = Path(current.split("::", 1)[0]).stem
    return _AREAS.get(stem, stem or "other")


def snapshot(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` with a hash of its content."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def count_hooks(models: Iterable[Any]) -> int:
    return sum(len(hp._forward_hooks) + len(hp._backward_hooks) for m in models for hp in m.hook_dict.values())


def try_bad_input(case: str, action: Callable[[], Any], *, models: Iterable[Any] = (), folder: Path | None = None,
                  expect: type[BaseException] | None = None) -> Outcome:
    """Run ``action``, which must raise a FuncnetError (subclass ``expect`` if given), and record the outcome."""
    from tl_funcnet.errors import FuncnetError

    models = list(models)
    before = snapshot(folder) if folder is not None else {}
    rejected, error = False, ""
    try:
        action()
        error = "accepted"
    except FuncnetError as err:
        rejected = expect is None or isinstance(err, expect)
        error = f"{type(err).__name__}: {err}"
    except Exception as err:  # noqa: BLE001 - recorded as a failure of the suite
        error = f"raw {type(err).__name__}: {err}"
    after = snapshot(folder) if folder is not None else {}
    outcome = Outcome(case, rejected, count_hooks(models),
                      tuple(sorted(set(after) - set(before))),
                      tuple(sorted(k for k in before if after.get(k) != before[k])), error[:300])
    RESULTS.append(outcome)
    for m in models:  # one leak must not fail every later case
        if count_hooks([m]):
            m.reset_hooks(including_permanent=True)
    return outcome


def record_cli(case: str, rejected: bool, written: Iterable[str], lost: Iterable[str], error: str) -> Outcome:
    outcome = Outcome(case, rejected, 0, tuple(written), tuple(lost), error[:300])
    RESULTS.append(outcome)
    return outcome


def summary() -> str:
    n = len(RESULTS)
    clean = sum(o.clean for o in RESULTS)
    return (f"reliability: {n} bad inputs tried, {clean} rejected cleanly (FuncnetError or one-line CLI error); "
            f"not rejected {sum(not o.rejected for o in RESULTS)}, hooks left {sum(o.hooks_left for o in RESULTS)}, "
            f"files written {sum(len(o.files_written) for o in RESULTS)}, user files lost or changed "
            f"{sum(len(o.files_lost) for o in RESULTS)}\n"
            + "  by area: " + ", ".join(f"{area} {n}" for area, n in Counter(o.area for o in RESULTS).items()))


__all__ = ["RESULTS", "Outcome", "snapshot", "count_hooks", "try_bad_input", "record_cli", "summary"]
