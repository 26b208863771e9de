"""LinEAS steering (Rodriguez et al., NeurIPS 2025): per-layer coordinate-wise affine maps ``h <- w * h + b``
trained end to end so that the *steered* source activations match the target activations in distribution.

The loss sums, over the steered sites, the sliced Wasserstein distance between steered source activations and
target activations along the coordinate axes (the 1-D Wasserstein distance of each unit, compared quantile by
quantile), measured in one forward with every map applied, so each map accounts for what earlier maps changed.
After each Adam step a sparse-group-lasso proximal step shrinks ``(w - 1, b)``: ``l1`` zeroes single units,
``group`` switches off whole sites. Source and target need no pairing (a few dozen texts each).

>>> maps = train_lineas(model, negative_texts, positive_texts, "hook_resid_post", layers=[6, 9, 12])
>>> with maps.to_intervention(strength=1.0).applied(model): ...   # an ordinary Intervention (scale + add)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from ..activations.tokens import batches, tokenize
from ..errors import FuncnetError
from ..hooks import Intervention, add, capture, custom, resolve_sites, scale
from ..hooks.sites import site_layer, site_shape
from ..hooks.values import finite_number, positive_int


@dataclass
class LinEASMaps:
    """Trained maps ``h <- weight * h + bias`` per site, and the loss after each step."""

    weight: dict[str, Float[Tensor, "d"]]
    bias: dict[str, Float[Tensor, "d"]]
    losses: list[float] = field(default_factory=list)

    @property
    def sites(self) -> list[str]:
        return list(self.weight)

    def active(self) -> dict[str, int]:
        """Units per site whose map is not the identity (the proximal step sets the others exactly to it)."""
        return {s: int(((self.weight[s] != 1) | (self.bias[s] != 0)).sum()) for s in self.sites}

    def to_intervention(self, strength: float = 1.0) -> Intervention:
        """The maps as an ordinary, saveable intervention (``scale`` then ``add`` per site); ``strength`` moves
        from the identity (0) to the trained maps (1) and beyond: ``w = 1 + strength (w - 1)``,
        ``b = strength b``. Sites whose map is the identity are left out."""
        t = finite_number(strength, "strength")
        iv = Intervention()
        for s in self.sites:
            w, b = 1 + t * (self.weight[s] - 1), t * self.bias[s]
            if bool((w != 1).any()):
                iv = iv + scale(s, w)
            if bool((b != 0).any()):
                iv = iv + add(s, b)
        return iv


def _quantiles(x: Float[Tensor, "n d"], q: Tensor) -> Float[Tensor, "q d"]:
    return torch.quantile(x, q.to(x), dim=0)


def _pooled(acts: Tensor, mask: Tensor) -> Tensor:
    """The real positions' activations of a right-padded batch, ``(n_tokens, d)``."""
    return acts[mask.bool()]


def _check_texts(texts: Any, name: str) -> list:
    if texts is None or (isinstance(texts, (list, tuple)) and not texts):
        raise FuncnetError(f"the {name} set is empty; LinEAS needs examples of both the source and the target")
    return list(texts) if isinstance(texts, (list, tuple)) else texts


