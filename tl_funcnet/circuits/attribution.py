"""Edge attribution: every edge's patching effect estimated from a few forwards and backwards (EAP and friends).

All methods score an edge ``u->v`` as ``Δz_u · g_v``, summed over positions and ``d_model`` and averaged over
prompts, and differ only in which gradient ``g_v`` they use:

- ``Δz_u = z_u(source) - z_u(target)``: sender ``u``'s output (:func:`~tl_funcnet.circuits.sender_outputs`) on
  the prompts the edge is patched *from*, minus that on the prompts it is patched *in*. With
  ``direction="noise"`` (the default) the target is the clean run and the source the corrupted one; with
  ``"denoise"`` the reverse. Δz always comes from the two full, unintervened runs.
- ``g_v = ∂metric/∂x_v``: the gradient of the (per-prompt) metric with respect to receiver ``v``'s input (a
  head's slot of ``hook_{q,k,v}_input``, ``hook_mlp_in``, or the last block's ``hook_resid_post`` for
  ``logits``; a head's q, k and v gradients summed when the graph does not split them).

So every score estimates the same quantity as :func:`~tl_funcnet.circuits.exact_edge_scores` with the same
``direction``: ``mean metric with the edge patched - mean metric of the target run`` (with a metric such as the
logit difference and ``"noise"``, a negative score means corrupting the edge hurts the task). Since a
receiver's input is the sum of its senders' outputs plus constants, ``sum_u S(u->v) = (x_v(source) -
x_v(target)) · g_v``.

The score matrix is a dense ``(n_senders, n_receivers)`` product, accumulated in float32 (float64 for a float64
model) over batches of prompts; the graph's edges are read from it at the end. Gradients are taken with
``torch.autograd.grad`` with respect to the captured receiver inputs, so no ``.grad`` is left on parameters.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import FuncnetError
from ..hooks import Intervention, capture, custom
from ..hooks.names import is_bridge
from ..patching._common import forward_logits, last_position_only
from ..patching.metrics import Metric, check_metric
from ..patching.relp import normalize_rules, relp_rules
from .exact import DIRECTIONS
from .graph import Graph
from .run import check_tokens, edge_hooks, group_weights, sender_values
from .scores import EdgeScores

#: edge attribution methods of :func:`edge_scores`
METHODS = ("eap", "eap-ig-inputs", "eap-ig-activations", "clean-corrupted", "relp")


# --------------------------------------------------------------------------- small pieces


def _require_grad(act: Tensor, hook: Any = None) -> Tensor:
    """At ``hook_embed``: make sure the forward builds a graph even if no parameter requires grad."""
    return act if act.requires_grad else act.detach().requires_grad_(True)


def _fork(act: Tensor, hook: Any = None) -> Tensor:
    """A receiver's own copy of its input: on a TransformerBridge ``hook_mlp_in`` hands over the residual stream
    itself (it feeds the skip connection too), so the gradient at it would include every later path."""
    return act.clone()


def _replace(site: str, value: Tensor) -> Intervention:
    """Replace the activation at ``site`` by the constant ``value`` (no gradient flows back through it)."""
    value = value.detach()

    def hook_fn(act: Tensor, hook: Any = None) -> Tensor:
        if act.shape != value.shape:  # pragma: no cover - the value is made from this very batch
            raise FuncnetError(f"internal: replacement of shape {tuple(value.shape)} at {site!r}, activation "
                               f"{tuple(act.shape)}")
        return value

    return custom(site, hook_fn)


def _metric_rows(metric: Metric, logits: Tensor, rows: slice, n: int) -> Tensor:
    """The metric of the prompts ``rows`` (of ``n``), from their logits: a metric is built for all ``n`` prompts,
    so a batch is placed at its rows of an ``n``-row tensor whose other rows are zero."""
    full = logits
    if logits.shape[0] != n:
        before = logits.new_zeros((rows.start, *logits.shape[1:]))
        after = logits.new_zeros((n - rows.stop, *logits.shape[1:]))
        full = torch.cat([before, logits, after])
    return check_metric(metric, n, metric(full))[rows]


class _Buffers:
    """Where one batch's sums live: the sender deltas ``(n_senders, batch, pos, d)`` and the receiver gradients
    ``(n_receivers, batch, pos, d)``, both in the accumulation dtype; :meth:`contract` adds their product."""

    def __init__(self, graph: Graph, acc: torch.dtype, weights: dict[int, Tensor]):
        self.graph, self.acc, self.weights = graph, acc, weights
        self.recv_sites = graph.receiver_sites()
        self.send_sites = graph.sender_sites()
        self._recv: dict[str, tuple[Tensor, Tensor | None]] = {}
        for site in self.recv_sites:
            pairs = graph.receivers_at(site)
            cols = torch.tensor([v for v, _ in pairs], dtype=torch.long)
            slots = None if pairs[0][1] is None else torch.tensor([s for _, s in pairs], dtype=torch.long)
            self._recv[site] = (cols, slots)
        self.grads: Tensor | None = None

    @property
    def group_sites(self) -> list[str]:
        """The sites integrated gradients over activations interpolate: the input, each layer's attention, each
        MLP's output (unit groups are parts of it)."""
        return [s for s in self.send_sites if not s.endswith("mlp.hook_post")]

    def delta(self, source: dict[str, Tensor], target: dict[str, Tensor]) -> Tensor:
        """``z(source) - z(target)`` of every sender, ``(n_senders, batch, pos, d)``."""
        d = sender_values(self.graph, source, self.weights, self.acc) - \
            sender_values(self.graph, target, self.weights, self.acc)
        return d.permute(2, 0, 1, 3)

    def add_grads(self, grads: dict[str, Tensor | None]) -> None:
        """Add one backward's receiver gradients (a head's q, k, v land in one column if they are not split)."""
        for site, g in grads.items():
            if g is None:  # the metric does not depend on this receiver in this run
                continue
            if self.grads is None:
                self.grads = torch.zeros(self.graph.n_receivers, *g.shape[:2], g.shape[-1], dtype=self.acc,
                                         device=g.device)
            cols, slots = self._recv[site]
            g = g.to(self.acc)
            g = g.unsqueeze(0) if slots is None else g[:, :, slots.to(g.device)].permute(2, 0, 1, 3)
            self.grads.index_add_(0, cols.to(g.device), g)

    def contract(self, matrix: Tensor, delta: Tensor, scale: float) -> None:
        """``matrix += scale * delta · grads`` (summed over batch, positions and d_model, or with a ``(senders,
        receivers, pos)`` matrix over batch and d_model only); then forget the grads."""
        if self.grads is not None:
            if matrix.ndim == 3:  # one product per position
                for p in range(matrix.shape[2]):
                    a = delta[:, :, p].reshape(delta.shape[0], -1)
                    b = self.grads[:, :, p].reshape(self.grads.shape[0], -1)
                    matrix[:, :, p].addmm_(a, b.T, alpha=scale)
            else:
                a = delta.reshape(delta.shape[0], -1)
                b = self.grads.reshape(self.grads.shape[0], -1)
                matrix.addmm_(a, b.T, alpha=scale)
        self.grads = None


