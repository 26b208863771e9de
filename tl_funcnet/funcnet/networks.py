"""Functional networks: ICA over unit activity, z-scored spatial maps, thresholded into unit sets.

Temporal ICA, as in fMRI group ICA: tokens are samples, units are features; the spatial map of
component ``c`` is column ``c`` of ``mixing_``, z-scored across units; the network is the set of units whose
z-score passes the threshold. Each map is flipped so that its largest-|loading| unit is positive, which
makes one-sided thresholds independent of ICA's arbitrary signs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from .._rng import generator
from ..activations import Activations
from ..errors import FuncnetError, NotFittedError, ShapeError
from ..hooks import Intervention, ablate, add, keep_only, scale
from ..hooks.sites import site_layer
from ..hooks.values import finite_number, index_list, positive_int

METHODS = ("ica", "snmf")  # the decompositions FunctionalNetworks can fit
SCOPES = ("joint", "per_layer", "window")
MODES = ("mask", "preserve", "amplify")
CONTROLS = ("per_layer", "global", "top_variance", "variance_matched")
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class Block:
    """One ICA fit: which sites (a contiguous run of ``sites_``) and which rows of ``maps_`` it produced."""

    sites: tuple[str, ...]
    networks: tuple[int, int]  # [start, stop) rows of maps_


class FunctionalNetworks:
    """Fit functional networks from collected activations and turn them into interventions.

    Args:
        n_networks: components per fit (per layer with ``scope="per_layer"``, per window with ``"window"``).
        method: ``"ica"`` (:class:`~tl_funcnet.funcnet.FastICA`, the papers') or ``"snmf"``
            (:class:`~tl_funcnet.funcnet.SNMF`: non-negative token coefficients, loadings kept sparse by
            winner-take-all with ``sparsity`` the fraction of units each component keeps).
        threshold: z-score a unit's loading must reach to join a network (papers: 3.6).
        sides: ``"one"`` keeps units with ``z >= threshold``; ``"two"`` keeps ``|z| >= threshold``.
        scope: ``"joint"`` (one ICA over all sites), ``"per_layer"`` (one per site) or ``"window"``
            (sliding windows of ``window`` consecutive sites).
        standardize: z-score each unit over tokens before ICA (as the pruning paper's CanICA does).
        fun, max_iter, tol, random_state, dtype: passed to :class:`~tl_funcnet.funcnet.ica.FastICA` or
            :class:`~tl_funcnet.funcnet.SNMF` (``fun`` is ICA's only; ``dtype`` "float32" or "float64").

    Fitted attributes: ``sites_``, ``widths_``, ``maps_`` (n_networks_total × n_units, z-scored, each flipped so
    its largest-magnitude loading is positive), ``masks_`` (bool, same shape), ``sources_`` (n_samples ×
    n_networks_total, training time courses; for SNMF the non-negative coefficients, never flipped),
    ``unit_mean_``, ``unit_std_``, ``blocks_``, ``converged_`` (False if an ICA stopped at max_iter).
    """

    def __init__(self, n_networks: int = 10, *, threshold: float = 3.6, sides: str = "one", scope: str = "joint",
                 window: int = 3, standardize: bool = False, fun: str = "logcosh", max_iter: int = 200,
                 tol: float = 1e-4, random_state: int | None = 0, dtype: str = "float32", method: str = "ica",
                 sparsity: float = 0.01):
        self.n_networks = n_networks
        self.method = method
        self.sparsity = sparsity
        self.threshold = threshold
        self.sides = sides
        self.scope = scope
        self.window = window
        self.standardize = standardize
        self.fun = fun
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.dtype = dtype

    # ------------------------------------------------------------------ fitting

    def _check_params(self, n_sites: int) -> None:
        if self.method not in METHODS:
            raise FuncnetError(f"method should be one of {list(METHODS)}, got {self.method!r}")
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)) or not 0 < self.sparsity <= 1:
            raise FuncnetError(f"sparsity should be the fraction of units an SNMF component keeps, in (0, 1], got "
                               f"{self.sparsity!r}")
        if self.sides not in ("one", "two"):
            raise FuncnetError(f"sides should be 'one' or 'two', got {self.sides!r}")
        if self.scope not in SCOPES:
            raise FuncnetError(f"scope should be one of {SCOPES}, got {self.scope!r}")
        if finite_number(self.threshold, "threshold") <= 0:
            raise FuncnetError(f"threshold should be a positive z-score such as 3.6, got {self.threshold!r}")
        positive_int(self.n_networks, "n_networks")
        if not isinstance(self.standardize, bool):
            raise FuncnetError(f"standardize should be True or False, got {self.standardize!r}")
        if str(self.dtype).removeprefix("torch.") not in _DTYPES:
            raise FuncnetError(f"dtype should be 'float32' or 'float64', got {self.dtype!r}")
        if self.scope == "window" and not (isinstance(self.window, int) and 1 <= self.window <= n_sites):
            raise FuncnetError(f"window should be between 1 and the number of sites ({n_sites}), got {self.window}")

    def _validate(self, acts: Activations, sites: Sequence[str]) -> None:
        if not isinstance(acts, Activations):
            raise FuncnetError(f"fit() takes Activations (from tl_funcnet.activations.collect), got "
                               f"{type(acts).__name__}")
        self._check_params(len(sites))
        missing = [s for s in sites if s not in acts.sites]
        if missing:
            raise FuncnetError(f"sites {missing} were not collected; collected: {list(acts.sites)}")
        if acts.n_samples < 2:
            raise FuncnetError(f"need at least 2 tokens of activity, got {acts.n_samples}")

    def fit(self, acts: Activations, sites: Sequence[str] | None = None) -> "FunctionalNetworks":
        """Run ICA over ``acts`` (tokens of all texts concatenated: group ICA) and threshold the maps."""
        from .ica import FastICA
        from .snmf import SNMF

        sites = tuple(getattr(acts, "sites", ()) if sites is None else sites)
        self._validate(acts, sites)
        dtype = _DTYPES[str(self.dtype).removeprefix("torch.")]
        X = acts.matrix(sites, dtype=dtype)
        if not bool(torch.isfinite(X).all()):
            bad = int((~torch.isfinite(X)).sum())
            raise FuncnetError(f"the activations contain {bad} NaN or infinite values; check the model and "
                               f"inputs (e.g. fp16 overflow) before fitting networks")
        self.unit_mean_ = X.mean(0)
        self.unit_std_ = X.std(0)
        if self.standardize:
            X = (X - self.unit_mean_) / torch.where(self.unit_std_ > 1e-8, self.unit_std_, torch.ones_like(self.unit_std_))
        self.sites_ = sites
        self.widths_ = tuple(acts.width(s) for s in sites)
        offsets = np.concatenate([[0], np.cumsum(self.widths_)])
        groups = self._groups(len(sites))
        maps, sources, blocks, conv = [], [], [], True
        for g in groups:
            cols = slice(int(offsets[g[0]]), int(offsets[g[-1] + 1]))
            Xg = X[:, cols]
            rank_cap = min(Xg.shape)
            if self.n_networks > rank_cap:
                raise FuncnetError(f"n_networks={self.n_networks} exceeds what {Xg.shape[0]} tokens x "
                                   f"{Xg.shape[1]} units support (at most {rank_cap}); collect more tokens or "
                                   f"ask for fewer networks")
            if float(Xg.std(0).max()) == 0.0:
                raise FuncnetError(f"every unit of {sites[g[0]]!r}..{sites[g[-1]]!r} is constant over the tokens; "
                                   f"there is no activity to decompose")
            if self.method == "snmf":
                ica: Any = SNMF(self.n_networks, sparsity=self.sparsity, max_iter=self.max_iter, tol=self.tol,
                                random_state=self.random_state, dtype=str(dtype).removeprefix("torch."))
            else:
                ica = FastICA(self.n_networks, fun=self.fun, max_iter=self.max_iter, tol=self.tol,
                              random_state=self.random_state, dtype=str(dtype).removeprefix("torch."))
            S = ica._fit(Xg, warn=False)  # Xg is a tensor, so S is one
            conv = conv and ica.converged_
            full = torch.zeros(self.n_networks, X.shape[1], dtype=torch.float32)
            full[:, cols] = torch.from_numpy(ica.mixing_).T.float()
            # z-score within the fitted block only (units outside it are not part of this map)
            blk = full[:, cols]
            z = (blk - blk.mean(1, keepdim=True)) / blk.std(1, correction=0, keepdim=True).clamp_min(1e-12)
            flip = torch.sign(z.gather(1, z.abs().argmax(1, keepdim=True))).clamp(min=-1)
            flip[flip == 0] = 1
            full[:, cols] = z * flip
            start = sum(m.shape[0] for m in maps)
            maps.append(full)
            # ICA's sign is arbitrary, so a map and its time course flip together; SNMF's coefficients are the
            # non-negative activity of the component and keep their sign (only the map is sign-normalised)
            sources.append(S.float() if self.method == "snmf" else S.float() * flip.T)
            blocks.append(Block(tuple(sites[i] for i in g), (start, start + self.n_networks)))
        self.maps_ = torch.cat(maps)
        self.sources_ = torch.cat(sources, dim=1)
        self.blocks_ = tuple(blocks)
        self.converged_ = conv
        self.masks_ = self._threshold(self.maps_)
        return self

    def _groups(self, n_sites: int) -> list[list[int]]:
        if self.scope == "joint":
            return [list(range(n_sites))]
        if self.scope == "per_layer":
            return [[i] for i in range(n_sites)]
        return [list(range(s, s + self.window)) for s in range(n_sites - self.window + 1)]

    def _threshold(self, maps: Tensor) -> Bool[Tensor, "n_networks n_units"]:
        return maps >= self.threshold if self.sides == "one" else maps.abs() >= self.threshold

    def with_threshold(self, threshold: float, sides: str | None = None) -> "FunctionalNetworks":
        """A copy re-thresholded without refitting."""
        self._check()
        other = object.__new__(FunctionalNetworks)
        other.__dict__.update(self.__dict__)
        other.threshold = threshold
        other.sides = sides or self.sides
        other._check_params(len(self.sites_))
        other.masks_ = other._threshold(self.maps_)
        return other

    # ------------------------------------------------------------------ reading

    def _check(self) -> None:
        if not hasattr(self, "maps_"):
            raise NotFittedError("This FunctionalNetworks instance is not fitted yet. Call 'fit' with "
                                 "activations before using this method.")

    @property
    def n_networks_total(self) -> int:
        self._check()
        return int(self.maps_.shape[0])

    def network_ids(self, ids: Sequence[int] | None = None) -> list[int]:
        """``ids`` checked against the fitted networks (``None``: all of them)."""
        n = self.n_networks_total
        ids = list(range(n)) if ids is None else list(index_list(ids, "network ids"))
        bad = [i for i in ids if i >= n]
        if bad:
            raise FuncnetError(f"network ids {bad} are out of range; there are {n} networks (0..{n - 1})")
        return ids

    def union(self, ids: Sequence[int] | None = None) -> Bool[Tensor, "n_units"]:
        """Key units: the union of the selected networks (all by default)."""
        self._check()
        return self.masks_[self.network_ids(ids)].any(0)

    def site_units(self, mask: Bool[Tensor, "n_units"]) -> dict[str, Tensor]:
        """Split a mask over the concatenated units into unit indices per site."""
        self._check()
        out, start = {}, 0
        for s, w in zip(self.sites_, self.widths_):
            out[s] = mask[start:start + w].nonzero().flatten()
            start += w
        return out

    def networks(self, ids: Sequence[int] | None = None) -> list[dict[str, list[int]]]:
        """Each selected network as ``{site: [unit, ...]}`` (sites with no units omitted)."""
        return [{s: u.tolist() for s, u in self.site_units(self.masks_[i]).items() if len(u)}
                for i in self.network_ids(ids)]

    def per_site_counts(self, ids: Sequence[int] | None = None) -> dict[str, int]:
        """Number of key units per site in the union of the selected networks."""
        return {s: int(len(u)) for s, u in self.site_units(self.union(ids)).items()}

    def summary(self, ids: Sequence[int] | None = None) -> dict[str, Any]:
        u = self.union(ids)
        return {"n_networks": len(self.network_ids(ids)), "n_units": int(u.sum()), "total_units": int(u.numel()),
                "fraction": float(u.float().mean()), "per_site": self.per_site_counts(ids),
                "network_sizes": self.masks_[self.network_ids(ids)].sum(1).tolist(), "converged": self.converged_}

    def time_courses(self, acts: Activations | None = None, *, kind: str = "sources",
                     ids: Sequence[int] | None = None) -> Float[Tensor, "n_samples n_networks"]:
        """Network activity per token.

        ``kind``: ``"sources"``, the ICA time courses of the training tokens; ``"mean"``, the mean activation of
        each network's key units over ``acts``; ``"zscore"``, the mean of those units' activations z-scored with
        the fitting tokens' mean and standard deviation (comparable across networks and texts).
        """
        ids = self.network_ids(ids)
        if kind == "sources":
            if acts is not None:
                raise FuncnetError("kind='sources' gives the training time courses; use kind='mean' or 'zscore' "
                                   "for new activations")
            return self.sources_[:, ids]
        if kind not in ("mean", "zscore"):
            raise FuncnetError(f"kind should be 'sources', 'mean' or 'zscore', got {kind!r}")
        if acts is None:
            raise FuncnetError(f"kind={kind!r} needs activations collected at the fitted sites")
        missing = [s for s in self.sites_ if s not in acts.sites]
        if missing:
            raise FuncnetError(f"the activations lack the fitted sites {missing[:3]}; collect them at "
                               f"networks.sites_ ({len(self.sites_)} sites)")
        X = acts.matrix(self.sites_, dtype=torch.float32)
        if X.shape[1] != self.maps_.shape[1]:
            raise ShapeError(f"the activations have {X.shape[1]} units at the fitted sites but the networks were "
                             f"fitted on {self.maps_.shape[1]}; collect them from the same model")
        if kind == "zscore":
            X = (X - self.unit_mean_) / torch.where(self.unit_std_ > 1e-8, self.unit_std_, torch.ones_like(self.unit_std_))
        M = self.masks_[ids].float()
        return (X @ M.T) / M.sum(1).clamp_min(1)

    def connectivity(self, acts: Activations | None = None, *, kind: str = "sources",
                     ids: Sequence[int] | None = None) -> Float[Tensor, "n_networks n_networks"]:
        """Pearson correlation between network time courses (the functional connectivity matrix)."""
        tc = self.time_courses(acts, kind=kind, ids=ids).double()
        return torch.corrcoef(tc.T).float()

    # ------------------------------------------------------------------ interventions

    def to_intervention(self, mode: str = "mask", ids: Sequence[int] | None = None, *, control: str | None = None,
                        random_state: int | None = 0, value: float = 1.0, gain: float | None = None,
                        ablation: str = "zero", n_bins: int = 10) -> Intervention:
        """Mask the selected networks' units, preserve only them, or amplify them.

        ``mode="amplify"`` adds ``value`` to each unit (the papers' additive form) or, with ``gain``, multiplies
        by it. ``ablation="mean"`` replaces ablated units by their mean over the fitting tokens instead of 0.
        ``control`` applies the same edit to a control set of the same size instead (see :meth:`control_mask`;
        ``n_bins`` are the variance bins of ``"variance_matched"``).
        """
        self._check()
        if mode not in MODES:
            raise FuncnetError(f"mode should be one of {MODES}, got {mode!r}")
        if ablation not in ("zero", "mean"):
            raise FuncnetError(f"ablation should be 'zero' or 'mean', got {ablation!r}")
        value = finite_number(value, "value")
        if gain is not None:
            gain = finite_number(gain, "gain")
        mask = self.union(ids) if control is None else self.control_mask(control, ids, random_state=random_state,
                                                                           n_bins=n_bins)
        means = self._site_means()
        iv = Intervention()
        for site, idx in self.site_units(mask).items():
            kw = {"mode": "mean", "values": means[site]} if ablation == "mean" else {}
            if mode == "mask":
                if len(idx):
                    iv = iv + ablate(site, units=idx.tolist(), **kw)
            elif mode == "preserve":
                iv = iv + keep_only(site, units=idx.tolist(), **kw)
            elif len(idx):
                iv = iv + (scale(site, gain, units=idx.tolist()) if gain is not None
                           else add(site, value, units=idx.tolist()))
        return iv

    def _site_means(self) -> dict[str, Tensor]:
        out, start = {}, 0
        for s, w in zip(self.sites_, self.widths_):
            out[s] = self.unit_mean_[start:start + w].clone()
            start += w
        return out

    def control_mask(self, control: str = "per_layer", ids: Sequence[int] | None = None, *,
                     random_state: int | None = 0, n_bins: int = 10) -> Bool[Tensor, "n_units"]:
        """A unit set of the same size as the selected networks' union, for controls.

        ``"per_layer"``: the same number of random units in each site; ``"global"``: the same total spread
        uniformly over all units; ``"top_variance"``: the same number per site, the highest-variance units;
        ``"variance_matched"``: random units outside the networks drawn per site and per variance bin
        (``n_bins`` quantile bins of the unit's std over the fitting tokens, deciles by default) to match the
        networks' units bin by bin; a bin with too few units outside the networks borrows from its nearest
        bins, so the control never includes a network unit unless the site has no other units left.
        """
        if control not in CONTROLS:
            raise FuncnetError(f"control should be one of {CONTROLS}, got {control!r}")
        n_bins = positive_int(n_bins, "n_bins")
        target = self.union(ids)
        g = generator(random_state)
        out = torch.zeros_like(target)
        if control == "global":
            out[torch.randperm(target.numel(), generator=g)[: int(target.sum())]] = True
            return out
        start = 0
        for w in self.widths_:
            here = target[start:start + w]
            n = int(here.sum())
            if control == "per_layer":
                pick = torch.randperm(w, generator=g)[:n]
            elif control == "top_variance":
                pick = torch.argsort(self.unit_std_[start:start + w], descending=True)[:n]
            else:
                pick = _variance_matched(self.unit_std_[start:start + w], here, n_bins, g)
            out[start + pick] = True
            start += w
        return out

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write ``networks.json`` + ``networks.safetensors`` into the folder ``path`` atomically (with a
        checksum of the tensors); networks saved there before are replaced only with ``overwrite=True``."""
        from .storage import write_networks

        self._check()
        meta = {"params": self._params(), "sites": list(self.sites_), "widths": list(self.widths_),
                "converged": self.converged_,
                "blocks": [{"sites": list(b.sites), "networks": list(b.networks)} for b in self.blocks_]}
        tensors = {"maps": self.maps_, "sources": self.sources_, "unit_mean": self.unit_mean_.float(),
                   "unit_std": self.unit_std_.float()}
        return write_networks(path, meta, tensors, overwrite=overwrite)

    def _params(self) -> dict[str, Any]:
        p = {k: getattr(self, k) for k in ("n_networks", "threshold", "sides", "scope", "window", "standardize",
                                            "fun", "max_iter", "tol", "random_state", "method", "sparsity")}
        p["dtype"] = str(self.dtype).removeprefix("torch.")
        return p

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "FunctionalNetworks":
        """Read networks written by :meth:`save`; every field and the checksum are verified."""
        from ..errors import FormatError
        from .storage import read_networks

        saved = read_networks(path)
        try:
            fn = cls(**saved.params)
            fn._check_params(len(saved.sites))
        except (TypeError, FuncnetError) as err:
            raise FormatError(f"{saved.where}: 'params' are invalid ({err})") from None
        fn.sites_, fn.widths_, fn.converged_ = saved.sites, saved.widths, saved.converged
        fn.blocks_ = tuple(Block(sites, rows) for sites, rows in saved.blocks)
        t = saved.tensors
        fn.maps_, fn.sources_, fn.unit_mean_, fn.unit_std_ = t["maps"], t["sources"], t["unit_mean"], t["unit_std"]
        fn.masks_ = fn._threshold(fn.maps_)
        return fn

    def layers(self) -> list[int | None]:
        self._check()
        return [site_layer(s) for s in self.sites_]


def _variance_matched(std: Float[Tensor, "width"], members: Bool[Tensor, "width"], n_bins: int,
                      g: torch.Generator) -> Tensor:
    """Indices of random non-members matching the members' count in each std quantile bin of one site."""
    w = int(std.numel())
    rank = torch.empty(w, dtype=torch.long)
    rank[torch.argsort(std.float(), stable=True)] = torch.arange(w)
    bins = rank * min(n_bins, w) // w  # equal-count bins, 0 = lowest variance
    n_b = int(bins.max()) + 1 if w else 0
    pools = [torch.nonzero((bins == b) & ~members).flatten() for b in range(n_b)]
    pools = [p[torch.randperm(len(p), generator=g)] for p in pools]
    used = [0] * n_b
    needs = torch.bincount(bins[members], minlength=n_b).tolist()
    members_left: Tensor | None = None  # shuffled once, only if a site runs out of other units
    picks: list[Tensor] = []
    for b, need in enumerate(needs):
        # this bin first, then the nearest bins (ties: the lower-variance one first)
        for nb in sorted(range(n_b), key=lambda x: (abs(x - b), x)):
            if need == 0:
                break
            take = min(need, len(pools[nb]) - used[nb])
            picks.append(pools[nb][used[nb]:used[nb] + take])
            used[nb] += take
            need -= take
        if need:  # only network units are left in the site
            if members_left is None:
                members_left = torch.nonzero(members).flatten()
                members_left = members_left[torch.randperm(len(members_left), generator=g)]
            picks.append(members_left[:need])
            members_left = members_left[need:]
    return torch.cat(picks) if picks else torch.zeros(0, dtype=torch.long)


__all__ = ["FunctionalNetworks", "Block", "SCOPES", "MODES", "CONTROLS", "METHODS"]