def train_lineas(model: Any, source: Any, target: Any, sites: str | Sequence[str] = "hook_resid_post", *,
                 layers: Sequence[int] | None = None, steps: int = 100, lr: float = 1e-2, l1: float = 0.0,
                 group: float = 0.0, n_quantiles: int = 32, max_tokens_per_seq: int | None = 64,
                 skip_positions: int = 1) -> LinEASMaps:
    """Train LinEAS maps at ``sites`` (with ``layers``, a per-layer suffix's layers) that move ``source``
    activations (texts to steer away from) to the distribution of ``target`` activations.

    ``steps`` full-batch Adam steps at ``lr``, each followed by the sparse-group-lasso prox with penalties ``l1``
    (per unit) and ``group`` (per site); ``n_quantiles`` quantile levels per unit for the Wasserstein
    distance; ``skip_positions`` leaves each text's first tokens out of both distributions (an attention sink
    without BOS). Deterministic: no sampling.
    """
    source, target = _check_texts(source, "source"), _check_texts(target, "target")
    steps = positive_int(steps, "steps")
    lr, l1, group = finite_number(lr, "lr"), finite_number(l1, "l1"), finite_number(group, "group")
    if lr <= 0 or l1 < 0 or group < 0:
        raise FuncnetError(f"lr should be > 0 and l1, group >= 0, got lr={lr}, l1={l1}, group={group}")
    positive_int(n_quantiles, "n_quantiles", minimum=2)
    skip = positive_int(skip_positions, "skip_positions", minimum=0)
    names = resolve_sites(model, sites, layers)
    for s in names:
        shape = site_shape(model, s)
        if shape is None or len(shape) != 1:
            raise FuncnetError(f"LinEAS maps act on (batch, pos, d) sites; {s!r} has per-position shape {shape}")
    src_seqs = tokenize(model, source, max_tokens_per_seq=max_tokens_per_seq)
    tgt_seqs = tokenize(model, target, max_tokens_per_seq=max_tokens_per_seq)
    if len(src_seqs) == len(tgt_seqs) and all(torch.equal(a, b) for a, b in zip(src_seqs, tgt_seqs)):
        raise FuncnetError("source and target are the same texts (one class only): LinEAS learns a map between "
                           "two different sets, e.g. negative -> positive sentences")
    dev = model.cfg.device
    q = torch.linspace(0.0, 1.0, n_quantiles, device=dev)

    def padded(seqs: list[Tensor]) -> tuple[Tensor, Tensor]:
        batch = next(batches(seqs, len(seqs), sort_by_length=False))  # one right-padded batch of every text
        mask = batch.mask.clone()
        mask[:, :skip] = 0
        if not bool(mask.any()):
            raise FuncnetError(f"skip_positions={skip} leaves no token of the texts; lower it or pass longer texts")
        return batch.tokens.to(dev), mask.to(dev)

    src_tok, src_mask = padded(src_seqs)
    tgt_tok, tgt_mask = padded(tgt_seqs)
    layers_of = [site_layer(s) for s in names]
    stop = {"stop_at_layer": max(layers_of) + 1} if None not in layers_of else {}  # no block after the last site
    store: dict[str, Tensor] = {}
    with torch.no_grad(), capture(names, store).applied(model):
        model(tgt_tok, return_type=None, **stop)
    target_q = {s: _quantiles(_pooled(store[s].float(), tgt_mask), q) for s in names}
    width = {s: int(site_shape(model, s)[0]) for s in names}  # type: ignore[index]
    w = {s: torch.ones(width[s], device=dev, requires_grad=True) for s in names}
    b = {s: torch.zeros(width[s], device=dev, requires_grad=True) for s in names}
    params = [*w.values(), *b.values()]
    opt = torch.optim.Adam(params, lr=lr)
    steered: dict[str, Tensor] = {}

    def hook_for(s: str):
        def fn(act: Tensor, hook: Any = None) -> Tensor:
            out = act * w[s].to(act.dtype) + b[s].to(act.dtype)
            steered[s] = out
            return out
        return fn

    iv = Intervention()
    for s in names:
        iv = iv + custom(s, hook_for(s))
    losses = []
    for _ in range(steps):
        with iv.applied(model):
            model(src_tok, return_type=None, **stop)
        loss = sum(((_quantiles(_pooled(steered[s].float(), src_mask), q) - target_q[s]) ** 2).mean()
                   for s in names)
        grads = torch.autograd.grad(loss, params)  # no gradient lands on the model's own parameters
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        _prox(w, b, lr * l1, lr * group)
        steered.clear()
        losses.append(float(loss.detach()))
    return LinEASMaps({s: w[s].detach().cpu() for s in names}, {s: b[s].detach().cpu() for s in names}, losses)


@torch.no_grad()
def _prox(w: dict[str, Tensor], b: dict[str, Tensor], t1: float, tg: float) -> None:
    """Sparse-group-lasso prox on ``(w - 1, b)``: soft-threshold each unit by ``t1``, then shrink each site's
    group norm by ``tg`` (to exactly the identity when it falls below)."""
    if t1 == 0 and tg == 0:
        return
    for s in w:
        u = torch.cat([w[s] - 1, b[s]])
        u = torch.sign(u) * (u.abs() - t1).clamp_min(0)
        norm = float(u.norm())
        u = u * (max(0.0, 1 - tg / norm) if norm > 0 else 0.0)
        d = w[s].numel()
        w[s].copy_(1 + u[:d])
        b[s].copy_(u[d:])


__all__ = ["LinEASMaps", "train_lineas"]
