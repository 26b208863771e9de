"""Cards that answer "what does it respond to?" for functional networks and SAE features.

A card holds a unit's facts (size, layers, loss effect, logit effect), its activity over one text with every
token coloured, and its top-activating contexts from a corpus. Cards show themselves in notebooks and go into
a :class:`~tl_funcnet.dashboards.Report`.

>>> cards = network_cards(model, networks, acts, ids=[0, 3], text="The capital of France is Paris.")
>>> cards[0]                                     # in a notebook: the card
>>> feature_cards(model, sae, collect_features(model, sae, texts), ids=[12, 40])
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import FuncnetError
from ..hooks.sites import site_layer
from ..hooks.values import index_list, positive_int
from .contexts import Context, check_capacity, positions, token_strings, top_contexts
from .html import colored_tokens, esc, fmt, styled


@dataclass
class Card:
    """What one network or feature responds to (see the module docstring)."""

    title: str
    subtitle: str = ""
    facts: dict[str, str] = field(default_factory=dict)
    layer_sizes: dict[str, int] = field(default_factory=dict)
    example: Context | None = None
    example_label: str = ""
    contexts: list[Context] = field(default_factory=list)
    numbers: dict[str, float] = field(default_factory=dict)  # the measured values behind ``facts``

    def to_html(self) -> str:
        """The card as HTML without the stylesheet (a report adds it once)."""
        peaks = [abs(c.value) for c in self.contexts] or [abs(v) for v in (self.example.values if self.example else ())]
        scale = max(peaks + [1e-12])
        parts = [f"<div class='tlfn-card'><h3>{esc(self.title)}<span class='tlfn-sub'>{esc(self.subtitle)}</span></h3>"]
        if self.facts:
            parts.append("<table class='tlfn-facts'>" + "".join(
                f"<tr><td>{esc(k)}</td><td><b>{esc(v)}</b></td></tr>" for k, v in self.facts.items()) + "</table>")
        if self.layer_sizes:
            top = max(self.layer_sizes.values()) or 1
            cells = "".join(
                f"<div class='tlfn-cell' title='{esc(k)}: {v} units'><div style='height:{3 + 30 * v / top:.0f}px;"
                f"background:#e07b00'></div>{esc(k.removeprefix('L'))}</div>" for k, v in self.layer_sizes.items())
            parts.append(f"<div class='tlfn-label'>Units per layer</div><div class='tlfn-strip'>{cells}</div>")
        if self.example is not None:
            parts.append(f"<div class='tlfn-label'>{esc(self.example_label)}</div>"
                         + colored_tokens(self.example.tokens, self.example.values, scale=scale,
                                          peak=self.example.peak))
        if self.contexts:
            rows = "".join(f"<tr><td class='tlfn-v' title='corpus text {c.text}, token {c.position}'>"
                           f"{fmt(c.value, 3)}</td><td>{colored_tokens(c.tokens, c.values, scale=scale, peak=c.peak)}"
                           f"</td></tr>"
                           for c in self.contexts)
            parts.append(f"<div class='tlfn-label'>Top-activating contexts (value at the outlined token)</div>"
                         f"<table class='tlfn-ctx'>{rows}</table>")
        return "".join(parts) + "</div>"

    def _repr_html_(self) -> str:
        return styled(self.to_html())

    def to_dict(self) -> dict[str, Any]:
        """JSON-able contents."""
        return asdict(self)


def _window(k: int, window: int) -> tuple[int, int]:
    positive_int(k, "k")
    return k, positive_int(window, "window", minimum=0)


def _check_text(text: Any) -> None:
    if text is None or (isinstance(text, str) and text.strip()):
        return
    if isinstance(text, Tensor) and text.ndim == 1 and text.numel() and not text.is_floating_point():
        return
    raise FuncnetError(f"text should be a non-empty string or a 1-D tensor of token ids to show activity on (or "
                       f"None), got {text!r:.60}")


def _example(model: Any, scores: Float[Tensor, "n"], token_ids: Tensor, offsets: Tensor, peak_text: int,
             peak_pos: int, span: int = 24) -> tuple[Context, str]:
    """The corpus text around a peak, as the card's example (when the user gives no text)."""
    lo_t, hi_t = int(offsets[peak_text]), int(offsets[peak_text + 1])
    lo, hi = max(lo_t, lo_t + peak_pos - span), min(hi_t, lo_t + peak_pos + span + 1)
    ctx = Context(peak_text, peak_pos, float(scores[lo_t + peak_pos]), tuple(token_strings(model, token_ids[lo:hi])),
                  tuple(scores[lo:hi].tolist()), lo_t + peak_pos - lo)
    return ctx, f"Activity around its strongest token (corpus text {peak_text}, tokens {lo - lo_t}-{hi - lo_t - 1})"


