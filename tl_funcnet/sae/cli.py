"""``tl-funcnet train-sae``: train the default SAEs on a model offline and save them in sae-lens's format."""

from __future__ import annotations

import argparse

from ..cli import Handler, command, emit


@command("train-sae", "train top-k SAEs (default: one residual and one MLP-output site of SmolLM2) and save them")
def _train_sae(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("--model", default="smollm2-135m", help="embedded name, TransformerLens name or saved dir")
    p.add_argument("--sites", nargs="+", default=None, help="hook sites (default blocks.6.hook_resid_post and "
                   "blocks.6.hook_mlp_out)")
    p.add_argument("--corpus", default="calibration", help="split name, .txt/.jsonl file or folder")
    p.add_argument("--d-sae", type=int, default=2304)
    p.add_argument("--k", type=int, default=32, help="active features per token (top-k)")
    p.add_argument("--tokens", type=int, default=150_000, help="training tokens per SAE")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--out", required=True, help="directory; each SAE goes to OUT/<site>/")
    p.add_argument("--json", action="store_true")

    def run(args: argparse.Namespace) -> int:
        from pathlib import Path

        from ..errors import FuncnetError
        from ..models import load
        from .train import DEFAULT_SITES, DEFAULTS, train_and_save

        if args.tokens < 1 or args.d_sae < 1 or not 0 < args.k <= args.d_sae:
            raise FuncnetError(f"need --tokens >= 1, --d-sae >= 1 and 0 < --k <= --d-sae; got tokens={args.tokens}, "
                               f"d_sae={args.d_sae}, k={args.k}")
        model = load(args.model)
        sites = args.sites or list(DEFAULT_SITES)
        times = train_and_save(model, args.out, sites, args.corpus, d_sae=args.d_sae, k=args.k,
                               training_tokens=args.tokens, lr=args.lr,
                               train_batch_size_tokens=DEFAULTS["train_batch_size_tokens"])
        paths = {s: str(Path(args.out) / s) for s in sites}
        emit(args, {"saes": paths, "train_seconds": times},
             [f"{s}: trained in {times[s]:.0f} s -> {paths[s]}" for s in sites])
        return 0

    return run
