"""``tl-funcnet prune``: prune MLP neurons, save the smaller model, report parameters and perplexity."""

from __future__ import annotations

import argparse

from ..cli import Handler, command, emit

_METHODS = ["fn", "wanda", "flap", "magnitude", "activation", "random"]


@command("prune", "remove a fraction of MLP neurons (FN pruning or a baseline) and save the smaller model")
def _prune(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("--model", default="smollm2-135m", help="embedded name, TransformerLens name or saved dir")
    p.add_argument("--ratio", type=float, required=True, help="fraction of all MLP neurons to remove, in (0, 1)")
    p.add_argument("--method", choices=_METHODS, default="fn")
    p.add_argument("--no-bias-compensation", action="store_true", help="skip FLAP-style b_out compensation")
    p.add_argument("--calib", default="calibration", help="calibration corpus: split name, .txt/.jsonl or folder")
    p.add_argument("--calib-tokens", type=int, default=2048)
    p.add_argument("--eval", default="evaluation", help="held-out corpus for perplexity")
    p.add_argument("--eval-texts", type=int, default=16, help="number of held-out texts (128 tokens each)")
    p.add_argument("--protect-first", type=int, default=3)
    p.add_argument("--protect-last", type=int, default=2)
    p.add_argument("--n-components", type=int, default=128, help="fn: ICA components per layer")
    p.add_argument("--seed", type=int, default=666)
    p.add_argument("--out", required=True, help="directory for the pruned model (tl_funcnet.models.save)")
    p.add_argument("--json", action="store_true")

    def run(args: argparse.Namespace) -> int:
        from .._io import write_json_atomic
        from ..data import resolve_texts
        from ..errors import FuncnetError
        from ..evaluate import evaluate
        from ..models import load, save
        from . import Calibration, prune

        if not 0.0 < args.ratio < 1.0:  # fail before loading anything
            raise FuncnetError(f"--ratio should be strictly between 0 and 1, got {args.ratio}")
        model = load(args.model)
        calib = Calibration.from_texts(model, args.calib, max_tokens=args.calib_tokens)
        options = {"n_components": args.n_components, "seed": args.seed} if args.method == "fn" else \
            {"seed": args.seed} if args.method == "random" else {}
        small, plan = prune(model, args.ratio, args.method, calib, bias_compensation=not args.no_bias_compensation,
                            protect_first=args.protect_first, protect_last=args.protect_last, **options)
        texts = resolve_texts(args.eval)[: args.eval_texts]
        before = evaluate(model, texts, compare_to_base=False, progress=False)
        after = evaluate(small, texts, compare_to_base=False, progress=False)
        counts = plan.param_counts(model)
        out = save(small, args.out)
        summary = {**plan.summary(), "bias_compensation": not args.no_bias_compensation}
        write_json_atomic(out / "pruning.json", summary)
        payload = {"out": str(out), "model": args.model, **counts, "ppl_before": before.perplexity,
                   "ppl_after": after.perplexity, **summary}
        emit(args, payload, [
            f"pruned {plan.n_pruned} MLP neurons ({plan.neuron_ratio:.1%}) with {args.method}"
            f"{'' if args.no_bias_compensation else ' + bias compensation'}",
            f"params_before {counts['params_before']:,}  params_after {counts['params_after']:,} "
            f"({counts['param_ratio']:.1%} of all, {counts['mlp_param_ratio']:.1%} of MLP params removed)",
            f"ppl_before {before.perplexity:.3f}  ppl_after {after.perplexity:.3f}",
            f"saved to {out}",
        ])
        return 0

    return run