def _on_text(model: Any, scores: Float[Tensor, "n"], token_ids: Tensor, skip: int = 0) -> Context:
    skip = skip if scores.numel() > skip else 0
    peak = skip + int(scores[skip:].argmax())
    return Context(-1, peak, float(scores[peak]), tuple(token_strings(model, token_ids)), tuple(scores.tolist()), peak)


def network_cards(model: Any, networks: Any, acts: Any, ids: Sequence[int] | None = None, *,
                  text: str | Tensor | None = None, k: int = 8, window: int = 6, eval_texts: Any = None,
                  random_state: int = 0) -> list[Card]:
    """One card per functional network (all by default).

    Activity is the mean z-scored activation of the network's key units
    (``networks.time_courses(acts, kind="zscore")``); ``acts`` are activations at the fitted sites (the fitting
    activations will do). With ``text`` the card colours that text; otherwise the corpus text around the
    network's peak. With ``eval_texts`` it reports the loss change when the network alone is masked, beside a
    random mask of the same size per layer (``control="per_layer"``, ``random_state``).
    """
    ids = networks.network_ids(ids)
    k, window = _window(k, window)
    _check_text(text)
    check_capacity(acts.offsets, k, window)
    scores = networks.time_courses(acts, kind="zscore", ids=ids)
    on_text = None
    if text is not None:
        from ..activations import collect

        seen = collect(model, [text], networks.sites_, max_tokens_per_seq=None, progress=False)
        on_text = (networks.time_courses(seen, kind="zscore", ids=ids), seen.token_ids)
    effects = _mask_effects(model, networks, ids, eval_texts, random_state) if eval_texts is not None else None
    cards = []
    for j, i in enumerate(ids):
        ctxs = top_contexts(model, scores[:, j], acts.token_ids, acts.offsets, k=k, window=window)
        counts = networks.per_site_counts([i])
        layers = [site_layer(s) for s, n in counts.items() if n]
        facts = {"key units": str(sum(counts.values())),
                 "layers": (f"{min(layers)}-{max(layers)} ({len(layers)} with units)" if layers and None not in layers
                            else str(len(layers))),
                 "peak activity (z)": fmt(ctxs[0].value, 3) if ctxs else "-"}
        numbers = {"key_units": float(sum(counts.values())), "peak": ctxs[0].value if ctxs else float("nan")}
        if effects is not None:
            facts["loss change, network masked alone"] = f"{effects[i][0]:+.4f}"
            facts["loss change, random units of the same size per layer"] = f"{effects[i][1]:+.4f}"
            numbers.update(loss_change=effects[i][0], loss_change_random=effects[i][1])
        sizes = {f"L{site_layer(s)}" if site_layer(s) is not None else s: n for s, n in counts.items()}
        if on_text is not None:
            ex, label = _on_text(model, on_text[0][:, j], on_text[1]), "Activity over the text"
        else:
            ex, label = _example(model, scores[:, j], acts.token_ids, acts.offsets, ctxs[0].text, ctxs[0].position)
        sub = f"{facts['key units']} key units" if numbers["key_units"] else "no key units at this threshold"
        cards.append(Card(f"Network {i}", sub, facts, sizes, ex, label, ctxs, numbers))
    return cards


def _mask_effects(model: Any, networks: Any, ids: list[int], texts: Any,
                  random_state: int) -> dict[int, tuple[float, float]]:
    from ..evaluate import evaluate

    base = evaluate(model, texts, compare_to_base=False, progress=False).loss
    out = {}
    for i in ids:
        own = evaluate(model, texts, networks.to_intervention("mask", ids=[i]), compare_to_base=False, progress=False)
        ctl = evaluate(model, texts, networks.to_intervention("mask", ids=[i], control="per_layer",
                                                              random_state=random_state),
                       compare_to_base=False, progress=False)
        out[i] = (own.loss - base, ctl.loss - base)
    return out


