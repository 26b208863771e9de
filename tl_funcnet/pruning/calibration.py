"""Calibration passes for pruning: per-neuron moments, FN signals, and FLAP-style compensation means.

A :class:`Calibration` is the tokenized calibration text bound to one model (the unpruned one). Every
statistic counts real tokens only: batches are right-padded and pad positions are masked out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from ..activations.tokens import batches, pad_id, tokenize
from ..errors import FuncnetError
from ..hooks import Intervention, custom
from .model_info import check_prunable, mlp_width_list

POST = "blocks.{}.mlp.hook_post"


@dataclass
class NeuronStats:
    """Moments of each layer's ``mlp.hook_post`` over the real calibration tokens (float64)."""

    n_tokens: int
    mean: list[Float[Tensor, "d_mlp"]]
    sq_mean: list[Float[Tensor, "d_mlp"]]
    abs_mean: list[Float[Tensor, "d_mlp"]]

    @property
    def var(self) -> list[Float[Tensor, "d_mlp"]]:
        """Population variance per neuron."""
        return [(q - m * m).clamp_min(0) for m, q in zip(self.mean, self.sq_mean)]

    @property
    def l2(self) -> list[Float[Tensor, "d_mlp"]]:
        """‖activation‖₂ over all calibration tokens per neuron."""
        return [(q * self.n_tokens).sqrt() for q in self.sq_mean]


