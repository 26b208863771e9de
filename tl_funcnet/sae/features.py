"""SAE feature activations over a corpus as an :class:`~tl_funcnet.activations.Activations` object.

This is what lets the rest of tl_funcnet run on feature space, e.g.
``FunctionalNetworks(8).fit(collect_features(model, sae, "calibration"))``.
"""

from __future__ import annotations

from typing import Any

import torch

from ..activations.forward import is_encoder, run_batches
from ..activations.store import Activations
from ..activations.tokens import tokenize
from ..errors import FuncnetError
from ..hooks.sites import site_layer
from .builders import _site, capture_features
from .params import sae_params


def feature_site(site: str) -> str:
    """The name collected feature activations go under: ``f"{site}.hook_sae_acts_post"`` (sae-lens's name)."""
    return f"{site}.hook_sae_acts_post"


@torch.no_grad()
def collect_features(model: Any, sae: Any, texts: Any, *, site: str | None = None, batch_size: int = 8,
                     max_tokens_per_seq: int | None = 128, dtype: torch.dtype = torch.float32) -> Activations:
    """Run ``texts`` through ``model`` and keep the SAE's ``feature_acts`` of every real token, in corpus order.

    The returned object has one site, :func:`feature_site` of the SAE's site, with ``d_sae`` units. Only
    the layers up to the site run when the model supports ``stop_at_layer``.
    """
    p = sae_params(sae)
    site = _site(p, site)
    seqs = tokenize(model, texts, max_tokens_per_seq=max_tokens_per_seq)
    store: dict[str, Any] = {}
    iv = capture_features(p, store, site=site, key="f")
    layer = site_layer(site)
    stop = {"stop_at_layer": layer + 1} if layer is not None and hasattr(model, "blocks") and \
        not is_encoder(model) else {}
    per_seq: list[torch.Tensor | None] = [None] * len(seqs)
    for batch, _ in run_batches(model, seqs, batch_size=batch_size, intervention=iv, **stop):
        f = store.pop("f").to("cpu", dtype)
        for row, i in enumerate(batch.index):
            per_seq[i] = f[row, : len(seqs[i])]
    if not seqs:
        raise FuncnetError("no texts to collect features on")
    lengths = torch.tensor([len(s) for s in seqs])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    name = feature_site(site)
    return Activations({name: torch.cat(per_seq)}, torch.cat(seqs), offsets, sites=[name])  # type: ignore[arg-type]


__all__ = ["collect_features", "feature_site"]
