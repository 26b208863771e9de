"""Reading a model edge by edge: sender outputs, receiver inputs, and the identity that makes edges patchable
(every receiver's input is the sum of its senders' outputs plus a constant that no prompt changes)."""

from __future__ import annotations

import pytest
import torch
from tl_testing import count_hooks, make_gpt2_style, make_llama_style, edge_flags as flags

from tl_funcnet.circuits import Graph, ablated_values, edge_hooks, sender_outputs
from tl_funcnet.circuits.run import EDGE_FLAGS, check_tokens
from tl_funcnet.errors import FuncnetError, ShapeError
from tl_funcnet.hooks import capture


@pytest.fixture
def pair():
    g = torch.Generator().manual_seed(5)
    clean = torch.randint(0, 50, (3, 7), generator=g)
    corr = clean.clone()
    corr[:, 1] = (clean[:, 1] + 9) % 50
    corr[:, 4] = (clean[:, 4] + 3) % 50
    return clean, corr


def receiver_inputs(model, graph, tokens):
    """``(batch, pos, n_receivers, d_model)``: each receiver's input, read with plain captures."""
    store: dict = {}
    with edge_hooks(model), capture(graph.receiver_sites(), store).applied(model), torch.no_grad():
        model(tokens, return_type=None)
    parts = []
    for v in range(graph.n_receivers):
        site, slot = graph.receiver_sites_of(v)[0]
        parts.append(store[site] if slot is None else store[site][:, :, slot])
    return torch.stack(parts, dim=2)


def with_biases(model):
    """The model with random attention-output and MLP biases (random init leaves them zero)."""
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.b_O.copy_(torch.randn(block.attn.b_O.shape, generator=g))
            if hasattr(block, "mlp"):
                block.mlp.b_out.copy_(torch.randn(block.mlp.b_out.shape, generator=g))
    return model.eval()


