"""SAE features on SmolLM2: train (or load) two SAEs, score them, and show a feature ablation.

1. Train a top-k SAE at ``blocks.6.hook_resid_post`` and one at ``blocks.6.hook_mlp_out`` with sae-lens's
   runner on the built-in calibration split (or load them from ``bench_out/sae/<site>/`` if present).
2. Evaluate on the evaluation split: MSE, explained variance, L0, dead fraction, CE loss recovered
   (vs zero-ablating the site), and the quasi-orthogonality diagnostics AFA ratio, ε_LBO and max decoder
   |cos| (see ``tl_funcnet.sae.metrics``).
3. Ablate the most active residual feature at the last token of a prompt and print the top-5 next
   tokens before and after.

    python benchmarks/sae.py [--retrain] [--eval-texts 24] [--quick]

``--quick`` runs everything on a tiny random model for a few steps (CI smoke test). Results go to
``bench_out/sae.json`` (``sae_quick.json`` for --quick); a markdown table is printed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import OUT_DIR, machine_info, peak_rss_mb, write_result  # noqa: E402
from tl_funcnet.sae.train import DEFAULTS  # noqa: E402

PROMPT = "The capital of France is"


def quick_model():
    """A tiny random HookedTransformer and token-id texts, for --quick runs."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_heads=4, d_head=4, d_mlp=32, d_vocab=50, n_ctx=32,
                                  act_fn="gelu", normalization_type="LN", seed=0)
    g = torch.Generator().manual_seed(0)
    return HookedTransformer(cfg).eval(), torch.randint(0, 50, (64, 32), generator=g)


def _top5(model, logits: torch.Tensor) -> list[list]:
    probs = logits.float().softmax(-1)
    p, idx = probs.topk(5)
    tok = getattr(model, "tokenizer", None)
    return [[tok.decode([int(i)]) if tok is not None else int(i), round(float(q), 4)] for q, i in zip(p, idx)]


@torch.no_grad()
def ablation_demo(model, sae, site: str, tokens: torch.Tensor) -> dict:
    """Ablate the most active feature at the last position and compare the next-token distributions."""
    from tl_funcnet.sae import ablate_features, capture_features

    store: dict = {}
    with capture_features(sae, store, key="f").applied(model):
        base = model(tokens)[0, -1]
    f_last = store["f"][0, -1]
    feat = int(f_last.argmax())
    with ablate_features(sae, [feat], site=site).applied(model):
        after = model(tokens)[0, -1]
    lp0, lp1 = base.float().log_softmax(-1), after.float().log_softmax(-1)
    return {"site": site, "feature": feat, "feature_act": round(float(f_last[feat]), 3),
            "n_active_last_pos": int((f_last != 0).sum()), "top5_before": _top5(model, base),
            "top5_after": _top5(model, after), "kl_before_after": float((lp0.exp() * (lp0 - lp1)).sum())}


def sae_arguments(description: str) -> argparse.ArgumentParser:
    """The options every SAE benchmark takes: --quick, --retrain, --eval-texts, --tokens."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--retrain", action="store_true", help="train even if saved SAEs exist")
    ap.add_argument("--eval-texts", type=int, default=24, help="evaluation-split texts (128 tokens each)")
    ap.add_argument("--tokens", type=int, default=DEFAULTS["training_tokens"])
    return ap


def main(argv: list[str] | None = None) -> dict:
    args = sae_arguments(__doc__.split("\n")[0]).parse_args(argv)
    torch.manual_seed(0)
    from tl_funcnet.sae import DEFAULT_SITES, evaluate_sae, load_sae

    t_start = time.perf_counter()
    if args.quick:
        model, texts = quick_model()
        sites, eval_texts, prompt = ["blocks.0.hook_resid_post", "blocks.0.hook_mlp_out"], texts[:8], texts[:1, :8]
        sae_dir = OUT_DIR / "sae_quick"
        train_kw = dict(d_sae=32, k=4, training_tokens=2048, context_size=16, train_batch_size_tokens=128,
                        n_batches_in_buffer=16)
    else:
        from tl_funcnet.data import load_corpus
        from tl_funcnet.models import load

        model = load("smollm2-135m")
        texts, sites = "calibration", list(DEFAULT_SITES)
        eval_texts = load_corpus("evaluation", limit=args.eval_texts)
        prompt = model.to_tokens(PROMPT)
        sae_dir = OUT_DIR / "sae"
        train_kw = dict(d_sae=DEFAULTS["d_sae"], k=DEFAULTS["k"], training_tokens=args.tokens,
                        train_batch_size_tokens=DEFAULTS["train_batch_size_tokens"], lr=DEFAULTS["lr"])
    todo = [s for s in sites if args.retrain or not (sae_dir / s / "cfg.json").is_file()]
    from tl_funcnet.sae import train_and_save

    # overwrite=True: the sites in ``todo`` are (re)trained on purpose (--retrain, or no SAE saved there yet)
    train_s = train_and_save(model, sae_dir, todo, texts, overwrite=True, **train_kw) if todo else {}
    saes = {s: load_sae(sae_dir / s) for s in sites}
    rows = {}
    for s, sae in saes.items():
        t0 = time.perf_counter()
        m = evaluate_sae(model, sae, eval_texts, site=s, max_tokens_per_seq=128)
        rows[s] = {**m.to_dict(), "eval_s": round(time.perf_counter() - t0, 1),
                   "train_s": round(train_s[s], 1) if s in train_s else None,
                   "training_tokens": train_kw["training_tokens"] if s in train_s else "loaded"}
    demo = ablation_demo(model, saes[sites[0]], sites[0], prompt)
    result = {"machine": machine_info(), "quick": args.quick, "train_config": train_kw, "metrics": rows,
              "ablation": demo, "total_s": round(time.perf_counter() - t_start, 1), "peak_rss_mb": round(peak_rss_mb())}
    path = write_result("sae_quick" if args.quick else "sae", result)
    keys = ["d_sae", "n_tokens", "mse", "explained_variance", "l0", "dead_fraction", "ce_loss_base", "ce_loss_sae",
            "ce_loss_zero", "ce_loss_recovered", "afa_ratio_mean", "afa_norm_corr", "eps_lbo", "max_decoder_cos",
            "train_s", "eval_s"]
    print("\n| metric | " + " | ".join(sites) + " |\n|---|" + "---|" * len(sites))
    for k in keys:
        vals = [rows[s][k] for s in sites]
        print(f"| {k} | " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in vals) + " |")
    print(f"\nAblating feature {demo['feature']} (act {demo['feature_act']}) at {demo['site']}, last token "
          f"(KL {demo['kl_before_after']:.4f}):")
    print("| rank | before | after |\n|---|---|---|")
    for i, (b, a) in enumerate(zip(demo["top5_before"], demo["top5_after"])):
        print(f"| {i + 1} | {b[0]!r} {b[1]:.3f} | {a[0]!r} {a[1]:.3f} |")
    print(f"\ntotal {result['total_s']} s, peak RSS {result['peak_rss_mb']} MB -> {path}")
    return result


if __name__ == "__main__":
    main()
