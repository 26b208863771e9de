"""Tiny transformers with a planted circuit: weights set by hand, so the edges that matter are known.

Each model has no normalization, so the residual stream is exactly the sum of what the senders write. The
residual stream is split into one-dimensional subspaces (in a random orthonormal basis drawn from the seed, so
nothing is axis-aligned): the token embedding writes a key token's sign ``±1`` into a *signal* subspace, the
components of the planted path read one subspace and write the next, and the unembedding reads only the last
one (for the two answer tokens). Every other component is a distractor that reads or writes subspaces the path
never reads, reads the path's signal but writes where nothing reads, writes a constant where the unembedding
reads (an attention pattern that follows the signal over values that do not), or responds to the signal through
an even function (the same output for ``+1`` and ``-1``) or through an odd function that is zero at both signal
values but not flat there: no effect, yet a gradient, which linear attribution (EAP) mistakes for an effect.

The clean and corrupted prompts differ only in the key token(s), whose sign flips; the metric is the logit
difference between the answer for the clean sign and the answer for the other. Ablating one edge of the planted
path (patching it with its corrupted value) changes the metric; ablating any other edge changes it by zero (up
to float rounding), and the circuit of the path's edges has faithfulness 1.

>>> planted = planted_circuit("chain", block="llama", seed=1)
>>> planted.circuit.edge_names()
['input->a0.h0<v>', 'a0.h0->m1', 'm1->a2.h0<v>', 'a2.h0->logits']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ..errors import FuncnetError
from ..patching.metrics import LogitDiff
from .circuit import Circuit
from .graph import Graph

#: the planted circuits: a chain of four edges through three layers, or two paths whose effects add
PLANTED_KINDS = ("chain", "parallel")
#: the block styles: LN-free GPT-2 style (ReLU MLP, learned positions), or Llama style (gated SiLU MLP,
#: grouped-query attention with two heads per key/value head, rotary positions), also LN-free
PLANTED_BLOCKS = ("gpt", "llama")
KINDS, BLOCKS = PLANTED_KINDS, PLANTED_BLOCKS

N_HEADS, D_HEAD, D_MODEL, D_MLP, D_VOCAB, N_CTX = 4, 4, 16, 8, 16, 8
ANSWER_PLUS, ANSWER_MINUS = 0, 1  # the answers when the (first) key is +1 / -1
KEY_PLUS, KEY_MINUS, KEY2_PLUS, KEY2_MINUS = 2, 3, 4, 5
FILLERS = tuple(range(6, D_VOCAB))
PROMPT_LENGTH = 6

# residual subspaces (one dimension each): signals, path stages, a constant, and places only distractors use
_SUBSPACES = ("A", "A2", "B", "B2", "C", "D", "H", "K", "E", "G", "G2", "F1", "F2", "P")

_PATHS = {
    "chain": ("input->a0.h0<v>", "a0.h0->m1", "m1->a2.h0<v>", "a2.h0->logits"),
    "parallel": ("input->a0.h0<v>", "a0.h0->m1", "m1->logits", "input->m0", "m0->a1.h0<v>", "a1.h0->logits"),
}


@dataclass(frozen=True, eq=False)
class PlantedCircuit:
    """A hand-built model, its edge graph, a task on it and the edges of the circuit planted in it."""

    model: Any
    graph: Graph
    clean: Int[Tensor, "batch pos"]
    corrupted: Int[Tensor, "batch pos"]
    metric: LogitDiff
    true_edges: Bool[Tensor, " n_edges"]
    description: str
    kind: str = ""
    block: str = ""

    @property
    def circuit(self) -> Circuit:
        """The circuit of the planted path's edges."""
        return Circuit(self.graph, self.true_edges)

    def true_edge_names(self) -> list[str]:
        return self.circuit.edge_names()

    def __repr__(self) -> str:
        return (f"PlantedCircuit({self.kind!r}, block={self.block!r}, {int(self.true_edges.sum())} true edges of "
                f"{self.graph.n_edges}, {self.clean.shape[0]} prompts)")