# --------------------------------------------------------------------------- runs


@torch.no_grad()
def _outputs(model: Any, bufs: _Buffers, tokens: Tensor, metric: Metric | None = None, rows: slice | None = None,
             n: int = 0, last_only: bool = False) -> tuple[dict[str, Tensor], Tensor | None]:
    """Every sender site's activation on ``tokens`` (one forward; the metric too if asked)."""
    store: dict[str, Tensor] = {}
    with capture(bufs.send_sites, store).applied(model):
        if metric is None:
            model(tokens, return_type=None)
            return store, None
        logits = forward_logits(model, tokens, last_only=last_only)
    return store, _metric_rows(metric, logits, rows, n).detach()  # type: ignore[arg-type]


@torch.no_grad()
def _embeddings(model: Any, tokens: Tensor) -> Tensor:
    """``hook_embed`` on ``tokens`` (the embedding alone: no block runs)."""
    store: dict[str, Tensor] = {}
    with capture("hook_embed", store).applied(model):
        model(tokens, stop_at_layer=0)
    return store["hook_embed"]


def _gradients(model: Any, bufs: _Buffers, tokens: Tensor, metric: Metric, rows: slice, n: int, last_only: bool, *,
               before: Intervention | None = None, senders: dict[str, Tensor] | None = None
               ) -> tuple[Tensor, dict[str, Tensor | None]]:
    """One forward and one backward on ``tokens`` with ``before`` applied: the metric per prompt and its gradient
    at every receiver site (None where it does not depend on one); sender outputs into ``senders`` if given."""
    store: dict[str, Tensor] = {}
    iv = (before or Intervention()) + custom("hook_embed", _require_grad)
    if is_bridge(model):
        for site in bufs.recv_sites:
            if site.endswith("hook_mlp_in"):
                iv = iv + custom(site, _fork)
    iv = iv + capture(bufs.recv_sites, store, detach=False)
    if senders is not None:
        iv = iv + capture(bufs.send_sites, senders)
    with torch.enable_grad():
        with iv.applied(model):
            logits = forward_logits(model, tokens, last_only=last_only)
        values = _metric_rows(metric, logits, rows, n)
        acts = [store[s] for s in bufs.recv_sites]
        if values.requires_grad:
            grads = torch.autograd.grad(values.sum(), acts, allow_unused=True)
        else:  # a metric that ignores the logits
            grads = tuple(None for _ in acts)
    return values.detach(), dict(zip(bufs.recv_sites, grads))


