"""The ``steer_gen`` op: add a vector on prompt or generated positions, also during KV-cached generation.

TransformerLens's ``generate(use_past_kv_cache=True)`` runs the whole prompt once (``pos = prompt_len``)
and then one token per step (``pos = 1``); without the cache every step re-runs the full sequence. A
plain position mask cannot tell these apart, so the hook function keeps a little state: the absolute
position of the first row of each call.

Rule per call with ``n`` positions (state: ``offset`` = absolute positions seen so far):

- the first call of a freshly built hook function is a full pass from position 0; if ``prompt_len``
  was not given it is learned there (``prompt_len = n``);
- a later call with ``n == 1`` is a cached step at position ``offset``;
- any other call is a full pass from position 0 (a no-cache generation step, or a new forward).

Hook functions are built anew for each ``Intervention.applied`` block, so the state never outlives one
block. Ambiguity left: inside one block, a new 1-token forward after a generation is read as a cached
step; use one block per ``generate`` call (:func:`tl_funcnet.steering.generate` does).

Modes (absolute positions ``t``): ``"prompt"`` ``t < prompt_len``; ``"generated"`` ``t >= prompt_len``;
``"from_last"`` ``t >= prompt_len - 1`` (the last prompt token and every generated token, i.e. every
position the model predicts a new token from; for one forward pass: the last position only). Every position
is the core ``add`` op with ``pos=None``.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import FuncnetError, ShapeError
from ..hooks.registry import HookFn, register_op
from ..hooks.sites import site_shape
from ..hooks.values import finite_number, positive_int, real_tensor

GEN_MODES = ("prompt", "generated", "from_last")


def _p_steer_gen(p: dict[str, Any]) -> dict[str, Any]:
    if p.get("mode") not in GEN_MODES:
        raise FuncnetError(f"mode should be one of {GEN_MODES}, got {p.get('mode')!r}")
    if p.get("prompt_len") is not None:
        p["prompt_len"] = positive_int(p["prompt_len"], "prompt_len (or None: learned from the first call)")
    vec = real_tensor(p.get("vector"), "vector")
    if vec.ndim != 1:
        raise ShapeError(f"vector should be 1-D, got shape {tuple(vec.shape)}")
    p["vector"] = vec
    if "scale" in p:
        p["scale"] = finite_number(p["scale"], "scale")
    return p


def _v_steer_gen(model: Any, site: str, p: Mapping[str, Any]) -> None:
    vec = p["vector"]
    shape = site_shape(model, site)
    if shape is not None and (len(shape) != 1 or vec.shape[0] != shape[0]):
        raise ShapeError(f"vector has width {vec.shape[0]}, but site {site!r} has trailing shape {shape}; "
                         f"build the vector at a site of the same width")


@register_op("steer_gen", prepare=_p_steer_gen, validate=_v_steer_gen)
def steer_gen_op(vector: Tensor, mode: str, scale: float = 1.0, prompt_len: int | None = None) -> HookFn:
    """``act + scale * vector`` on the positions ``mode`` selects, tracking absolute positions across calls."""
    state: dict[str, Any] = {"started": False, "offset": 0, "plen": prompt_len}
    cache: dict[tuple[Any, Any], Tensor] = {}

    def locate(n: int) -> int:
        """Absolute position of this call's first row; updates the state."""
        if state["started"] and n == 1:
            start = state["offset"]
        else:
            if prompt_len is None and (not state["started"] or n != state["offset"] + 1):
                state["plen"] = n  # a new pass: learn its prompt length
            start = 0
        state["started"] = True
        state["offset"] = start + n
        return start

    def hook_fn(act: Float[Tensor, "batch pos d"], hook: Any = None) -> Float[Tensor, "batch pos d"]:
        key = (act.device, act.dtype)
        if key not in cache:
            cache[key] = (vector.detach().to(device=act.device, dtype=act.dtype) * scale)
        delta = cache[key]
        start = locate(act.shape[1])
        t = torch.arange(start, start + act.shape[1], device=act.device)
        plen = state["plen"]
        if mode == "prompt":
            sel = t < plen
        elif mode == "generated":
            sel = t >= plen
        else:
            sel = t >= plen - 1
        return act + sel.to(act.dtype)[None, :, None] * delta

    return hook_fn


__all__ = ["steer_gen_op", "GEN_MODES"]
