"""SNMF against ICA as the decomposition behind functional networks, on SmolLM2 (``--quick``: a tiny random
model, masking only).

1. **Masking**: 10 networks from each method over every layer's ``mlp.hook_post`` (the same 2048 calibration
   tokens); the union of each method's key units is zeroed and the held-out loss compared with random units of
   the same count per layer (two draws) and the highest-variance units per layer.
2. **Steering** (the shipped sentiment pairs): each network's direction (``steering.from_network``, map
   weights, at the site holding most of its units, which the MLP's ``W_out`` turns into a residual direction);
   per method the three networks best aligned with the mean-difference vector at their site (the pairs are the
   only data used to choose), sign-aligned with it; and the mean-difference vector at those sites. Each is
   swept over unit-norm scales; the table gives the largest positive-vs-negative log-odds shift on the test
   prompts within a KL budget on neutral text, and a random vector of the same norm as control.

    python benchmarks/snmf.py [--quick] [--kl-budget 0.5]
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


def masking(model: Any, acts: Any, nets: dict[str, Any], texts: Any) -> list[dict[str, Any]]:
    from tl_funcnet.evaluate import evaluate

    base = evaluate(model, texts, compare_to_base=False, progress=False).loss
    rows = []
    for name, fn in nets.items():
        n = int(fn.union().sum())
        conds = [("networks", fn.to_intervention("mask"))]
        conds += [(f"random per layer ({r})", fn.to_intervention("mask", control="per_layer", random_state=r))
                  for r in (0, 1)]
        conds += [("top variance per layer", fn.to_intervention("mask", control="top_variance"))]
        for cond, iv in conds:
            loss = evaluate(model, texts, iv, compare_to_base=False, progress=False).loss
            rows.append({"method": name, "units": n, "mask": cond, "loss": round(loss, 4),
                         "d loss": round(loss - base, 4)})
    return rows


def steering(model: Any, nets: dict[str, Any], kl_budget: float) -> list[dict[str, Any]]:
    from tl_funcnet.steering import from_network, mean_difference, sweep
    from tl_funcnet.steering.evaluation import NeutralReference, best_config
    from tl_funcnet.steering.prompts import load_pairs

    pairs = load_pairs("sentiment")
    neutral = NeutralReference(model, "evaluation")
    scales = [8.0, 32.0, 128.0, 512.0]  # unit-norm directions; MLP activations at late layers are large
    mean_diffs: dict[str, Any] = {}
    rows = []
    for name, fn in nets.items():
        cands = []
        for i in range(fn.n_networks_total):
            if not bool(fn.masks_[i].any()):
                continue
            v = from_network(fn, i, weights="map")
            if v.site not in mean_diffs:
                mean_diffs[v.site] = mean_difference(model, pairs.positive, pairs.negative, v.site)
            cos = v.cosine(mean_diffs[v.site])
            cands.append((abs(cos), i, v if cos >= 0 else v.scaled(-1.0), cos))
        for _, i, v, cos in sorted(cands, key=lambda c: -c[0])[:3]:
            df = sweep(model, {f"{name} network {i}": v}, scales, pairs.test_prompts, pairs.positive_words,
                       pairs.negative_words, neutral=neutral, normalize=True, random_control=True)
            best, rnd = best_config(df, kl_budget=kl_budget), best_config(df, kl_budget=kl_budget, kind="random")
            rows.append({"direction": f"{name} network {i}", "site": v.site, "cosine with mean difference":
                         round(cos, 3), "best scale": best["scale"], "shift": round(best["shift"], 3),
                         "KL": round(best["kl"], 3), "random shift": round(rnd["shift"], 3)})
    for site, v in mean_diffs.items():
        df = sweep(model, {"mean difference": v}, scales, pairs.test_prompts, pairs.positive_words,
                   pairs.negative_words, neutral=neutral, normalize=True, random_control=True)
        best, rnd = best_config(df, kl_budget=kl_budget), best_config(df, kl_budget=kl_budget, kind="random")
        rows.append({"direction": "mean difference", "site": site, "cosine with mean difference": 1.0,
                     "best scale": best["scale"], "shift": round(best["shift"], 3), "KL": round(best["kl"], 3),
                     "random shift": round(rnd["shift"], 3)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--kl-budget", type=float, default=0.5)
    args = ap.parse_args()
    from tl_funcnet.activations import collect
    from tl_funcnet.data import load_corpus
    from tl_funcnet.funcnet import FunctionalNetworks

    if args.quick:
        model, task = tiny_model_and_task()
        g = torch.Generator().manual_seed(5)
        texts = list(torch.randint(0, 50, (40, 12), generator=g))
        acts = collect(model, texts[:32], "mlp.hook_post", progress=False)
        evals, k, sparsity = texts[32:], 4, 0.05
    else:
        from tl_funcnet.models import load

        model = load("smollm2-135m")
        acts = collect(model, load_corpus("calibration"), "mlp.hook_post", max_tokens=2048, progress=False)
        evals, k, sparsity = load_corpus("evaluation")[:16], 10, 0.01
    nets, fit_s = {}, {}
    for name, kw in (("ica", {}), ("snmf", {"method": "snmf", "sparsity": sparsity})):
        t = time.perf_counter()
        nets[name] = FunctionalNetworks(k, **kw).fit(acts)
        fit_s[name] = round(time.perf_counter() - t, 2)
    sizes = {name: fn.summary()["network_sizes"] for name, fn in nets.items()}
    mask_rows = masking(model, acts, nets, evals)
    steer_rows = [] if args.quick else steering(model, nets, args.kl_budget)
    info = machine_info()
    write_result("snmf_quick" if args.quick else "snmf", {"machine": info, "fit_seconds": fit_s, "sizes": sizes,
                                                          "masking": mask_rows, "steering": steer_rows,
                                                          "kl_budget": args.kl_budget})
    print(f"{acts.n_samples} tokens x {acts.n_units} MLP neurons; fit seconds {fit_s}; network sizes {sizes}")
    print(markdown_table(mask_rows, ["method", "units", "mask", "loss", "d loss"]))
    if steer_rows:
        print(f"steering (KL budget {args.kl_budget} on neutral text; unit-norm directions, scales 8-512):")
        print(markdown_table(steer_rows, ["direction", "site", "cosine with mean difference", "best scale", "shift",
                                          "KL", "random shift"]))


if __name__ == "__main__":
    main()