def feature_cards(model: Any, sae: Any, features: Any, ids: Sequence[int], *, text: str | Tensor | None = None,
                  k: int = 8, window: int = 6, n_logits: int = 5, skip_positions: int = 0) -> list[Card]:
    """One card per SAE feature in ``ids``.

    ``features`` is :func:`~tl_funcnet.sae.collect_features` of ``sae`` over a corpus. Facts: how often the
    feature fires, its largest activation, and (for an SAE on the residual stream) the tokens its decoder
    direction promotes and suppresses most through the unembedding. ``skip_positions`` leaves the first tokens
    of each text out of the contexts and facts (see :func:`~tl_funcnet.dashboards.top_contexts`).
    """
    from ..sae.params import sae_params

    k, window = _window(k, window)
    positive_int(n_logits, "n_logits")
    _check_text(text)
    if len(getattr(features, "sites", ())) != 1:
        raise FuncnetError("features should be collect_features(model, sae, texts): activations of one SAE site")
    site = features.sites[0]
    p = sae_params(sae)
    width = features.width(site)
    if width != int(p["d_sae"]):
        raise FuncnetError(f"features have {width} columns but the SAE has d_sae={p['d_sae']}; collect them with "
                           f"this SAE")
    ids = list(index_list(ids, "feature ids"))
    bad = [i for i in ids if i >= width]
    if bad or not ids:
        raise FuncnetError(f"feature ids {bad or ids} are out of range; the SAE has {width} features (0..{width - 1})")
    check_capacity(features.offsets, k, window)
    acts = features[site][:, ids].float()
    keep = positions(features.offsets) >= positive_int(skip_positions, "skip_positions", minimum=0)
    if not bool(keep.any()):
        raise FuncnetError(f"skip_positions={skip_positions} leaves no token of the corpus to count; lower it or "
                           f"collect longer texts")
    on_text = None
    if text is not None:
        from ..sae.features import collect_features

        seen = collect_features(model, sae, [text], max_tokens_per_seq=None)
        on_text = (seen[seen.sites[0]][:, ids].float(), seen.token_ids)
    W_U = getattr(model, "W_U", None)
    W_dec = p["W_dec"].float()
    logit_fx = W_dec[ids] @ W_U.detach().float().cpu() if W_U is not None and W_U.shape[0] == W_dec.shape[1] else None
    cards = []
    for j, f in enumerate(ids):
        col = acts[:, j]
        ctxs = top_contexts(model, col, features.token_ids, features.offsets, k=k, window=window, positive_only=True,
                            skip_positions=skip_positions)
        counted = col[keep]
        active = counted > 0
        facts = {"fires on": f"{float(active.float().mean()):.2%} of {counted.numel()} tokens",
                 "largest activation": fmt(float(counted.max()), 3),
                 "mean when active": fmt(float(counted[active].mean()) if bool(active.any()) else 0.0, 3)}
        if logit_fx is not None:
            up, down = logit_fx[j].topk(n_logits).indices, (-logit_fx[j]).topk(n_logits).indices
            facts["promotes"] = ", ".join(repr(t) for t in token_strings(model, up))
            facts["suppresses"] = ", ".join(repr(t) for t in token_strings(model, down))
        if on_text is not None:
            ex, label = _on_text(model, on_text[0][:, j], on_text[1], skip_positions), "Activity over the text"
        elif ctxs:
            ex, label = _example(model, col, features.token_ids, features.offsets, ctxs[0].text, ctxs[0].position)
        else:
            ex, label = None, ""
        sub = site.removesuffix(".hook_sae_acts_post") + ("" if ctxs else " - never active on this corpus")
        numbers = {"frequency": float(active.float().mean()), "max": float(counted.max())}
        cards.append(Card(f"Feature {f}", sub, facts, {}, ex, label, ctxs, numbers))
    return cards


def pick_features(features: Any, n: int, *, min_frequency: float = 1e-3, max_frequency: float = 0.05,
                  skip_positions: int = 0, overlap: float = 0.5) -> list[int]:
    """``n`` features worth a card: firing on between ``min_frequency`` and ``max_frequency`` of the tokens
    (neither dead nor always on), those with the largest mean activation when active first, skipping a feature
    when more than ``overlap`` of its 10 top tokens are top tokens of a feature already picked (so the cards
    show different things). Tokens before ``skip_positions`` in each text are not counted."""
    positive_int(n, "n")
    skip = positive_int(skip_positions, "skip_positions", minimum=0)
    x = features[features.sites[0]].float()[positions(features.offsets) >= skip]
    active = x > 0
    freq = active.float().mean(0)
    mean_on = (x * active).sum(0) / active.sum(0).clamp_min(1)
    ok = (freq >= min_frequency) & (freq <= max_frequency)
    order = torch.argsort(torch.where(ok, mean_on, torch.full_like(mean_on, -1.0)), descending=True)
    chosen: list[int] = []
    seen: set[int] = set()
    for f in order[: int(ok.sum())].tolist():
        top = set(x[:, f].topk(min(10, x.shape[0])).indices.tolist())
        if len(top & seen) > overlap * len(top):
            continue
        chosen.append(int(f))
        seen |= top
        if len(chosen) == n:
            break
    if not chosen:
        raise FuncnetError(f"no feature fires on between {min_frequency:.2%} and {max_frequency:.2%} of the "
                           f"{x.shape[0]} tokens; widen the range or collect more text")
    return chosen


__all__ = ["Card", "feature_cards", "network_cards", "pick_features"]
