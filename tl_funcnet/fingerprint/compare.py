"""Compare two fingerprints: align time courses through character offsets, match networks, score, test.

Steps (per shared text, then averaged over texts):

1. **Segments.** The text is split into whitespace-delimited words. Each token goes to the word holding its
   first non-space character; a model's activity in a word is the mean over its tokens there (no
   truncation, no resampling). Words covered by both models are kept.
2. **Correlation.** Spearman rho between every victim network and every suspect network over the words;
   ``|rho|`` is used, since an ICA source's sign is arbitrary. Averaged over texts.
3. **Matching.** Hungarian assignment on the mean ``|rho|`` matrix (one-to-one; different network counts
   are fine: the smaller set is matched).
4. **Score.** Mean ``|rho|`` of the ``top_m`` best matched pairs (default 16 = a quarter of 64 networks).
5. **Null.** The suspect's word series are circularly shifted (one random shift per text, the same for all
   its networks, which keeps their autocorrelation), steps 2-4 repeated ``n_null`` times. ``p_value`` is
   the permutation p-value, ``margin`` = score - 99th percentile of the null.
6. **Verdict.** ``derived`` if score >= ``DERIVED_AT`` and p <= ``ALPHA``; ``independent`` if
   score < ``INDEPENDENT_BELOW`` or p > ``ALPHA``; else ``inconclusive``. Thresholds calibrated on the zoo
   of ``benchmarks/zoo.py`` (see ``benchmarks/fingerprint.py`` and the module constants below).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from jaxtyping import Float
from scipy.optimize import linear_sum_assignment
from scipy.stats import rankdata
from threadpoolctl import threadpool_limits

from .._rng import numpy_generator
from ..errors import FuncnetError
from ..hooks.values import finite_number, positive_int
from .core import Fingerprint

# Calibrated on the zoo of benchmarks/zoo.py (16 pairs, 10 built-in texts, 64 networks; BENCHMARKS.md):
# independent models scored 0.12-0.33 (MiniLM highest), derived ones 0.62-1.00 (a 100-step fine-tune of a
# barely trained 4-layer model lowest), and a magnitude-pruned SmolLM2 broken to 2.3x its loss 0.40.
# The band between the two thresholds is "inconclusive"; these are in-sample choices, not a held-out test.
#: score at or above which (with p <= ALPHA) a suspect is called derived
DERIVED_AT = 0.60
#: score below which a suspect is called independent
INDEPENDENT_BELOW = 0.45
ALPHA = 0.01
TOP_M = 16

_WORD = re.compile(r"\S+")


def word_spans(text: str) -> np.ndarray:
    """``(n_words, 2)`` character spans of whitespace-delimited words."""
    return np.array([m.span() for m in _WORD.finditer(text)], dtype=np.int64).reshape(-1, 2)


def segment_means(text: str, series: Float[np.ndarray, "n_tokens n_networks"], offsets: np.ndarray,
                  words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean activity per word and the mask of words that received at least one token."""
    starts = offsets[:, 0].copy()
    for i, (a, b) in enumerate(offsets):  # first non-space character of the token
        piece = text[a:b]
        starts[i] = a + (len(piece) - len(piece.lstrip())) if piece.strip() else -1
    idx = np.searchsorted(words[:, 0], starts, side="right") - 1
    ok = (starts >= 0) & (idx >= 0)
    ok[ok] &= starts[ok] < words[idx[ok], 1]
    sums = np.zeros((len(words), series.shape[1]))
    counts = np.zeros(len(words))
    np.add.at(sums, idx[ok], series[ok])
    np.add.at(counts, idx[ok], 1)
    return sums / np.maximum(counts, 1)[:, None], counts > 0


def _std_ranks(x: np.ndarray) -> np.ndarray:
    """Column-wise ranks, centred and scaled so that ``a.T @ b`` is the Spearman matrix (0 for constants)."""
    r = rankdata(x, axis=0)
    r = r - r.mean(0)
    norm = np.sqrt((r ** 2).sum(0))
    return np.divide(r, norm, out=np.zeros_like(r), where=norm > 0)


def _score(m: np.ndarray, top_m: int) -> tuple[float, np.ndarray, np.ndarray]:
    rows, cols = linear_sum_assignment(m, maximize=True)
    vals = m[rows, cols]
    order = np.argsort(-vals, kind="stable")
    rows, cols, vals = rows[order], cols[order], vals[order]
    return float(vals[: min(top_m, len(vals))].mean()), np.stack([rows, cols], 1), vals


@dataclass(frozen=True)
class Comparison:
    """Result of :func:`compare`. ``to_dict()`` gives the JSON the CLI prints."""

    score: float
    p_value: float
    margin: float
    verdict: str
    top1: float
    mean_matched: float
    null_mean: float
    null_q99: float
    n_texts: int
    n_segments: int
    pairs: list[tuple[int, int, float]] = field(repr=False)
    rho: Float[np.ndarray, "n_victim n_suspect"] = field(repr=False)
    settings: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self, n_pairs: int = 10) -> dict[str, Any]:
        keys = ("score", "p_value", "margin", "verdict", "top1", "mean_matched", "null_mean", "null_q99",
                "n_texts", "n_segments")
        out: dict[str, Any] = {k: getattr(self, k) for k in keys}
        out["pairs"] = [{"victim": a, "suspect": b, "rho": r} for a, b, r in self.pairs[:n_pairs]]
        out["settings"] = self.settings
        return out


