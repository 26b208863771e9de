"""The subspace-patching illusion check on SmolLM2's IOI (``--quick``: a tiny random model).

For MLP layers across depth, four 1-D directions at ``mlp.hook_post``, patched at the last position from the
corrupted run into the clean one (``direction="noise"``):

- ``mean difference``: the mean of ``a_corrupted - a_clean`` over the prompts (what a probe or DAS-like search
  tends to find first: it mixes parts the next layer reads and parts it does not);
- ``gradient``: the mean gradient of the logit difference at the site (read by construction: it lies in
  ``W_out``'s row space);
- ``top neuron``: the neuron with the largest attribution ``|grad x (a_corrupted - a_clean)|``;
- ``random``: a Gaussian direction (the control).

Each row: how much of the direction lies in ``W_out``'s null space, where the patched coefficient comes from,
the effects of patching the direction, its row-space part, its null-space part and the whole MLP output, and
the verdict of :func:`tl_funcnet.patching.subspace_illusion`.

    python benchmarks/illusion.py [--layers 2,9,15,20,26] [--n-pairs 8] [--quick]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import machine_info, markdown_table, tiny_model_and_task, write_result  # noqa: E402


def directions(model: Any, task: Any, site: str) -> dict[str, torch.Tensor]:
    from tl_funcnet.hooks import capture, capture_grad

    acts: dict[str, torch.Tensor] = {}
    with torch.no_grad(), capture(site, acts).applied(model):
        model(task.corrupted)
    corrupted = acts.pop(site)[:, -1].float()
    grads: dict[str, torch.Tensor] = {}
    with (capture(site, acts) | capture_grad(site, grads)).applied(model):
        task.metric()(model(task.clean)).sum().backward()
    model.zero_grad(set_to_none=True)
    clean, grad = acts[site][:, -1].detach().float(), grads[site][:, -1].float()
    diff = corrupted - clean
    top = int((grad * diff).abs().mean(0).argmax())
    g = torch.Generator().manual_seed(0)
    return {"mean difference": diff.mean(0), "gradient": grad.mean(0),
            "top neuron": torch.nn.functional.one_hot(torch.tensor(top), clean.shape[-1]).float(),
            "random": torch.randn(clean.shape[-1], generator=g)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", default="2,9,15,20,26")
    ap.add_argument("--n-pairs", type=int, default=8)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    from tl_funcnet.patching import load_task, subspace_illusion

    if args.quick:
        model, task = tiny_model_and_task()
        layers = [0, 1]
    else:
        from tl_funcnet.models import load

        model = load("smollm2-135m")
        task = load_task("ioi", model, n_pairs=args.n_pairs)
        layers = [int(x) for x in args.layers.split(",")]
    rows = []
    for layer in layers:
        site = f"blocks.{layer}.mlp.hook_post"
        for name, v in directions(model, task, site).items():
            c = subspace_illusion(model, task, site, v, pos=-1)
            rows.append({"layer": layer, "direction": name, "null fraction": round(c.null_fraction, 3),
                         "coefficient from null space": round(c.coefficient_shares["null_space"], 3),
                         "subspace": round(c.effects["subspace"], 4), "row space": round(c.effects["row_space"], 4),
                         "null space": round(c.effects["null_space"], 4) + 0.0, "whole MLP": round(c.effects["full"], 4),
                         "illusion": c.illusion, "gap": round(c.gap, 3)})
    cols = ["layer", "direction", "null fraction", "coefficient from null space", "subspace", "row space",
            "null space", "whole MLP", "illusion"]
    info = machine_info()
    write_result("illusion_quick" if args.quick else "illusion", {"machine": info, "rows": rows,
                                                                  "n_pairs": len(task)})
    print(f"{task.name}, {len(task)} pairs, patched at the last position (noise: corrupted into clean); metric gap "
          f"(corrupted - clean logit difference) {rows[0]['gap']:+.3f}; effects are changes of the mean logit "
          f"difference")
    print(markdown_table(rows, cols))
    n = sum(r["illusion"] for r in rows)
    print(f"illusions: {n} of {len(rows)} (directions by kind: "
          + ", ".join(f"{k} {sum(r['illusion'] for r in rows if r['direction'] == k)}/{len(layers)}"
                      for k in ("mean difference", "gradient", "top neuron", "random")) + ")")


if __name__ == "__main__":
    main()
