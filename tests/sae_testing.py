"""Random sae-lens SAEs (no training, no downloads) for the adapter tests."""

from __future__ import annotations

import torch


def make_sae(architecture: str = "standard", d_in: int = 16, d_sae: int = 48, *, hook_name: str = "",
             seed: int = 0, **cfg_kwargs):
    """A sae-lens inference SAE of ``architecture`` with random weights and non-trivial biases/thresholds."""
    from sae_lens.registry import get_sae_class

    from tl_funcnet.sae import require_sae_lens

    require_sae_lens()  # registers tl_funcnet's own architectures (top-AFA)
    sae_cls, cfg_cls = get_sae_class(architecture)
    cfg = cfg_cls(d_in=d_in, d_sae=d_sae, **cfg_kwargs)
    cfg.metadata.hook_name = hook_name or None
    torch.manual_seed(seed)
    sae = sae_cls(cfg)
    with torch.no_grad():
        for name, param in sae.named_parameters():
            if name in ("W_enc", "W_dec"):
                param.copy_(torch.randn_like(param) * 0.4)
            elif name == "threshold":
                param.copy_(torch.rand_like(param) * 0.3)
            else:
                param.copy_(torch.randn_like(param) * 0.1)
    return sae.eval()
