"""Calibration passes for pruning: per-neuron moments, FN signals, and FLAP-style compensation means.

A :class:`Calibration` is the tokenized calibration text bound to one model (the unpruned one). Every
statistic counts real tokens only: batches are right-padded and pad positions are masked out. The passes read
activations through ``record`` interventions, like every other reader of the package.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from ..activations.forward import model_device, run_batches
from ..activations.tokens import TokenBatch, batches, pad_id, tokenize
from ..errors import FuncnetError
from ..hooks import Intervention, ablate, record
from ..hooks.values import positive_int
from ..models.surface import embed, run_blocks
from .model_info import check_prunable

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
        if max_tokens is not None:
            positive_int(max_tokens, "max_tokens", minimum=2)
        positive_int(batch_size, "batch_size")
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


class RealRows:
    """A ``record`` sink that hands each site's real-token rows ``(n_real, width)`` to ``take(site, rows)``."""

    def __init__(self, take: Any, transform: dict[str, Any] | None = None):
        self.take, self.transform = take, transform or {}
        self.mask: Tensor | None = None

    def __call__(self, site: str, act: Tensor) -> None:
        x = self.transform[site](act) if site in self.transform else act
        self.take(site, x[self.mask].detach())

    def batches(self, model: Any, calibration: Calibration, iv: Intervention, **kwargs: Any):
        """Run ``calibration`` under ``iv`` with this sink's mask set for each batch; yields each batch."""
        dev = model_device(model)

        def with_mask(batch: TokenBatch) -> Intervention:
            self.mask = batch.mask.bool().to(dev)
            return iv

        for batch, _ in run_batches(model, calibration.seqs, batch_size=calibration.batch_size, intervention=with_mask,
                                    **kwargs):
            yield batch


@torch.no_grad()
def neuron_stats(model: Any, calibration: Calibration) -> NeuronStats:
    """One pass accumulating sum, sum of squares and sum of |x| of every ``mlp.hook_post`` unit."""
    widths = check_prunable(model)
    sums = {POST.format(l): [torch.zeros(w, dtype=torch.float64) for _ in range(3)] for l, w in enumerate(widths)}

    def take(site: str, rows: Tensor) -> None:
        x = rows.double().cpu()
        s1, s2, sa = sums[site]
        s1 += x.sum(0)
        s2 += (x * x).sum(0)
        sa += x.abs().sum(0)

    sink = RealRows(take)
    n = sum(b.n_real for b in sink.batches(model, calibration, record(list(sums), sink), return_type=None))
    per_layer = [sums[POST.format(l)] for l in range(len(widths))]
    return NeuronStats(n, [s[0] / n for s in per_layer], [s[1] / n for s in per_layer], [s[2] / n for s in per_layer])


@torch.no_grad()
def block_influence(model: Any, calibration: Calibration, layers: Sequence[int]) -> dict[int, float]:
    """Per block, the mean over real calibration tokens of the angular distance ``arccos(cos(h_in, h_out)) / π``
    between its residual input and output (how much the block changes the hidden state; CFSP's coarse metric)."""
    total = {l: 0.0 for l in layers}
    held: dict[int, Tensor] = {}

    def take(site: str, rows: Tensor) -> None:
        l = int(site.split(".")[1])
        if site.endswith("hook_resid_pre"):
            held[l] = rows.float()
            return
        cos = torch.nn.functional.cosine_similarity(held.pop(l), rows.float(), dim=-1).clamp(-1.0, 1.0)
        total[l] += float(torch.arccos(cos).sum()) / math.pi

    sites = [f"blocks.{l}.{h}" for l in layers for h in ("hook_resid_pre", "hook_resid_post")]
    sink = RealRows(take)
    n = sum(b.n_real for b in sink.batches(model, calibration, record(sites, sink), return_type=None))
    return {l: total[l] / n for l in layers}


#: Upper bound on the FN signal matrices held at once (bytes); more layers are read in further passes.
SIGNAL_BUDGET = 2 * 1024**3


def fn_signals(model: Any, calibration: Calibration, layers: Sequence[int], *, budget: int | None = None
               ) -> Iterator[tuple[int, Float[Tensor, "n_samples n_feat"]]]:
    """The FN-pruning signals of each layer as a token matrix, one row per real token: ``(layer, matrix)``.

    Gated MLPs: ``[up | act(gate)]`` = ``[mlp.hook_pre_linear | act_fn(mlp.hook_pre)]`` (2·d_mlp columns);
    other MLPs: ``mlp.hook_post`` (d_mlp columns). Layers are read in groups whose float32 matrices fit in
    ``budget`` bytes (default :data:`SIGNAL_BUDGET`; one forward pass per group, stopping after its last
    layer), so a large calibration set never holds every layer's matrix at once.
    """
    budget = SIGNAL_BUDGET if budget is None else budget
    widths = check_prunable(model)
    calibration.check_model(model)
    per_col = 4 * calibration.n_tokens * (2 if model.cfg.gated_mlp else 1)
    group: list[int] = []
    for l in list(layers):
        if group and per_col * sum(widths[x] for x in group + [l]) > budget:
            yield from _signal_group(model, calibration, group, widths)
            group = []
        group.append(l)
    if group:
        yield from _signal_group(model, calibration, group, widths)


