"""Top-AFA activation (Lee, Davies, Canby, Hockenmaier, arXiv 2503.24277): a per-token number of active latents.

When decoder atoms are quasi-orthogonal, the unit-atom coefficients ``g`` of a reconstruction have about the
norm of the input they reconstruct (approximate feature activation, AFA: ``‖g‖₂ ≈ ‖x - b_dec‖₂``). Top-AFA
keeps the largest coefficients, as many as bring their joint L2 norm closest to that target, so a token with
a large input norm gets more active latents than a small one and no ``k`` is tuned. Ties go to the smaller
set; at least one latent stays (the paper's rule); a token whose coefficients are all zero keeps none.

The sae-lens classes that train and load top-AFA SAEs are in :mod:`tl_funcnet.sae.lens_topafa`; this module
needs only torch, so the adapters run top-AFA SAEs without sae-lens.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float
from torch import Tensor


@torch.no_grad()
def top_afa(coefficients: Float[Tensor, "... d_sae"], target_norm: Float[Tensor, "..."]) -> Bool[Tensor, "... d_sae"]:
    """Which latents stay active: the largest non-negative ``coefficients`` (unit-atom scale), as many as
    bring their L2 norm closest to ``target_norm``."""
    g = coefficients.detach().float().clamp_min(0)
    ordered, order = g.sort(dim=-1, descending=True)
    running_norm = (ordered * ordered).cumsum(dim=-1).sqrt()  # non-decreasing, also after rounding
    target = target_norm.detach().to(running_norm).unsqueeze(-1)
    # the best count is the longest prefix still short of the target or the next one, whichever is closer
    short = torch.searchsorted(running_norm.contiguous(), target.contiguous()).clamp(1, g.shape[-1])
    over = (short + 1).clamp(max=g.shape[-1])
    below = running_norm.gather(-1, short - 1)
    above = running_norm.gather(-1, over - 1)
    n_active = torch.where((above - target).abs() < (target - below).abs(), over, short)
    rank = torch.arange(g.shape[-1], device=g.device)
    keep = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, order, rank < n_active)
    return keep & (g > 0)


__all__ = ["top_afa"]
