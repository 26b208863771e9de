"""The same features on both TransformerLens model classes, side by side in one run: HookedTransformer and the
TransformerBridge in compatibility mode, on SmolLM2 (``--quick``: tiny random Llama twins).

Per feature, interleaved rounds (hooked, bridge, hooked, bridge, ...) and the median seconds of each class;
the goal is no feature more than 1.5x slower on the bridge. Then the parity figures: how far the bridge's
results are from the HookedTransformer's on the same inputs.

    python benchmarks/bridge.py [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import machine_info, markdown_table, write_result  # noqa: E402

GOAL = 1.5


def _tiny_twins() -> tuple[Any, Any]:
    """A tiny random Llama as both classes (the weights converted by TransformerLens for the hooked one)."""
    import transformers
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.pretrained.weight_conversions import convert_llama_weights

    from tl_funcnet.models import locate
    from tl_funcnet.models.smollm2 import gguf_tokenizer

    hf_cfg = transformers.LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                      tie_word_embeddings=False)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    tok = gguf_tokenizer(locate("smollm2-135m"))
    cfg = HookedTransformerConfig(n_layers=4, d_model=64, n_heads=4, d_head=16, n_key_value_heads=2, d_mlp=128,
                                  d_vocab=49152, n_ctx=256, act_fn="silu", normalization_type="RMSPre",
                                  positional_embedding_type="rotary", rotary_dim=16, rotary_adjacent_pairs=False,
                                  rotary_base=10000.0, eps=hf_cfg.rms_norm_eps, gated_mlp=True, final_rms=True,
                                  original_architecture="LlamaForCausalLM", default_prepend_bos=False)
    hooked = HookedTransformer(cfg, tok)
    hooked.load_and_process_state_dict(convert_llama_weights(hf, cfg))
    bridge = TransformerBridge.boot_transformers("tiny-llama", hf_model=hf, tokenizer=tok)
    bridge.cfg.default_prepend_bos = False
    bridge.enable_compatibility_mode(disable_warnings=True)
    return hooked.eval(), bridge.eval()


def _load(quick: bool) -> tuple[Any, Any, dict[str, float]]:
    if quick:
        t = time.perf_counter()
        h, b = _tiny_twins()
        return h, b, {"tiny twins": time.perf_counter() - t}
    from tl_funcnet.models import load

    times = {}
    t = time.perf_counter()
    h = load("smollm2-135m")
    times["hooked"] = time.perf_counter() - t
    t = time.perf_counter()
    b = load("smollm2-135m", backend="bridge")
    times["bridge"] = time.perf_counter() - t
    return h, b, times


def _features(h: Any, b: Any, quick: bool) -> dict[str, Callable[[Any], Any]]:
    """Per feature, a callable running it on one model (same inputs for both classes)."""
    from tl_funcnet import pruning
    from tl_funcnet.activations import collect
    from tl_funcnet.data import load_corpus
    from tl_funcnet.evaluate import evaluate
    from tl_funcnet.fingerprint import default_texts, fingerprint
    from tl_funcnet.funcnet import FunctionalNetworks
    from tl_funcnet.hooks import Intervention, ablate, steer
    from tl_funcnet.patching import attribution_patch, exact_patch, load_task, node_grid
    from tl_funcnet.steering import generate, mean_difference

    L, d, w = h.cfg.n_layers, h.cfg.d_model, h.cfg.d_mlp
    g = torch.Generator().manual_seed(0)
    vocab = min(h.cfg.d_vocab, 49152)
    tokens = torch.randint(0, vocab, (4, 64 if quick else 128), generator=g)
    one = ablate(f"blocks.{L // 2}.mlp.hook_post", units=list(range(0, w, 5))) + \
        steer(f"blocks.{L // 2}.hook_resid_post", torch.randn(d, generator=g))
    per_layer = Intervention()
    for layer in range(L):
        per_layer = per_layer + steer(f"blocks.{layer}.hook_resid_post", torch.randn(d, generator=g) / d)
    calib = load_corpus("calibration")
    evaluation = load_corpus("evaluation")[:2 if quick else 4]
    n_tok = 256 if quick else 1024
    acts = collect(h, calib, "mlp.hook_post", max_tokens=n_tok, max_tokens_per_seq=128, progress=False)
    fn = FunctionalNetworks(8, threshold=3.6, sides="one", random_state=0).fit(acts)
    mask = fn.to_intervention("mask")
    vector = mean_difference(h, ["I love this film", "What a wonderful day"], ["I hate this film", "What an awful day"],
                             f"blocks.{L // 3}.hook_resid_post")
    layers = list(range(0, L, max(1, L // 6)))

    def task(m: Any) -> Any:  # the capital task needs a model that solves it; tiny twins use random prompts
        if quick:
            return None
        return load_task("capital", m, n_pairs=4)

    capital = task(h)
    if capital is None:
        clean, corrupted = torch.randint(0, vocab, (2, 4, 8), generator=g)
        from tl_funcnet.patching import logit_diff

        metric, n_pos = logit_diff([1, 2, 3, 4], [5, 6, 7, 8]), 8
    else:
        clean, corrupted, metric, n_pos = capital.clean, capital.corrupted, capital.metric(), capital.n_pos

    def fwd(m: Any, iv: Intervention | None = None) -> Any:
        with torch.no_grad():
            if iv is None:
                return m(tokens)
            with iv.applied(m):
                return m(tokens)

    return {
        "forward": lambda m: fwd(m),
        "forward + intervention (2 hooks)": lambda m: fwd(m, one),
        f"forward + intervention ({L} hooks)": lambda m: fwd(m, per_layer),
        f"collect mlp.hook_post ({n_tok} tokens)": lambda m: collect(
            m, calib, "mlp.hook_post", max_tokens=n_tok, max_tokens_per_seq=128, progress=False),
        "evaluate with a network mask": lambda m: evaluate(m, evaluation, mask, compare_to_base=False,
                                                           progress=False).loss,
        "exact patching (mlp grid)": lambda m: exact_patch(m, clean, corrupted, node_grid(m, "mlp", n_pos, layers=layers),
                                                           metric, max_rows=64),
        "AtP (mlp grid)": lambda m: attribution_patch(m, clean, corrupted, node_grid(m, "mlp", n_pos, layers=layers),
                                                      metric, method="atp"),
        "RelP (mlp grid)": lambda m: attribution_patch(m, clean, corrupted, node_grid(m, "mlp", n_pos, layers=layers),
                                                       metric, method="relp"),
        "pruning plan (wanda 20%, bias compensation)": lambda m: pruning.plan_pruning(
            m, 0.2, "wanda", max_tokens=256 if quick else 512, **({"protect_first": 1, "protect_last": 1} if quick else {})),
        "fingerprint (16 networks)": lambda m: fingerprint(m, default_texts()[:4], n_networks=16,
                                                           max_tokens_per_text=64 if quick else 96),
        "steered generation (20 tokens)": lambda m: generate(m, "The movie was", vector, scale=4.0,
                                                             max_new_tokens=20),
    }


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12))


def _parity(outs: dict[str, tuple[Any, Any]]) -> dict[str, Any]:
    from tl_funcnet.fingerprint import compare

    def eff(r: Any) -> torch.Tensor:
        return r.effects

    p: dict[str, Any] = {}
    for name in ("forward", "forward + intervention (2 hooks)"):
        p[f"logits, {name}: max relative difference"] = _rel(outs[name][1], outs[name][0])
    coll = next(k for k in outs if k.startswith("collect"))
    p["collected activations: max difference / largest value"] = _rel(outs[coll][1].matrix(), outs[coll][0].matrix())
    p["network-mask loss: relative difference"] = abs(outs["evaluate with a network mask"][1] /
                                                      outs["evaluate with a network mask"][0] - 1)
    for name in ("exact patching (mlp grid)", "AtP (mlp grid)", "RelP (mlp grid)"):
        a, b = eff(outs[name][0]), eff(outs[name][1])
        p[f"{name}: max effect difference / largest effect"] = _rel(b, a)
    plans = outs["pruning plan (wanda 20%, bias compensation)"]
    same = sum(int((x == y).sum()) for x, y in zip(plans[0].pruned, plans[1].pruned))
    p["pruning plan: same pruned/kept decision (fraction of neurons)"] = same / sum(x.numel() for x in plans[0].pruned)
    fps = outs["fingerprint (16 networks)"]
    p["fingerprint: score of hooked vs bridge"] = compare(fps[0], fps[1]).score
    gen = outs["steered generation (20 tokens)"]
    p["steered generation: same text"] = gen[0] == gen[1]
    return p


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="tiny random twins, 2 rounds")
    args = ap.parse_args(argv)
    rounds = 2 if args.quick else args.rounds
    torch.set_grad_enabled(True)
    h, b, load_s = _load(args.quick)
    feats = _features(h, b, args.quick)
    times: dict[str, dict[str, list[float]]] = {f: {"hooked": [], "bridge": []} for f in feats}
    outs: dict[str, tuple[Any, Any]] = {}
    for name, fn in feats.items():  # warm-up (and the results compared for parity)
        outs[name] = (fn(h), fn(b))
    for r in range(rounds):
        for name, fn in feats.items():
            pair = (("hooked", h), ("bridge", b)) if r % 2 == 0 else (("bridge", b), ("hooked", h))
            for cls, m in pair:
                t = time.perf_counter()
                fn(m)
                times[name][cls].append(time.perf_counter() - t)
    rows = []
    for name, t in times.items():
        hm, bm = statistics.median(t["hooked"]), statistics.median(t["bridge"])
        rows.append({"feature": name, "hooked_s": round(hm, 4), "bridge_s": round(bm, 4),
                     "bridge_over_hooked": round(bm / hm, 2), "goal_met": bm / hm <= GOAL,
                     "hooked_rounds": [round(x, 4) for x in t["hooked"]],
                     "bridge_rounds": [round(x, 4) for x in t["bridge"]]})
    parity = _parity(outs)
    from tl_funcnet.models.surface import kv_cache_works

    result = {"model": "tiny twins" if args.quick else "smollm2-135m", "rounds": rounds, "goal": GOAL,
              "load_s": load_s, "rows": rows, "parity": parity, "bridge_kv_cache_works": kv_cache_works(b),
              "machine": machine_info()}
    write_result("bridge_quick" if args.quick else "bridge", result)
    print(f"## HookedTransformer vs TransformerBridge (compatibility mode), {result['model']}, median of {rounds} "
          f"interleaved rounds\n")
    print(markdown_table(rows, ["feature", "hooked_s", "bridge_s", "bridge_over_hooked", "goal_met"]))
    print(f"\nLoad (s): {', '.join(f'{k} {v:.1f}' for k, v in load_s.items())}. Bridge KV cache reproduces uncached "
          f"logits: {result['bridge_kv_cache_works']} (when not, steered generation runs uncached on the bridge).")
    print(f"Features within {GOAL}x: {sum(r['goal_met'] for r in rows)}/{len(rows)}.\n")
    print("### Parity (bridge against HookedTransformer, same inputs)\n")
    print(markdown_table([{"figure": k, "value": (round(v, 8) if isinstance(v, float) else v)}
                          for k, v in parity.items()], ["figure", "value"]))
    print(f"\nLoad average during the run: {result['machine']['loadavg_1m_5m_15m']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
