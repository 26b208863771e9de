"""Measuring steering: target shift on test prompts, side effects on neutral text, layer x scale sweeps.

Target metrics read the next-token distribution after each test prompt:

- ``pos_mass`` / ``neg_mass``: probability of the positive / negative word tokens (first token of
  ``" " + word``), averaged over prompts;
- ``log_odds``: mean over prompts of ``log pos_mass - log neg_mass``; ``shift`` is its change against the
  unsteered model (the headline number);
- ``pos_logprob``: mean log-probability of the positive word tokens;
- ``entropy``: mean next-token entropy (nats).

Side effects on neutral text (steered at every position): mean per-token ``KL(base || steered)``, the
next-token ``loss`` and its change ``delta_loss``.
"""

from __future__ import annotations

from concurrent.futures import Executor
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from .._rng import check_random_state
from ..activations.forward import run_batches
from ..errors import FuncnetError
from ..executors.fanout import Chunk, check_executor, fan_out, model_ref
from ..evaluate import kl_divergence, next_token_logprobs, next_token_nll, target_mask
from ..hooks import Intervention
from ..hooks.values import positive_int
from ..models.ref import as_model
from .vector import SteeringVector, random_like

IvFactory = Callable[[Int[Tensor, "batch"]], Intervention]


def word_ids(model: Any, words: Iterable[str | int]) -> list[int]:
    """Token ids of target words: ints pass through, strings give the first token of ``" " + word``."""
    out: list[int] = []
    for w in words:
        if isinstance(w, int):
            i = w
        else:
            if getattr(model, "tokenizer", None) is None:
                raise FuncnetError("the model has no tokenizer; give target words as token ids")
            i = int(model.to_tokens(" " + w.strip(), prepend_bos=False)[0, 0])
        if not 0 <= i < model.cfg.d_vocab:
            raise FuncnetError(f"target token id {i} is outside the vocabulary (d_vocab={model.cfg.d_vocab})")
        if i not in out:
            out.append(i)
    if not out:
        raise FuncnetError("no target words given; pass at least one word (or token id)")
    return out


def _as_factory(iv: Intervention | IvFactory | None) -> IvFactory:
    if iv is None:
        return lambda last: Intervention()
    if isinstance(iv, Intervention):
        return lambda last: iv
    return iv


@torch.no_grad()
def prompt_logprobs(model: Any, prompts: Sequence[Any], intervention: Intervention | IvFactory | None = None,
                    *, batch_size: int = 16) -> Float[Tensor, "n d_vocab"]:
    """Log-probabilities of the token after each prompt, under ``intervention``.

    ``intervention`` may be a callable ``f(last_index) -> Intervention`` to steer per-row positions (the
    index of each row's last real token in the right-padded batch).
    """
    from ..activations.forward import run_batches
    from ..activations.tokens import tokenize

    make = _as_factory(intervention)
    seqs = tokenize(model, list(prompts), max_tokens_per_seq=None)
    out = torch.empty(len(seqs), model.cfg.d_vocab)
    for batch, logits in run_batches(model, seqs, batch_size=batch_size, return_type="logits",
                                     intervention=lambda b: make(b.mask.sum(1) - 1)):
        last = (batch.mask.sum(1) - 1).to(logits.device)
        out[batch.index] = F.log_softmax(logits[torch.arange(len(last)), last].float(), -1).cpu()
    return out


def target_metrics(logp: Float[Tensor, "n d_vocab"], pos_ids: Sequence[int], neg_ids: Sequence[int]) -> dict[str, float]:
    """Target numbers from next-token log-probs (see the module docstring)."""
    lp_pos = torch.logsumexp(logp[:, list(pos_ids)], -1)
    lp_neg = torch.logsumexp(logp[:, list(neg_ids)], -1)
    return {"log_odds": float((lp_pos - lp_neg).mean()), "pos_mass": float(lp_pos.exp().mean()),
            "neg_mass": float(lp_neg.exp().mean()), "pos_logprob": float(logp[:, list(pos_ids)].mean()),
            "entropy": float(-(logp.exp() * logp).sum(-1).mean())}


