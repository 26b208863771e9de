"""The computational graph of a transformer: senders, receivers and the edges between them.

A **sender** writes into the residual stream: the input embedding (``input``), each attention head
(``a{l}.h{h}``, its ``attn.hook_result``) and each MLP (``m{l}``, its ``hook_mlp_out``). A **receiver** reads
the residual stream: each head's query, key and value input (``a{l}.h{h}<q>``, ``<k>``, ``<v>``: its slot of
``hook_q_input`` / ``hook_k_input`` / ``hook_v_input``), each MLP's input (``m{l}``, ``hook_mlp_in``) and the
logits (``logits``, the last block's ``hook_resid_post``, before the final norm). An **edge** ``u->v`` joins a
sender to a receiver downstream of it. Because every receiver's input is the sum of the outputs of the senders
upstream of it (plus biases that no patch changes), patching one edge means changing one term of that sum.

Grouped-query attention is ungrouped for edges (TransformerLens's ``ungroup_grouped_query_attention``): each
query head has its own key and value receiver. With ``split_qkv=False`` a head has one receiver and its q, k
and v inputs are patched together.

**Unit groups** (functional networks, or any named sets of MLP neurons) split MLP senders: group ``FN4``'s
neurons in layer 5 form the sender ``FN4.m5`` whose output is their share of the MLP's output
(``hook_post[..., units] @ W_out[units]``), and ``m5`` is then the rest of the MLP. A group spanning several
layers is one node per layer, so a circuit can be read in network terms (:meth:`Graph.group_of`). In a layer
given an SAE trained on its ``hook_mlp_out`` (``saes={layer: sae}``), groups are SAE features instead: their
output is ``features[..., units] @ W_dec[units]`` and the MLP's rest includes the SAE's reconstruction error.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from .._io import Kind, atomic_file, read_json
from ..activations.forward import is_encoder
from ..errors import FormatError, FuncnetError
from ..hooks.names import is_bridge
from ..hooks.values import index_list

FORMAT, VERSION = "tl_funcnet.graph", 1
KIND = Kind("graph", recognize=lambda p: _is_graph_file(p))
QKV = ("q", "k", "v")
_RECEIVER = re.compile(r"^a(\d+)\.h(\d+)<([qkv])>$|^a(\d+)\.h(\d+)$|^m(\d+)$|^logits$")
_GROUP_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RESERVED = re.compile(r"^(a\d+|m\d+|input|logits)$")
#: one group's neurons in one layer: ``(group name, layer, neuron indices)``
GroupPart = tuple[str, int, tuple[int, ...]]


def _is_graph_file(path: Path) -> bool:
    try:
        return json.loads(Path(path).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


@dataclass(frozen=True, eq=False)
class Graph:
    """Senders, receivers and edges of a model with ``n_layers`` blocks of ``n_heads`` heads and an MLP each.

    Edges are numbered receiver by receiver (``edges[i] = (sender index, receiver index)``), so the edges into
    one receiver are contiguous. Build it with :meth:`from_model`.
    """

    n_layers: int
    n_heads: int
    has_mlp: bool = True
    split_qkv: bool = True
    parallel_attn_mlp: bool = False
    groups: tuple[GroupPart, ...] = ()
    saes: dict[int, Any] = field(default_factory=dict, repr=False)
    senders: tuple[str, ...] = field(init=False)
    receivers: tuple[str, ...] = field(init=False)
    edges: Int[Tensor, "n_edges 2"] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        L, H = self.n_layers, self.n_heads
        if L < 1 or H < 1:
            raise FuncnetError(f"a graph needs at least one layer and one head, got n_layers={L}, n_heads={H}")
        groups = _check_groups(self.groups, L, self.has_mlp)
        object.__setattr__(self, "groups", groups)
        object.__setattr__(self, "saes", _check_saes(self.saes, groups, L))
        senders = ["input"]
        receivers: list[str] = []
        upstream: list[int] = []  # number of senders upstream of each receiver, as an index bound
        for l in range(L):
            heads = [f"a{l}.h{h}" for h in range(H)]
            n_before = len(senders)
            for h in heads:
                receivers += [f"{h}<{c}>" for c in QKV] if self.split_qkv else [h]
            upstream += [n_before] * (H * (3 if self.split_qkv else 1))
            senders += heads
            if self.has_mlp:
                receivers.append(f"m{l}")
                upstream.append(n_before if self.parallel_attn_mlp else len(senders))
                senders += [f"{name}.m{l}" for name, layer, _ in groups if layer == l]
                senders.append(f"m{l}")
        receivers.append("logits")
        upstream.append(len(senders))
        pairs = [(u, v) for v, n_up in enumerate(upstream) for u in range(n_up)]
        # a parallel block's MLP does not read its own heads, and its heads are not upstream of it
        object.__setattr__(self, "senders", tuple(senders))
        object.__setattr__(self, "receivers", tuple(receivers))
        object.__setattr__(self, "edges", torch.tensor(pairs, dtype=torch.long).reshape(-1, 2))
        object.__setattr__(self, "_sender_index", {n: i for i, n in enumerate(senders)})
        object.__setattr__(self, "_receiver_index", {n: i for i, n in enumerate(receivers)})
        object.__setattr__(self, "_edge_index", {(int(u), int(v)): i for i, (u, v) in enumerate(pairs)})

    # ------------------------------------------------------------------ building

    @classmethod
    def from_model(cls, model: Any, *, split_qkv: bool = True, groups: Any = None, saes: Any = None) -> "Graph":
        """The graph of a TransformerLens ``HookedTransformer`` (pre-norm, with or without MLPs).

        ``groups`` splits MLP senders into unit groups: a fitted ``FunctionalNetworks`` (at ``mlp.hook_post``
        sites; see :func:`network_groups`), or ``{name: {layer: [unit, ...]}}``. Within a layer the groups must
        not share units. ``saes`` maps layers to sae-lens SAEs (or :func:`~tl_funcnet.sae.sae_params` dicts)
        trained on ``blocks.<layer>.hook_mlp_out``; a group's units in those layers are SAE features (see
        :func:`feature_groups`). The SAEs stay in memory with the graph; its JSON form names them only.
        """
        cfg = getattr(model, "cfg", None)
        if cfg is None or not hasattr(model, "blocks"):
            raise FuncnetError(f"a circuit graph needs a TransformerLens HookedTransformer, got {type(model).__name__}")
        if is_encoder(model):
            raise FuncnetError("circuit graphs are defined for causal decoders; an encoder's outputs are not logits "
                               "of a next token")
        if getattr(cfg, "normalization_type", None) in ("LNPost",) or getattr(cfg, "post_layernorm", False):
            raise FuncnetError("circuit graphs need a pre-norm model: with a norm after each block the residual "
                               "stream is not the sum of the senders' outputs")
        if not isinstance(split_qkv, bool):
            raise FuncnetError(f"split_qkv should be True or False, got {split_qkv!r}")
        n_kv = getattr(cfg, "n_key_value_heads", None)
        if is_bridge(model) and n_kv and int(n_kv) != int(cfg.n_heads):
            raise FuncnetError(
                f"edges into a head read its own k/v input, which TransformerLens's TransformerBridge does not "
                f"provide under grouped-query attention ({cfg.n_heads} query heads share {n_kv} k/v inputs; "
                f"HookedTransformer's ungroup_grouped_query_attention has no bridge equivalent). Load the model "
                f"with backend='hooked' for circuit graphs")
        parts: tuple[GroupPart, ...] = ()
        if isinstance(groups, (tuple, list)) and all(isinstance(g, tuple) and len(g) == 3 for g in groups):
            parts = tuple(groups)  # already in the graph's own form
        elif groups is not None:
            parts = _parts_of(network_groups(groups) if hasattr(groups, "maps_") else groups)
        if saes is not None and not isinstance(saes, Mapping):
            raise FuncnetError(f"saes should map layers to SAEs trained on blocks.<layer>.hook_mlp_out, e.g. "
                               f"{{6: sae}}, got {type(saes).__name__}")
        graph = cls(int(cfg.n_layers), int(cfg.n_heads), not getattr(cfg, "attn_only", False), split_qkv,
                    bool(getattr(cfg, "parallel_attn_mlp", False)), parts, _sae_params(saes or {}, cfg))
        d_mlp = getattr(cfg, "d_mlp", None)
        for name, layer, units in graph.groups:
            if layer in graph.saes:
                width, unit, owner = int(graph.saes[layer]["d_sae"]), "feature", "SAE has"
            else:
                width, unit, owner = (int(model.blocks[layer].mlp.W_out.shape[0]) if d_mlp else 0), "neuron", "MLP has"
            if max(units) >= width:
                raise FuncnetError(f"unit group {name!r} names {unit} {max(units)} of layer {layer}, whose {owner} "
                                   f"{width} {unit}s (0..{width - 1})")
        return graph

    # ------------------------------------------------------------------ sizes and names

    @property
    def n_senders(self) -> int:
        return len(self.senders)

    @property
    def n_receivers(self) -> int:
        return len(self.receivers)

    @property
    def n_edges(self) -> int:
        return int(self.edges.shape[0])

    @property
    def nodes(self) -> tuple[str, ...]:
        """Every node: the senders, then ``logits`` (a head's q/k/v receivers belong to its node)."""
        return (*self.senders, "logits")

    def __len__(self) -> int:
        return self.n_edges

    def __repr__(self) -> str:
        return (f"Graph({self.n_layers} layers x {self.n_heads} heads, {self.n_senders} senders, "
                f"{self.n_receivers} receivers, {self.n_edges} edges)")

    def edge_name(self, i: int) -> str:
        u, v = (int(x) for x in self.edges[i])
        return f"{self.senders[u]}->{self.receivers[v]}"

    def edge_names(self) -> list[str]:
        return [f"{self.senders[int(u)]}->{self.receivers[int(v)]}" for u, v in self.edges]

    def sender_index(self, name: str) -> int:
        try:
            return self._sender_index[name]  # type: ignore[attr-defined]
        except KeyError:
            raise FuncnetError(f"{name!r} is not a sender of this graph; senders are 'input', 'a<layer>.h<head>' and "
                               f"'m<layer>' (layers 0..{self.n_layers - 1}, heads 0..{self.n_heads - 1})") from None

    def receiver_index(self, name: str) -> int:
        try:
            return self._receiver_index[name]  # type: ignore[attr-defined]
        except KeyError:
            qkv = "'a<layer>.h<head><q|k|v>'" if self.split_qkv else "'a<layer>.h<head>'"
            raise FuncnetError(f"{name!r} is not a receiver of this graph; receivers are {qkv}, 'm<layer>' and "
                               f"'logits'") from None

    def edge_index(self, edge: str | tuple[str, str]) -> int:
        """The number of an edge given as ``"u->v"`` or ``(u, v)``; a receiver upstream of its sender is an error."""
        if isinstance(edge, str):
            if "->" not in edge:
                raise FuncnetError(f"an edge is written 'sender->receiver', e.g. 'a0.h1->m3', got {edge!r}")
            u_name, v_name = edge.split("->", 1)
        else:
            u_name, v_name = edge
        u, v = self.sender_index(u_name), self.receiver_index(v_name)
        i = self._edge_index.get((u, v))  # type: ignore[attr-defined]
        if i is None:
            raise FuncnetError(f"{u_name}->{v_name} is not an edge: {v_name!r} is not downstream of {u_name!r} "
                               f"(a receiver reads only senders of earlier layers, and an MLP its own layer's heads)")
        return i

    def edge_indices(self, edges: Sequence[str | tuple[str, str]]) -> list[int]:
        return [self.edge_index(e) for e in edges]

    def group_of(self, u: int) -> tuple[str, int, tuple[int, ...]] | None:
        """``(group name, layer, neurons)`` if sender ``u`` is a unit group's part of an MLP, else None."""
        name = self.senders[u]
        head, _, tail = name.rpartition(".")
        if not head or not tail.startswith("m"):
            return None
        layer = int(tail[1:])
        for g, l, units in self.groups:
            if g == head and l == layer:
                return g, l, units
        return None  # pragma: no cover - every such sender comes from a group

    @property
    def group_names(self) -> tuple[str, ...]:
        """The unit groups' names, in order of first appearance."""
        return tuple(dict.fromkeys(g for g, _, _ in self.groups))

    def reading_node(self, u: int) -> str:
        """The node whose input sender ``u`` computes its output from: itself, or for a unit group its MLP
        (``FN4.m5`` reads ``m5``'s input)."""
        part = self.group_of(u)
        return self.senders[u] if part is None else f"m{part[1]}"

    def node_of_receiver(self, v: int) -> str:
        """The node a receiver belongs to (``a3.h1<q>`` -> ``a3.h1``)."""
        return self.receivers[v].split("<", 1)[0]

    # ------------------------------------------------------------------ where things are in the model

    def sender_site(self, u: int) -> tuple[str, int | None]:
        """``(hook name, head slot or None)`` of sender ``u``'s output."""
        name = self.senders[u]
        if name == "input":
            return "hook_embed", None
        part = self.group_of(u)
        if part is not None:
            return (f"blocks.{part[1]}.hook_mlp_out" if part[1] in self.saes else f"blocks.{part[1]}.mlp.hook_post"), None
        if name.startswith("m"):
            return f"blocks.{name[1:]}.hook_mlp_out", None
        layer, head = name[1:].split(".h")
        return f"blocks.{layer}.attn.hook_result", int(head)

    def receiver_sites_of(self, v: int) -> list[tuple[str, int | None]]:
        """``[(hook name, head slot or None)]`` where receiver ``v``'s input is read: one place, or a head's q, k
        and v inputs together when they are not split."""
        m = _RECEIVER.match(self.receivers[v])
        assert m is not None
        if self.receivers[v] == "logits":
            return [(f"blocks.{self.n_layers - 1}.hook_resid_post", None)]
        if m.group(6) is not None:
            return [(f"blocks.{m.group(6)}.hook_mlp_in", None)]
        if m.group(1) is not None:
            return [(f"blocks.{m.group(1)}.hook_{m.group(3)}_input", int(m.group(2)))]
        return [(f"blocks.{m.group(4)}.hook_{c}_input", int(m.group(5))) for c in QKV]

    def receiver_layer(self, v: int) -> int:
        """The block a receiver is in (``n_layers`` for the logits)."""
        return _layer_of(self.node_of_receiver(v), self.n_layers)

    def sender_layer(self, u: int) -> int:
        """The block a sender is in (-1 for the input)."""
        return _layer_of(self.senders[u], self.n_layers)

    def sender_sites(self) -> list[str]:
        """Every hook holding sender outputs, in sender order."""
        out: list[str] = []
        for u in range(self.n_senders):
            site = self.sender_site(u)[0]
            if site not in out:
                out.append(site)
        return out

    def receiver_sites(self) -> list[str]:
        """Every hook holding receiver inputs, in receiver order."""
        out: list[str] = []
        for v in range(self.n_receivers):
            for site, _ in self.receiver_sites_of(v):
                if site not in out:
                    out.append(site)
        return out

    def receivers_at(self, site: str) -> list[tuple[int, int | None]]:
        """The receivers whose input is (a slot of) ``site``: ``[(receiver index, head slot or None)]``."""
        return [(v, slot) for v in range(self.n_receivers) for s, slot in self.receiver_sites_of(v) if s == site]

    def edges_into(self, v: int) -> Int[Tensor, "k"]:
        """Numbers of the edges into receiver ``v`` (contiguous)."""
        return (self.edges[:, 1] == v).nonzero().flatten()

    def edge_mask(self) -> Bool[Tensor, "n_senders n_receivers"]:
        """True where ``u->v`` is an edge."""
        mask = torch.zeros(self.n_senders, self.n_receivers, dtype=torch.bool)
        mask[self.edges[:, 0], self.edges[:, 1]] = True
        return mask

    def iter_edges(self) -> Iterator[tuple[int, int, int]]:
        """``(edge number, sender index, receiver index)`` for every edge."""
        for i, (u, v) in enumerate(self.edges.tolist()):
            yield i, u, v

    # ------------------------------------------------------------------ views and files

    def to_networkx(self, edges: Tensor | Sequence[int] | None = None, scores: Tensor | None = None) -> Any:
        """A ``networkx.MultiDiGraph`` over the nodes (``input``, ``a{l}.h{h}``, ``m{l}``, ``logits``); one
        arc per edge (or per chosen edge), with the receiver (``q``/``k``/``v`` or ``""``) and the score."""
        import networkx as nx

        chosen = range(self.n_edges) if edges is None else [int(i) for i in (edges.tolist()
                                                                              if isinstance(edges, Tensor) else edges)]
        g = nx.MultiDiGraph()
        for n in self.nodes:
            g.add_node(n, layer=_layer_of(n, self.n_layers), kind=_kind_of(n))
            if _kind_of(n) == "group":
                g.nodes[n]["group"] = n.rpartition(".")[0]
        for i in chosen:
            u, v = (int(x) for x in self.edges[i])
            recv = self.receivers[v]
            g.add_edge(self.senders[u], self.node_of_receiver(v), key=recv, index=i,
                       input=recv.split("<", 1)[1][0] if "<" in recv else "",
                       score=None if scores is None else float(scores[i]))
        return g

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "n_layers": self.n_layers, "n_heads": self.n_heads,
                "has_mlp": self.has_mlp, "split_qkv": self.split_qkv, "parallel_attn_mlp": self.parallel_attn_mlp,
                "n_edges": self.n_edges, **({"groups": [[g, l, list(u)] for g, l, u in self.groups]}
                                            if self.groups else {}),
                **({"saes": {str(l): _sae_identity(p) for l, p in sorted(self.saes.items())}} if self.saes else {})}

    @classmethod
    def from_dict(cls, data: Any, where: str = "graph") -> "Graph":
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
            raise FormatError(f"{where}: not a version-{VERSION} tl_funcnet graph")
        try:
            kw = {k: data[k] for k in ("n_layers", "n_heads", "has_mlp", "split_qkv", "parallel_attn_mlp")}
        except KeyError as err:
            raise FormatError(f"{where}: the key {err} is missing") from None
        if not all(isinstance(kw[k], int) and not isinstance(kw[k], bool) for k in ("n_layers", "n_heads")) or \
                not all(isinstance(kw[k], bool) for k in ("has_mlp", "split_qkv", "parallel_attn_mlp")):
            raise FormatError(f"{where}: n_layers/n_heads should be ints and the flags booleans")
        groups = data.get("groups", [])
        if not isinstance(groups, list) or not all(isinstance(g, list) and len(g) == 3 and isinstance(g[0], str)
                                                   and isinstance(g[2], list) for g in groups):
            raise FormatError(f"{where}: 'groups' should be a list of [name, layer, [neuron, ...]]")
        saes = data.get("saes", {})
        if not isinstance(saes, dict) or not all(isinstance(v, dict) for v in saes.values()):
            raise FormatError(f"{where}: 'saes' should map layers to SAE descriptions")
        try:
            # the SAEs' weights are not in the file: a stand-in keeps the structure, and running it asks for them
            graph = cls(**kw, groups=tuple((g, l, tuple(u)) for g, l, u in groups),
                        saes={int(l): {"missing": True, **v} for l, v in saes.items()})
        except (FuncnetError, ValueError) as err:
            raise FormatError(f"{where}: {err}") from None
        if data.get("n_edges") not in (None, graph.n_edges):
            raise FormatError(f"{where}: says {data.get('n_edges')} edges, the settings give {graph.n_edges}")
        return graph

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        with atomic_file(path, KIND, overwrite=overwrite) as tmp:
            tmp.write_text(text)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Graph":
        return cls.from_dict(read_json(Path(path), "a graph written by Graph.save"), str(path))

    def check_model(self, model: Any) -> None:
        """Raise unless this graph describes ``model``."""
        missing = [l for l, p in self.saes.items() if p.get("missing")]
        if missing:
            raise FuncnetError(f"this graph was loaded from a file, which names the SAEs of layers {missing} but does "
                               f"not hold their weights; rebuild it with Graph.from_model(model, groups=..., "
                               f"saes={{layer: sae}}) and load circuits with Circuit.load(path, graph=graph)")
        other = Graph.from_model(model, split_qkv=self.split_qkv, groups=self.groups, saes=self.saes)
        if other.to_dict() != self.to_dict():
            raise FuncnetError(f"the graph describes {self.n_layers} layers x {self.n_heads} heads, the model has "
                               f"{other.n_layers} x {other.n_heads}; build it with Graph.from_model(model)")


