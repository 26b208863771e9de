"""``tl-funcnet demo``: the main job, an HTML report of functional networks, masking, patching and fingerprints."""

from __future__ import annotations

import argparse

from ._base import Handler, add_json, add_out, check_model, check_out, command, emit, log_for


@command("demo", "the main job: functional networks, masking, fingerprint and patching on SmolLM2, as an HTML report")
def _demo(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("--model", default="smollm2-135m", help="embedded name, TransformerLens name or saved folder")
    add_out(p, "output folder for report.html, plots, networks and summary.json", required=False)
    p.set_defaults(out="demo_out")
    p.add_argument("--quick", action="store_true", help="smaller settings (for smoke runs)")
    add_json(p)

    def run(args: argparse.Namespace) -> int:
        from ..demo import KIND, run_demo

        check_model(args.model)
        check_out(args.out, KIND, args.overwrite)
        summary = run_demo(args.model, args.out, quick=args.quick, overwrite=args.overwrite, log=log_for(args))
        emit(args, summary, [])
        return 0

    return run