class NeutralReference:
    """Unsteered next-token log-probs on neutral text, kept to score side effects of many interventions."""

    @torch.no_grad()
    def __init__(self, model: Any, texts: Any = "evaluation", *, max_texts: int | None = 12,
                 max_tokens_per_seq: int = 64, batch_size: int = 8):
        from ..activations.tokens import resolve_inputs, tokenize

        items = resolve_inputs(texts)
        if max_texts is not None:
            items = items[:positive_int(max_texts, "max_texts")]
        self.model = model
        self.seqs = tokenize(model, items, max_tokens_per_seq=max_tokens_per_seq)
        self.batch_size = batch_size
        self.base: list[Tensor] = []
        self.base_loss = 0.0
        self.n_tokens = 0
        for b, logits in run_batches(model, self.seqs, batch_size=batch_size):
            lp = next_token_logprobs(logits).cpu()
            self.base.append(lp)
            mask = target_mask(b.mask)
            self.base_loss += float(next_token_nll(lp, b.tokens)[mask].sum())
            self.n_tokens += int(mask.sum())
        self.base_loss /= self.n_tokens

    @torch.no_grad()
    def side_effects(self, intervention: Intervention) -> dict[str, float]:
        """``kl`` (base || steered, per token), ``loss``, ``delta_loss`` and ``neutral_entropy``."""
        kl = loss = ent = 0.0
        batches = run_batches(self.model, self.seqs, batch_size=self.batch_size, intervention=intervention)
        for (b, logits), base in zip(batches, self.base):
            lp = next_token_logprobs(logits).cpu()
            mask = target_mask(b.mask)
            kl += float(kl_divergence(base, lp)[mask].sum())
            loss += float(next_token_nll(lp, b.tokens)[mask].sum())
            ent += float(-(lp.exp() * lp).sum(-1)[mask].sum())
        n = self.n_tokens
        return {"kl": kl / n, "loss": loss / n, "delta_loss": loss / n - self.base_loss, "neutral_entropy": ent / n}


def _sweep_rows(model: Any, *, named: list[tuple[int, Any, SteeringVector]], scales: list[float],
                test_prompts: Sequence[Any], positive_words: Sequence[str | int],
                negative_words: Sequence[str | int], neutral: NeutralReference | Any, pos: str | None,
                normalize: bool, random_control: bool, base_seed: int | None, with_base: bool,
                progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """The rows of the vectors ``named`` (index, name, vector) and, ``with_base``, the unsteered row first."""
    pos_ids, neg_ids = word_ids(model, positive_words), word_ids(model, negative_words)
    ref = neutral if isinstance(neutral, NeutralReference) else NeutralReference(model, neutral)
    base = target_metrics(prompt_logprobs(model, test_prompts), pos_ids, neg_ids)
    rows = [{"kind": "base", "vector": "", "site": "", "layer": -1, "scale": 0.0, "norm": 0.0, **base, "shift": 0.0,
             "kl": 0.0, "loss": ref.base_loss, "delta_loss": 0.0, "neutral_entropy": float("nan")}] if with_base else []
    for i, name, sv in named:
        layer = -1 if sv.layer is None else sv.layer
        kinds = [("steer", sv)] + ([("random", random_like(sv, random_state=None if base_seed is None
                                                        else base_seed + i))] if random_control else [])
        for kind, v in kinds:
            for s in scales:
                def make(last: Tensor, v: SteeringVector = v, s: float = s) -> Intervention:
                    return v.to_intervention(s, last if pos == "last" else None, normalize=normalize)

                m = target_metrics(prompt_logprobs(model, test_prompts, make), pos_ids, neg_ids)
                side = ref.side_effects(v.to_intervention(s, None, normalize=normalize))
                rows.append({"kind": kind, "vector": str(name), "site": v.site, "layer": layer, "scale": float(s),
                             "norm": v.norm, **m, "shift": m["log_odds"] - base["log_odds"], **side})
                if progress:
                    progress(f"{kind:6s} {v.site} scale {s:6.2f}: shift {rows[-1]['shift']:+.3f} "
                             f"kl {side['kl']:.3f}")
    return rows


def sweep(model: Any, vectors: Mapping[Any, SteeringVector] | Sequence[SteeringVector], scales: Sequence[float],
          test_prompts: Sequence[Any], positive_words: Sequence[str | int], negative_words: Sequence[str | int], *,
          neutral: NeutralReference | Any = "evaluation", pos: str | None = None, normalize: bool = False,
          random_control: bool = True, random_state: int | None = 0, progress: Callable[[str], None] | None = None,
          executor: Executor | None = None):
    """Site x scale sweep: one row per (kind, vector, scale) with target and side-effect metrics.

    ``vectors`` are steering vectors (a list, or a dict such as :func:`mean_differences` returns), each applied
    at its own site; the ``vector`` column names each one by its dict key (or list index). ``pos`` is ``None``
    (every position) or ``"last"`` (the last real token of each test prompt). With ``random_control`` every
    configuration is repeated with a random vector of the same norm. ``executor`` (any
    ``concurrent.futures.Executor``) runs one chunk per vector, each worker loading ``model`` by reference
    (``neutral`` is then texts, not a NeutralReference). Returns a pandas DataFrame with columns
    ``kind, vector, site, layer, scale, norm, log_odds, shift, pos_mass, neg_mass, pos_logprob, entropy, kl,
    loss, delta_loss, neutral_entropy``.
    """
    import pandas as pd

    named = list(vectors.items()) if isinstance(vectors, Mapping) else list(enumerate(vectors))
    vs = [v for _, v in named]
    if not vs or not all(isinstance(v, SteeringVector) for v in vs):
        raise FuncnetError("vectors should be SteeringVectors (a list, or a dict such as mean_differences returns)")
    if not scales:
        raise FuncnetError("no scales to sweep; pass one or more numbers")
    if pos not in (None, "last"):
        raise FuncnetError(f"pos should be None (every position) or 'last' for a sweep, got {pos!r}")
    settings = {"scales": list(scales), "test_prompts": list(test_prompts), "positive_words": list(positive_words),
                "negative_words": list(negative_words), "pos": pos, "normalize": normalize,
                "random_control": random_control, "base_seed": check_random_state(random_state)}
    indexed = [(i, name, v) for i, (name, v) in enumerate(named)]
    if executor is None:
        model = as_model(model)
        return pd.DataFrame(_sweep_rows(model, named=indexed, neutral=neutral, with_base=True, progress=progress,
                                        **settings))
    check_executor(executor)
    if isinstance(neutral, NeutralReference):
        raise FuncnetError("with an executor, neutral should be texts (a split name, path or list of strings): a "
                           "NeutralReference holds a loaded model, which is never sent to workers")
    from ..activations.tokens import resolve_inputs

    settings["neutral"] = resolve_inputs(neutral)
    chunks = [Chunk(f"vector {name!r} at {v.site}", {**settings, "named": [(i, name, v)], "with_base": i == 0})
              for i, name, v in indexed]
    parts = fan_out(executor, _sweep_rows, chunks, ref=model_ref(model), what="steering.sweep")
    return pd.DataFrame([row for part in parts for row in part])


def best_config(df: Any, *, kl_budget: float = 1.0, kind: str = "steer") -> dict[str, Any]:
    """The row of ``kind`` with the largest shift among those with ``kl <= kl_budget`` (or the lowest-KL
    row if none qualifies)."""
    rows = df[df["kind"] == kind]
    if rows.empty:
        raise FuncnetError(f"no rows of kind {kind!r} in the sweep")
    ok = rows[rows["kl"] <= kl_budget]
    row = ok.loc[ok["shift"].idxmax()] if not ok.empty else rows.loc[rows["kl"].idxmin()]
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in row.to_dict().items()}


