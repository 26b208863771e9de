"""``tl-funcnet prune``: prune MLP neurons, save the smaller model, report parameters and perplexity."""

from __future__ import annotations

import argparse

from ._base import (Handler, add_json, add_model, add_out, check_model, check_out, check_texts, command,
                    emit, fraction, log_for, non_negative_int, positive_int, unit_interval)

_METHODS = ["fn", "fn_guided", "cfsp", "fn_cfsp", "wanda", "flap", "magnitude", "activation", "random"]


@command("prune", "remove a fraction of MLP neurons (FN pruning or a baseline) and save the smaller model")
def _prune(p: argparse.ArgumentParser) -> Handler:
    add_model(p)
    p.add_argument("--ratio", type=fraction, required=True, help="fraction of all MLP neurons to remove, in (0, 1)")
    p.add_argument("--method", choices=_METHODS, default="fn")
    p.add_argument("--no-bias-compensation", action="store_true", help="skip FLAP-style b_out compensation")
    p.add_argument("--texts", default="calibration", help="calibration texts: split name, .txt/.jsonl or folder")
    p.add_argument("--max-tokens", type=positive_int, default=2048, help="calibration tokens")
    p.add_argument("--eval-texts", default="evaluation", help="held-out texts for perplexity")
    p.add_argument("--max-eval-texts", type=positive_int, default=16, help="held-out texts used (128 tokens each)")
    p.add_argument("--protect-first", type=non_negative_int, default=3)
    p.add_argument("--protect-last", type=non_negative_int, default=2)
    p.add_argument("--n-networks", type=positive_int, default=128, help="fn, fn_guided, fn_cfsp: ICA components per "
                   "layer")
    p.add_argument("--random-state", type=int, default=0, help="fn, fn_guided, fn_cfsp and random: the seed")
    p.add_argument("--base", choices=["wanda", "activation", "flap"], default="wanda",
                   help="fn_guided: the score that ranks the unprotected neurons")
    p.add_argument("--key-fraction", type=unit_interval, default=0.05,
                   help="fn_guided, fn_cfsp: fraction of each layer's neurons (highest FN score) pruned last")
    add_out(p, "folder for the pruned model (tl_funcnet.models.save)")
    add_json(p)

    def run(args: argparse.Namespace) -> int:
        from .._io import write_json_atomic
        from ..data import resolve_texts
        from ..evaluate import evaluate
        from ..models import load, save
        from ..models.store import KIND
        from ..pruning import prune

        check_model(args.model, args.backend)
        check_texts(args.texts)
        eval_texts = resolve_texts(args.eval_texts)[: args.max_eval_texts]
        check_out(args.out, KIND, args.overwrite)
        fn_opts = {"n_networks": args.n_networks, "random_state": args.random_state}
        options = {"fn": fn_opts, "fn_guided": {**fn_opts, "base": args.base, "key_fraction": args.key_fraction},
                   "fn_cfsp": {**fn_opts, "key_fraction": args.key_fraction},
                   "random": {"random_state": args.random_state}}.get(args.method, {})
        log_for(args)(f"loading {args.model}")
        model = load(args.model, backend=args.backend)
        small, plan = prune(model, args.ratio, args.method, args.texts, max_tokens=args.max_tokens,
                            bias_compensation=not args.no_bias_compensation, protect_first=args.protect_first,
                            protect_last=args.protect_last, **options)
        before = evaluate(model, eval_texts, compare_to_base=False, progress=False)
        after = evaluate(small, eval_texts, compare_to_base=False, progress=False)
        counts = plan.param_counts(model)
        out = save(small, args.out, overwrite=args.overwrite)
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
