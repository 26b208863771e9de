"""Training-free activation sparsity of MLP neurons: thresholds calibrated to a target sparsity per layer.

Per token, a neuron's activation is zeroed when its score falls below the layer's threshold; the thresholds
are the target quantile of the scores over the calibration tokens, so each layer zeroes that fraction of its
neurons on text like the calibration text. Three scores:

- ``magnitude`` (TEAL-style; Liu et al. 2024): ``|x_j|`` with ``x = mlp.hook_post``, the input of ``W_out``.
- ``wina`` (WINA, arXiv 2505.19427): ``|x_j| · ‖W_out[j]‖₂``, the hidden state's magnitude times the norm of
  the weights that read it. WINA's paper keeps a top-k per token; a calibrated threshold reaches the same
  sparsity on average and keeps the op static.
- ``chess`` (CHESS, Zhang et al. 2024, channel-wise thresholding): for gated MLPs ``|act(g_j)| · E|u_j|``
  with ``g = mlp.hook_pre`` (the gate) and ``u = mlp.hook_pre_linear`` (the up projection), i.e. a
  threshold per channel ``τ / E|u_j|`` on the activated gate; zeroing ``g_j`` zeroes neuron ``j`` since
  ``act(0) = 0``. For plain MLPs ``|act(g_j)|`` (no up projection).

``where="input"`` sparsifies the MLP's input instead (``ln2.hook_normalized``, what ``W_in`` and ``W_gate``
read), as TEAL does for every projection: ``magnitude`` scores ``|x_i|``, ``wina`` weighs it by the norm of row
``i`` of ``[W_in | W_gate]``; ``chess`` has its own site.

``protect`` (FN-aware variants): units that are never zeroed, e.g. the key units of functional networks; the
other units' threshold is raised so the layer still reaches the target sparsity over all its neurons.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from ..errors import FuncnetError
from ..hooks import Intervention, record, sparsify
from ..hooks.edit import SPARSIFY_ACTIVATIONS
from ..hooks.sites import check_sites
from ..models.digest import model_digest
from ..pruning.calibration import Calibration, RealRows
from ..pruning.model_info import check_prunable

METHODS = ("magnitude", "wina", "chess")
PLACES = ("hidden", "input")
POST, PRE, PRE_LINEAR = "blocks.{}.mlp.hook_post", "blocks.{}.mlp.hook_pre", "blocks.{}.mlp.hook_pre_linear"
MLP_IN = "blocks.{}.ln2.hook_normalized"


def check_sparsity(sparsity: Any) -> float:
    """``sparsity`` as a float in [0, 1) (the fraction of neurons zeroed per token)."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not math.isfinite(float(sparsity)) \
            or not 0.0 <= float(sparsity) < 1.0:
        raise FuncnetError(f"sparsity should be the fraction of MLP neurons zeroed per token, in [0, 1); got "
                           f"{sparsity!r:.40}")
    return float(sparsity)


@dataclass(eq=False)
class ActivationSparsity:
    """Calibrated per-token sparsity of MLP neurons; :meth:`to_intervention` applies it.

    Attributes:
        method, sparsity: the score and the target fraction of units zeroed per token.
        where: ``"hidden"`` (the MLP's neurons) or ``"input"`` (the MLP's input).
        sites: per layer, the hook the ``sparsify`` op sits on.
        thresholds: per layer, one threshold per unit (0 for protected units).
        weights: per layer, the score's per-neuron weight (None for ``magnitude``).
        activation: the MLP activation the score goes through (``chess``), else None.
        protected: per layer, the number of neurons never zeroed.
    """

    method: str
    sparsity: float
    where: str
    sites: dict[int, str]
    thresholds: dict[int, Float[Tensor, "d_mlp"]]
    weights: dict[int, Float[Tensor, "d_mlp"] | None]
    activation: str | None
    protected: dict[int, int]
    digest: str = field(repr=False)  # model_digest of the model the thresholds were calibrated on

    def check_model(self, model: Any) -> None:
        if model_digest(model) != self.digest:
            raise FuncnetError(f"these {self.method} thresholds were calibrated on another model (its MLP weights "
                               f"differ); calibrate them on this model with calibrate_sparsity(model, ...)")

    def to_intervention(self, model: Any) -> Intervention:
        """One ``sparsify`` hook per layer (checked against ``model``, the model it will run on)."""
        self.check_model(model)
        iv = Intervention()
        for l, site in self.sites.items():
            iv = iv | sparsify(site, self.thresholds[l], weight=self.weights[l], activation=self.activation)
        return iv

    @torch.no_grad()
    def measure(self, model: Any, texts: Any, *, max_tokens: int | None = 2048) -> dict[str, Any]:
        """The sparsity reached on ``texts``: per layer and on average, the fraction of units that are exactly zero
        on real tokens under :meth:`to_intervention` (and without it, for reference): ``mlp.hook_post`` for
        ``where="hidden"``, the MLP input for ``"input"``."""
        calibration = _calibration(model, texts, max_tokens)
        layers = sorted(self.sites)
        read = {l: (MLP_IN if self.where == "input" else POST).format(l) for l in layers}
        width = {l: int(self.thresholds[l].numel()) for l in layers}
        out = {}
        for label, iv in (("reached", self.to_intervention(model)), ("dense", Intervention())):
            zeros = {l: 0 for l in layers}
            n = 0

            def take(site: str, rows: Tensor) -> None:
                zeros[int(site.split(".")[1])] += int((rows == 0).sum())

            sink = RealRows(take)
            for batch in sink.batches(model, calibration, iv + record(list(read.values()), sink), return_type=None):
                n += batch.n_real
            if n == 0:
                raise FuncnetError("the texts to measure on have no tokens; pass non-empty texts")
            out[label] = {l: zeros[l] / (n * width[l]) for l in layers}
        per_layer = out["reached"]
        return {"target": self.sparsity, "mean": sum(per_layer.values()) / len(per_layer), "per_layer": per_layer,
                "dense_mean": sum(out["dense"].values()) / len(per_layer), "n_tokens": calibration.n_tokens}

    def summary(self) -> dict[str, Any]:
        return {"method": self.method, "sparsity": self.sparsity, "where": self.where, "layers": sorted(self.sites),
                "activation": self.activation, "protected": dict(self.protected)}


