"""Builders that turn a sae-lens SAE into :class:`~tl_funcnet.hooks.Intervention` values.

Every builder takes a sae-lens SAE (or a dict from :func:`~tl_funcnet.sae.params.sae_params`, which is
cheaper when building many interventions from one SAE) and an optional ``site``; the default site is the
SAE's own ``hook_name``. Nothing touches a model until ``.applied(model)``.

>>> iv = ablate_features(sae, [123]) + steer("blocks.6.hook_resid_post", v)
>>> with iv.applied(model):
...     logits = model(tokens)
"""

from __future__ import annotations

import numbers
from typing import Any, MutableMapping, Sequence

import numpy as np

from ..errors import FuncnetError
from ..hooks.intervention import Hook, Intervention
from .params import SAEParams, sae_params

Features = Sequence[int] | Any  # a list of ints or an int tensor


def _site(p: SAEParams, site: str | None) -> str:
    site = site or p.get("hook_name") or ""
    if not site:
        raise FuncnetError("the SAE's config has no hook_name (cfg.metadata.hook_name); pass site='blocks.L....'")
    return site


def _features(features: Features) -> Any:
    """One int as ``[int]``; tensors and arrays as lists. The ``sae_edit`` op checks the indices (integers only,
    never rounded, in ``0..d_sae-1``) when the Hook is made."""
    if isinstance(features, numbers.Integral) and not isinstance(features, (bool, np.bool_)):
        return [int(features)]
    return features.tolist() if hasattr(features, "tolist") else features


def _values(values: Any) -> Any:
    """Values as plain numbers (tensors and arrays become lists); the ``sae_edit`` op checks them."""
    return values.tolist() if hasattr(values, "tolist") else values


def edit_features(sae: Any, edits: Sequence[dict[str, Any]], *, site: str | None = None,
                  use_error_term: bool = True, pos: Any = None) -> Intervention:
    """One ``sae_edit`` hook applying ``edits`` in order (see :mod:`tl_funcnet.sae.ops` for the edit dicts).

    With ``use_error_term`` (default) the SAE's reconstruction error is added back, so only the edit
    changes the activation. ``pos`` restricts the whole op to some positions (as in the core ops).
    """
    p = sae_params(sae)
    params: dict[str, Any] = {"sae": p, "edits": edits, "use_error_term": use_error_term}  # checked by the op
    if pos is not None:
        params["pos"] = pos
    return Intervention((Hook(_site(p, site), "sae_edit", params),))


def splice(sae: Any, *, site: str | None = None, use_error_term: bool = False, pos: Any = None) -> Intervention:
    """Replace the activation by the SAE's reconstruction (with the error term: by itself, exactly)."""
    return edit_features(sae, [], site=site, use_error_term=use_error_term, pos=pos)


def ablate_features(sae: Any, features: Features, *, site: str | None = None, use_error_term: bool = True,
                    pos: Any = None) -> Intervention:
    """Zero the given features' activations."""
    return edit_features(sae, [{"kind": "ablate", "features": _features(features)}], site=site,
                         use_error_term=use_error_term, pos=pos)


def set_features(sae: Any, features: Features, values: Any, *, site: str | None = None,
                 use_error_term: bool = True, pos: Any = None) -> Intervention:
    """Set the given features' activations to ``values`` (one number, or one per feature)."""
    return edit_features(sae, [{"kind": "set", "features": _features(features), "values": _values(values)}],
                         site=site, use_error_term=use_error_term, pos=pos)


def steer_features(sae: Any, features: Features, values: Any, *, site: str | None = None,
                   use_error_term: bool = True, pos: Any = None) -> Intervention:
    """Add ``values`` to the given features' activations (moves the activation along their decoder atoms)."""
    return edit_features(sae, [{"kind": "add", "features": _features(features), "values": _values(values)}],
                         site=site, use_error_term=use_error_term, pos=pos)


def scale_features(sae: Any, features: Features, factor: Any, *, site: str | None = None,
                   use_error_term: bool = True, pos: Any = None) -> Intervention:
    """Multiply the given features' activations by ``factor``."""
    return edit_features(sae, [{"kind": "scale", "features": _features(features), "values": _values(factor)}],
                         site=site, use_error_term=use_error_term, pos=pos)


def clamp_features(sae: Any, features: Features, *, min: float | None = None, max: float | None = None,  # noqa: A002
                   site: str | None = None, use_error_term: bool = True, pos: Any = None) -> Intervention:
    """Clamp the given features' activations into ``[min, max]``."""
    edit: dict[str, Any] = {"kind": "clamp", "features": _features(features)}
    if min is not None:
        edit["min"] = _values(min)
    if max is not None:
        edit["max"] = _values(max)
    return edit_features(sae, [edit], site=site, use_error_term=use_error_term, pos=pos)


def capture_features(sae: Any, store: MutableMapping[str, Any], *, site: str | None = None,
                     key: str | None = None, append: bool = False) -> Intervention:
    """Copy the SAE's ``feature_acts`` (batch, pos, d_sae) at the site into ``store`` (a dict you own).

    The key defaults to ``f"{site}.hook_sae_acts_post"`` (sae-lens's name); ``append=True`` keeps a list
    across forward passes. Capture only reads, so it joins interventions at other sites with ``|``; chain
    it after an edit at the same site with ``+`` to see the edited activation re-encoded. It holds your dict and so cannot be saved.
    """
    p = sae_params(sae)
    params = {"sae": p, "store": store, "append": append}
    if key is not None:
        params["key"] = key
    return Intervention((Hook(_site(p, site), "sae_capture", params),))


__all__ = ["edit_features", "splice", "ablate_features", "set_features", "steer_features", "scale_features",
           "clamp_features", "capture_features"]
