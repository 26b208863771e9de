"""A pruning grid: methods x ratios, each plan judged by held-out perplexity of the soft-pruned model.

>>> df = sweep(model, ["fn", "wanda", "random"], [0.1, 0.2, 0.3])             # in process
>>> df = sweep(ModelRef("smollm2-135m"), METHODS, ratios, executor=client.get_executor())  # one chunk per method

Each method scores the neurons once and reuses the scores for every ratio (:func:`plan_from_scores`); a chunk is
one method, so the grid gives the same numbers in process and on any executor.
"""

from __future__ import annotations

import uuid
from concurrent.futures import Executor
from typing import Any, Mapping, Sequence

from ..activations.tokens import resolve_inputs
from ..errors import FuncnetError
from ..evaluate import perplexity
from ..executors.fanout import Chunk, check_executor, fan_out, model_ref, reuse
from ..models.ref import as_model
from .api import _check_method, calibration_for, compensate, plan_from_scores
from .model_info import check_prunable, protected_layers
from .plan import _check_ratio
from .scores import method_options, score

DENSE = "dense"  # the unpruned model's row


def _method_rows(model: Any, *, sweep: str | None = None, method: str, ratios: list[float], texts: Any, eval_texts: list, options: dict,
                 bias_compensation: bool, protect_first: int, protect_last: int, max_tokens: int,
                 max_tokens_per_seq: int) -> list[dict[str, Any]]:
    """One method's rows: score once, then plan, compensate and evaluate each ratio (``"dense"``: the model)."""
    if method == DENSE:
        ppl = perplexity(model, eval_texts, max_tokens_per_seq=max_tokens_per_seq, progress=False)
        return [{"method": DENSE, "ratio": 0.0, "neuron_ratio": 0.0, "n_pruned": 0, "perplexity": ppl}]
    widths = check_prunable(model)
    def calibrate() -> Any:
        return calibration_for(model, texts, max_tokens=max_tokens, max_tokens_per_seq=max_tokens_per_seq)

    # a worker calibrates once for all the methods of one sweep it runs
    calibration = calibrate() if sweep is None else reuse((sweep, id(model)), calibrate)
    prot = protected_layers(len(widths), protect_first, protect_last, None)
    layers = [l for l in range(len(widths)) if l not in prot]
    scores = score(model, calibration, method, layers=layers, **options)
    rows = []
    for ratio in ratios:
        plan = plan_from_scores(model, scores, ratio, method, protect_first=protect_first, protect_last=protect_last)
        if bias_compensation:
            plan = compensate(model, plan, calibration)
        ppl = perplexity(model, eval_texts, plan.to_intervention(), max_tokens_per_seq=max_tokens_per_seq,
                         progress=False)
        rows.append({"method": method, "ratio": ratio, "neuron_ratio": plan.neuron_ratio,
                     "n_pruned": plan.n_pruned, "perplexity": ppl})
    return rows


def sweep(model: Any, methods: Sequence[str], ratios: Sequence[float], texts: Any = "calibration",
          eval_texts: Any = "evaluation", *, options: Mapping[str, Mapping[str, Any]] | None = None,
          bias_compensation: bool = True, protect_first: int = 3, protect_last: int = 2, max_tokens: int = 2048,
          max_tokens_per_seq: int = 128, executor: Executor | None = None) -> Any:
    """Perplexity on ``eval_texts`` of every method x ratio (soft pruning with the plan's intervention).

    ``texts`` calibrates every method; ``options`` maps a method to its own options (e.g. ``{"fn":
    {"n_networks": 64}}``). ``executor`` (any ``concurrent.futures.Executor``) runs one chunk per method, each
    worker loading ``model`` by reference. Returns a pandas DataFrame with columns ``method, ratio,
    neuron_ratio, n_pruned, perplexity`` (a first ``dense`` row: nothing pruned).
    """
    import pandas as pd

    methods = [methods] if isinstance(methods, str) else list(methods)
    if not methods:
        raise FuncnetError("no pruning methods to sweep; pass one or more method names")
    for m in methods:
        _check_method(m)
    grid = sorted({_check_ratio(r) for r in ratios}) if not isinstance(ratios, (int, float)) else []
    if not grid:
        raise FuncnetError(f"ratios should be a list of fractions strictly between 0 and 1, got {ratios!r}")
    options = dict(options or {})
    for m, opts in options.items():
        if m not in methods:
            raise FuncnetError(f"options were given for {m!r}, which is not among the methods {methods}")
        unknown = sorted(set(opts) - set(method_options(m)))
        if unknown:
            raise FuncnetError(f"method {m!r} takes the options {list(method_options(m))}, not {unknown}")
    if not isinstance(bias_compensation, bool):
        raise FuncnetError(f"bias_compensation should be True or False, got {bias_compensation!r}")
    evaluation = resolve_inputs(eval_texts)
    calibration = texts if hasattr(texts, "check_model") else resolve_inputs(texts)
    common = {"bias_compensation": bias_compensation, "protect_first": protect_first, "protect_last": protect_last,
              "max_tokens": max_tokens, "max_tokens_per_seq": max_tokens_per_seq}
    per_method = [{"method": m, "ratios": grid, "options": dict(options.get(m, {})), "eval_texts": evaluation,
                   **common} for m in [DENSE, *methods]]
    if executor is None:
        model = as_model(model)
        widths = check_prunable(model)
        protected_layers(len(widths), protect_first, protect_last, None)
        calibration = calibration_for(model, calibration, max_tokens=max_tokens,
                                      max_tokens_per_seq=max_tokens_per_seq)  # shared by every method
        rows = [row for params in per_method for row in _method_rows(model, texts=calibration, **params)]
    else:
        check_executor(executor)
        if hasattr(model, "cfg"):  # a loaded model: check here what would otherwise fail on every worker
            protected_layers(len(check_prunable(model)), protect_first, protect_last, None)
        if not isinstance(texts, (str, list, tuple)) and not hasattr(texts, "__fspath__"):
            raise FuncnetError("with an executor, texts should be a split name, a path or a list of strings (a "
                               "Calibration holds a model's activations and is not sent to workers)")
        ref = model_ref(model)
        sweep_id = uuid.uuid4().hex
        chunks = [Chunk(f"method {p['method']}", {**p, "texts": calibration, "sweep": sweep_id}) for p in per_method]
        results = fan_out(executor, _method_rows, chunks, ref=ref, what="pruning.sweep")
        rows = [row for part in results for row in part]
    return pd.DataFrame(rows)


__all__ = ["sweep"]