def _calibration(model: Any, texts: Any, max_tokens: int | None) -> Calibration:
    """``texts`` as a :class:`Calibration` bound to ``model`` (a Calibration is checked against it)."""
    if not isinstance(texts, Calibration):
        return Calibration.from_texts(model, texts, max_tokens=max_tokens)
    texts.check_model(model)
    return texts


def protected_units(model: Any, protect: Any, widths: Sequence[int]) -> dict[int, Bool[Tensor, "d_mlp"]]:
    """``protect`` (FunctionalNetworks fitted on ``mlp.hook_post`` sites, or ``{layer: unit indices or mask}``) as
    one bool mask per layer."""
    from ..funcnet.networks import FunctionalNetworks
    from ..hooks.names import legacy_name

    if protect is None:
        return {}
    if isinstance(protect, FunctionalNetworks):
        units = {legacy_name(model, s): u for s, u in protect.site_units(protect.union()).items()}
        wrong = [s for s in units if not (s.startswith("blocks.") and s.endswith(".mlp.hook_post"))]
        if wrong:
            raise FuncnetError(f"protect needs functional networks of MLP neurons (sites blocks.L.mlp.hook_post); "
                               f"these networks are on {wrong[:3]}; fit them on mlp.hook_post")
        protect = {int(s.split(".")[1]): u for s, u in units.items()}
    if not isinstance(protect, Mapping):
        raise FuncnetError(f"protect should be FunctionalNetworks or a {{layer: units}} dict, got "
                           f"{type(protect).__name__}")
    masks = {}
    for layer, units in protect.items():
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < len(widths):
            raise FuncnetError(f"protect has layer {layer!r}; the model has layers 0..{len(widths) - 1}")
        t = torch.as_tensor(units)
        if t.dtype == torch.bool:
            if t.numel() != widths[layer]:
                raise FuncnetError(f"protect[{layer}] is a mask of {t.numel()} entries; layer {layer} has "
                                   f"{widths[layer]} neurons")
            masks[layer] = t.flatten()
            continue
        if t.is_floating_point() or t.is_complex():
            raise FuncnetError(f"protect[{layer}] should be unit indices (ints) or a bool mask, got {t.dtype}")
        t = t.long().flatten()
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= widths[layer]):
            raise FuncnetError(f"protect[{layer}] has unit indices outside 0..{widths[layer] - 1}")
        mask = torch.zeros(widths[layer], dtype=torch.bool)
        mask[t] = True
        masks[layer] = mask
    return masks


def _score_sites(model: Any, method: str, where: str, layers: Sequence[int]) -> tuple[dict[int, str], str | None]:
    if where == "input":
        if method == "chess":
            raise FuncnetError("chess sparsifies the MLP's gate channels; where='input' is for magnitude and wina")
        return {l: MLP_IN.format(l) for l in layers}, None
    if method == "chess":
        act = getattr(model.cfg, "act_fn", None)
        if act not in SPARSIFY_ACTIVATIONS:
            raise FuncnetError(f"chess scores the activated gate, but act_fn={act!r} is not one the sparsify op "
                               f"knows ({sorted(SPARSIFY_ACTIVATIONS)}); use magnitude or wina")
        return {l: PRE.format(l) for l in layers}, act
    return {l: POST.format(l) for l in layers}, None


