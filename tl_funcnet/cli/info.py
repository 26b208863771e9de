"""``tl-funcnet info``: versions, and whether the embedded models are installed."""

from __future__ import annotations

import argparse

from ._base import Handler, add_json, command, emit


@command("info", "versions, and the embedded models and whether they are installed")
def _info(p: argparse.ArgumentParser) -> Handler:
    add_json(p)

    def run(args: argparse.Namespace) -> int:
        from importlib.metadata import PackageNotFoundError, version

        from ..models._embedded import EMBEDDED, is_installed

        versions = {}
        for pkg in ("tl_funcnet", "torch", "transformer-lens", "sae-lens", "transformers", "scikit-learn", "numpy"):
            try:
                versions[pkg] = version(pkg)
            except PackageNotFoundError:
                versions[pkg] = None
        models = {name: {"installed": is_installed(name), "description": str(spec)} for name, spec in EMBEDDED.items()}
        lines = ["versions:"] + [f"  {k:18s} {v}" for k, v in versions.items()] + ["embedded models:"]
        lines += [f"  {k:14s} {'installed' if v['installed'] else 'MISSING'}  {v['description']}"
                  for k, v in models.items()]
        emit(args, {"versions": versions, "models": models}, lines)
        return 0

    return run