def _layer_of(node: str, n_layers: int) -> int:
    if node == "input":
        return -1
    if node == "logits":
        return n_layers
    if _kind_of(node) == "group":
        return int(node.rpartition(".m")[2])
    return int(node[1:].split(".")[0])


def _kind_of(node: str) -> str:
    if node in ("input", "logits"):
        return node
    if re.match(r"^a\d+\.h\d+$", node):
        return "head"
    return "mlp" if re.match(r"^m\d+$", node) else "group"


def _check_groups(groups: Any, n_layers: int, has_mlp: bool) -> tuple[GroupPart, ...]:
    """The unit-group parts validated: names, layers, neurons, and no neuron in two groups of one layer."""
    out: list[GroupPart] = []
    seen: dict[tuple[str, int], None] = {}
    owner: dict[tuple[int, int], str] = {}
    for item in groups:
        try:
            name, layer, units = item
        except (TypeError, ValueError):
            raise FuncnetError(f"a unit group part is (name, layer, neurons), got {item!r:.80}") from None
        if not isinstance(name, str) or not _GROUP_NAME.match(name) or _RESERVED.match(name):
            raise FuncnetError(f"unit group names are identifiers like 'FN4' or 'syntax' (not 'input', 'logits', "
                               f"'a<n>' or 'm<n>'), got {name!r}")
        if not has_mlp:
            raise FuncnetError("this model has no MLPs, so unit groups (MLP neurons) cannot split its senders")
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_layers:
            raise FuncnetError(f"unit group {name!r}: layer {layer!r} is not one of 0..{n_layers - 1}")
        units = tuple(sorted(index_list(units, f"unit group {name!r} layer {layer}")))
        if not units:
            raise FuncnetError(f"unit group {name!r} has no neurons in layer {layer}; leave that layer out")
        if len(set(units)) != len(units):
            raise FuncnetError(f"unit group {name!r} lists a neuron of layer {layer} twice")
        if (name, layer) in seen:
            raise FuncnetError(f"unit group {name!r} is given twice for layer {layer}")
        seen[(name, layer)] = None
        for unit in units:
            other = owner.setdefault((layer, unit), name)
            if other != name:
                raise FuncnetError(f"neuron {unit} of layer {layer} is in both {other!r} and {name!r}; a neuron can "
                                   f"belong to one group per layer (network_groups gives shared neurons to the "
                                   f"network that loads on them most)")
        out.append((name, layer, units))
    return tuple(sorted(out, key=lambda g: g[1]))