@torch.no_grad()
def _signal_group(model: Any, calibration: Calibration, layers: list[int], widths: list[int]
                  ) -> Iterator[tuple[int, Float[Tensor, "n_samples n_feat"]]]:
    gated = bool(model.cfg.gated_mlp)
    n = calibration.n_tokens
    columns: dict[str, tuple[int, int]] = {}  # site -> (layer, column block)
    transform = {}
    for l in layers:
        if gated:
            columns[f"blocks.{l}.mlp.hook_pre_linear"] = (l, 0)
            columns[f"blocks.{l}.mlp.hook_pre"] = (l, 1)
            transform[f"blocks.{l}.mlp.hook_pre"] = model.blocks[l].mlp.act_fn
        else:
            columns[POST.format(l)] = (l, 0)
    bufs = {l: torch.empty((n, (2 if gated else 1) * widths[l]), dtype=torch.float32) for l in layers}
    row = [0]

    def take(site: str, rows: Tensor) -> None:
        l, block = columns[site]
        w = widths[l]
        bufs[l][row[0]:row[0] + rows.shape[0], block * w:(block + 1) * w] = rows.float().cpu()

    sink = RealRows(take, transform)
    stop = max(layers) + 1
    kwargs = {"return_type": None} if stop >= model.cfg.n_layers else {"stop_at_layer": stop}
    for batch in sink.batches(model, calibration, record(list(columns), sink), **kwargs):
        row[0] += batch.n_real  # rows in batch order: real tokens row-major, the order of act[mask]
    for l in layers:
        yield l, bufs.pop(l)


@torch.no_grad()
def compensation_means(model: Any, calibration: Calibration, pruned: Sequence[Bool[Tensor, "d_mlp"]]
                       ) -> list[Float[Tensor, "d_mlp"]]:
    """Mean ``mlp.hook_post`` of each layer's pruned neurons, measured with the earlier layers already pruned.

    Runs the network block by block over the calibration tokens: at block ``l`` the pruned neurons' values
    are averaged over real tokens and zeroed, then ``mean_P @ W_out[P]`` is added to the residual stream,
    which is exactly what the compensated (hard-pruned) block computes. Returns full-width vectors (zero at
    kept neurons). Cost: about one forward pass.
    """
    widths = check_prunable(model)
    calibration.check_model(model)
    if getattr(model.cfg, "positional_embedding_type", None) == "shortformer":
        raise FuncnetError("bias compensation does not support shortformer positional embeddings; "
                           "pass bias_compensation=False")
    if len(pruned) != len(widths) or any(int(p.numel()) != w for p, w in zip(pruned, widths)):
        raise FuncnetError("the pruned masks do not match the model's MLP widths (per layer)")
    dev = model_device(model)
    bs = list(calibration.batches(model))
    masks = [b.mask.bool().to(dev) for b in bs]
    starts = [embed(model, b.tokens.to(dev)) for b in bs]
    resid, contexts = [r for r, _ in starts], [c for _, c in starts]
    means: list[Tensor] = []
    for l, p in enumerate(pruned):
        p = p.to(dev)
        units = p.nonzero().flatten()
        total = torch.zeros(int(p.sum()), dtype=torch.float64, device=dev)
        current: dict[str, Tensor] = {}

        def add_rows(site: str, act: Tensor) -> None:
            nonlocal total
            total += act[..., units][current["mask"]].double().sum(0)

        iv = (record(POST.format(l), add_rows) + ablate(POST.format(l), units=units)) if len(units) else Intervention()
        with iv.applied(model):
            for i in range(len(bs)):
                current["mask"] = masks[i]
                resid[i] = run_blocks(model, resid[i], l, l + 1, contexts[i])
        full = torch.zeros(widths[l], dtype=torch.float32, device=dev)
        if len(units):
            mean = (total / calibration.n_tokens).to(resid[0].dtype)
            full[p] = mean.float()
            delta = mean @ model.blocks[l].mlp.W_out[p]
            resid = [r + delta for r in resid]
        means.append(full.cpu())
    return means


__all__ = ["Calibration", "NeuronStats", "neuron_stats", "fn_signals", "compensation_means"]
