"""Sentiment steering on SmolLM2 with tl_funcnet: layer x scale sweep, side effects, random-vector control.

Vectors: mean difference (CAA-style) of the shipped sentiment contrast pairs at ``hook_resid_post`` (``--site``,
a per-layer hook name; ``--layers`` chooses the layers), read at each prompt's last token; applied at every
position with ``scale`` x the raw vector. Target: log-odds of the
positive vs negative word lists for the next token after neutral test prompts (``shift`` = change against
the unsteered model). Side effects: KL(base || steered) per token and loss on held-out neutral text (the
evaluation split, 12 passages x 64 tokens). Control: a Gaussian vector of the same norm at the same
layer and scale (seeded with the layer index). Also: PCA (RepE) vector at the best layer, cached vs uncached
generation, and samples.

    python benchmarks/steering.py [--layers 3,6,...] [--scales 1,2,4,8] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import OUT_DIR, machine_info, peak_rss_mb, write_result  # noqa: E402

NAME = "steering"
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def tiny_setup() -> tuple[Any, Any, list, list]:
    """A tiny random llama-style model with token-id 'prompt pairs' (quick mode: tests the plumbing only)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from tl_funcnet.steering import PromptPairs

    cfg = HookedTransformerConfig(n_layers=4, d_model=32, n_heads=4, d_head=8, n_key_value_heads=2, d_mlp=64,
                                  d_vocab=60, n_ctx=64, act_fn="silu", normalization_type="RMS",
                                  positional_embedding_type="rotary", rotary_dim=8, gated_mlp=True,
                                  final_rms=True, seed=0)
    model = HookedTransformer(cfg).eval()
    g = torch.Generator().manual_seed(1)
    base = [torch.randint(10, 60, (6,), generator=g).tolist() for _ in range(12)]
    pairs = PromptPairs("tiny", tuple(tuple(b + [1]) for b in base), tuple(tuple(b + [2]) for b in base),
                        (3, 4), (5, 6), tuple(tuple(torch.randint(10, 60, (5,), generator=g).tolist())
                                              for _ in range(6)))
    neutral = [torch.randint(10, 60, (24,), generator=g).tolist() for _ in range(4)]
    return model, pairs, neutral, [list(p) for p in pairs.test_prompts[:2]]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--set", default="sentiment", help="shipped prompt-pair set (sentiment, formality)")
    ap.add_argument("--site", default="hook_resid_post", help="per-layer hook name the vectors are read and added at")
    ap.add_argument("--layers", default="3,6,9,12,15,18,21,24,27")
    ap.add_argument("--scales", default="1,2,4,8")
    ap.add_argument("--reduce", choices=["last", "mean"], default="last")
    ap.add_argument("--kl-budget", type=float, default=0.5, help="max KL (nats/token) on neutral text for 'best'")
    ap.add_argument("--neutral-texts", type=int, default=12)
    ap.add_argument("--gen-tokens", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", default=NAME)
    ap.add_argument("--quick", action="store_true", help="tiny random model on token ids (CI smoke run)")
    args = ap.parse_args(argv)

    import pandas as pd

    from tl_funcnet.steering import (NeutralReference, best_config, generate, load_pairs, mean_differences,
                                     pca_direction, plot_sweep, sweep)

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.out = NAME + "_quick" if args.out == NAME else args.out
        model, pairs, neutral_texts, gen_prompts = tiny_setup()
        args.layers, args.scales, args.gen_tokens, args.set = "1,2", "1,4", 5, "tiny token pairs"
        pos_words, neg_words = list(pairs.positive_words), list(pairs.negative_words)
    else:
        from tl_funcnet.models import load

        t = time.perf_counter()
        model = load(args.model).eval()
        log(f"loaded {args.model} in {time.perf_counter() - t:.1f} s")
        pairs = load_pairs(args.set)
        neutral_texts = "evaluation"
        gen_prompts = list(pairs.test_prompts[:3])
        pos_words, neg_words = list(pairs.positive_words), list(pairs.negative_words)
    layers = [int(x) for x in args.layers.split(",")]
    scales = [float(x) for x in args.scales.split(",")]
    res: dict[str, Any] = {"name": NAME, "machine": machine_info(), "quick": args.quick, "config": dict(vars(args)),
                           "n_pairs": len(pairs), "n_test_prompts": len(pairs.test_prompts), "timings_s": {}}

    t = time.perf_counter()
    vectors = mean_differences(model, list(pairs.positive), list(pairs.negative), args.site, layers=layers,
                               reduce=args.reduce)  # {site: vector}, in layer order
    res["timings_s"]["vectors"] = round(time.perf_counter() - t, 2)
    res["vector_norms"] = {site: round(v.norm, 3) for site, v in vectors.items()}
    log(f"built {len(vectors)} mean-difference vectors in {res['timings_s']['vectors']} s")

    t = time.perf_counter()
    neutral = NeutralReference(model, neutral_texts, max_texts=args.neutral_texts, max_tokens_per_seq=64)
    # one sweep per vector, its random control seeded with the layer index: the recorded figures in
    # BENCHMARKS.md were measured with that seeding (a single sweep seeds its controls 0, 1, 2, ... instead)
    parts = [sweep(model, {site: sv}, scales, list(pairs.test_prompts), pos_words, neg_words, neutral=neutral,
                   random_state=sv.layer, progress=log) for site, sv in vectors.items()]
    df = pd.concat([parts[0]] + [p[p["kind"] != "base"] for p in parts[1:]], ignore_index=True)
    res["timings_s"]["sweep"] = round(time.perf_counter() - t, 1)
    res["neutral_tokens"] = neutral.n_tokens
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    df.to_csv(OUT_DIR / f"{args.out}_sweep.csv", index=False)
    fig = plot_sweep(df, title=f"{args.set} steering, {args.model if not args.quick else 'tiny'}")
    fig.savefig(OUT_DIR / f"{args.out}_sweep.png", dpi=110)
    res["sweep"] = df.round(5).to_dict(orient="records")
    best = best_config(df, kl_budget=args.kl_budget)
    rnd = df[(df["kind"] == "random") & (df["site"] == best["site"]) & (df["scale"] == best["scale"])].iloc[0]
    res["best"] = best
    res["random_at_best"] = {k: (v.item() if hasattr(v, "item") else v) for k, v in rnd.to_dict().items()}
    res["base"] = {k: (v.item() if hasattr(v, "item") else v) for k, v in df.iloc[0].to_dict().items()}
    best_site, bs = str(best["site"]), float(best["scale"])
    log(f"best: {best_site} scale {bs}: shift {best['shift']:+.3f} (random {rnd['shift']:+.3f}), kl {best['kl']:.3f}")

    # PCA (RepE) direction at the best layer, same norm convention (mean projection of the differences)
    pc = pca_direction(model, list(pairs.positive), list(pairs.negative), best_site, reduce=args.reduce)
    pdf = sweep(model, [pc], [bs], list(pairs.test_prompts), pos_words, neg_words, neutral=neutral,
                random_control=False)
    res["pca_at_best"] = {"cosine_with_mean_difference": round(pc.cosine(vectors[best_site]), 4),
                          "norm": round(pc.norm, 3), "shift": float(pdf.iloc[1]["shift"]),
                          "kl": float(pdf.iloc[1]["kl"])}

    # generation: cached vs uncached equality, and samples
    t = time.perf_counter()
    sv = vectors[best_site]
    same = []
    for p in gen_prompts[:2]:
        a = generate(model, p if isinstance(p, str) else torch.tensor([p]), sv, scale=bs, pos="generated",
                     max_new_tokens=args.gen_tokens, use_past_kv_cache=True, return_tokens=True)
        b = generate(model, p if isinstance(p, str) else torch.tensor([p]), sv, scale=bs, pos="generated",
                     max_new_tokens=args.gen_tokens, use_past_kv_cache=False, return_tokens=True)
        same.append(bool(torch.equal(a, b)))
    res["generation_cache_equal"] = same
    if not args.quick:
        res["samples"] = [{"prompt": p, "unsteered": generate(model, p, None, max_new_tokens=args.gen_tokens),
                           "positive": generate(model, p, sv, scale=bs, max_new_tokens=args.gen_tokens),
                           "negative": generate(model, p, sv, scale=-bs, max_new_tokens=args.gen_tokens)}
                          for p in gen_prompts]
    res["timings_s"]["generation"] = round(time.perf_counter() - t, 1)
    res["timings_s"]["total"] = round(time.perf_counter() - T0, 1)
    res["peak_rss_mb"] = round(peak_rss_mb(), 1)
    path = write_result(args.out, res)
    md = markdown(res, df)
    print(md)
    path.with_suffix(".md").write_text(md)
    return res


def markdown(res: dict, df: Any) -> str:
    b, r, base = res["best"], res["random_at_best"], res["base"]
    L = [f"# Steering ({'quick, tiny random model' if res['quick'] else res['config']['model']}, "
         f"set {res['config']['set']}, {res['n_pairs']} pairs)", "",
         f"Unsteered: log-odds {base['log_odds']:+.3f}, P(pos words) {base['pos_mass']:.4f}, "
         f"P(neg words) {base['neg_mass']:.4f}, neutral loss {base['loss']:.3f}", "",
         "| layer | norm | best scale (KL <= budget) | shift | KL | d loss | random shift | random KL |",
         "|---|---|---|---|---|---|---|---|"]
    budget = res["config"]["kl_budget"]
    for layer in sorted(set(df[df["kind"] == "steer"]["layer"])):
        s = df[(df["kind"] == "steer") & (df["layer"] == layer)]
        ok = s[s["kl"] <= budget]
        row = ok.loc[ok["shift"].idxmax()] if not ok.empty else s.loc[s["kl"].idxmin()]
        rr = df[(df["kind"] == "random") & (df["layer"] == layer) & (df["scale"] == row["scale"])]
        rs = f"{rr['shift'].iloc[0]:+.3f} | {rr['kl'].iloc[0]:.3f}" if not rr.empty else "- | -"
        L.append(f"| {layer} | {row['norm']:.2f} | {row['scale']:g} | {row['shift']:+.3f} | {row['kl']:.3f} | "
                 f"{row['delta_loss']:+.3f} | {rs} |")
    p = res["pca_at_best"]
    L += ["", f"**Best** (KL <= {budget}): layer {b['layer']}, scale {b['scale']:g}: shift {b['shift']:+.3f} "
          f"(P(pos) {b['pos_mass']:.4f}, P(neg) {b['neg_mass']:.4f}), KL {b['kl']:.3f}, d loss {b['delta_loss']:+.3f}, "
          f"entropy {b['entropy']:.2f} (base {base['entropy']:.2f}). Random vector of the same norm: shift "
          f"{r['shift']:+.3f}, KL {r['kl']:.3f}, d loss {r['delta_loss']:+.3f}.",
          f"PCA (RepE) vector at layer {b['layer']}: cosine with mean difference {p['cosine_with_mean_difference']}, "
          f"shift {p['shift']:+.3f}, KL {p['kl']:.3f}.",
          f"Cached vs uncached steered generation identical: {res['generation_cache_equal']}.",
          f"Time: {res['timings_s']}, peak RSS {res['peak_rss_mb']} MB."]
    for s in res.get("samples", []):
        L += ["", f"- prompt: {s['prompt']!r}", f"  - unsteered: {s['unsteered']!r}",
              f"  - +vector: {s['positive']!r}", f"  - -vector: {s['negative']!r}"]
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