@dataclass
class Calibration:
    """Calibration tokens for one model. Build with :meth:`from_texts`; statistics are cached on first use.

    The statistics describe the model it was built for; using it with another model raises.
    """

    seqs: list[Tensor]
    batch_size: int = 8
    model_id: int | None = None
    _stats: NeuronStats | None = field(default=None, repr=False)

    @classmethod
    def from_texts(cls, model: Any, texts: Any = "calibration", *, max_tokens: int | None = 2048,
                   max_tokens_per_seq: int | None = 128, batch_size: int = 8) -> "Calibration":
        """Tokenize ``texts`` (split name, path, strings or token ids), keeping at most ``max_tokens`` in total."""
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 2):
            raise FuncnetError(f"max_tokens should be an int >= 2 or None, got {max_tokens!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise FuncnetError(f"batch_size should be a positive int, got {batch_size!r}")
        seqs = tokenize(model, texts, max_tokens_per_seq=max_tokens_per_seq)
        if max_tokens is not None:
            out, total = [], 0
            for s in seqs:
                if total >= max_tokens:
                    break
                out.append(s[: max_tokens - total])
                total += len(out[-1])
            seqs = out
        return cls(seqs, batch_size=batch_size, model_id=id(model))

    @property
    def n_tokens(self) -> int:
        return int(sum(len(s) for s in self.seqs))

    def check_model(self, model: Any) -> None:
        if self.model_id is not None and self.model_id != id(model):
            raise FuncnetError("this Calibration was built for another model; build one with "
                               "Calibration.from_texts(model, ...) for the model you prune")

    def batches(self, model: Any):
        return batches(self.seqs, self.batch_size, pad_id=pad_id(model))

    def stats(self, model: Any) -> NeuronStats:
        """Per-neuron moments of ``mlp.hook_post`` (one forward pass; cached)."""
        self.check_model(model)
        if self._stats is None:
            self._stats = neuron_stats(model, self)
        return self._stats


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def neuron_stats(model: Any, calib: Calibration) -> NeuronStats:
    """One pass accumulating sum, sum of squares and sum of |x| of every ``mlp.hook_post`` unit."""
    check_prunable(model)
    widths = mlp_width_list(model)
    L = len(widths)
    s1 = [torch.zeros(w, dtype=torch.float64) for w in widths]
    s2 = [torch.zeros(w, dtype=torch.float64) for w in widths]
    sa = [torch.zeros(w, dtype=torch.float64) for w in widths]
    cur: dict[str, Tensor] = {}

    def acc(layer: int):
        def fn(act: Tensor, hook: Any) -> None:
            x = act[cur["mask"]].double().cpu()  # (n_real, d_mlp)
            s1[layer] += x.sum(0)
            s2[layer] += (x * x).sum(0)
            sa[layer] += x.abs().sum(0)
        return fn

    iv = Intervention()
    for layer in range(L):
        iv = iv + custom(POST.format(layer), acc(layer))
    n = 0
    dev = _device(model)
    with iv.applied(model):
        for b in calib.batches(model):
            cur["mask"] = b.mask.bool().to(dev)
            model(b.tokens.to(dev), return_type=None)
            n += b.n_real
    return NeuronStats(n, [x / n for x in s1], [x / n for x in s2], [x / n for x in sa])


@torch.no_grad()
def fn_signals(model: Any, calib: Calibration, layers: Sequence[int]) -> dict[int, Float[Tensor, "n_samples n_feat"]]:
    """The FN-pruning signals of each layer as a token matrix, one row per real token.

    Gated MLPs: ``[up | act(gate)]`` = ``[mlp.hook_pre_linear | act_fn(mlp.hook_pre)]`` (2·d_mlp columns);
    other MLPs: ``mlp.hook_post`` (d_mlp columns).
    """
    check_prunable(model)
    calib.check_model(model)
    widths = mlp_width_list(model)
    gated = bool(model.cfg.gated_mlp)
    n = calib.n_tokens
    bufs = {l: torch.empty((n, (2 if gated else 1) * widths[l]), dtype=torch.float32) for l in layers}
    cur: dict[str, Any] = {}

    def writer(layer: int, col: int, act_fn: Any = None):
        w = widths[layer]

        def fn(act: Tensor, hook: Any) -> None:
            x = act_fn(act) if act_fn is not None else act
            x = x[cur["mask"]].float().cpu()
            bufs[layer][cur["row"]:cur["row"] + x.shape[0], col * w:(col + 1) * w] = x
        return fn

    iv = Intervention()
    for l in layers:
        if gated:
            iv = iv + custom(f"blocks.{l}.mlp.hook_pre_linear", writer(l, 0))
            iv = iv + custom(f"blocks.{l}.mlp.hook_pre", writer(l, 1, model.blocks[l].mlp.act_fn))
        else:
            iv = iv + custom(POST.format(l), writer(l, 0))
    dev = _device(model)
    stop = max(layers) + 1 if layers else 0
    row = 0
    with iv.applied(model):
        for b in calib.batches(model):
            # rows in batch order: flatten real tokens row-major, same order as act[mask]
            cur["mask"], cur["row"] = b.mask.bool().to(dev), row
            if stop >= model.cfg.n_layers:
                model(b.tokens.to(dev), return_type=None)
            else:
                model(b.tokens.to(dev), stop_at_layer=stop)
            row += b.n_real
    return bufs


@torch.no_grad()
def compensation_means(model: Any, calib: Calibration, pruned: Sequence[Bool[Tensor, "d_mlp"]]
                       ) -> list[Float[Tensor, "d_mlp"]]:
    """Mean ``mlp.hook_post`` of each layer's pruned neurons, measured with the earlier layers already pruned.

    Runs the network block by block over the calibration tokens: at block ``l`` the pruned neurons' values
    are averaged over real tokens and zeroed, then ``mean_P @ W_out[P]`` is added to the residual stream,
    which is exactly what the compensated (hard-pruned) block computes. Returns full-width vectors (zero at
    kept neurons). Cost: about one forward pass.
    """
    check_prunable(model)
    calib.check_model(model)
    if getattr(model.cfg, "positional_embedding_type", None) == "shortformer":
        raise FuncnetError("bias compensation does not support shortformer positional embeddings; "
                           "pass bias_compensation=False")
    widths = mlp_width_list(model)
    if len(pruned) != len(widths) or any(int(p.numel()) != w for p, w in zip(pruned, widths)):
        raise FuncnetError("the pruned masks do not match the model's MLP widths (per layer)")
    dev = _device(model)
    bs = list(calib.batches(model))
    resid = [model(b.tokens.to(dev), stop_at_layer=0) for b in bs]
    masks = [b.mask.bool().to(dev) for b in bs]
    means: list[Tensor] = []
    cur: dict[str, Any] = {}
    for l, p in enumerate(pruned):
        p = p.to(dev)
        total = torch.zeros(int(p.sum()), dtype=torch.float64, device=dev)

        def zero_and_sum(act: Tensor, hook: Any) -> Tensor:
            nonlocal total
            total += act[..., p][cur["mask"]].double().sum(0)
            return act.masked_fill(p, 0.0)

        iv = custom(POST.format(l), zero_and_sum) if bool(p.any()) else Intervention()
        with iv.applied(model):
            for i in range(len(bs)):
                cur["mask"] = masks[i]
                resid[i] = model(resid[i], start_at_layer=l, stop_at_layer=l + 1)
        full = torch.zeros(widths[l], dtype=torch.float32, device=dev)
        if bool(p.any()):
            mean = (total / calib.n_tokens).to(resid[0].dtype)
            full[p] = mean.float()
            delta = mean @ model.blocks[l].mlp.W_out[p]
            resid = [r + delta for r in resid]
        means.append(full.cpu())
    return means


__all__ = ["Calibration", "NeuronStats", "neuron_stats", "fn_signals", "compensation_means"]
