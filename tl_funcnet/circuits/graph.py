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
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from .._io import Kind, atomic_file, read_json
from ..errors import FormatError, FuncnetError

FORMAT, VERSION = "tl_funcnet.graph", 1
KIND = Kind("graph", recognize=lambda p: _is_graph_file(p))
QKV = ("q", "k", "v")
_RECEIVER = re.compile(r"^a(\d+)\.h(\d+)<([qkv])>$|^a(\d+)\.h(\d+)$|^m(\d+)$|^logits$")


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
    senders: tuple[str, ...] = field(init=False)
    receivers: tuple[str, ...] = field(init=False)
    edges: Int[Tensor, "n_edges 2"] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        L, H = self.n_layers, self.n_heads
        if L < 1 or H < 1:
            raise FuncnetError(f"a graph needs at least one layer and one head, got n_layers={L}, n_heads={H}")
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
    def from_model(cls, model: Any, *, split_qkv: bool = True) -> "Graph":
        """The graph of a TransformerLens ``HookedTransformer`` (pre-norm, with or without MLPs)."""
        cfg = getattr(model, "cfg", None)
        if cfg is None or not hasattr(model, "blocks"):
            raise FuncnetError(f"a circuit graph needs a TransformerLens HookedTransformer, got {type(model).__name__}")
        if getattr(cfg, "attention_dir", "causal") != "causal":
            raise FuncnetError("circuit graphs are defined for causal decoders; an encoder's outputs are not logits "
                               "of a next token")
        if getattr(cfg, "normalization_type", None) in ("LNPost",) or getattr(cfg, "post_layernorm", False):
            raise FuncnetError("circuit graphs need a pre-norm model: with a norm after each block the residual "
                               "stream is not the sum of the senders' outputs")
        if not isinstance(split_qkv, bool):
            raise FuncnetError(f"split_qkv should be True or False, got {split_qkv!r}")
        return cls(int(cfg.n_layers), int(cfg.n_heads), not getattr(cfg, "attn_only", False), split_qkv,
                   bool(getattr(cfg, "parallel_attn_mlp", False)))

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

    def node_of_receiver(self, v: int) -> str:
        """The node a receiver belongs to (``a3.h1<q>`` -> ``a3.h1``)."""
        return self.receivers[v].split("<", 1)[0]

    # ------------------------------------------------------------------ where things are in the model

    def sender_site(self, u: int) -> tuple[str, int | None]:
        """``(hook name, head slot or None)`` of sender ``u``'s output."""
        name = self.senders[u]
        if name == "input":
            return "hook_embed", None
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
                "n_edges": self.n_edges}

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
        graph = cls(**kw)
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
        other = Graph.from_model(model, split_qkv=self.split_qkv)
        if other.to_dict() != self.to_dict():
            raise FuncnetError(f"the graph describes {self.n_layers} layers x {self.n_heads} heads, the model has "
                               f"{other.n_layers} x {other.n_heads}; build it with Graph.from_model(model)")


def _layer_of(node: str, n_layers: int) -> int:
    if node == "input":
        return -1
    if node == "logits":
        return n_layers
    return int(node[1:].split(".")[0])


def _kind_of(node: str) -> str:
    return {"i": "input", "l": "logits", "m": "mlp", "a": "head"}[node[0]]


__all__ = ["Graph", "FORMAT", "VERSION", "KIND", "QKV"]
