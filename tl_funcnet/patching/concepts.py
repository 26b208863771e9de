"""Concept neurons: MLP neurons ranked by how much a concept's answers depend on them, as an ablation
intervention beside controls of the same size.

Two scores, each of the concept's prompts minus a control set's (so neurons every prompt uses cancel out):

- ``"attribution"`` (the culture-general-neuron score, CULNIG): ``activation x dP(answer)/d activation`` of each
  neuron, its maximum over positions, averaged over the prompts;
- ``"contrast"`` (NeuroStrike-style activation contrast): the neuron's mean activation over positions on the
  concept's prompts minus on the control's, divided by the pooled standard deviation of those means.

>>> s = neuron_scores(model, load_task("capital", model), control=load_task("sva", model))
>>> iv = s.to_intervention(0.005)                          # ablate the top 0.5% of neurons
>>> ctl = s.to_intervention(0.005, control="random")       # as many random neurons per layer
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from .._rng import generator
from ..errors import FuncnetError
from ..hooks import Intervention, ablate, capture, capture_grad, resolve_sites
from ..hooks.values import positive_int
from ._common import as_tokens

SCORES = ("attribution", "contrast")
CONTROLS = ("random", "top_variance")


@dataclass(frozen=True)
class NeuronScores:
    """Per-site neuron scores (concept minus control) and the activation variance the top-variance control uses."""

    sites: tuple[str, ...]
    scores: dict[str, Float[Tensor, "d"]]
    variance: dict[str, Float[Tensor, "d"]]
    method: str

    def top(self, fraction: float) -> dict[str, list[int]]:
        """The ``fraction`` of all neurons with the highest score (one ranking over every site), per site."""
        n = self._count(fraction)
        flat = torch.cat([self.scores[s] for s in self.sites])
        chosen = torch.zeros_like(flat, dtype=torch.bool)
        chosen[torch.argsort(flat, descending=True, stable=True)[:n]] = True
        out, start = {}, 0
        for s in self.sites:
            w = self.scores[s].numel()
            out[s] = chosen[start:start + w].nonzero().flatten().tolist()
            start += w
        return out

    def _count(self, fraction: float) -> int:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
            raise FuncnetError(f"fraction should be a number in (0, 1), got {fraction!r}")
        total = sum(v.numel() for v in self.scores.values())
        return max(1, round(fraction * total))

    def to_intervention(self, fraction: float, *, control: str | None = None, random_state: int | None = 0
                        ) -> Intervention:
        """Zero-ablate the top ``fraction`` of neurons, or (``control``) as many neurons per site chosen at random
        (``"random"``) or by activation variance over the scored prompts (``"top_variance"``)."""
        picked = self.top(fraction)
        if control is not None and control not in CONTROLS:
            raise FuncnetError(f"control should be None or one of {list(CONTROLS)}, got {control!r}")
        g = generator(random_state)
        iv = Intervention()
        for s in self.sites:
            k = len(picked[s])
            if not k:
                continue
            if control == "random":
                units = torch.randperm(self.scores[s].numel(), generator=g)[:k].tolist()
            elif control == "top_variance":
                units = torch.argsort(self.variance[s], descending=True, stable=True)[:k].tolist()
            else:
                units = picked[s]
            iv = iv + ablate(s, units=sorted(units))
        return iv


def _prompts(task: Any, name: str) -> tuple[Tensor, Tensor]:
    tokens = as_tokens(getattr(task, "clean", None), f"{name}.clean")
    if tokens.shape[0] == 0:
        raise FuncnetError(f"the {name} set is empty; neuron scores need at least one prompt")
    answers = torch.as_tensor(task.answer).long().reshape(-1)
    if answers.numel() != tokens.shape[0]:
        raise FuncnetError(f"the {name} set has {tokens.shape[0]} prompts but {answers.numel()} answers")
    return tokens, answers


def _per_prompt(model: Any, tokens: Tensor, answers: Tensor, sites: Sequence[str], method: str,
                batch_size: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Per-prompt neuron values ``(n, d)`` for each site (attribution maxima or mean activations), and the
    prompts' mean activations (for the variance)."""
    vals: dict[str, list[Tensor]] = {s: [] for s in sites}
    means: dict[str, list[Tensor]] = {s: [] for s in sites}
    dev = model.cfg.device
    for i in range(0, tokens.shape[0], batch_size):
        toks, ans = tokens[i:i + batch_size].to(dev), answers[i:i + batch_size].to(dev)
        acts: dict[str, Tensor] = {}
        grads: dict[str, Tensor] = {}
        if method == "attribution":
            with (capture(list(sites), acts) | capture_grad(list(sites), grads)).applied(model):
                p = model(toks)[:, -1].float().softmax(-1)
                p[torch.arange(len(ans)), ans].sum().backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.no_grad(), capture(list(sites), acts).applied(model):
                model(toks, return_type=None)
        for s in sites:
            a = acts[s].detach().float()
            means[s].append(a.mean(1).cpu())
            vals[s].append((a * grads[s].float()).amax(1).cpu() if method == "attribution" else a.mean(1).cpu())
    return {s: torch.cat(v) for s, v in vals.items()}, {s: torch.cat(v) for s, v in means.items()}


def neuron_scores(model: Any, concept: Any, control: Any, *, method: str = "attribution",
                  sites: str | Sequence[str] = "mlp.hook_post", batch_size: int = 8) -> NeuronScores:
    """Score every neuron at ``sites`` (default every layer's ``mlp.hook_post``) for ``concept`` against
    ``control`` (each a :class:`~tl_funcnet.patching.Task` or anything with ``clean`` token ids and ``answer``
    token ids); see the module docstring for the two methods."""
    if method not in SCORES:
        raise FuncnetError(f"method should be one of {list(SCORES)}, got {method!r}")
    positive_int(batch_size, "batch_size")
    c_tok, c_ans = _prompts(concept, "concept")
    k_tok, k_ans = _prompts(control, "control")
    names = resolve_sites(model, sites)
    c_val, c_mean = _per_prompt(model, c_tok, c_ans, names, method, batch_size)
    k_val, k_mean = _per_prompt(model, k_tok, k_ans, names, method, batch_size)
    scores, variance = {}, {}
    for s in names:
        diff = c_val[s].mean(0) - k_val[s].mean(0)
        if method == "contrast":
            pooled = torch.cat([c_val[s] - c_val[s].mean(0), k_val[s] - k_val[s].mean(0)]).std(0, correction=0)
            diff = diff / pooled.clamp_min(1e-6)
        scores[s] = diff
        variance[s] = torch.cat([c_mean[s], k_mean[s]]).var(0, correction=0)
    return NeuronScores(tuple(names), scores, variance, method)


__all__ = ["CONTROLS", "NeuronScores", "SCORES", "neuron_scores"]
