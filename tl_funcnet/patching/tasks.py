"""Circuit tasks shipped as data: clean/corrupted prompt pairs of equal token length with one-token answers.

>>> task = load_task("ioi", model)            # or a path to a JSON file, or a dict
>>> task.clean, task.corrupted                 # (n_pairs, pos) token ids
>>> task_report(model, task)                   # accuracy and logit differences
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import torch
from jaxtyping import Int
from torch import Tensor

from ..errors import FormatError, FuncnetError, ShapeError
from ..hooks import Intervention
from ..hooks.values import positive_int
from .metrics import LogitDiff

TASKS = ("ioi", "greater_than", "capital", "induction", "sva")


@dataclass(frozen=True)
class Task:
    """A tokenized task. ``answer``/``distractor`` are the clean run's right and wrong next tokens."""

    name: str
    clean: Int[Tensor, "batch pos"]
    corrupted: Int[Tensor, "batch pos"]
    answer: Int[Tensor, "batch"]
    distractor: Int[Tensor, "batch"]
    prompts: tuple[tuple[str, str], ...] = ()

    def __len__(self) -> int:
        return int(self.clean.shape[0])

    @property
    def n_pos(self) -> int:
        return int(self.clean.shape[1])

    def metric(self) -> LogitDiff:
        """Logit difference ``answer - distractor`` at the last position."""
        return LogitDiff(self.answer, self.distractor)

    def subset(self, n: int) -> "Task":
        """The first ``n`` pairs."""
        return Task(self.name, self.clean[:n], self.corrupted[:n], self.answer[:n], self.distractor[:n],
                    self.prompts[:n])


