"""LinEAS against mean-difference steering on SmolLM2's shipped sentiment pairs, at equal KL (``--quick``: a
tiny random model with token-id texts).

LinEAS maps (``tl_funcnet.steering.train_lineas``) at every third layer's ``hook_resid_post`` are trained from
the 26 negative sentences (source) to the 26 positive ones (target), unpaired; the mean-difference vector of the
same pairs is added at the single layer where the steering benchmark found it strongest per unit of KL. Each is
swept over its strength; the table gives the shift of the positive-vs-negative next-word log-odds on the
shipped test prompts and the KL to the unsteered model on neutral text, and the best shift within the budget.

    python benchmarks/lineas.py [--quick] [--steps 60] [--kl-budget 0.5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import machine_info, markdown_table, tiny_model_and_task, write_result  # noqa: E402


def measure(model: Any, iv: Any, prompts: Any, pos_ids: Any, neg_ids: Any, neutral: Any, base: float) -> dict:
    from tl_funcnet.steering.evaluation import prompt_logprobs, target_metrics

    m = target_metrics(prompt_logprobs(model, prompts, iv), pos_ids, neg_ids)
    side = neutral.side_effects(iv)
    return {"shift": round(m["log_odds"] - base, 3), "KL": round(side["kl"], 4),
            "d loss": round(side["delta_loss"], 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--kl-budget", type=float, default=0.5)
    args = ap.parse_args()
    from tl_funcnet.steering import mean_difference, train_lineas
    from tl_funcnet.steering.evaluation import NeutralReference, prompt_logprobs, target_metrics, word_ids

    if args.quick:
        model, _ = tiny_model_and_task()
        g = torch.Generator().manual_seed(7)
        negative, positive = list(torch.randint(0, 25, (12, 8), generator=g)), list(torch.randint(25, 50, (12, 8),
                                                                                                 generator=g))
        prompts, pos_words, neg_words = list(torch.randint(0, 50, (6, 6), generator=g)), [30, 31], [3, 4]
        neutral_texts, layers, md_layer, steps = list(torch.randint(0, 50, (4, 12), generator=g)), [0, 1], 1, 10
        md_scales = [0.5, 1.0, 2.0]
    else:
        from tl_funcnet.models import load
        from tl_funcnet.steering.prompts import load_pairs

        model = load("smollm2-135m")
        pairs = load_pairs("sentiment")
        negative, positive = list(pairs.negative), list(pairs.positive)
        prompts, pos_words, neg_words = list(pairs.test_prompts), pairs.positive_words, pairs.negative_words
        neutral_texts, layers, md_layer, steps = "evaluation", list(range(3, 30, 3)), 27, args.steps
        md_scales = [0.5, 1.0, 2.0, 3.0, 4.0]
    pos_ids, neg_ids = word_ids(model, pos_words), word_ids(model, neg_words)
    neutral = NeutralReference(model, neutral_texts)
    base = target_metrics(prompt_logprobs(model, prompts), pos_ids, neg_ids)["log_odds"]
    t = time.perf_counter()
    maps = train_lineas(model, negative, positive, "hook_resid_post", layers=layers, steps=steps, lr=0.01)
    train_s = time.perf_counter() - t
    rows = []
    for strength in (0.25, 0.5, 1.0, 1.5, 2.0, 3.0):
        rows.append({"method": "LinEAS", "setting": f"strength {strength}",
                     **measure(model, maps.to_intervention(strength), prompts, pos_ids, neg_ids, neutral, base)})
    v = mean_difference(model, positive, negative, f"blocks.{md_layer}.hook_resid_post")
    for s in md_scales:
        rows.append({"method": "mean difference", "setting": f"layer {md_layer}, scale {s}",
                     **measure(model, v.to_intervention(s), prompts, pos_ids, neg_ids, neutral, base)})
    best = {}
    for method in ("LinEAS", "mean difference"):
        ok = [r for r in rows if r["method"] == method and r["KL"] <= args.kl_budget]
        best[method] = max(ok, key=lambda r: r["shift"]) if ok else None
    info = machine_info()
    write_result("lineas_quick" if args.quick else "lineas",
                 {"machine": info, "rows": rows, "best": best, "train_seconds": train_s, "losses": maps.losses,
                  "active_units": maps.active(), "kl_budget": args.kl_budget})
    print(f"LinEAS: {len(maps.sites)} sites, {steps} steps in {train_s:.0f} s, loss {maps.losses[0]:.3f} -> "
          f"{maps.losses[-1]:.3f}; unsteered log-odds {base:+.3f}")
    print(markdown_table(rows, ["method", "setting", "shift", "KL", "d loss"]))
    for method, r in best.items():
        print(f"best {method} within KL {args.kl_budget}: "
              + (f"{r['setting']}: shift {r['shift']:+.3f} at KL {r['KL']:.3f}" if r else "none within the budget"))


if __name__ == "__main__":
    main()
