"""Edge attribution (EAP, EAP-IG, clean-corrupted, RelP): identities that hold exactly, agreement with exact
patching where first order is exact or nearly so, a second implementation of the reference algorithm
(TransformerLens backward hooks, one edge at a time), budgets, batching, and no leftovers."""

from __future__ import annotations

import pytest
import torch
from tl_testing import count_hooks, make_gpt2_style, make_llama_style

from tl_funcnet.circuits import METHODS, Graph, edge_correlation, edge_hooks, edge_scores, exact_edge_scores, \
    sender_outputs
from tl_funcnet.circuits.run import EDGE_FLAGS
from tl_funcnet.errors import FuncnetError, ShapeError
from tl_funcnet.hooks import Hook, Intervention, capture, record
from tl_funcnet.patching import attribution_patch, logit_diff, relp_rules, units_nodes

N_POS = 7
METRIC = logit_diff([1, 2, 3], [4, 5, 6])


@pytest.fixture
def pair():
    g = torch.Generator().manual_seed(3)
    clean = torch.randint(0, 50, (3, N_POS), generator=g)
    corr = clean.clone()
    corr[:, 2] = (clean[:, 2] + 7) % 50
    return clean, corr


def _runs(clean, corr, direction):
    return (clean, corr) if direction == "noise" else (corr, clean)  # (target, source)


def _into(graph, name):
    return graph.edges_into(graph.receiver_index(name))


def _no_grads(model):
    return all(p.grad is None for p in model.parameters())


# --------------------------------------------------------------------------- exact identities


@pytest.mark.parametrize("method", ["eap", "relp"])
@pytest.mark.parametrize("direction", ["noise", "denoise"])
def test_edges_into_a_receiver_sum_to_its_input_change_times_its_gradient(tiny_model, pair, method, direction):
    # checklist 3: sum_u S(u->v) = (x_v(source) - x_v(target)) . g_v(target), for every receiver; the receiver
    # inputs and gradients are read here with plain captures, so the senders, slots and upstream sets are tested
    graph = Graph.from_model(tiny_model)
    target, source = _runs(*pair, direction)
    got = edge_scores(tiny_model, graph, *pair, METRIC, method=method, direction=direction)
    sites = graph.receiver_sites()
    x_tgt: dict = {}
    x_src: dict = {}
    rules = relp_rules(tiny_model) if method == "relp" else Intervention()
    with edge_hooks(tiny_model):
        with (rules + capture(sites, x_tgt, detach=False)).applied(tiny_model):
            values = METRIC(tiny_model(target))
        grads = dict(zip(sites, torch.autograd.grad(values.sum(), [x_tgt[s] for s in sites], allow_unused=True)))
        with torch.no_grad(), capture(sites, x_src).applied(tiny_model):
            tiny_model(source)
    assert _no_grads(tiny_model)
    for v, name in enumerate(graph.receivers):
        want = 0.0
        for site, slot in graph.receiver_sites_of(v):
            g = grads[site]
            if g is None:  # e.g. RelP's AH rule: q and k get no gradient
                continue
            dx = x_src[site] - x_tgt[site].detach()
            if slot is not None:
                dx, g = dx[:, :, slot], g[:, :, slot]
            want += float((dx * g).sum()) / 3
        assert float(got.scores[_into(graph, name)].sum()) == pytest.approx(want, abs=2e-5, rel=1e-4), name
    assert got.baseline == pytest.approx(float(values.detach().mean()), abs=1e-6)


@pytest.mark.parametrize("method", ["eap", "relp"])
def test_edges_into_logits_sum_to_node_attribution_of_the_last_residual(tiny_model, pair, method):
    graph = Graph.from_model(tiny_model)
    site = f"blocks.{tiny_model.cfg.n_layers - 1}.hook_resid_post"
    nodes = units_nodes(site, [list(range(tiny_model.cfg.d_model))])
    for direction in ("noise", "denoise"):
        node = attribution_patch(tiny_model, *pair, nodes, METRIC, direction=direction,
                                 method="atp" if method == "eap" else "relp")
        edges = edge_scores(tiny_model, graph, *pair, METRIC, method=method, direction=direction)
        assert float(edges.scores[_into(graph, "logits")].sum()) == pytest.approx(float(node.effects[0]), abs=1e-5)
        assert edges.baseline == pytest.approx(node.baseline, abs=1e-6)