class _Builder:
    """Sets a zeroed model's weights in terms of named residual subspaces (each a unit vector of a random
    orthonormal basis) and query heads (key/value weights go to the head's key/value head under GQA)."""

    def __init__(self, model: Any, gen: torch.Generator):
        self.model, self.gen = model, gen
        q, _ = torch.linalg.qr(torch.randn(D_MODEL, D_MODEL, generator=gen, dtype=torch.float64))
        self.basis = {name: q[:, i].float() for i, name in enumerate(_SUBSPACES)}
        self.gqa = bool(model.cfg.n_key_value_heads)
        self.group = N_HEADS // model.cfg.n_key_value_heads if self.gqa else 1

    def vec(self, **coords: float) -> Float[Tensor, " d_model"]:
        out = torch.zeros(D_MODEL)
        for name, value in coords.items():
            out += value * self.basis[name]
        return out

    def gain(self, low: float = 0.8, high: float = 1.5) -> float:
        return float(low + (high - low) * torch.rand((), generator=self.gen))

    def randn(self) -> float:
        return float(torch.randn((), generator=self.gen))

    def _kv(self, layer: int, name: str, head: int) -> Tensor:
        attn = self.model.blocks[layer].attn
        return getattr(attn, f"_{name}")[head // self.group] if self.gqa else getattr(attn, name)[head]

    def values(self, layer: int, head: int, *columns: Float[Tensor, " d_model"]) -> None:
        """Column ``j`` of the head's value weights reads ``columns[j]`` (shared by its GQA group)."""
        w = self._kv(layer, "W_V", head)
        for j, col in enumerate(columns):
            w[:, j] = col

    def keys(self, layer: int, head: int, *columns: Float[Tensor, " d_model"]) -> None:
        w = self._kv(layer, "W_K", head)
        for j, col in enumerate(columns):
            w[:, j] = col

    def queries(self, layer: int, head: int, *columns: Float[Tensor, " d_model"], bias: Tensor | None = None) -> None:
        attn = self.model.blocks[layer].attn
        for j, col in enumerate(columns):
            attn.W_Q[head][:, j] = col
        if bias is not None:
            attn.b_Q[head] = bias

    def output(self, layer: int, head: int, *rows: Float[Tensor, " d_model"]) -> None:
        """Row ``j`` of the head's output weights writes ``rows[j]`` for value column ``j``."""
        for j, row in enumerate(rows):
            self.model.blocks[layer].attn.W_O[head][j] = row

    def neuron(self, layer: int, j: int, reads: Tensor, writes: Tensor, gate: Tensor | None = None,
               bias: float = 0.0) -> None:
        """GPT style: ``writes * relu(reads . x + bias)``; Llama style: ``writes * silu(gate . x) * (reads . x)``."""
        mlp = self.model.blocks[layer].mlp
        mlp.W_in[:, j] = reads
        mlp.W_out[j] = writes
        mlp.b_in[j] = bias
        if hasattr(mlp, "W_gate"):
            if gate is None:
                raise AssertionError("a gated neuron needs a gate")
            mlp.W_gate[:, j] = gate

    def transfer(self, layer: int, first: int, reads: str, writes: str, scale: float) -> None:
        """A monotone, non-linear map ``f`` with ``f(0) = 0`` from one subspace to another (two neurons)."""
        r, w = self.basis[reads], self.basis[writes]
        if self.gqa:  # s x + x silu(x) / 2, s = silu(2): increasing, curved
            self.neuron(layer, first, r, scale * w, gate=self.vec(K=2.0))
            self.neuron(layer, first + 1, r, 0.5 * scale * w, gate=r)
        else:  # 2 relu(x) - relu(-x)
            self.neuron(layer, first, r, 2 * scale * w)
            self.neuron(layer, first + 1, -r, -scale * w)

    def even(self, layer: int, first: int, reads: str, writes: str, scale: float) -> None:
        """An even function of one subspace, written into another: |x| (GPT) or x^2 (Llama)."""
        r, w = self.basis[reads], self.basis[writes]
        if self.gqa:  # x silu(x) + (-x) silu(-x) = x^2
            self.neuron(layer, first, r, scale * w, gate=r)
            self.neuron(layer, first + 1, -r, scale * w, gate=-r)
        else:
            self.neuron(layer, first, r, scale * w)
            self.neuron(layer, first + 1, -r, scale * w)

    def kink(self, layer: int, first: int, reads: str, writes: str, scale: float, tokens: Tensor) -> None:
        """An odd function ``f`` of one subspace with ``f(+-b) = 0`` but ``f'(+-b) != 0``, where ``b`` is what the
        subspace holds at the last position of ``tokens`` (measured, up to sign): patching the subspace flips its
        sign and changes nothing, yet the gradient there is not zero (a trap for linear attribution)."""
        b = self.measure(layer, reads, tokens)
        r, w = self.basis[reads], self.basis[writes]
        if self.gqa:  # a x - x (silu(x) + silu(-x)) = a x - x^2 tanh(x / 2), a = b tanh(b / 2)
            a = b * float(torch.tanh(torch.tensor(b / 2)))
            silu2 = float(torch.nn.functional.silu(torch.tensor(2.0)))
            self.neuron(layer, first, r, scale * a / silu2 * w, gate=self.vec(K=2.0))
            self.neuron(layer, first + 1, r, -scale * w, gate=r)
            self.neuron(layer, first + 2, r, -scale * w, gate=-r)
        else:  # x - 2 relu(x - b/2) + 2 relu(-x - b/2)
            self.neuron(layer, first, r, scale * w)
            self.neuron(layer, first + 1, -r, -scale * w)
            self.neuron(layer, first + 2, r, -2 * scale * w, bias=-b / 2)
            self.neuron(layer, first + 3, -r, 2 * scale * w, bias=-b / 2)

    def measure(self, layer: int, subspace: str, tokens: Tensor) -> float:
        """The mean |component| of ``subspace`` in the input of ``layer``'s MLP at the last position."""
        store: dict[str, Tensor] = {}

        def keep(act: Tensor, hook: Any) -> None:
            store["x"] = act[:, -1] @ self.basis[subspace]

        self.model.run_with_hooks(tokens, return_type=None, fwd_hooks=[(f"blocks.{layer}.hook_resid_mid", keep)])
        x = store["x"].abs()
        if float(x.max() - x.min()) > 1e-5 * float(x.max()):
            raise AssertionError(f"{subspace} differs between prompts at layer {layer}: {x.tolist()}")
        return float(x.mean())

    def filler_neurons(self, layer: int, first: int, writes: str) -> None:
        """Two neurons reading the filler subspaces (the same in clean and corrupted prompts)."""
        for j in (first, first + 1):
            reads = self.vec(F1=self.randn(), F2=self.randn())
            self.neuron(layer, j, reads, self.vec(**{writes: self.randn()}),
                        gate=self.vec(F1=self.randn(), K=1.0) if self.gqa else None)

    def attend_to_position(self, layer: int, head: int) -> None:
        """GPT style: the head attends (almost only) to position 1; Llama style: uniformly (W_Q = W_K = 0)."""
        if self.gqa:
            return
        bias = torch.zeros(D_HEAD)
        bias[0] = 40.0
        self.queries(layer, head, bias=bias)
        self.keys(layer, head, self.basis["P"])

    def pattern_distractor(self, layer: int, head: int, sibling: int, signals: tuple[str, ...]) -> None:
        """``head``'s attention pattern follows the signal, but its values are the constant every token writes,
        so its output (into D, which the unembedding reads) is the same for any pattern; ``sibling`` shares its
        key/value head and writes the constant into G."""
        self.queries(layer, head, self.vec(K=3.0))
        self.keys(layer, head, self.vec(**{s: 3.0 for s in signals}))
        self.values(layer, head, self.vec(K=1.0))
        self.output(layer, head, self.vec(D=0.1))
        self.queries(layer, sibling, self.vec(K=1.0, F1=1.0))
        self.output(layer, sibling, self.vec(G=1.0))


def _blank_model(block: str, n_layers: int) -> Any:
    from .._compat import hooked_transformer_classes

    HookedTransformer, HookedTransformerConfig = hooked_transformer_classes("planted_circuit")

    common: dict[str, Any] = {"n_layers": n_layers, "d_model": D_MODEL, "n_heads": N_HEADS, "d_head": D_HEAD,
                              "d_mlp": D_MLP, "d_vocab": D_VOCAB, "n_ctx": N_CTX, "normalization_type": None,
                              "init_weights": False, "device": "cpu", "dtype": torch.float32}
    if block == "gpt":
        cfg = HookedTransformerConfig(act_fn="relu", **common)
    else:
        cfg = HookedTransformerConfig(act_fn="silu", gated_mlp=True, n_key_value_heads=2,
                                      positional_embedding_type="rotary", rotary_dim=D_HEAD, **common)
    model = HookedTransformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model.eval()


def _embeddings(b: _Builder) -> None:
    model = b.model
    for t in range(D_VOCAB):
        model.embed.W_E[t] = b.vec(K=1.0, F1=b.randn(), F2=b.randn())
    for t, coords in ((KEY_PLUS, {"A": 1.0}), (KEY_MINUS, {"A": -1.0}), (KEY2_PLUS, {"A2": 1.0}),
                      (KEY2_MINUS, {"A2": -1.0})):
        model.embed.W_E[t] = b.vec(K=1.0, **coords)
    if hasattr(model, "pos_embed"):
        model.pos_embed.W_pos[1] = b.basis["P"]
    # the answers read D; every other token reads only places no path uses
    model.unembed.W_U[:] = torch.stack([b.vec(E=b.randn(), G=b.randn(), G2=b.randn(),
                                               F1=b.randn()) for _ in range(D_VOCAB)], dim=1)
    model.unembed.W_U[:, ANSWER_PLUS] = b.vec(D=1.0)
    model.unembed.W_U[:, ANSWER_MINUS] = b.vec(D=-1.0)


def _chain(b: _Builder, tokens: Tensor) -> str:
    llama = b.gqa
    # layer 0: a0.h0 moves the key's sign from A to B at the last position; a0.h1 (same values) writes it
    # into E, which nothing reads; a0.h2 is the pattern distractor, a0.h3 its sibling; m0 reads the fillers
    b.values(0, 0, b.basis["A"])
    b.attend_to_position(0, 0)
    b.output(0, 0, (5.0 if llama else 1.0) * b.gain() * b.basis["B"])
    b.values(0, 1, b.basis["A"])
    b.output(0, 1, b.vec(E=b.gain()))
    b.pattern_distractor(0, 2, 3, ("A",))
    b.filler_neurons(0, 0, "G")
    # layer 1: m1 maps B to C (non-linear); heads read B or the filler-derived G and write E or G2
    b.transfer(1, 0, "B", "C", b.gain())
    b.values(1, 0, b.basis["B"])
    b.queries(1, 0, b.vec(F1=1.0, G=1.0))
    b.keys(1, 0, b.vec(F2=1.0, K=0.5))
    b.output(1, 0, b.vec(E=1.0))
    b.output(1, 1, b.vec(G2=1.0))
    b.values(1, 2, b.vec(G=1.0, F1=0.5))
    b.keys(1, 2, b.vec(F1=1.0))
    b.queries(1, 2, b.vec(F2=1.0))
    b.output(1, 2, b.vec(G2=0.7))
    b.output(1, 3, b.vec(E=0.5))
    # layer 2: a2.h0 (uniform attention) carries C into D, which the unembedding reads; a2.h1 shares its values
    # and writes E; a2.h2/h3 read D and write E and G; m2 writes an even and a flat-valued odd function of B into D
    b.values(2, 0, b.basis["C"])
    b.output(2, 0, b.vec(D=2 * b.gain()))
    b.keys(2, 0, b.vec(F1=1.0))
    b.queries(2, 1, b.vec(F2=1.0))
    b.output(2, 1, b.vec(E=1.0))
    b.values(2, 2, b.basis["D"])
    b.output(2, 2, b.vec(E=1.0))
    b.output(2, 3, b.vec(G=1.0))
    b.even(2, 0, "B", "D", 0.25)
    b.kink(2, 2, "B", "D", 1.5 if llama else 0.5, tokens)
    return "\n".join([
        f"chain ({'Llama' if llama else 'GPT'} style): input -> a0.h0 -> m1 -> a2.h0 -> logits.",
        (f"Path: the key token (position 1) writes its sign into A; a0.h0 ({_pattern(llama)}) moves it to B at "
         "later positions; m1 maps B to C (non-linearly); a2.h0 (uniform attention) carries C into D; the "
         "answer logits read only D."),
        ("Distractors: a0.h1 reads A and writes E (nothing reads E); a0.h2's attention follows the key but its "
         "values are a constant, written into D; a0.h3 shares its key/values and writes G; m0 reads the "
         "fillers; layer-1 heads read B or filler-derived G and write E or G2 (read by other tokens' logits "
         "only); a2.h1 shares a2.h0's values and writes E; a2.h2 reads D and writes E; m2 writes into D an even "
         "function of B and an odd one that is zero at both signs' values but not flat there (so the edge "
         "a0.h0->m2 has no effect but a gradient)."),
    ])


def _pattern(llama: bool) -> str:
    return "uniform attention" if llama else "attending to position 1"


def _parallel(b: _Builder, tokens: Tensor) -> str:
    llama = b.gqa
    # path 1: a0.h0 moves key 1's sign (A) to B at later positions, m1 maps B to D
    b.values(0, 0, b.basis["A"], b.basis["A2"])
    b.attend_to_position(0, 0)
    b.output(0, 0, (5.0 if llama else 1.0) * b.gain() * b.basis["B"])
    b.values(0, 1, b.basis["A"], b.basis["A2"])
    b.output(0, 1, b.vec(H=5.0 if llama else 1.0), b.vec(H=2.5 if llama else 0.5))
    b.pattern_distractor(0, 2, 3, ("A", "A2"))
    b.transfer(1, 0, "B", "D", b.gain())
    # path 2: m0 maps key 2's sign (A2, at position 2) to B2 there, a1.h0 (uniform) carries B2 into D
    b.transfer(0, 0, "A2", "B2", b.gain())
    b.filler_neurons(0, 2, "G2")
    b.values(1, 0, b.basis["B2"], b.basis["B"])  # the second value column (path 1's B) is not written out
    b.output(1, 0, (5.0 if llama else 2.0) * b.gain() * b.basis["D"])
    b.keys(1, 0, b.vec(F1=1.0))
    b.queries(1, 1, b.vec(F2=1.0, K=1.0))
    b.output(1, 1, b.vec(E=1.0), b.vec(E=1.0))
    b.values(1, 2, b.vec(G=1.0), b.vec(G2=1.0))
    b.output(1, 2, b.vec(G2=1.0))
    b.output(1, 3, b.vec(E=1.0), b.vec(G=-1.0))
    b.even(1, 2, "B", "G2", 1.0)
    b.kink(1, 4, "H", "D", 0.5 if llama else 3.0, tokens)
    return "\n".join([
        (f"parallel ({'Llama' if llama else 'GPT'} style): input -> a0.h0 -> m1 -> logits and "
         "input -> m0 -> a1.h0 -> logits."),
        (f"Paths: two key tokens (positions 1 and 2) flip together. Path 1: a0.h0 ({_pattern(llama)}) moves key "
         "1's sign from A to B; m1 maps B into D. Path 2: m0 maps key 2's sign from A2 to B2 (at position 2); "
         "a1.h0 (uniform attention) carries B2 into D. The answer logits read only D, so the effects add."),
        ("Distractors: a0.h1 reads both signals into H, which m1 reads through an odd function that is zero at "
         "both signs' values but not flat there (so its edges have no effect but a gradient); a0.h2's attention "
         "follows the keys but its values are a constant, written into D; a0.h3 shares its key/values and "
         "writes G; a1.h0 also reads B but does not write it out; a1.h1 shares its values and writes E; "
         "a1.h2/h3 read filler-derived subspaces; m0 and m1 have neurons writing G2 (read by other tokens' "
         "logits only)."),
    ])


def _prompts(kind: str, gen: torch.Generator, n_prompts: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    signs = torch.tensor([1 - 2 * (i % 2) for i in range(n_prompts)])[torch.randperm(n_prompts, generator=gen)]
    fillers = torch.tensor(FILLERS)
    clean = fillers[torch.randint(0, len(FILLERS), (n_prompts, PROMPT_LENGTH), generator=gen)]
    corrupted = clean.clone()
    plus = signs > 0
    clean[:, 1] = torch.where(plus, KEY_PLUS, KEY_MINUS)
    corrupted[:, 1] = torch.where(plus, KEY_MINUS, KEY_PLUS)
    if kind == "parallel":
        clean[:, 2] = torch.where(plus, KEY2_PLUS, KEY2_MINUS)
        corrupted[:, 2] = torch.where(plus, KEY2_MINUS, KEY2_PLUS)
    answer = torch.where(plus, ANSWER_PLUS, ANSWER_MINUS)
    distractor = torch.where(plus, ANSWER_MINUS, ANSWER_PLUS)
    return clean, corrupted, answer, distractor


def planted_circuit(kind: str = "chain", *, block: str = "gpt", seed: int = 0, n_prompts: int = 8) -> PlantedCircuit:
    """A tiny LN-free model (4 heads per layer; 3 layers for a chain, 2 for parallel paths) with a planted
    circuit of the given ``kind`` (one of :data:`PLANTED_KINDS`) in ``block`` style (:data:`PLANTED_BLOCKS`),
    and ``n_prompts`` clean/corrupted prompt pairs (half of each sign). ``seed`` draws the residual basis, the
    gains, the filler embeddings and the prompts; the global random state is not touched."""
    if kind not in PLANTED_KINDS:
        raise FuncnetError(f"kind should be one of {PLANTED_KINDS}, got {kind!r}")
    if block not in PLANTED_BLOCKS:
        raise FuncnetError(f"block should be one of {PLANTED_BLOCKS}, got {block!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise FuncnetError(f"seed should be an int, got {seed!r}")
    if isinstance(n_prompts, bool) or not isinstance(n_prompts, int) or n_prompts < 2:
        raise FuncnetError(f"n_prompts should be an int >= 2 (prompts of both signs), got {n_prompts!r}")
    gen = torch.Generator().manual_seed(seed)
    model = _blank_model(block, 3 if kind == "chain" else 2)
    with torch.no_grad():
        b = _Builder(model, gen)
        _embeddings(b)
        clean, corrupted, answer, distractor = _prompts(kind, gen, n_prompts)
        description = (_chain if kind == "chain" else _parallel)(b, clean)
    graph = Graph.from_model(model)
    truth = torch.zeros(graph.n_edges, dtype=torch.bool)
    truth[graph.edge_indices(list(_PATHS[kind]))] = True
    return PlantedCircuit(model, graph, clean, corrupted, LogitDiff(answer, distractor), truth, description, kind,
                          block)


__all__ = ["BLOCKS", "KINDS", "PLANTED_BLOCKS", "PLANTED_KINDS", "PlantedCircuit", "planted_circuit"]