def _check_saes(saes: Any, groups: tuple[GroupPart, ...], n_layers: int) -> dict[int, Any]:
    if not isinstance(saes, Mapping):
        raise FuncnetError(f"saes should map layers to SAEs, got {type(saes).__name__}")
    out = {}
    for layer, p in saes.items():
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_layers:
            raise FuncnetError(f"saes: layer {layer!r} is not one of 0..{n_layers - 1}")
        out[layer] = p
    unused = sorted(set(out) - {l for _, l, _ in groups})
    if unused:
        raise FuncnetError(f"saes are given for layers {unused}, but no group names features there; add groups "
                           f"(e.g. feature_groups({{{unused[0]}: [17, 40]}})) or leave those SAEs out")
    return out


def _sae_params(saes: Mapping[Any, Any], cfg: Any) -> dict[int, Any]:
    """Each SAE as checked parameter tensors: on ``hook_mlp_out`` (width d_model), with a linear decoder."""
    from ..sae.params import sae_params

    out = {}
    for layer, sae in saes.items():
        p = sae_params(sae)
        hook = p.get("hook_name") or ""
        if isinstance(layer, int) and hook and hook != f"blocks.{layer}.hook_mlp_out":
            raise FuncnetError(f"saes[{layer}] was trained on {hook!r}; feature senders need an SAE on "
                               f"'blocks.{layer}.hook_mlp_out'")
        if int(p["d_in"]) != int(cfg.d_model) or p.get("reshape_activations", "none") != "none":
            raise FuncnetError(f"saes[{layer}] reads {p['d_in']} values; an SAE on hook_mlp_out reads d_model = "
                               f"{cfg.d_model}")
        if p.get("normalize_activations", "none") not in ("none", "expected_average_only_in"):
            raise FuncnetError(f"saes[{layer}] normalizes its input ({p['normalize_activations']}), so a feature's "
                               f"share of the output depends on the whole token; feature senders need an SAE "
                               f"without run-time normalization")
        out[layer] = p
    return out