def test_ig_inputs_with_one_step_is_eap_exactly(tiny_model, pair):
    graph = Graph.from_model(tiny_model)
    for direction in ("noise", "denoise"):
        eap = edge_scores(tiny_model, graph, *pair, METRIC, direction=direction)
        ig = edge_scores(tiny_model, graph, *pair, METRIC, method="eap-ig-inputs", steps=1, direction=direction)
        assert torch.equal(ig.scores, eap.scores)
        assert ig.baseline == eap.baseline
        # and with more steps it is another estimate (the test above can fail)
        ig3 = edge_scores(tiny_model, graph, *pair, METRIC, method="eap-ig-inputs", steps=3, direction=direction)
        assert (ig3.scores - eap.scores).abs().max() > 1e-3


def test_ig_inputs_is_complete_in_the_limit(tiny_model, pair):
    # checklist 4: the input's out-edges reach every receiver, so their sum is the path integral of the gradient
    # of the embedding: it tends to metric(corrupted) - metric(clean) as the number of steps grows (a right
    # Riemann sum: the error shrinks like 1/m)
    clean, corr = pair
    graph = Graph.from_model(tiny_model)
    with torch.no_grad():
        want = float((METRIC(tiny_model(corr)) - METRIC(tiny_model(clean))).mean())
    errors = []
    for steps in (4, 8, 16, 32):
        s = edge_scores(tiny_model, graph, clean, corr, METRIC, method="eap-ig-inputs", steps=steps)
        errors.append(abs(float(s.scores[graph.edges[:, 0] == 0].sum()) - want))
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < errors[0] / 5
    assert errors[-1] < 0.015


def test_split_qkv_false_scores_a_head_by_the_sum_of_its_q_k_v_scores(tiny_model, pair):
    split, joined = Graph.from_model(tiny_model), Graph.from_model(tiny_model, split_qkv=False)
    assert joined.n_edges < split.n_edges
    for method, kw in [("eap", {}), ("eap-ig-inputs", {"steps": 2}), ("clean-corrupted", {}), ("relp", {}),
                       ("eap-ig-activations", {"steps": 1})]:
        a = edge_scores(tiny_model, split, *pair, METRIC, method=method, **kw)
        b = edge_scores(tiny_model, joined, *pair, METRIC, method=method, **kw)
        for i, u, v in joined.iter_edges():
            recv, sender = joined.receivers[v], joined.senders[u]
            parts = [f"{sender}->{recv}<{c}>" for c in "qkv"] if recv.startswith("a") else [f"{sender}->{recv}"]
            want = sum(float(a.scores[split.edge_index(p)]) for p in parts)
            assert float(b.scores[i]) == pytest.approx(want, abs=1e-6), (method, joined.edge_name(i))


# --------------------------------------------------------------------------- agreement with exact patching


@pytest.mark.parametrize("direction", ["noise", "denoise"])
def test_eap_is_exact_where_the_metric_is_linear_in_the_receiver(pair, direction):
    # attention only, no norms: the logits are linear in the last residual stream, and a last-layer head is
    # linear in its value input (its pattern reads the q and k inputs, which a v edge leaves alone), so EAP is
    # exact on the edges into the logits and into the last layer's <v> receivers, and only there
    model = make_gpt2_style(attn_only=True, normalization_type=None, seed=4).eval()
    with torch.no_grad():  # sharper attention patterns, so that q and k edges are far from linear
        for block in model.blocks:
            block.attn.W_Q *= 4
            block.attn.W_K *= 4
    graph = Graph.from_model(model)
    exact = exact_edge_scores(model, graph, *pair, METRIC, direction=direction)
    eap = edge_scores(model, graph, *pair, METRIC, direction=direction)
    last = model.cfg.n_layers - 1
    linear = torch.tensor([graph.receivers[v] == "logits" or (graph.receivers[v].startswith(f"a{last}.")
                                                              and graph.receivers[v].endswith("<v>"))
                           for v in graph.edges[:, 1].tolist()])
    torch.testing.assert_close(eap.scores[linear], exact.scores[linear], atol=1e-5, rtol=1e-4)
    assert (eap.scores[~linear] - exact.scores[~linear]).abs().max() > 1e-3
    assert eap.baseline == pytest.approx(exact.baseline, abs=1e-6)


