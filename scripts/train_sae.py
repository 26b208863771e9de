"""Train the default SAEs on the embedded SmolLM2 (one residual and one MLP-output site) and save them.

    python scripts/train_sae.py OUT_DIR [--sites blocks.6.hook_resid_post blocks.6.hook_mlp_out]
                                        [--d-sae 2304] [--k 32] [--tokens 150000] [--quick]

Each SAE is written in sae-lens's own format to ``OUT_DIR/<site>/`` (``cfg.json``,
``sae_weights.safetensors``); read it back with ``tl_funcnet.sae.load_sae`` or ``SAE.load_from_disk``.
``--quick`` trains on a tiny random model for a few steps (a smoke test, no SmolLM2 needed).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

#: Defaults sized for a few minutes per SAE on 2 CPU cores.
DEFAULTS = {"d_sae": 2304, "k": 32, "training_tokens": 150_000, "train_batch_size_tokens": 2048, "lr": 1e-3}


def train_all(model, out_dir: Path, sites, corpus="calibration", **kwargs) -> dict:
    """Train one SAE per site, save each under ``out_dir/<site>``; return {site: seconds}."""
    from tl_funcnet.sae import save_sae, train_sae

    times = {}
    for site in sites:
        t0 = time.perf_counter()
        sae = train_sae(model, site, corpus, **kwargs)
        times[site] = time.perf_counter() - t0
        save_sae(sae, out_dir / site)
        print(f"{site}: trained in {times[site]:.0f} s -> {out_dir / site}", flush=True)
    return times


def quick_model():
    """A tiny random HookedTransformer and a token corpus, for --quick runs."""
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_heads=4, d_head=4, d_mlp=32, d_vocab=50, n_ctx=32,
                                  act_fn="gelu", normalization_type="LN", seed=0)
    g = torch.Generator().manual_seed(0)
    return HookedTransformer(cfg).eval(), torch.randint(0, 50, (64, 32), generator=g)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--sites", nargs="+", default=None)
    ap.add_argument("--d-sae", type=int, default=DEFAULTS["d_sae"])
    ap.add_argument("--k", type=int, default=DEFAULTS["k"])
    ap.add_argument("--tokens", type=int, default=DEFAULTS["training_tokens"])
    ap.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    ap.add_argument("--quick", action="store_true", help="tiny random model, a few steps")
    args = ap.parse_args(argv)
    if args.quick:
        model, corpus = quick_model()
        sites = args.sites or ["blocks.0.hook_resid_post", "blocks.0.hook_mlp_out"]
        train_all(model, args.out_dir, sites, corpus, d_sae=32, k=4, training_tokens=2048, context_size=16,
                  train_batch_size_tokens=128, n_batches_in_buffer=16)
        return
    from tl_funcnet.models import load
    from tl_funcnet.sae import DEFAULT_SITES

    model = load("smollm2-135m")
    train_all(model, args.out_dir, args.sites or list(DEFAULT_SITES), d_sae=args.d_sae, k=args.k,
              training_tokens=args.tokens, train_batch_size_tokens=DEFAULTS["train_batch_size_tokens"], lr=args.lr)


if __name__ == "__main__":
    main()