# --------------------------------------------------------------------------- the methods, one batch each

def _eap(model: Any, bufs: _Buffers, matrix: Tensor, target: Tensor, source: Tensor, metric: Metric, rows: slice,
         n: int, last_only: bool, steps: int, rules: Intervention) -> Tensor:
    src, _ = _outputs(model, bufs, source)
    tgt: dict[str, Tensor] = {}
    values, grads = _gradients(model, bufs, target, metric, rows, n, last_only, before=rules, senders=tgt)
    bufs.add_grads(grads)
    bufs.contract(matrix, bufs.delta(src, tgt), 1.0)
    return values


def _clean_corrupted(model: Any, bufs: _Buffers, matrix: Tensor, target: Tensor, source: Tensor, metric: Metric,
                     rows: slice, n: int, last_only: bool, steps: int, rules: Intervention) -> Tensor:
    tgt: dict[str, Tensor] = {}
    src: dict[str, Tensor] = {}
    values, grads = _gradients(model, bufs, target, metric, rows, n, last_only, senders=tgt)
    bufs.add_grads(grads)
    _, grads = _gradients(model, bufs, source, metric, rows, n, last_only, senders=src)
    bufs.add_grads(grads)
    bufs.contract(matrix, bufs.delta(src, tgt), 0.5)
    return values


def _ig_inputs(model: Any, bufs: _Buffers, matrix: Tensor, target: Tensor, source: Tensor, metric: Metric,
               rows: slice, n: int, last_only: bool, steps: int, rules: Intervention) -> Tensor:
    src, _ = _outputs(model, bufs, source)
    e_src, e_tgt = src["hook_embed"], _embeddings(model, target)
    tgt: dict[str, Tensor] = {}
    values = None
    for k in range(1, steps + 1):
        alpha = k / steps  # alpha = 1 is the target run itself: its sender outputs are read there
        e = alpha * e_tgt + (1 - alpha) * e_src
        v, grads = _gradients(model, bufs, target, metric, rows, n, last_only, before=_replace("hook_embed", e),
                              senders=tgt if k == steps else None)
        bufs.add_grads(grads)
        values = v
    bufs.contract(matrix, bufs.delta(src, tgt), 1.0 / steps)
    return values  # type: ignore[return-value]


def _ig_activations(model: Any, bufs: _Buffers, matrix: Tensor, target: Tensor, source: Tensor, metric: Metric,
                    rows: slice, n: int, last_only: bool, steps: int, rules: Intervention) -> Tensor:
    src, _ = _outputs(model, bufs, source)
    tgt, values = _outputs(model, bufs, target, metric, rows, n, last_only)
    groups = bufs.group_sites  # the input, each layer's attention (all heads), each MLP
    for site in groups:
        for k in range(1, steps + 1):
            alpha = k / steps
            value = alpha * tgt[site] + (1 - alpha) * src[site]
            _, grads = _gradients(model, bufs, target, metric, rows, n, last_only, before=_replace(site, value))
            bufs.add_grads(grads)
    bufs.contract(matrix, bufs.delta(src, tgt), 1.0 / (len(groups) * steps))
    return values  # type: ignore[return-value]