@pytest.mark.parametrize("make", [make_gpt2_style, make_llama_style])
def test_eap_agrees_with_exact_patching_to_first_order(make, pair):
    # checklist 7, through the public API: the corrupted token's embedding is the clean one's plus eps times a
    # direction, so every delta is O(eps) and EAP's relative error is O(eps): it falls ~4x when eps does
    clean = pair[0].clone()
    clean[:, 2] = clean[:, 2] % 40
    corr = clean.clone()
    corr[:, 2] = torch.tensor([40, 41, 42])
    errors = []
    for eps in (0.1, 0.025, 0.00625):
        model = make(dtype=torch.float64, seed=5).eval()
        with torch.no_grad():
            for b in range(3):
                e = model.W_E[int(clean[b, 2])]
                r = torch.randn(model.cfg.d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(b))
                model.W_E[40 + b] = e + eps * e.norm() * r / r.norm()
        graph = Graph.from_model(model)
        exact = exact_edge_scores(model, graph, clean, corr, METRIC)
        eap = edge_scores(model, graph, clean, corr, METRIC)
        assert eap.scores.dtype == torch.float64
        errors.append(float((eap.scores - exact.scores).norm() / exact.scores.norm()))
    assert errors[1] < 0.1
    assert 2.5 < errors[1] / errors[2] < 6.5
    assert edge_correlation(eap, exact)["pearson"] > 0.999


def test_attribution_correlates_with_exact_on_a_random_tiny_model(tiny_model, pair):
    graph = Graph.from_model(tiny_model)
    exact = exact_edge_scores(tiny_model, graph, *pair, METRIC)
    for method in ("eap", "eap-ig-inputs", "clean-corrupted"):
        s = edge_scores(tiny_model, graph, *pair, METRIC, method=method)
        assert edge_correlation(s, exact)["spearman"] > 0.7, method
        assert s.baseline == pytest.approx(exact.baseline, abs=1e-6)


# --------------------------------------------------------------------------- a second implementation


def _reference(model, graph, clean, corr, metric, method, steps=1, direction="noise"):
    """The reference algorithm (hannamw/EAP-IG), written independently of the module: TransformerLens backward
    hooks add up each receiver's gradient during ``.backward()``, deltas come from ``sender_outputs``, and each
    edge is one dot product."""
    target, source = _runs(clean, corr, direction)
    n = target.shape[0]
    delta = (sender_outputs(model, graph, source) - sender_outputs(model, graph, target)).double()
    grads: dict = {}

    def bwd(grad, hook):
        if grad is not None:
            grads[hook.name] = grads.get(hook.name, 0) + grad.detach().double()

    runs: list = []  # (tokens, forward hooks)
    if method == "eap":
        runs = [(target, [])]
    elif method == "clean-corrupted":
        runs = [(target, []), (source, [])]
    else:
        with edge_hooks(model), torch.no_grad():
            _, c_t = model.run_with_cache(target, names_filter=graph.sender_sites())
            _, c_s = model.run_with_cache(source, names_filter=graph.sender_sites())
        groups = ["hook_embed"] if method == "eap-ig-inputs" else graph.sender_sites()
        for site in groups:
            for k in range(1, steps + 1):
                new = c_s[site] + (k / steps) * (c_t[site] - c_s[site])
                # a new input must require grad, else a model without position embeddings (llama) has no
                # gradient at layer 0's heads; the reference sets it for EAP-IG-inputs, not for the input group
                # of EAP-IG-activations (where it then misses those gradients on such models)
                new.requires_grad_(site == "hook_embed")
                runs.append((target, [(site, lambda act, hook, new=new: new)]))
    with edge_hooks(model):
        for tokens, fwd in runs:
            with model.hooks(fwd_hooks=fwd, bwd_hooks=[(s, bwd) for s in graph.receiver_sites()]):
                metric(model(tokens)).sum().backward()
    model.zero_grad(set_to_none=True)
    out = torch.zeros(graph.n_edges, dtype=torch.float64)
    for i, u, v in graph.iter_edges():
        for site, slot in graph.receiver_sites_of(v):
            if site in grads:
                g = grads[site] if slot is None else grads[site][:, :, slot]
                out[i] += (delta[:, :, u] * g).sum() / (n * len(runs))
    return out


@pytest.mark.parametrize("method,steps", [("eap", 1), ("eap-ig-inputs", 3), ("eap-ig-activations", 2),
                                          ("clean-corrupted", 1)])
def test_matches_the_reference_algorithm(tiny_model, pair, method, steps):
    graph = Graph.from_model(tiny_model)
    for direction in ("noise", "denoise"):
        want = _reference(tiny_model, graph, *pair, METRIC, method, steps, direction)
        got = edge_scores(tiny_model, graph, *pair, METRIC, method=method, steps=steps, direction=direction)
        torch.testing.assert_close(got.scores, want, atol=2e-6, rtol=1e-4)
        assert got.method == method and got.direction == direction


