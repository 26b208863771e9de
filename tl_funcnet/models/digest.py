"""A model's identity as a short hash: its class, config and a digest of every weight.

Cheap enough to compute before each resumable run (one pass of sums over the parameters, plus a fixed
strided sample of their values): any fine-tune, prune or other edit of the weights changes it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import torch
from torch import Tensor

_SAMPLES = 4096  # values sampled per parameter, evenly strided


def _plain(value: Any) -> Any:
    """A config value by what it is, not how it is typed: numpy scalars (TransformerLens computes some fields
    with numpy) equal the Python numbers a saved config is read back as."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)  # dtypes, devices, callables


def _config_text(model: Any) -> str:
    cfg = getattr(model, "cfg", None)
    raw = cfg.to_dict() if hasattr(cfg, "to_dict") else {}
    return json.dumps({str(k): _plain(v) for k, v in sorted(raw.items())
                       if k not in ("device", "n_devices", "init_weights", "seed")})


def weights_processing(model: Any) -> str:
    """``"processed"`` (a HookedTransformer, or a TransformerBridge in compatibility mode: folded norms, centred
    writing weights) or ``"raw"`` (a bridge on the Hugging Face weights as they are)."""
    from ..hooks.names import is_bridge

    return "raw" if is_bridge(model) and not getattr(model, "compatibility_mode", False) else "processed"


_INT_OF_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bit_sums(flat: Tensor) -> Tensor:
    """Sums of the values' bit patterns as integers (low and high 32 bits apart, so nothing overflows): exact,
    so the same on any thread count or device, and any changed value changes them."""
    ints = flat.contiguous().view(_INT_OF_SIZE[flat.element_size()]).to(torch.int64)
    return torch.stack([(ints & 0xFFFFFFFF).sum(), (ints >> 32).sum()]).cpu()


@torch.no_grad()
def model_digest(model: Any) -> str:
    """SHA-256 (hex) of the model class, config, parameter names/shapes/dtypes, exact sums of their bit patterns
    and a value sample; the same whatever torch's thread count."""
    h = hashlib.sha256()
    h.update(type(model).__name__.encode())
    h.update(_config_text(model).encode())
    h.update(f"compatibility_mode={weights_processing(model)}".encode())
    for name, p in model.named_parameters():
        flat = p.detach().reshape(-1)
        h.update(f"{name}|{tuple(p.shape)}|{p.dtype}|".encode())
        if flat.numel():
            step = max(1, flat.numel() // _SAMPLES)
            sample = flat[::step].to("cpu", torch.float64)
            h.update(sample.numpy().tobytes())
            h.update(_bit_sums(flat).numpy().tobytes())
    return h.hexdigest()


__all__ = ["model_digest", "weights_processing"]