_RUN: dict[str, Callable[..., Tensor]] = {"eap": _eap, "relp": _eap, "clean-corrupted": _clean_corrupted,
                          "eap-ig-inputs": _ig_inputs, "eap-ig-activations": _ig_activations}


def passes(method: str, graph: Graph, steps: int = 5) -> tuple[int, int]:
    """``(forwards, backwards)`` one batch of prompts costs with ``method`` (see :func:`edge_scores`)."""
    groups = len([s for s in graph.sender_sites() if not s.endswith("mlp.hook_post")])
    return {"eap": (2, 1), "relp": (2, 1), "clean-corrupted": (2, 2), "eap-ig-inputs": (1 + steps, steps),
            "eap-ig-activations": (2 + groups * steps, groups * steps)}[method]


# --------------------------------------------------------------------------- the entry point


def edge_scores(model: Any, graph: Graph, clean: Tensor, corrupted: Tensor, metric: Metric, *, method: str = "eap",
                steps: int = 5, direction: str = "noise", rules: Iterable[str] | str | None = None,
                batch_size: int | None = None, per_position: bool = False) -> EdgeScores:
    """Score every edge of ``graph`` by attribution: ``Δz_u · g_v`` (see the module docstring), mean over prompts.

    ``clean`` and ``corrupted`` are token ids ``(n_prompts, pos)`` of one shape; ``metric(logits) -> (n_prompts,)``
    is the per-prompt metric (e.g. :func:`~tl_funcnet.patching.logit_diff`). ``direction`` is ``"noise"`` (the
    gradient at the clean run, ``Δ = corrupted - clean``) or ``"denoise"`` (at the corrupted run, ``Δ = clean -
    corrupted``); scores estimate ``metric(edge patched) - metric(target run)``, like
    :func:`~tl_funcnet.circuits.exact_edge_scores` with the same direction. Methods, with their cost for each
    batch of prompts (a backward is about two forwards; L layers, G = 2L + 1 groups, or L + 1 without MLPs):

    - ``"eap"``, edge attribution patching (AtP on edges): ``g_v`` at the target run.
      **2 forwards + 1 backward.**
    - ``"eap-ig-inputs"``, EAP with integrated gradients over the input embeddings: the target forward with
      ``hook_embed`` set to ``e_source + α_k (e_target - e_source)``, ``α_k = k/m`` for ``k = 1..m``
      (``m = steps``); ``g_v`` averaged over the steps (so ``steps=1`` is EAP). **1 + m forwards and m
      backwards** (plus an embedding lookup).
    - ``"eap-ig-activations"``, integrated gradients over activations: for each group (the input, each layer's
      attention with all its heads, each MLP) and each ``k = 1..m``, the group's output is set to the constant
      ``α_k target + (1 - α_k) source`` (no gradient flows back through it) and ``g_v`` is accumulated at every
      receiver; divided by ``G·m``. **2 + G·m forwards and G·m backwards**, i.e. O(m·(2L+1)). (When the
      group is the input of a model without position embeddings, e.g. rotary, layer 0's heads still get their
      gradient here; hannamw/EAP-IG's ``get_scores_ig_activations`` gets none there, as its new input does not
      require grad.)
    - ``"clean-corrupted"``: ``g_v = ½[g_v(clean) + g_v(corrupted)]``. **2 forwards + 2 backwards.**
    - ``"relp"``, relevance patching on edges: EAP with RelP's LRP ``rules`` on during the backward
      (:func:`~tl_funcnet.patching.relp_rules`; default all four, ``rules=()`` is EAP; forward values are
      unchanged). **2 forwards + 1 backward.**

    ``batch_size`` prompts go through each pass (default all): memory grows with ``batch · pos · (n_senders +
    n_receivers) · d_model`` (the deltas and summed gradients, in float32). Steps are not batched. The metric is
    called with logits of all prompts, the rows outside the batch zero, so it must treat rows independently.
    ``info`` records the number of prompts, batches, passes and steps/rules. With ``per_position=True`` the
    scores are also kept per position of the prompt (``EdgeScores.per_position``, ``(n_edges, pos)``: the
    product summed over prompts and ``d_model`` only; ``scores`` is their sum), for the same passes.
    """
    if method not in METHODS:
        raise FuncnetError(f"method should be one of {list(METHODS)}, got {method!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise FuncnetError(f"steps should be a whole number >= 1 (integrated-gradient steps), got {steps!r}")
    if direction not in DIRECTIONS:
        raise FuncnetError(f"direction should be 'noise' (gradient at the clean run, edges patched with corrupted "
                           f"values) or 'denoise' (at the corrupted run, patched with clean values), got "
                           f"{direction!r}")
    if rules is not None and method != "relp":
        raise FuncnetError(f"rules apply to method='relp' only (method={method!r} takes plain gradients)")
    chosen = normalize_rules(rules) if method == "relp" else ()
    if "LN" in chosen and is_bridge(model):
        raise FuncnetError(
            "RelP's LN rule cannot act on a TransformerBridge's edges: with per-head q/k/v inputs the bridge "
            "re-applies ln1 through the Hugging Face norm, whose scale has no hook to detach. Pass "
            "rules=('AH', 'Identity', 'Half') (node-level RelP keeps all four rules), or load the model with "
            "backend='hooked'")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or
                                   batch_size < 1):
        raise FuncnetError(f"batch_size should be a whole number >= 1 of prompts per pass, or None, got "
                           f"{batch_size!r}")
    if not isinstance(per_position, bool):
        raise FuncnetError(f"per_position should be True or False, got {per_position!r}")
    if not isinstance(graph, Graph):
        raise FuncnetError(f"graph should be a Graph (Graph.from_model(model)), got {type(graph).__name__}")
    graph.check_model(model)
    if not callable(metric):
        raise FuncnetError(f"metric should be a callable logits -> (n_prompts,), got {type(metric).__name__}")
    c, k = check_tokens(model, clean, "clean"), check_tokens(model, corrupted, "corrupted")
    if c.shape != k.shape:
        raise FuncnetError(f"clean tokens {tuple(c.shape)} and corrupted tokens {tuple(k.shape)} must have the same "
                           f"shape: one corrupted prompt of the same token length per clean prompt")
    if torch.is_inference_mode_enabled():
        raise FuncnetError("edge attribution takes gradients, which torch.inference_mode() forbids; call it "
                           "outside that block")
    t0 = time.perf_counter()
    dev = model.cfg.device
    target, source = (c, k) if direction == "noise" else (k, c)
    target, source = target.to(dev), source.to(dev)
    n = int(target.shape[0])
    bs = n if batch_size is None else min(batch_size, n)
    acc = torch.float64 if model.cfg.dtype == torch.float64 else torch.float32
    bufs = _Buffers(graph, acc, group_weights(model, graph))
    last_only = last_position_only(metric, bufs.recv_sites)
    shape = (graph.n_senders, graph.n_receivers) + ((int(target.shape[1]),) if per_position else ())
    matrix: Float[Tensor, "n_senders n_receivers *pos"] = torch.zeros(shape, dtype=acc, device=dev)
    total = torch.zeros((), dtype=torch.float64)
    run = _RUN[method]
    with edge_hooks(model):
        rules_iv = relp_rules(model, chosen) if chosen else Intervention()
        for start in range(0, n, bs):
            rows = slice(start, min(n, start + bs))
            values = run(model, bufs, matrix, target[rows], source[rows], metric, rows, n, last_only, steps,
                         rules_iv)
            total += values.double().sum().cpu()
    by_edge = matrix[graph.edges[:, 0].to(dev), graph.edges[:, 1].to(dev)].double().cpu() / n  # (n_edges[, pos])
    scores, by_pos = (by_edge.sum(1), by_edge) if per_position else (by_edge, None)
    n_batches = -(-n // bs)
    fwd, bwd = passes(method, graph, steps)
    info: dict[str, Any] = {"n_prompts": n, "batch_size": bs, "n_batches": n_batches,
                            "forwards": fwd * n_batches, "backwards": bwd * n_batches}
    if method.startswith("eap-ig"):
        info["steps"] = steps
    if method == "relp":
        info["rules"] = list(chosen)
    return EdgeScores(graph, scores, method, direction, float(total / n), time.perf_counter() - t0, info,
                      per_position=by_pos)


__all__ = ["edge_scores", "METHODS", "passes"]