MODELS = {
    "gpt2": lambda: with_biases(make_gpt2_style(seed=2)),
    "gpt2_lnpre": lambda: with_biases(make_gpt2_style(seed=3, normalization_type="LNPre")),
    "gpt2_parallel": lambda: with_biases(make_gpt2_style(seed=4, parallel_attn_mlp=True)),
    "gpt2_attn_only": lambda: with_biases(make_gpt2_style(seed=6, attn_only=True)),
    "llama_gqa": lambda: with_biases(make_llama_style(seed=2)),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_every_receiver_is_the_sum_of_its_senders_plus_a_prompt_independent_constant(name, pair):
    model = MODELS[name]()
    graph = Graph.from_model(model)
    clean, corr = pair
    mask = graph.edge_mask().float()  # (senders, receivers)
    constants = []
    for tokens in (clean, corr):
        z = sender_outputs(model, graph, tokens)
        x = receiver_inputs(model, graph, tokens)
        constants.append(x - torch.einsum("bpud,uv->bpvd", z, mask))
    torch.testing.assert_close(constants[0], constants[1], atol=2e-5, rtol=0)
    # and the constant is what the biases and the position embedding put there
    c = constants[0]
    pos = model.pos_embed.W_pos[:clean.shape[1]] if hasattr(model, "pos_embed") and \
        model.cfg.positional_embedding_type == "standard" else torch.zeros(model.cfg.d_model)
    for v, recv in enumerate(graph.receivers):
        layer = graph.receiver_layer(v)
        expected = pos + sum((b.attn.b_O for b in model.blocks[:layer]), torch.zeros(model.cfg.d_model))
        if recv.startswith("m") and not model.cfg.parallel_attn_mlp:
            expected = expected + model.blocks[layer].attn.b_O
        torch.testing.assert_close(c[:, :, v], expected.detach().expand_as(c[:, :, v]), atol=2e-5, rtol=0)


def test_sender_outputs_are_the_hook_points(tiny_model, pair):
    clean, _ = pair
    graph = Graph.from_model(tiny_model)
    z = sender_outputs(tiny_model, graph, clean)
    assert z.shape == (3, 7, graph.n_senders, tiny_model.cfg.d_model)
    with edge_hooks(tiny_model), torch.no_grad():
        _, cache = tiny_model.run_with_cache(clean)
    torch.testing.assert_close(z[:, :, 0], cache["hook_embed"])
    torch.testing.assert_close(z[:, :, graph.sender_index("a1.h2")], cache["blocks.1.attn.hook_result"][:, :, 2])
    torch.testing.assert_close(z[:, :, graph.sender_index("m0")], cache["blocks.0.hook_mlp_out"])


def test_query_key_value_inputs_are_copies_of_the_residual_stream(tiny_model, pair):
    graph = Graph.from_model(tiny_model)
    x = receiver_inputs(tiny_model, graph, pair[0])
    with torch.no_grad():
        _, cache = tiny_model.run_with_cache(pair[0])
    for v, name in enumerate(graph.receivers):
        if "<" in name:
            torch.testing.assert_close(x[:, :, v], cache[f"blocks.{graph.receiver_layer(v)}.hook_resid_pre"])


def test_edge_hook_points_leave_the_logits_unchanged(tiny_model, pair):
    before = flags(tiny_model)
    with torch.no_grad():
        plain = tiny_model(pair[0])
        with edge_hooks(tiny_model):
            assert all(getattr(tiny_model.cfg, f) for f in EDGE_FLAGS)
            split = tiny_model(pair[0])
    torch.testing.assert_close(split, plain, atol=1e-5, rtol=0)
    assert flags(tiny_model) == before and count_hooks(tiny_model) == 0


def test_edge_hooks_restores_the_flags_after_an_error(gpt2_tiny):
    before = flags(gpt2_tiny)
    with pytest.raises(RuntimeError), edge_hooks(gpt2_tiny):
        raise RuntimeError("boom")
    assert flags(gpt2_tiny) == before


def test_ablated_values(gpt2_tiny, pair):
    clean, corr = pair
    graph = Graph.from_model(gpt2_tiny)
    patching = ablated_values(gpt2_tiny, graph, "patching", corrupted=corr)
    assert patching.ablation == "patching" and patching.graph is graph
    torch.testing.assert_close(patching.values, sender_outputs(gpt2_tiny, graph, corr))
    mean = ablated_values(gpt2_tiny, graph, "mean", texts=clean)
    z = sender_outputs(gpt2_tiny, graph, clean)
    assert mean.values.shape == (1, 1, graph.n_senders, 16)
    torch.testing.assert_close(mean.values[0, 0], z.mean((0, 1)))
    positional = ablated_values(gpt2_tiny, graph, "mean", texts=clean, positional=True)
    assert positional.values.shape == (1, 7, graph.n_senders, 16)
    torch.testing.assert_close(positional.values[0], z.mean(0))
    assert ablated_values(gpt2_tiny, graph, "zero").values is None


def test_ablated_values_refuses_bad_requests(gpt2_tiny, pair):
    graph = Graph.from_model(gpt2_tiny)
    with pytest.raises(FuncnetError, match="ablation should be one of"):
        ablated_values(gpt2_tiny, graph, "resample")
    with pytest.raises(FuncnetError, match="corrupted"):
        ablated_values(gpt2_tiny, graph, "patching")
    with pytest.raises(FuncnetError, match="texts"):
        ablated_values(gpt2_tiny, graph, "mean")
    with pytest.raises(FuncnetError, match="Graph.from_model"):
        ablated_values(gpt2_tiny, Graph(3, 4), "patching", corrupted=pair[1])


def test_tokens_are_checked(gpt2_tiny):
    graph = Graph.from_model(gpt2_tiny)
    for bad, error in ((torch.zeros(2, 3), ShapeError), (torch.zeros(4, dtype=torch.long), ShapeError),
                       (torch.zeros(0, 3, dtype=torch.long), ShapeError), (torch.zeros(2, 3, dtype=torch.bool),
                                                                           ShapeError),
                       (torch.full((2, 3), 50), FuncnetError), (torch.full((2, 3), -1), FuncnetError)):
        with pytest.raises(error):
            sender_outputs(gpt2_tiny, graph, bad)
    assert check_tokens(gpt2_tiny, [[1, 2, 3]], "tokens").dtype == torch.long
    with pytest.raises(FuncnetError, match="Graph.from_model"):
        sender_outputs(gpt2_tiny, Graph(2, 3), torch.zeros(1, 3, dtype=torch.long))
    assert count_hooks(gpt2_tiny) == 0
