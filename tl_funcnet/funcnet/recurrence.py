"""Do networks recur? Fit on disjoint subsets of texts and match networks by spatial overlap."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Float

from ..activations import Activations
from .._rng import numpy_generator
from ..errors import FuncnetError
from .networks import FunctionalNetworks


def iou_matrix(a: torch.Tensor, b: torch.Tensor) -> Float[np.ndarray, "n_a n_b"]:
    """Intersection over union between every pair of boolean network masks."""
    a, b = a.float(), b.float()
    inter = a @ b.T
    union = a.sum(1, keepdim=True) + b.sum(1)[None] - inter
    return (inter / union.clamp_min(1)).numpy()


def map_correlation(a: torch.Tensor, b: torch.Tensor) -> Float[np.ndarray, "n_a n_b"]:
    """Pearson correlation between every pair of z-scored maps."""
    a = (a - a.mean(1, keepdim=True)) / a.std(1, keepdim=True).clamp_min(1e-12)
    b = (b - b.mean(1, keepdim=True)) / b.std(1, keepdim=True).clamp_min(1e-12)
    return ((a.double() @ b.double().T) / (a.shape[1] - 1)).numpy()


def subset(acts: Activations, seq_ids: list[int]) -> Activations:
    """The rows of ``acts`` that belong to the given sequences."""
    rows = np.concatenate([np.arange(int(acts.offsets[i]), int(acts.offsets[i + 1])) for i in seq_ids])
    lengths = torch.tensor([int(acts.offsets[i + 1] - acts.offsets[i]) for i in seq_ids])
    offsets = torch.zeros(len(seq_ids) + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(lengths, 0)
    data = {s: acts[s][torch.from_numpy(rows)] for s in acts.sites}
    return Activations(data, acts.token_ids[torch.from_numpy(rows)], offsets, acts.sites)


@dataclass
class RecurrenceReport:
    """How often each reference network reappears in fits on disjoint subsets."""

    similarity: str
    min_similarity: float
    best_match: np.ndarray  # (n_splits, n_networks) best matched similarity per split
    recurrence: np.ndarray  # (n_networks,) fraction of splits where the match passes min_similarity
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"similarity": self.similarity, "min_similarity": self.min_similarity,
                "recurrence": self.recurrence.tolist(), "mean_recurrence": float(self.recurrence.mean()),
                "best_match": self.best_match.tolist(), **self.details}


def recurrence(acts: Activations, n_splits: int = 2, *, similarity: str = "correlation",
               min_similarity: float | None = None, random_state: int | None = 0,
               networks: FunctionalNetworks | None = None) -> RecurrenceReport:
    """Fit networks on ``n_splits`` disjoint sets of sequences and match each to the networks of the first.

    Matching is a Hungarian assignment on ``similarity`` (``"correlation"`` of z-maps, or ``"iou"`` of the
    thresholded unit sets). A network recurs in a split when its matched similarity reaches
    ``min_similarity`` (default 0.5 for correlation, 0.2 for IoU). ``networks`` (unfitted) gives the settings
    of every fit (default ``FunctionalNetworks()``); ``random_state`` shuffles the sequences into splits.
    """
    from scipy.optimize import linear_sum_assignment

    if similarity not in ("correlation", "iou"):
        raise FuncnetError(f"similarity should be 'correlation' or 'iou', got {similarity!r}")
    template = networks if networks is not None else FunctionalNetworks()
    if not isinstance(template, FunctionalNetworks):
        raise FuncnetError(f"networks should be a FunctionalNetworks (its settings are reused), got "
                           f"{type(template).__name__}")
    if isinstance(n_splits, bool) or not isinstance(n_splits, int) or n_splits < 2 or acts.n_sequences < n_splits:
        raise FuncnetError(f"need n_splits >= 2 and at least one sequence per split; got n_splits={n_splits} "
                           f"for {acts.n_sequences} sequences")
    thr = min_similarity if min_similarity is not None else (0.5 if similarity == "correlation" else 0.2)
    order = numpy_generator(random_state).permutation(acts.n_sequences)
    parts = [sorted(p.tolist()) for p in np.array_split(order, n_splits)]
    settings = template._params()
    fits = [FunctionalNetworks(**settings).fit(subset(acts, p)) for p in parts]
    ref = fits[0]
    best = np.zeros((n_splits - 1, ref.n_networks_total))
    for j, other in enumerate(fits[1:]):
        sim = (map_correlation(ref.maps_, other.maps_) if similarity == "correlation"
               else iou_matrix(ref.masks_, other.masks_))
        rows, cols = linear_sum_assignment(-np.abs(sim) if similarity == "correlation" else -sim)
        best[j, rows] = np.abs(sim[rows, cols]) if similarity == "correlation" else sim[rows, cols]
    return RecurrenceReport(similarity, thr, best, (best >= thr).mean(0),
                            {"n_splits": n_splits, "split_sizes": [len(p) for p in parts]})


__all__ = ["recurrence", "RecurrenceReport", "iou_matrix", "map_correlation", "subset"]
