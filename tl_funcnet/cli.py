"""The ``tl-funcnet`` command line. Subcommands import their features lazily so ``--help`` is instant."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable, Sequence

Handler = Callable[[argparse.Namespace], int]
#: name -> (function that adds the arguments and returns the handler, help text)
_COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], Handler], str]] = {}
_HANDLERS: dict[str, Handler] = {}
#: Subcommands added by a feature function ``add_<name>_command(subparsers)`` that sets ``args.func``.
_ADDERS: list[Callable[[Any], Any]] = []


def command(name: str, help: str):  # noqa: A002
    """Register a subcommand: the decorated function adds arguments and returns the handler."""

    def deco(add_args: Callable[[argparse.ArgumentParser], Handler]):
        _COMMANDS[name] = (add_args, help)
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
    try:
        import torch

        if isinstance(x, torch.Tensor):
            return x.tolist()
    except ImportError:  # pragma: no cover
        pass
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def _quiet_env() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


# ------------------------------------------------------------------------------------------- info


@command("info", "versions, and the embedded models and whether they are installed")
def _info(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("--json", action="store_true", help="print one JSON object")

    def run(args: argparse.Namespace) -> int:
        from importlib.metadata import PackageNotFoundError, version

        from .models._embedded import EMBEDDED, is_installed

        versions = {}
        for pkg in ("tl_funcnet", "torch", "transformer-lens", "sae-lens", "transformers", "scikit-learn", "numpy"):
            try:
                versions[pkg] = version(pkg)
            except PackageNotFoundError:
                versions[pkg] = None
        models = {name: {"installed": is_installed(name), "description": str(spec)} for name, spec in EMBEDDED.items()}
        lines = ["versions:"] + [f"  {k:18s} {v}" for k, v in versions.items()] + ["embedded models:"]
        lines += [f"  {k:14s} {'installed' if v['installed'] else 'MISSING'}  {v['description']}" for k, v in models.items()]
        emit(args, {"versions": versions, "models": models}, lines)
        return 0

    return run


# ------------------------------------------------------------------------------------------- demo


@command("demo", "the main job: functional networks, masking, fingerprint and patching on SmolLM2, as an HTML report")
def _demo(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--out", default="demo_out", help="output folder for report.html, plots and JSON")
    p.add_argument("--quick", action="store_true", help="smaller settings (for CI smoke runs)")
    p.add_argument("--json", action="store_true")

    def run(args: argparse.Namespace) -> int:
        from .demo import run_demo

        import sys as _sys

        log = (lambda s: print(s, file=_sys.stderr)) if args.json else print
        summary = run_demo(args.model, args.out, quick=args.quick, log=log)
        emit(args, summary, [])
        return 0

    return run


# ------------------------------------------------------------------------------------------- main


def _load_feature_commands() -> None:
    """Feature packages register further subcommands here (imports stay lazy: only argparse setup)."""
    import importlib.util
    from pathlib import Path

    from . import cli_features  # noqa: F401

    # Each feature keeps its subcommand in <feature>/cli.py. Load those files without running the feature
    # package's __init__ (which imports torch), so `--help` stays instant; handlers import lazily.
    root = Path(__file__).resolve().parent
    for feature in ("steering", "patching", "fingerprint", "pruning", "sae"):
        name = f"{__package__}.{feature}.cli"
        path = root / feature / "cli.py"
        module = sys.modules.get(name)
        if module is None:
            if not path.exists():
                continue
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
            module.__package__ = f"{__package__}.{feature}"
            sys.modules[name] = module
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        for attr in dir(module):
            adder = getattr(module, attr)
            if attr.startswith("add_") and attr.endswith("_command") and adder not in _ADDERS:
                _ADDERS.append(adder)


def build_parser() -> argparse.ArgumentParser:
    try:
        _load_feature_commands()
    except ImportError:  # pragma: no cover - a partial install still offers the core commands
        pass
    parser = argparse.ArgumentParser(prog="tl-funcnet", description="tl_funcnet: interpretability interventions "
                                     "for TransformerLens models")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_args, help_text) in _COMMANDS.items():
        _HANDLERS[name] = add_args(sub.add_parser(name, help=help_text, description=help_text))
    for adder in _ADDERS:
        adder(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_env()
    handler = _HANDLERS[args.command] if args.command in _HANDLERS else args.func
    from .errors import FuncnetError

    try:
        return int(handler(args) or 0)
    except FuncnetError as err:
        print(f"tl-funcnet {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
