"""``tl-funcnet demo``: the main job, one self-contained HTML report of every feature on SmolLM2."""

from __future__ import annotations

import argparse

from ._base import Handler, add_json, add_model, add_out, check_model, check_out, command, emit, log_for


@command("demo", "the main job: functional networks, masking, steering, patching, circuits, pruning, SAE features "
                 "and fingerprints on SmolLM2, as one self-contained HTML report")
def _demo(p: argparse.ArgumentParser) -> Handler:
    add_model(p)
    add_out(p, "output folder for report.html, summary.json and the fitted networks", required=False)
    p.set_defaults(out="demo_out")
    p.add_argument("--quick", action="store_true", help="smaller settings (for smoke runs)")
    add_json(p)

    def run(args: argparse.Namespace) -> int:
        from ..demo import KIND, run_demo

        check_model(args.model, args.backend)
        check_out(args.out, KIND, args.overwrite)
        summary = run_demo(args.model, args.out, quick=args.quick, overwrite=args.overwrite, backend=args.backend,
                           log=log_for(args))
        emit(args, {k: v for k, v in summary.items() if k != "headline"}, [])
        return 0

    return run