def _sae_identity(p: Mapping[str, Any]) -> dict[str, Any]:
    """What a graph file records of an SAE (its weights stay out of the JSON)."""
    return {k: p.get(k) for k in ("architecture", "d_sae", "hook_name")}


def feature_groups(features: Mapping[int, Sequence[int]], *, prefix: str = "F") -> dict[str, dict[int, list[int]]]:
    """SAE features as unit groups, one per feature: ``{layer: [feature, ...]}`` -> ``{"L6F17": {6: [17]}, ...}``
    (with ``prefix="F"``), for :meth:`Graph.from_model` with ``saes={layer: sae}``."""
    if not isinstance(features, Mapping):
        raise FuncnetError(f"features should map layers to SAE feature indices, e.g. {{6: [17, 40]}}, got "
                           f"{type(features).__name__}")
    out: dict[str, dict[int, list[int]]] = {}
    for layer, ids in features.items():
        for i in index_list(ids, f"features of layer {layer}"):
            out[f"L{layer}{prefix}{i}"] = {layer: [i]}
    return out


def _parts_of(groups: Any) -> tuple[GroupPart, ...]:
    """``{name: {layer: neurons}}`` as the graph's ``(name, layer, neurons)`` parts."""
    if not isinstance(groups, Mapping):
        raise FuncnetError(f"groups should be a fitted FunctionalNetworks or {{name: {{layer: [neuron, ...]}}}}, got "
                           f"{type(groups).__name__}")
    parts = []
    for name, by_layer in groups.items():
        if not isinstance(by_layer, Mapping) or not by_layer:
            raise FuncnetError(f"unit group {name!r} should map layers to neuron lists, e.g. {{3: [17, 40]}}")
        parts += [(name, layer, units) for layer, units in by_layer.items()]
    return tuple(parts)


