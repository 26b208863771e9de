"""Concept neurons on SmolLM2: country -> capital recall against subject-verb agreement (``--quick``: a tiny
random model and random tasks).

Scores (``tl_funcnet.patching.neuron_scores``) on half of the capital prompts against half of the agreement
prompts; the top 0.1 / 0.5 / 1% of MLP neurons are zero-ablated and measured on the *other* halves (held out):
the probability of the right capital and top-1 accuracy, how often agreement prefers the right verb form over the
wrong one (the control task), and the loss on held-out text. Beside each: as many random neurons per layer (two draws) and the highest-variance neurons per
layer. A concept neuron set is specific when it hurts capitals far more than its controls while leaving agreement
and the loss alone.

    python benchmarks/concept_neurons.py [--quick]
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


def split(task: Any, part: int) -> Any:
    from tl_funcnet.patching import Task

    idx = torch.arange(part, len(task), 2)
    return Task(f"{task.name}[{part}::2]", task.clean[idx], task.corrupted[idx], task.answer[idx],
                task.distractor[idx], tuple(task.prompts[i] for i in idx.tolist()) if task.prompts else ())


@torch.no_grad()
def recall(model: Any, task: Any, iv: Any) -> tuple[float, float, float]:
    """Mean probability of the answer, top-1 accuracy, and how often the answer beats the distractor."""
    with iv.applied(model):
        logits = model(task.clean.to(model.cfg.device))[:, -1].float().cpu()
    rows = torch.arange(len(task))
    p = logits.softmax(-1)[rows, task.answer]
    beats = logits[rows, task.answer] > logits[rows, task.distractor]
    return float(p.mean()), float((logits.argmax(-1) == task.answer).float().mean()), float(beats.float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    from tl_funcnet.data import load_corpus
    from tl_funcnet.evaluate import evaluate
    from tl_funcnet.hooks import Intervention
    from tl_funcnet.patching import load_task, neuron_scores

    if args.quick:
        model, concept = tiny_model_and_task(n_prompts=8)
        _, control = tiny_model_and_task(n_prompts=8, changed=3)
        texts = [concept.clean[0], control.clean[0]]
        fractions = (0.05,)
    else:
        from tl_funcnet.models import load

        model = load("smollm2-135m")
        concept, control = load_task("capital", model), load_task("sva", model)
        texts = load_corpus("evaluation")[:4]
        fractions = (0.001, 0.005, 0.01)
    fit_c, test_c = split(concept, 0), split(concept, 1)
    fit_k, test_k = split(control, 0), split(control, 1)

    def measure(name: str, method: str, fraction: float | None, iv: Any) -> dict[str, Any]:
        p, acc, _ = recall(model, test_c, iv)
        _, _, ctl_acc = recall(model, test_k, iv)
        loss = evaluate(model, texts, iv, compare_to_base=False, progress=False).loss
        return {"method": method, "fraction": fraction, "neurons": name, "P(capital)": round(p, 4),
                "capital top-1": round(acc, 3), "agreement right over wrong": round(ctl_acc, 3), "loss": round(loss, 4)}

    rows = [measure("none", "-", None, Intervention())]
    seconds = {}
    for method in ("attribution", "contrast"):
        t = time.perf_counter()
        s = neuron_scores(model, fit_c, fit_k, method=method)
        seconds[method] = time.perf_counter() - t
        for f in fractions:
            rows.append(measure("top (concept)", method, f, s.to_intervention(f)))
            for r in (0, 1):
                rows.append(measure(f"random per layer ({r})", method, f, s.to_intervention(f, control="random",
                                                                                           random_state=r)))
            rows.append(measure("top variance per layer", method, f, s.to_intervention(f, control="top_variance")))
    info = machine_info()
    write_result("concept_neurons_quick" if args.quick else "concept_neurons",
                 {"machine": info, "rows": rows, "score_seconds": seconds, "n_fit": [len(fit_c), len(fit_k)],
                  "n_test": [len(test_c), len(test_k)]})
    print(f"concept {concept.name}: scored on {len(fit_c)} prompts against {len(fit_k)} {control.name} prompts; "
          f"measured on the other {len(test_c)} and {len(test_k)}; loss on {len(texts)} held-out passages; "
          f"scoring took " + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))
    print(markdown_table(rows, ["method", "fraction", "neurons", "P(capital)", "capital top-1",
                                "agreement right over wrong", "loss"]))


if __name__ == "__main__":
    main()
