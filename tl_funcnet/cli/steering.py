"""``tl-funcnet steer``: build a steering vector from two prompt files and generate with and without it."""

from __future__ import annotations

import argparse

from ._base import (Handler, add_json, add_model, check_model, command, emit, existing_file, finite_float,
                    positive_int)


@command("steer", "build a steering vector from positive/negative prompt files and generate with and without it")
def _steer(p: argparse.ArgumentParser) -> Handler:
    add_model(p)
    p.add_argument("--positive", type=existing_file, required=True, help="prompts: .txt (one per line) or .jsonl")
    p.add_argument("--negative", type=existing_file, required=True, help="prompts: .txt (one per line) or .jsonl")
    p.add_argument("--site", required=True, help="the hook read and steered, e.g. blocks.6.hook_resid_post")
    p.add_argument("--scale", type=finite_float, default=4.0)
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--method", choices=["mean_difference", "pca"], default="mean_difference")
    p.add_argument("--reduce", choices=["last", "mean"], default="last", help="read the last token or the mean")
    p.add_argument("--pos", choices=["prompt", "generated", "from_last", "last"], default=None,
                   help="positions steered during generation (default: every position)")
    p.add_argument("--normalize", action="store_true", help="use the unit direction (scale is then a norm)")
    p.add_argument("--unpaired", action="store_true", help="allow prompt sets of different sizes")
    p.add_argument("--max-new-tokens", type=positive_int, default=30)
    add_json(p)

    def run(args: argparse.Namespace) -> int:
        from ..errors import FuncnetError
        from ..models import load
        from ..steering import generate, mean_difference, pca_direction, read_prompts

        check_model(args.model, args.backend)
        if not args.prompt.strip():
            raise FuncnetError("--prompt is empty; give some text to continue")
        pos, neg = read_prompts(args.positive), read_prompts(args.negative)
        model = load(args.model, backend=args.backend)
        if args.method == "pca":
            sv = pca_direction(model, pos, neg, args.site, reduce=args.reduce)
        else:
            sv = mean_difference(model, pos, neg, args.site, reduce=args.reduce, paired=not args.unpaired)
        base = generate(model, args.prompt, None, max_new_tokens=args.max_new_tokens)
        steered = generate(model, args.prompt, sv, scale=args.scale, pos=args.pos, normalize=args.normalize,
                           max_new_tokens=args.max_new_tokens)
        payload = {"model": args.model, "site": sv.site, "method": args.method, "norm": sv.norm,
                   "scale": args.scale, "pos": args.pos, "normalize": args.normalize,
                   "n_positive": len(pos), "n_negative": len(neg), "prompt": args.prompt,
                   "unsteered": base, "steered": steered}
        emit(args, payload, [f"{args.method} vector at {sv.site} (norm {sv.norm:.3f}, {len(pos)}+/{len(neg)}- prompts)",
                             f"prompt:    {args.prompt!r}", f"unsteered: {base!r}",
                             f"steered (scale {args.scale:g}, pos {args.pos or 'every'}): {steered!r}"])
        return 0

    return run
