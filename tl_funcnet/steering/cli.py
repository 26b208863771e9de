"""``tl-funcnet steer``: build a mean-difference steering vector from two prompt files and generate with it.

Registered by importing this module (the lead adds the import next to ``cli_features``).
"""

from __future__ import annotations

import argparse

from ..cli import Handler, command, emit


@command("steer", "build a steering vector from positive/negative prompt files and generate with and without it")
def _steer(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("--model", default="smollm2-135m", help="embedded name, TransformerLens name or saved dir")
    p.add_argument("--positive", required=True, help="prompts: .txt (one per line) or .jsonl")
    p.add_argument("--negative", required=True, help="prompts: .txt (one per line) or .jsonl")
    p.add_argument("--layer", type=int, required=True, help="block whose hook_resid_post is read and steered")
    p.add_argument("--scale", type=float, default=4.0)
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--method", choices=["mean_difference", "pca"], default="mean_difference")
    p.add_argument("--reduce", choices=["last", "mean"], default="last", help="read the last token or the mean")
    p.add_argument("--pos", choices=["all", "prompt", "generated", "last"], default="all")
    p.add_argument("--normalize", action="store_true", help="use the unit direction (scale is then a norm)")
    p.add_argument("--unpaired", action="store_true", help="allow prompt sets of different sizes")
    p.add_argument("--max-new-tokens", type=int, default=30)
    p.add_argument("--json", action="store_true")

    def run(args: argparse.Namespace) -> int:
        from ..models import load
        from . import generate, mean_difference, pca_direction, read_prompts

        pos, neg = read_prompts(args.positive), read_prompts(args.negative)
        model = load(args.model)
        if args.method == "pca":
            sv = pca_direction(model, pos, neg, args.layer, reduce=args.reduce)
        else:
            sv = mean_difference(model, pos, neg, args.layer, reduce=args.reduce, paired=not args.unpaired)
        kw = dict(max_new_tokens=args.max_new_tokens)
        base = generate(model, args.prompt, None, **kw)
        steered = generate(model, args.prompt, sv, scale=args.scale, pos=args.pos, normalize=args.normalize, **kw)
        payload = {"model": args.model, "site": sv.site, "method": args.method, "norm": sv.norm,
                   "scale": args.scale, "pos": args.pos, "normalize": args.normalize,
                   "n_positive": len(pos), "n_negative": len(neg), "prompt": args.prompt,
                   "unsteered": base, "steered": steered}
        emit(args, payload, [f"{args.method} vector at {sv.site} (norm {sv.norm:.3f}, {len(pos)}+/{len(neg)}- prompts)",
                             f"prompt:    {args.prompt!r}", f"unsteered: {base!r}",
                             f"steered (scale {args.scale:g}, pos {args.pos}): {steered!r}"])
        return 0

    return run
