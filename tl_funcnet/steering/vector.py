"""The :class:`SteeringVector` value object and its conversion to an :class:`Intervention`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from .._rng import generator
from ..errors import FuncnetError, ShapeError
from ..hooks import Hook, Intervention
from ..hooks.sites import resolve_sites, site_layer, site_shape
from ..hooks.values import finite_number, index_list
from . import ops as _ops  # noqa: F401  (registers "steer_gen")
from .ops import GEN_MODES


@dataclass(frozen=True, eq=False)
class SteeringVector:
    """A direction to add to the activation at ``site``.

    Attributes:
        vector: ``(d,)`` the raw vector (its norm carries the builder's natural scale, e.g. the size of the
            mean difference).
        site: TransformerLens hook name it was read at (and is applied to by default).
        provenance: how it was built (method, layer, counts, options); JSON-able values.
    """

    vector: Float[Tensor, "d"]
    site: str
    provenance: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        v = self.vector
        if not isinstance(v, Tensor) or v.ndim != 1 or v.numel() == 0:
            raise ShapeError(f"a steering vector should be a non-empty 1-D tensor, got "
                             f"{getattr(v, 'shape', type(v).__name__)!r}")
        if not torch.isfinite(v).all():
            raise FuncnetError("the steering vector holds NaN or inf; check the activations it was built from")
        object.__setattr__(self, "vector", v.detach().to(torch.float32).cpu())
        object.__setattr__(self, "provenance", dict(self.provenance))

    def __repr__(self) -> str:
        method = self.provenance.get("method", "?")
        return f"SteeringVector({method} at {self.site!r}, d={self.d}, norm={self.norm:.4g})"

    @property
    def d(self) -> int:
        return int(self.vector.shape[0])

    @property
    def norm(self) -> float:
        return float(self.vector.norm())

    @property
    def layer(self) -> int | None:
        return site_layer(self.site)

    @property
    def unit(self) -> Float[Tensor, "d"]:
        """The vector scaled to unit norm (a zero vector stays zero)."""
        n = self.norm
        return self.vector / n if n > 0 else self.vector.clone()

    def cosine(self, other: "SteeringVector | Tensor") -> float:
        """Cosine similarity with another vector of the same width."""
        o = other.vector if isinstance(other, SteeringVector) else other
        if o.shape != self.vector.shape:
            raise ShapeError(f"cannot compare a vector of shape {tuple(o.shape)} with one of shape ({self.d},)")
        return float(torch.nn.functional.cosine_similarity(self.vector, o.float().cpu(), dim=0))

    def scaled(self, factor: float) -> "SteeringVector":
        """The same direction and provenance, with the vector multiplied by ``factor``."""
        return replace(self, vector=self.vector * factor)

    def to_intervention(self, scale: float = 1.0, pos: Any = None, *, normalize: bool = False,
                        layers: int | Sequence[int] | None = None, prompt_len: int | None = None,
                        model: Any = None) -> Intervention:
        """Add ``scale * v`` (``v`` = the raw vector, or its unit direction with ``normalize``).

        Args:
            scale: multiplier.
            pos: ``None`` (every position), any position of the core ops (an int, a list, ``"last"``: the
                last position of each forward, a slice, a per-row tensor), or a generation-aware mode
                ``"prompt"``, ``"generated"`` or ``"from_last"`` (the last prompt token and every generated
                one), which track positions across KV-cached generation steps (see :mod:`.ops`).
            normalize: use the unit direction instead of the raw vector.
            layers: apply at these layers instead of the vector's own site (the same hook in other blocks);
                the vector's width must fit.
            prompt_len: prompt length for the generation-aware modes (default: learned from the first
                forward pass inside the ``applied`` block).
            model: optional; if given, sites and widths are checked now rather than at attach time.
        """
        scale = finite_number(scale, "scale")
        if not isinstance(normalize, bool):
            raise FuncnetError(f"normalize should be True or False, got {normalize!r}")
        vec = self.unit if normalize else self.vector
        sites = self._sites(layers, model)
        hooks = []
        for s in sites:
            if isinstance(pos, str) and pos in GEN_MODES:
                extra = {"prompt_len": prompt_len} if prompt_len is not None else {}
                hooks.append(Hook(s, "steer_gen", {"vector": vec, "scale": scale, "mode": pos, **extra}))
            else:
                if isinstance(pos, str) and pos != "last":
                    hint = " (every position is pos=None)" if pos == "all" else ""
                    raise FuncnetError(f"pos should be None (every position), a position spec (an int, a list, "
                                       f"'last', {{'slice': [...]}}, an int tensor) or one of {GEN_MODES}; got "
                                       f"{pos!r}{hint}")
                hooks.append(Hook(s, "add", {"vector": vec, "scale": scale, **({"pos": pos} if pos is not None else {})}))
        iv = Intervention(tuple(hooks))
        if model is not None:
            iv.validate(model)
        return iv

    def _sites(self, layers: int | Sequence[int] | None, model: Any) -> list[str]:
        if layers is None:
            sites = [self.site]
        else:
            chosen = index_list([layers] if isinstance(layers, int) and not isinstance(layers, bool) else layers,
                                "layers")
            if not chosen:
                raise FuncnetError("layers is empty; pass one or more layer indices, or None for the vector's site")
            template = re.sub(r"^blocks\.\d+\.", "blocks.{layer}.", self.site)
            if "{layer}" not in template:
                raise FuncnetError(f"the vector's site {self.site!r} is not per-layer, so layers= cannot move it")
            sites = resolve_sites(model, template, chosen) if model is not None else \
                [template.format(layer=l) for l in chosen]
        if model is not None:
            for s in sites:
                shape = site_shape(model, s)
                if shape is not None and shape != (self.d,):
                    raise ShapeError(f"the steering vector has width {self.d}, but site {s!r} has trailing "
                                     f"shape {shape}; build the vector at a site of that width")
        return sites

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the vector as a list of floats)."""
        return {"format": "tl_funcnet.steering_vector", "version": 1, "site": self.site,
                "provenance": dict(self.provenance), "vector": self.vector.tolist()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SteeringVector":
        if not isinstance(data, Mapping) or data.get("format") != "tl_funcnet.steering_vector":
            raise FuncnetError("not a tl_funcnet steering vector (expected the output of SteeringVector.to_dict)")
        return cls(torch.tensor(data["vector"], dtype=torch.float32), data["site"], data.get("provenance", {}))


def random_like(sv: SteeringVector, *, random_state: int | None = 0) -> SteeringVector:
    """A Gaussian random direction with the same norm and site (the usual control for steering)."""
    r = torch.randn(sv.d, generator=generator(random_state))
    r = r / r.norm() * sv.norm
    return SteeringVector(r, sv.site, {"method": "random", "random_state": random_state,
                                       "matched_to": dict(sv.provenance)})


__all__ = ["SteeringVector", "random_like"]