def plot_sweep(df: Any, *, title: str = "steering sweep") -> Any:
    """A matplotlib Figure with three panels: shift (layer x scale), KL on neutral text, and shift against KL
    (save it with ``fig.savefig(path)``).

    The grids have one row per layer when each layer holds one swept vector, else one row per vector (the
    ``vector`` column), so different vectors are never averaged together.
    """
    from matplotlib.figure import Figure

    steer = df[df["kind"] == "steer"]
    by_layer = "vector" not in steer or steer.groupby("layer")["vector"].nunique().max() <= 1
    index = "layer" if by_layer else "vector"
    fig = Figure(figsize=(15, 4.2), layout="tight")
    axes = fig.subplots(1, 3)
    for ax, col, cmap in ((axes[0], "shift", "RdBu_r"), (axes[1], "kl", "viridis")):
        grid = steer.pivot_table(index=index, columns="scale", values=col, sort=by_layer)
        lim = float(abs(grid.values).max()) or 1.0
        im = ax.imshow(grid.values, aspect="auto", origin="lower", cmap=cmap,
                       **({"vmin": -lim, "vmax": lim} if col == "shift" else {}))
        ax.set_xticks(range(grid.shape[1]), [f"{c:g}" for c in grid.columns])
        ax.set_yticks(range(grid.shape[0]), [str(i) for i in grid.index])
        ax.set_xlabel("scale")
        ax.set_ylabel(index)
        ax.set_title("target log-odds shift" if col == "shift" else "KL(base || steered), neutral text")
        fig.colorbar(im, ax=ax)
    for kind, marker in (("steer", "o"), ("random", "x")):
        sub = df[df["kind"] == kind]
        if not sub.empty:
            axes[2].scatter(sub["kl"], sub["shift"], marker=marker, label=kind, alpha=0.7)
    axes[2].set_xlabel("KL on neutral text (nats/token)")
    axes[2].set_ylabel("target log-odds shift")
    axes[2].set_xscale("symlog", linthresh=1e-3)
    axes[2].legend()
    axes[2].set_title("effect vs side effect")
    fig.suptitle(title)
    return fig


__all__ = ["word_ids", "prompt_logprobs", "target_metrics", "NeutralReference", "sweep", "best_config",
           "plot_sweep"]