def verdict_of(score: float, p_value: float, *, derived_at: float = DERIVED_AT,
               independent_below: float = INDEPENDENT_BELOW, alpha: float = ALPHA) -> str:
    """``"derived"``, ``"independent"`` or ``"inconclusive"`` from the score and p-value."""
    if score >= derived_at and p_value <= alpha:
        return "derived"
    if score < independent_below or p_value > alpha:
        return "independent"
    return "inconclusive"


def shared_segments(victim: Fingerprint, suspect: Fingerprint) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per shared text: the two models' standardized word-level rank series ``(n_words, n_networks)``."""
    index = {h: i for i, h in enumerate(suspect.text_sha256)}
    out = []
    for i, h in enumerate(victim.text_sha256):
        j = index.get(h)
        if j is None:
            continue
        text = victim.texts[i]
        words = word_spans(text)
        a, ma = segment_means(text, victim.series[i].double().numpy(), victim.offsets[i].numpy(), words)
        b, mb = segment_means(text, suspect.series[j].double().numpy(), suspect.offsets[j].numpy(), words)
        both = ma & mb
        if both.sum() >= 3:
            out.append((_std_ranks(a[both]), _std_ranks(b[both])))
    if not out:
        raise FuncnetError("the two fingerprints share no text (with >= 3 aligned words); fingerprint the "
                           "suspect on the victim's texts: fingerprint(model, texts=victim_fp.texts)")
    return out


def compare(victim: Fingerprint, suspect: Fingerprint, *, top_m: int = TOP_M, n_null: int = 200,
            random_state: int | None = 0, derived_at: float = DERIVED_AT, independent_below: float = INDEPENDENT_BELOW,
            alpha: float = ALPHA) -> Comparison:
    """Score how strongly ``suspect``'s network time courses match ``victim``'s (see module docstring).

    ``n_null`` circular shifts (at least 1) give the null distribution of the p-value; ``random_state``
    seeds the shifts.
    """
    if not isinstance(victim, Fingerprint) or not isinstance(suspect, Fingerprint):
        raise FuncnetError(f"compare() takes two Fingerprint objects, got {type(victim).__name__} and "
                           f"{type(suspect).__name__}; make them with fingerprint(model)")
    positive_int(top_m, "top_m")
    positive_int(n_null, "n_null (the p-value needs a null distribution; e.g. 200)")
    for name, value in (("derived_at", derived_at), ("independent_below", independent_below), ("alpha", alpha)):
        if not 0 <= finite_number(value, name) <= 1:
            raise FuncnetError(f"{name} should be between 0 and 1, got {value}")
    if independent_below > derived_at:
        raise FuncnetError(f"independent_below ({independent_below}) should not exceed derived_at ({derived_at})")
    check_processing(victim, suspect)
    # every product here is small (words x networks): one BLAS thread avoids spin-wait stalls under load
    with threadpool_limits(1):
        return _compare(victim, suspect, top_m=top_m, n_null=n_null, random_state=random_state,
                        derived_at=derived_at, independent_below=independent_below, alpha=alpha)


def check_processing(victim: Fingerprint, suspect: Fingerprint) -> None:
    """Refuse to compare a fingerprint recorded on processed weights with one recorded on raw weights.

    The residual stream differs between a TransformerBridge in compatibility mode (HookedTransformer's
    processing) and one on the Hugging Face weights as they are, so the two must be recorded the same way.
    Fingerprints saved before this was recorded count as processed (every model was a HookedTransformer).
    """
    a, b = (f.model.get("weights", "processed") for f in (victim, suspect))
    if a != b:
        raise FuncnetError(
            f"the victim's fingerprint was recorded on {a} weights ({victim.model.get('class', '?')}) and the "
            f"suspect's on {b} weights ({suspect.model.get('class', '?')}); record both the same way: a "
            f"TransformerBridge in compatibility mode matches a HookedTransformer "
            f"(models.load(name, backend='bridge', compatibility=True) or bridge.enable_compatibility_mode())")


def _compare(victim: Fingerprint, suspect: Fingerprint, *, top_m: int, n_null: int, random_state: int | None,
             derived_at: float, independent_below: float, alpha: float) -> Comparison:
    segs = shared_segments(victim, suspect)
    rho = np.mean([np.abs(a.T @ b) for a, b in segs], 0)
    score, pairs, vals = _score(rho, top_m)
    rng = numpy_generator(random_state)
    null = np.empty(n_null)
    for k in range(n_null):
        mats = []
        for a, b in segs:
            n = len(b)
            shift = int(rng.integers(max(1, n // 10), max(2, n - n // 10)))
            mats.append(np.abs(a.T @ np.roll(b, shift, 0)))
        null[k] = _score(np.mean(mats, 0), top_m)[0]
    p = float((1 + (null >= score).sum()) / (1 + n_null))
    q99 = float(np.quantile(null, 0.99))
    verdict = verdict_of(score, p, derived_at=derived_at, independent_below=independent_below, alpha=alpha)
    return Comparison(
        score=score, p_value=p, margin=score - q99, verdict=verdict, top1=float(vals[0]),
        mean_matched=float(vals.mean()), null_mean=float(null.mean()), null_q99=q99,
        n_texts=len(segs), n_segments=int(sum(len(a) for a, _ in segs)),
        pairs=[(int(r), int(c), float(v)) for (r, c), v in zip(pairs, vals)], rho=rho,
        settings={"top_m": top_m, "n_null": n_null, "random_state": random_state, "derived_at": derived_at,
                  "independent_below": independent_below, "alpha": alpha, "segments": "whitespace words",
                  "correlation": "|spearman|", "null": "circular shift per text"})


__all__ = ["compare", "Comparison", "verdict_of", "word_spans", "segment_means", "shared_segments",
           "DERIVED_AT", "INDEPENDENT_BELOW", "ALPHA", "TOP_M"]