def test_ig_activations_with_one_step_cuts_one_group_at_a_time(gpt2_tiny, pair):
    # with alpha = 1 every run is the clean run with one group's output made constant: the logits' gradient is
    # never cut (the same as EAP's), the last MLP's input gradient is cut in one of the G runs
    graph = Graph.from_model(gpt2_tiny)
    n_groups = len(graph.sender_sites())
    eap = edge_scores(gpt2_tiny, graph, *pair, METRIC)
    act = edge_scores(gpt2_tiny, graph, *pair, METRIC, method="eap-ig-activations", steps=1)
    logits, mlp = _into(graph, "logits"), _into(graph, f"m{gpt2_tiny.cfg.n_layers - 1}")
    torch.testing.assert_close(act.scores[logits], eap.scores[logits], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(act.scores[mlp], eap.scores[mlp] * (n_groups - 1) / n_groups, atol=1e-6, rtol=1e-5)
    assert act.info["forwards"] == 2 + n_groups and act.info["backwards"] == n_groups


# --------------------------------------------------------------------------- RelP


def test_relp_without_rules_is_eap_and_with_rules_changes_only_gradients(tiny_model, pair):
    graph = Graph.from_model(tiny_model)
    eap = edge_scores(tiny_model, graph, *pair, METRIC)
    assert torch.equal(edge_scores(tiny_model, graph, *pair, METRIC, method="relp", rules=()).scores, eap.scores)
    relp = edge_scores(tiny_model, graph, *pair, METRIC, method="relp")
    assert relp.info["rules"] == ["LN", "AH", "Identity", "Half"]
    assert (relp.scores - eap.scores).abs().max() > 1e-3
    assert relp.baseline == eap.baseline  # forward values are unchanged
    # the AH rule stops the gradient at the attention pattern: query and key edges score zero, values do not
    ah = edge_scores(tiny_model, graph, *pair, METRIC, method="relp", rules="AH")
    qk = torch.tensor([graph.receivers[v].endswith(("<q>", "<k>")) for v in graph.edges[:, 1].tolist()])
    assert bool((ah.scores[qk] == 0).all()) and float(ah.scores[~qk].abs().max()) > 1e-3


# --------------------------------------------------------------------------- batches, budgets, leftovers


def test_batches_of_prompts_give_the_same_scores(llama_tiny, pair):
    graph = Graph.from_model(llama_tiny)
    for method in ("eap", "eap-ig-inputs", "clean-corrupted"):
        full = edge_scores(llama_tiny, graph, *pair, METRIC, method=method, steps=2)
        for bs in (1, 2):
            part = edge_scores(llama_tiny, graph, *pair, METRIC, method=method, steps=2, batch_size=bs)
            torch.testing.assert_close(part.scores, full.scores, atol=1e-6, rtol=1e-5)
            assert part.baseline == pytest.approx(full.baseline, abs=1e-6)
            assert part.info["n_batches"] == (3 if bs == 1 else 2)
            assert part.info["forwards"] == full.info["forwards"] * part.info["n_batches"]


@pytest.mark.parametrize("method", METHODS)
def test_passes_are_as_documented(gpt2_tiny, pair, method, monkeypatch):
    graph = Graph.from_model(gpt2_tiny)
    n_groups = 1 + 2 * gpt2_tiny.cfg.n_layers
    m = 3
    budget = {"eap": (2, 1), "relp": (2, 1), "clean-corrupted": (2, 2), "eap-ig-inputs": (1 + m, m),
              "eap-ig-activations": (2 + n_groups * m, n_groups * m)}[method]
    forwards, backwards = [], []
    real_grad = torch.autograd.grad

    def counting_grad(*args, **kwargs):
        backwards.append(1)
        return real_grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    with record("blocks.0.hook_resid_pre", lambda site, act: forwards.append(1)).applied(gpt2_tiny):
        s = edge_scores(gpt2_tiny, graph, *pair, METRIC, method=method, steps=m)
    assert (len(forwards), len(backwards)) == budget == (s.info["forwards"], s.info["backwards"])
    assert s.info.get("steps") == (m if method.startswith("eap-ig") else None)


def test_nothing_is_left_behind(pair):
    model = make_gpt2_style(seed=2).eval()
    flags = {f: getattr(model.cfg, f, None) for f in EDGE_FLAGS}
    graph = Graph.from_model(model)
    for method in METHODS:
        edge_scores(model, graph, *pair, METRIC, method=method, steps=2)
    assert count_hooks(model) == 0 and _no_grads(model)
    assert {f: getattr(model.cfg, f, None) for f in EDGE_FLAGS} == flags

    calls = []

    def failing(logits):  # fails in the middle of the second pass, with every hook attached
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return METRIC(logits)

    for method in ("eap-ig-inputs", "eap-ig-activations", "clean-corrupted"):
        calls.clear()
        with pytest.raises(RuntimeError, match="boom"):
            edge_scores(model, graph, *pair, failing, method=method, steps=2)
        assert count_hooks(model) == 0 and _no_grads(model)
        assert {f: getattr(model.cfg, f, None) for f in EDGE_FLAGS} == flags
    # hooks the caller attached stay attached, and see the forwards
    seen = []
    with Intervention((Hook("blocks.1.hook_resid_post", "record", {"sink": lambda s, a: seen.append(1)}),)
                      ).applied(model):
        edge_scores(model, graph, *pair, METRIC)
        assert count_hooks(model) == 1
    assert count_hooks(model) == 0 and len(seen) == 2


def test_frozen_parameters_give_the_same_scores(pair):
    # a model whose parameters do not require grad (a common way to load for inference) still has gradients
    # at its activations
    graph = Graph.from_model(make_gpt2_style(seed=2))
    want = {m: edge_scores(make_gpt2_style(seed=2).eval(), graph, *pair, METRIC, method=m, steps=2).scores
            for m in METHODS}
    frozen = make_gpt2_style(seed=2).eval().requires_grad_(False)
    for method in METHODS:
        torch.testing.assert_close(edge_scores(frozen, graph, *pair, METRIC, method=method, steps=2).scores,
                                   want[method], atol=1e-6, rtol=1e-5)


def test_scores_make_circuits(gpt2_tiny, pair):
    graph = Graph.from_model(gpt2_tiny)
    s = edge_scores(gpt2_tiny, graph, *pair, METRIC, method="eap-ig-inputs")
    assert s.method == "eap-ig-inputs" and bool(s.evaluated.all()) and s.seconds > 0
    top = s.top(5)
    assert abs(top[0][1]) == pytest.approx(float(s.scores.abs().max()))
    circuit = s.circuit(20)
    assert 0 < circuit.n_edges <= 20
    assert s.to_dict()["steps"] == 5 and s.to_dict()["n_prompts"] == 3
    # a metric that does not read the logits has no gradient: every score is zero, not an error
    flat = edge_scores(gpt2_tiny, graph, *pair, lambda logits: torch.ones(logits.shape[0]))
    assert bool((flat.scores == 0).all()) and flat.baseline == 1.0


# --------------------------------------------------------------------------- errors


def test_bad_inputs_are_refused_before_anything_runs(gpt2_tiny, pair):
    clean, corr = pair
    graph = Graph.from_model(gpt2_tiny)
    cases = [
        ({"method": "atp*"}, "method"),
        ({"steps": 0}, "steps"),
        ({"steps": True}, "steps"),
        ({"steps": 2.0}, "steps"),
        ({"rules": ("LN",)}, "relp"),
        ({"method": "eap-ig-inputs", "rules": ()}, "relp"),
        ({"method": "relp", "rules": ("LRP",)}, "RelP rule"),
        ({"direction": "both"}, "direction"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": True}, "batch_size"),
    ]
    for kw, match in cases:
        with pytest.raises(FuncnetError, match=match):
            edge_scores(gpt2_tiny, graph, clean, corr, METRIC, **kw)
    for a, b, match in [(clean, corr[:, :-1], "same shape"), (clean, corr[:2], "same shape"),
                        (clean, corr + 50, "vocabulary"), (clean - 100, corr, "vocabulary"),
                        (clean.float(), corr, "token ids"), (clean[0], corr[0], "token ids")]:
        with pytest.raises(FuncnetError, match=match):
            edge_scores(gpt2_tiny, graph, a, b, METRIC)
    with pytest.raises(FuncnetError, match="graph describes"):
        edge_scores(gpt2_tiny, Graph(3, 4), clean, corr, METRIC)
    with pytest.raises(FuncnetError, match="Graph"):
        edge_scores(gpt2_tiny, "graph", clean, corr, METRIC)
    with pytest.raises(FuncnetError, match="callable"):
        edge_scores(gpt2_tiny, graph, clean, corr, "logit_diff")
    for bad in (lambda logits: METRIC(logits).mean(), lambda logits: logits[:, -1, :2]):
        for method in METHODS:
            with pytest.raises(ShapeError, match="one value per prompt"):
                edge_scores(gpt2_tiny, graph, clean, corr, bad, method=method)
    with torch.inference_mode(), pytest.raises(FuncnetError, match="inference_mode"):
        edge_scores(gpt2_tiny, graph, clean, corr, METRIC)
    assert count_hooks(gpt2_tiny) == 0 and not gpt2_tiny.cfg.use_split_qkv_input