def network_groups(networks: Any, ids: Sequence[int] | None = None, *, prefix: str = "FN"
                   ) -> dict[str, dict[int, list[int]]]:
    """Functional networks (fitted at ``blocks.<l>.mlp.hook_post`` sites) as unit groups ``{"FN<i>": {layer:
    neurons}}``. A neuron key to several networks goes to the one whose map loads on it most (largest |z|), so
    the groups split each MLP without overlap."""
    if not hasattr(networks, "maps_"):
        raise FuncnetError(f"expected a fitted FunctionalNetworks, got {type(networks).__name__}")
    ids = networks.network_ids(ids)
    sites = list(networks.sites_)
    layers = []
    for site in sites:
        m = re.match(r"^blocks\.(\d+)\.mlp\.hook_post$", site)
        if m is None:
            raise FuncnetError(f"graph unit groups are MLP neurons; these networks were fitted at {site!r}. Fit them "
                               f"at 'blocks.<l>.mlp.hook_post' sites")
        layers.append(int(m.group(1)))
    masks = networks.masks_[ids]
    strength = networks.maps_[ids].abs().masked_fill(~masks, float("-inf"))
    owner = strength.argmax(0)
    out: dict[str, dict[int, list[int]]] = {}
    start = 0
    for layer, width in zip(layers, networks.widths_):
        cols = slice(start, start + int(width))
        for j, i in enumerate(ids):
            units = (masks[j, cols] & (owner[cols] == j)).nonzero().flatten().tolist()
            if units:
                out.setdefault(f"{prefix}{i}", {})[layer] = units
        start += int(width)
    if not out:
        raise FuncnetError("the chosen networks have no neurons at their threshold; lower it (with_threshold)")
    return out


__all__ = ["Graph", "network_groups", "feature_groups", "GroupPart", "FORMAT", "VERSION", "KIND", "QKV"]
