"""``tl-funcnet train-sae``: train SAEs on a model offline and save them in sae-lens's format."""

from __future__ import annotations

import argparse

from ._base import (Handler, add_json, add_model, add_out, check_model, check_texts, command, emit,
                    positive_float, positive_int)

#: the training architectures the command offers (all save in a form tl_funcnet's SAE ops read)
ARCHITECTURES = ("topk", "topafa", "batchtopk")


@command("train-sae", "train top-k or top-AFA SAEs (default: one residual and one MLP-output site of SmolLM2) and "
                      "save them")
def _train_sae(p: argparse.ArgumentParser) -> Handler:
    add_model(p)
    p.add_argument("--sites", nargs="+", default=None, help="hook sites (default blocks.6.hook_resid_post and "
                   "blocks.6.hook_mlp_out)")
    p.add_argument("--texts", default="calibration", help="split name, .txt/.jsonl file or folder")
    p.add_argument("--d-sae", type=positive_int, default=2304)
    p.add_argument("--architecture", choices=ARCHITECTURES, default="topk",
                   help="topk: k active features per token; topafa: as many as match the input's norm (no k); "
                   "batchtopk: k per token on average over a batch")
    p.add_argument("--k", type=positive_int, default=32, help="active features per token (topk, batchtopk)")
    p.add_argument("--tokens", type=positive_int, default=150_000, help="training tokens per SAE")
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument("--random-state", type=int, default=0)
    add_out(p, "folder; each SAE goes to OUT/<site>/")
    add_json(p)

    def run(args: argparse.Namespace) -> int:
        from pathlib import Path

        from .._io import check_target
        from ..errors import FuncnetError
        from ..models import load
        from ..sae._requires import require_sae_lens
        from ..sae.train import DEFAULT_SITES, DEFAULTS, KIND, train_and_save

        require_sae_lens("tl-funcnet train-sae")  # before the model loads
        if args.architecture != "topafa" and args.k > args.d_sae:
            raise FuncnetError(f"--k ({args.k}) cannot exceed --d-sae ({args.d_sae})")
        check_model(args.model, args.backend)
        check_texts(args.texts)
        sites = args.sites or list(DEFAULT_SITES)
        for site in sites:
            check_target(Path(args.out) / site, KIND, overwrite=args.overwrite)
        model = load(args.model, backend=args.backend)
        times = train_and_save(model, args.out, sites, args.texts, overwrite=args.overwrite, d_sae=args.d_sae,
                               architecture=args.architecture, k=args.k, training_tokens=args.tokens, lr=args.lr,
                               random_state=args.random_state,
                               train_batch_size_tokens=DEFAULTS["train_batch_size_tokens"])
        paths = {s: str(Path(args.out) / s) for s in sites}
        emit(args, {"saes": paths, "train_seconds": times},
             [f"{s}: trained in {times[s]:.0f} s -> {paths[s]}" for s in sites])
        return 0

    return run
