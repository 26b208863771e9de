"""What every subcommand shares: registration, argument types that fail early, output and output folders.

A subcommand module defines ``@command(name, help)`` functions that add their arguments to a parser and
return the handler. Modules import only argparse at import time; handlers import features when they run,
so ``tl-funcnet --help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

Handler = Callable[[argparse.Namespace], int]
#: name -> (function that adds the arguments and returns the handler, help text), in registration order
COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], Handler], str]] = {}


def command(name: str, help: str) -> Callable[[Callable[[argparse.ArgumentParser], Handler]], Any]:  # noqa: A002
    """Register a subcommand: the decorated function adds arguments and returns the handler."""

    def deco(add_args: Callable[[argparse.ArgumentParser], Handler]) -> Callable[[argparse.ArgumentParser], Handler]:
        if name in COMMANDS and COMMANDS[name][0] is not add_args:
            raise RuntimeError(f"two subcommands are named {name!r}")
        COMMANDS[name] = (add_args, help)
        return add_args

    return deco


def emit(args: argparse.Namespace, payload: dict[str, Any], lines: Sequence[str]) -> None:
    """Print one JSON object with ``--json``, else human-readable lines."""
    if getattr(args, "json", False):
        print(json.dumps(payload, default=_jsonable))
    else:
        for line in lines:
            print(line)


def _jsonable(x: Any) -> Any:
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def log_for(args: argparse.Namespace) -> Callable[[str], None]:
    """Progress lines: to stderr with ``--json`` (stdout holds only the JSON), else to stdout."""
    import sys

    return (lambda s: print(s, file=sys.stderr)) if getattr(args, "json", False) else print


# --------------------------------------------------------------------------- argument types


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    return parse


positive_int = _int_at_least(1)
non_negative_int = _int_at_least(0)


def finite_float(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def fraction(text: str) -> float:
    value = finite_float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction strictly between 0 and 1, got {value}")
    return value


def unit_interval(text: str) -> float:
    value = finite_float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {value}")
    return value


def int_list(text: str) -> list[int]:
    """``"3,5,7"`` -> ``[3, 5, 7]`` (non-negative integers)."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 3,5,7, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 0, got {text!r}")
    return values


def existing_file(text: str) -> str:
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is not an existing file")
    return text


# --------------------------------------------------------------------------- checks before any work


def check_model(spec: str, backend: str | None = None) -> None:
    """Raise a FuncnetError now if ``spec`` names no model (nothing is loaded); with ``--backend bridge`` any
    Hugging Face id is accepted (checked when it is booted)."""
    from ..models import resolve

    resolve(spec, backend)


def check_texts(spec: str) -> None:
    """Raise a FuncnetError now if ``spec`` is no split name, text file or folder of texts."""
    from ..data import resolve_texts

    resolve_texts(spec)


def check_out(path: str, kind: Any, overwrite: bool, *, folder: bool = True) -> None:
    """Raise now if a result could not be saved to ``path`` (nothing is created)."""
    from .._io import check_target

    check_target(path, kind, overwrite=overwrite, folder=folder)


def add_out(p: argparse.ArgumentParser, help: str, *, required: bool = True) -> None:  # noqa: A002
    p.add_argument("--out", required=required, default=None, help=help)
    p.add_argument("--overwrite", action="store_true", help="replace an earlier result of the same kind at --out "
                   "(anything else there is never touched)")


def add_model(p: argparse.ArgumentParser, *, model: bool = True) -> None:
    """``--model`` (unless the command names its models otherwise) and ``--backend``."""
    if model:
        p.add_argument("--model", default="smollm2-135m", help="embedded name, TransformerLens name or saved folder")
    p.add_argument("--backend", choices=("hooked", "bridge"), default="hooked",
                   help="model class: HookedTransformer (default) or TransformerLens's TransformerBridge "
                        "(compatibility mode)")


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object")


def traceback_wanted() -> bool:
    return os.environ.get("TL_FUNCNET_TRACEBACK", "") not in ("", "0")


__all__ = ["COMMANDS", "Handler", "command", "emit", "log_for", "positive_int", "non_negative_int", "finite_float",
           "positive_float", "fraction", "int_list", "existing_file", "check_model", "check_texts", "check_out",
           "add_out", "add_json", "traceback_wanted"]