@torch.no_grad()
def calibrate_sparsity(model: Any, calibration: Calibration | Any, method: str = "magnitude",
                       sparsity: float = 0.4, *, where: str = "hidden", layers: Sequence[int] | None = None,
                       protect: Any = None, max_tokens: int | None = 2048) -> ActivationSparsity:
    """Thresholds that zero a ``sparsity`` fraction of each layer's MLP neurons per token on ``calibration``
    (a :class:`~tl_funcnet.pruning.Calibration` or texts), scored by ``method`` (see the module docstring).

    ``where``: ``"hidden"`` (the MLP's neurons) or ``"input"`` (the MLP's input, see the module docstring).
    ``protect``: functional networks (their key units) or ``{layer: units}`` never zeroed (FN-aware variant).
    """
    if method not in METHODS:
        raise FuncnetError(f"method should be one of {METHODS}, got {method!r:.40}")
    if where not in PLACES:
        raise FuncnetError(f"where should be one of {PLACES}, got {where!r:.40}")
    if where == "input" and protect is not None:
        raise FuncnetError("protect names MLP neurons, so it goes with where='hidden', not 'input'")
    sparsity = check_sparsity(sparsity)
    widths = check_prunable(model)
    layers = list(range(len(widths))) if layers is None else sorted(set(layers))
    bad = [l for l in layers if isinstance(l, bool) or not isinstance(l, int) or not 0 <= l < len(widths)]
    if bad or not layers:
        raise FuncnetError(f"layers should be a non-empty list of layer indices 0..{len(widths) - 1}, got "
                           f"{bad or layers}")
    masks = protected_units(model, protect, widths)
    for l, mask in masks.items():
        free = int((~mask).sum())
        if l in layers and sparsity * widths[l] > free:
            raise FuncnetError(f"layer {l} protects {int(mask.sum())} of {widths[l]} neurons, so at most "
                               f"{free / widths[l]:.3f} of them can be zeroed, less than sparsity={sparsity}")
    sites, activation = _score_sites(model, method, where, layers)
    check_sites(model, list(sites.values()))
    gated = all(hasattr(model.blocks[l].mlp, "W_gate") for l in layers)
    calibration = _calibration(model, calibration, max_tokens)

    rows: dict[str, list[Tensor]] = {s: [] for s in sites.values()}
    up_abs = {l: torch.zeros(widths[l], dtype=torch.float64) for l in layers}
    read = list(sites.values())
    if method == "chess" and gated:
        read += [PRE_LINEAR.format(l) for l in layers]
    act_fn = SPARSIFY_ACTIVATIONS[activation] if activation is not None else None

    def take(site: str, x: Tensor) -> None:
        if site.endswith("hook_pre_linear"):
            up_abs[int(site.split(".")[1])] += x.double().abs().sum(0).cpu()
        else:
            rows[site].append((act_fn(x.float()) if act_fn is not None else x.float()).abs().cpu())

    sink = RealRows(take)
    n = sum(b.n_real for b in sink.batches(model, calibration, record(read, sink), return_type=None))
    if n == 0:
        raise FuncnetError("the calibration text has no tokens; pass non-empty texts")
    thresholds, weights, protected = {}, {}, {}
    for l in layers:
        mlp = model.blocks[l].mlp
        if method == "wina" and where == "input":  # the rows of W_in (and W_gate) that read input unit i
            parts = [mlp.W_in] + ([mlp.W_gate] if getattr(mlp, "W_gate", None) is not None else [])
            weight = torch.cat([w.detach().float() for w in parts], dim=1).norm(dim=1).cpu()
        elif method == "wina":
            weight = mlp.W_out.detach().float().norm(dim=1).cpu()
        elif method == "chess" and gated:
            weight = (up_abs[l] / n).float()
        else:
            weight = None
        score = torch.cat(rows.pop(sites[l]))
        if weight is not None:
            score = score * weight
        width = int(score.shape[1])
        mask = masks.get(l, torch.zeros(width, dtype=torch.bool))
        free = score[:, ~mask].flatten()
        n_zero = int(round(sparsity * score.numel()))
        tau = torch.zeros(())
        if n_zero > 0:  # zero where score < tau: just above the k-th smallest free score zeroes those k (ties aside)
            kth = free.kthvalue(n_zero).values
            tau = torch.nextafter(kth, torch.tensor(math.inf, dtype=kth.dtype))
        thresholds[l] = torch.where(mask, torch.zeros(()), tau.expand(width))
        weights[l], protected[l] = weight, int(mask.sum())
    return ActivationSparsity(method, sparsity, where, sites, thresholds, weights, activation, protected,
                              model_digest(model))


__all__ = ["METHODS", "ActivationSparsity", "calibrate_sparsity", "check_sparsity",
           "protected_units"]