def _read(spec: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(spec, Mapping):
        return dict(spec)
    if not isinstance(spec, (str, Path)):
        raise FuncnetError(f"a task is a built-in name {list(TASKS)}, a JSON path or a dict; got {type(spec).__name__}")
    p = Path(spec)
    if p.suffix == ".json" or p.exists():
        if not p.is_file():
            raise FuncnetError(f"task file {p} does not exist; pass a built-in name from {list(TASKS)} or a JSON path")
        try:
            text = p.read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise FormatError(f"task file {p} could not be read ({err})") from None
    else:
        if str(spec) not in TASKS:
            raise FuncnetError(f"unknown task {spec!r}; built-in tasks are {list(TASKS)}, or pass a JSON path or dict")
        text = resources.files("tl_funcnet.data").joinpath(f"tasks/{spec}.json").read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise FormatError(f"task file {spec} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise FormatError(f"task file {spec} holds a JSON {type(data).__name__}; expected an object with 'pairs'")
    return data


def _check_pairs(name: str, pairs: Any) -> list[Mapping[str, str]]:
    """The task's pairs, each an object with non-empty string ``clean``, ``corrupted``, ``answer``, ``distractor``."""
    if not isinstance(pairs, list) or not pairs:
        raise FormatError(f"task {name!r} has no 'pairs' list; expected [{{'clean', 'corrupted', 'answer', "
                          "'distractor'}, ...]")
    for i, p in enumerate(pairs):
        if not isinstance(p, Mapping):
            raise FormatError(f"task {name!r} pair {i} should be an object, got {type(p).__name__}")
        missing = {"clean", "corrupted", "answer", "distractor"} - set(p)
        if missing:
            raise FormatError(f"task {name!r} pair {i} lacks {sorted(missing)}")
        bad = [k for k in ("clean", "corrupted", "answer", "distractor") if not isinstance(p[k], str) or not p[k]]
        if bad:
            raise FormatError(f"task {name!r} pair {i}: {bad} should be non-empty strings")
    return pairs


def check_task_spec(spec: str | Path | Mapping[str, Any]) -> None:
    """Raise now if ``spec`` is no built-in task, readable task file or task dict (no model needed)."""
    data = _read(spec)
    if "generator" not in data:
        _check_pairs(str(data.get("name", spec)), data.get("pairs"))


def _one_token(model: Any, text: str, what: str, i: int) -> int:
    ids = model.to_tokens(text, prepend_bos=False)[0]
    if ids.numel() != 1:
        pieces = model.to_str_tokens(text, prepend_bos=False)
        raise ShapeError(f"pair {i}: {what} {text!r} is {ids.numel()} tokens {pieces}, but answers must be one "
                         "token; choose another word (names and capitals usually need a leading space)")
    return int(ids[0])


def _generated(model: Any, name: str, gen: Mapping[str, Any], n_pairs: int | None) -> Task:
    if gen.get("kind") != "induction":
        raise FormatError(f"task {name!r}: unknown generator {gen.get('kind')!r}; expected 'induction'")
    n = int(n_pairs or gen.get("n_pairs", 16))
    seq = int(gen.get("seq_len", 10))
    lo, hi = gen.get("vocab_range", [0, model.cfg.d_vocab])
    hi = min(int(hi), model.cfg.d_vocab)
    lo = int(lo) if int(lo) < hi else 0  # a vocabulary smaller than the range: draw from all of it
    g = torch.Generator().manual_seed(int(gen.get("seed", 0)))
    r1 = torch.randint(int(lo), hi, (n, seq), generator=g)
    r2 = torch.randint(int(lo), hi, (n, seq), generator=g)
    clean = torch.cat([r1, r1[:, :-1]], 1)
    corrupted = torch.cat([r2, r1[:, :-1]], 1)
    return Task(name, clean, corrupted, r1[:, -1].clone(), r2[:, -1].clone())


def load_task(spec: str | Path | Mapping[str, Any], model: Any, *, n_pairs: int | None = None) -> Task:
    """Load and tokenize a task; every pair must have clean and corrupted prompts of one common token length.

    ``spec`` is a built-in name (``"ioi"``, ``"greater_than"``, ``"capital"``, ``"induction"``, ``"sva"``), a
    JSON path, or a dict ``{"name", "pairs": [{"clean", "corrupted", "answer", "distractor"}, ...]}``.
    """
    data = _read(spec)
    if n_pairs is not None:
        positive_int(n_pairs, "n_pairs")
    name = str(data.get("name", spec if isinstance(spec, str) else "task"))
    if "generator" in data:
        return _fits(model, _generated(model, name, data["generator"], n_pairs))
    pairs = _check_pairs(name, data.get("pairs"))
    pairs = pairs[:n_pairs] if n_pairs else pairs
    if getattr(model, "tokenizer", None) is None:
        raise FuncnetError("the model has no tokenizer, so text tasks cannot be tokenized; attach one or use token ids")
    clean, corr, ans, dis = [], [], [], []
    for i, p in enumerate(pairs):
        c = model.to_tokens(p["clean"], prepend_bos=False)[0]
        k = model.to_tokens(p["corrupted"], prepend_bos=False)[0]
        if c.numel() != k.numel():
            raise ShapeError(f"task {name!r} pair {i}: clean prompt is {c.numel()} tokens but corrupted is "
                             f"{k.numel()}; make them equal, e.g. swap words that are single tokens "
                             f"({p['clean']!r} vs {p['corrupted']!r})")
        if clean and c.numel() != clean[0].numel():
            raise ShapeError(f"task {name!r} pair {i} is {c.numel()} tokens but pair 0 is {clean[0].numel()}; all "
                             "pairs of a task must share one token length (use one template per task)")
        clean.append(c)
        corr.append(k)
        ans.append(_one_token(model, p["answer"], "answer", i))
        dis.append(_one_token(model, p["distractor"], "distractor", i))
    return _fits(model, Task(name, torch.stack(clean), torch.stack(corr), torch.tensor(ans), torch.tensor(dis),
                             tuple((p["clean"], p["corrupted"]) for p in pairs)))


def _fits(model: Any, task: Task) -> Task:
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    if isinstance(n_ctx, int) and task.n_pos > n_ctx:
        raise ShapeError(f"task {task.name!r} prompts are {task.n_pos} tokens, longer than the model's context of "
                         f"{n_ctx} tokens")
    return task


def task_report(model: Any, task: Task, intervention: Intervention | None = None) -> dict[str, Any]:
    """How well ``model`` solves ``task`` (under ``intervention`` if given): top-1 accuracy,
    answer-over-distractor rate, mean logit differences."""
    if intervention is not None and not isinstance(intervention, Intervention):
        raise FuncnetError(f"intervention should be an Intervention or None, got {type(intervention).__name__}")
    ld = task.metric()
    with torch.no_grad(), (intervention or Intervention()).applied(model):
        logits = model(task.clean.to(model.cfg.device))[:, -1]
        corr = model(task.corrupted.to(model.cfg.device))[:, -1:]
    d = ld(logits[:, None])
    top1 = (logits.argmax(-1).cpu() == task.answer).float().mean().item()
    return {"task": task.name, "n_pairs": len(task), "n_pos": task.n_pos, "top1_accuracy": top1,
            "answer_over_distractor": (d > 0).float().mean().item(), "logit_diff_clean": d.mean().item(),
            "logit_diff_corrupted": ld(corr).mean().item()}


__all__ = ["Task", "TASKS", "load_task", "task_report", "check_task_spec"]
