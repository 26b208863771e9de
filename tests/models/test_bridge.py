"""TransformerBridge on tiny random Llama twins: hook names in both forms, saved forms, and parity with the
HookedTransformer holding the same weights (fast; the SmolLM2 matrix is in tests/integration)."""

from __future__ import annotations

import json

import pytest
import torch

from tl_funcnet.errors import FormatError, FuncnetError, UnknownSiteError
from tl_funcnet.hooks import Intervention, ablate, capture, patch, record, steer
from tl_funcnet.hooks.names import alias_map, canonical_name, is_bridge, legacy_name, site_on

pytestmark = pytest.mark.bridge


@pytest.fixture
def toks():
    return torch.randint(0, 50, (3, 8), generator=torch.Generator().manual_seed(3))


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def test_bridge_is_recognised_and_maps_names(bridge):
    assert is_bridge(bridge)
    aliases = alias_map(bridge)
    assert aliases["blocks.1.mlp.hook_post"] == "blocks.1.mlp.out.hook_in"
    assert aliases["blocks.0.hook_resid_post"] == "blocks.0.hook_out"
    assert aliases["blocks.0.attn.hook_z"] == "blocks.0.attn.o.hook_in"
    assert legacy_name(bridge, "blocks.1.mlp.out.hook_in") == "blocks.1.mlp.hook_post"
    assert canonical_name(bridge, "blocks.1.mlp.hook_pre") == "blocks.1.mlp.gate.hook_out"  # gated MLP
    assert site_on(bridge, "blocks.0.hook_out") == "blocks.0.hook_out"


@pytest.mark.parametrize("site", ["blocks.1.mlp.hook_post", "blocks.1.mlp.out.hook_in", "blocks.0.hook_resid_post",
                                  "blocks.0.hook_out", "blocks.1.attn.hook_z", "blocks.1.attn.o.hook_in"])
def test_each_hook_fires_exactly_once_per_forward(bridge, toks, site):
    calls = []
    with record(site, lambda s, act: calls.append(tuple(act.shape))).applied(bridge), torch.no_grad():
        bridge(toks)
    assert len(calls) == 1


def test_mlp_post_and_per_head_sites_have_the_hooked_shapes(bridge, toks):
    store = {}
    with capture(["blocks.0.mlp.out.hook_in", "blocks.0.attn.hook_z", "blocks.0.hook_out"], store).applied(bridge):
        with torch.no_grad():
            bridge(toks)
    assert store["blocks.0.mlp.out.hook_in"].shape == (3, 8, 32)
    assert store["blocks.0.attn.hook_z"].shape == (3, 8, 4, 4)
    assert store["blocks.0.hook_out"].shape == (3, 8, 16)


def test_saved_intervention_records_the_alias_table_and_applies_on_the_bridge(bridge, toks, tmp_path):
    iv = ablate("blocks.1.mlp.out.hook_in", units=[1, 4]) + steer("blocks.0.hook_resid_post", torch.ones(16))
    iv.save(tmp_path / "iv")
    data = json.loads((tmp_path / "iv" / "intervention.json").read_text())
    names = data["hook_names"]
    assert names["transformer_lens"] and names["aliases"]["gated"]["mlp.hook_post"] == "mlp.out.hook_in"
    back = Intervention.load(tmp_path / "iv")
    with torch.no_grad():
        with iv.applied(bridge):
            want = bridge(toks)
        with back.applied(bridge):
            got = bridge(toks)
    assert torch.equal(want, got)


def test_an_alias_table_that_disagrees_with_this_transformer_lens_is_refused(tmp_path):
    ablate("blocks.1.mlp.out.hook_in", units=[1]).save(tmp_path / "iv")
    meta = tmp_path / "iv" / "intervention.json"
    data = json.loads(meta.read_text())
    data["hook_names"]["aliases"]["gated"]["mlp.hook_post"] = "mlp.down.hook_in"
    data["hook_names"]["transformer_lens"] = "9.9.9"
    meta.write_text(json.dumps(data))
    with pytest.raises(FormatError, match=r"mlp.hook_post.*mlp.down.hook_in.*mlp.out.hook_in"):
        Intervention.load(tmp_path / "iv")


def test_unknown_names_say_both_forms_and_attach_nothing(bridge, twin, toks):
    from tl_testing import count_hooks

    with pytest.raises(UnknownSiteError, match="blocks.0.mlp.gate.hook_in"):
        with ablate("blocks.0.mlp.gate.hook_in", units=[0]).applied(twin):
            pass
    with pytest.raises(UnknownSiteError, match=r"blocks.7.hook_out.*blocks.7.hook_resid_post"):
        with steer("blocks.7.hook_out", torch.ones(16)).applied(bridge):
            pass
    assert count_hooks(twin) == 0 and count_hooks(bridge) == 0


def test_canonical_names_apply_on_a_hooked_transformer(bridge, twin, toks):
    iv = ablate("blocks.1.mlp.out.hook_in", units=[2, 5]) + steer("blocks.0.hook_out", torch.ones(16), scale=0.5)
    with torch.no_grad():
        with iv.applied(twin):
            a = twin(toks)
        with iv.applied(bridge):
            b = bridge(toks)
    assert _rel(b, a) < 1e-4


INTERVENTIONS = {
    "neurons": lambda: ablate("blocks.0.mlp.hook_post", units=[0, 3, 7]),
    "resid": lambda: steer("blocks.1.hook_resid_pre", torch.linspace(-1, 1, 16), scale=2.0),
    "heads": lambda: ablate("blocks.1.attn.hook_z", units=[1, 2]),
    "head_outputs": lambda: ablate("blocks.0.attn.hook_result", units=[3]),
    "attn_out": lambda: ablate("blocks.0.hook_attn_out", mode="mean", values=torch.zeros(16)),
    "patch": lambda: patch("blocks.1.hook_mlp_out", torch.zeros(3, 8, 16), pos=[2, 5]),
}


@pytest.mark.parametrize("name", sorted(INTERVENTIONS))
def test_the_same_intervention_gives_the_same_logits_on_both_classes(bridge, twin, toks, name):
    iv = INTERVENTIONS[name]()
    with torch.no_grad():
        base = twin(toks)
        with iv.applied(twin):
            a = twin(toks)
        with iv.applied(bridge):
            b = bridge(toks)
    assert not torch.allclose(a, base)  # the intervention does something
    assert _rel(b, a) < 1e-4


def test_stopping_after_the_last_block_gives_the_final_residual(bridge, twin, toks):
    from tl_funcnet.models.surface import final_resid, run_to_layer, starts_at_layer

    assert not starts_at_layer(bridge) and starts_at_layer(twin)
    with torch.no_grad():
        assert _rel(final_resid(bridge, toks), final_resid(twin, toks)) < 1e-4
        assert _rel(run_to_layer(bridge, toks, 1), twin(toks, stop_at_layer=1)) < 1e-4


def test_hard_pruning_the_wrapped_mlp_equals_the_soft_intervention(bridge, twin):
    from tl_funcnet import pruning
    from tl_funcnet.evaluate import evaluate

    g = torch.Generator().manual_seed(0)
    texts = [torch.randint(0, 50, (int(torch.randint(4, 12, (1,), generator=g)),), generator=g) for _ in range(12)]
    kw = dict(protect_first=0, protect_last=0)
    plan_b = pruning.plan_pruning(bridge, 0.25, "wanda", pruning.Calibration.from_texts(bridge, texts, max_tokens=None), **kw)
    plan_h = pruning.plan_pruning(twin, 0.25, "wanda", pruning.Calibration.from_texts(twin, texts, max_tokens=None), **kw)
    assert all(torch.equal(a, b) for a, b in zip(plan_b.pruned, plan_h.pruned))
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(plan_b.means, plan_h.means))
    small = pruning.hard_prune(bridge, plan_b)
    assert [int(small.blocks[l].mlp.W_out.shape[0]) for l in range(2)] == [24, 24]
    assert int(bridge.blocks[0].mlp.W_out.shape[0]) == 32  # the input model is untouched
    soft = evaluate(bridge, texts, plan_b.to_intervention(), compare_to_base=False, progress=False).loss
    hard = evaluate(small, texts, compare_to_base=False, progress=False).loss
    hooked = evaluate(pruning.hard_prune(twin, plan_h), texts, compare_to_base=False, progress=False).loss
    assert hard == pytest.approx(soft, rel=1e-5) and hard == pytest.approx(hooked, rel=1e-4)


def test_raw_weights_are_recorded_and_fingerprints_refuse_to_mix(bridge):
    from tl_testing import make_bridge_llama

    from tl_funcnet.fingerprint import compare, fingerprint
    from tl_funcnet.models.digest import model_digest, weights_processing

    raw = make_bridge_llama(compatibility=False)
    assert weights_processing(raw) == "raw" and weights_processing(bridge) == "processed"
    assert model_digest(raw) != model_digest(bridge)
    texts = ["the cat sat on the mat and looked at the dog " * 2, "one two three four five six seven " * 2]
    a = fingerprint(bridge, texts, n_networks=4, tokenizer="chars", max_tokens_per_text=10)
    b = fingerprint(raw, texts, n_networks=4, tokenizer="chars", max_tokens_per_text=10)
    assert a.model["weights"] == "processed" and b.model["weights"] == "raw"
    with pytest.raises(FuncnetError, match="processed weights.*raw weights.*compatibility"):
        compare(a, b)


def test_generation_on_the_bridge_matches_uncached_generation(bridge):
    from tl_funcnet.models.surface import kv_cache_works
    from tl_funcnet.steering import generate

    assert isinstance(kv_cache_works(bridge), bool)
    prompt = torch.arange(1, 6)[None]
    iv = steer("blocks.0.hook_resid_post", torch.linspace(-1, 1, 16), scale=3.0)
    got = generate(bridge, prompt, iv, max_new_tokens=5, return_tokens=True)
    with iv.applied(bridge), torch.no_grad():
        want = bridge.generate(prompt, max_new_tokens=5, use_past_kv_cache=False, do_sample=False, verbose=False,
                               stop_at_eos=False)
    assert torch.equal(got, want)


def test_circuit_graphs_of_a_grouped_query_bridge_say_why(bridge):
    from tl_funcnet.circuits import Graph

    for split in (True, False):
        with pytest.raises(FuncnetError, match="grouped-query.*backend='hooked'"):
            Graph.from_model(bridge, split_qkv=split)


@pytest.mark.parametrize("method", ["eap", "eap-ig-inputs", "relp"])
def test_edge_scores_agree_on_a_bridge_without_grouped_query_attention(method):
    from tl_testing import has_hooked_transformer, make_bridge_llama, make_hooked_twin

    from tl_funcnet.circuits import Graph, edge_scores, exact_edge_scores
    from tl_funcnet.patching import logit_diff

    bridge = make_bridge_llama(n_kv=4)
    models = [bridge] + ([make_hooked_twin(n_kv=4)] if has_hooked_transformer() else [])
    g = torch.Generator().manual_seed(5)
    clean, corrupted = torch.randint(0, 50, (2, 2, 6), generator=g)
    metric = logit_diff(torch.tensor([3, 7]), torch.tensor([9, 11]))
    rules = {"rules": ("AH", "Identity", "Half")} if method == "relp" else {}
    if method == "relp":
        with pytest.raises(FuncnetError, match="LN rule"):
            edge_scores(bridge, Graph.from_model(bridge), clean, corrupted, metric, method="relp")
    scores = [edge_scores(m, Graph.from_model(m), clean, corrupted, metric, method=method, **rules).scores
              for m in models]
    assert scores[0].abs().max() > 0
    if len(scores) == 2:
        assert _rel(scores[0], scores[1]) < 1e-4
    exact = exact_edge_scores(bridge, Graph.from_model(bridge), clean, corrupted, metric).scores
    assert exact.abs().max() > 0 and not exact.isnan().any()


def test_load_bridge_rejects_bad_options_before_loading():
    from tl_funcnet.models import load

    with pytest.raises(FuncnetError, match="backend should be one of"):
        load("smollm2-135m", backend="tl4")
    with pytest.raises(FuncnetError, match="unexpected keyword"):
        load("smollm2-135m", backend="bridge", fold_ln=True)
    with pytest.raises(FuncnetError, match="compatibility should be True or False"):
        load("smollm2-135m", backend="bridge", compatibility="yes")


def test_a_saved_bridge_loads_back_as_the_same_bridge(bridge, toks, tmp_path):
    from tl_funcnet import pruning
    from tl_funcnet.models import load, save

    save(bridge, tmp_path / "m")
    back = load(tmp_path / "m")
    assert is_bridge(back) and back.compatibility_mode and not back.cfg.default_prepend_bos
    with torch.no_grad():
        assert _rel(back(toks), bridge(toks)) < 1e-5
    with pytest.raises(FuncnetError, match="backend='bridge'"):
        load(tmp_path / "m", backend="hooked")
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, 50, (8,), generator=g) for _ in range(6)]
    plan = pruning.plan_pruning(bridge, 0.25, "wanda", pruning.Calibration.from_texts(bridge, seqs, max_tokens=None),
                                protect_first=0, protect_last=0)
    small = pruning.hard_prune(bridge, plan)
    save(small, tmp_path / "small")
    again = load(tmp_path / "small")
    assert [int(b.mlp.W_out.shape[0]) for b in again.blocks] == [24, 24]
    with torch.no_grad():
        assert _rel(again(toks), small(toks)) < 1e-5


def test_device_map_goes_to_hugging_faces_dispatcher(monkeypatch):
    """The embedded model is read with ``device_map`` (and ``max_memory``) when given, and booted without
    moving it; a hub model gets them at boot. Checked by recording the calls (no GPU here)."""
    import transformers
    from transformer_lens.model_bridge import TransformerBridge

    from tl_funcnet.models import load

    seen = {}

    class Stop(Exception):
        pass

    def fake_from_pretrained(*args, **kwargs):
        seen["hf"] = kwargs
        raise Stop

    def fake_boot(name, **kwargs):
        seen["boot"] = (name, kwargs)
        raise Stop

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_from_pretrained)
    monkeypatch.setattr(TransformerBridge, "boot_transformers", fake_boot)
    with pytest.raises(Stop):
        load("smollm2-135m", backend="bridge", device_map="auto", max_memory={0: "10GiB", "cpu": "30GiB"})
    assert seen["hf"]["device_map"] == "auto" and seen["hf"]["max_memory"] == {0: "10GiB", "cpu": "30GiB"}
    with pytest.raises(Stop):
        load("org/some-model", backend="bridge", device_map="auto", n_devices=2)
    name, kwargs = seen["boot"]
    assert name == "org/some-model" and kwargs["device_map"] == "auto" and kwargs["n_devices"] == 2
    assert kwargs["device"] is None
    with pytest.raises(FuncnetError, match="n_devices applies to hub models"):
        load("smollm2-135m", backend="bridge", n_devices=2)


def test_fingerprint_transforms_that_edit_tl_parameters_refuse_a_bridge(bridge, toks):
    from tl_funcnet.fingerprint import transforms

    for name, kw in (("rotate_residual", {}), ("widen_mlp", {"extra": 2}), ("drop_layer", {"layer": 0}),
                     ("random_init", {})):
        with pytest.raises(FuncnetError, match="backend='hooked'"):
            getattr(transforms, name)(bridge, **kw)
    permuted = transforms.permute_mlp(bridge)  # function-preserving on both classes
    with torch.no_grad():
        assert _rel(permuted(toks), bridge(toks)) < 1e-5


def test_a_name_the_hub_cannot_give_is_a_clear_error_with_close_names(capsys):
    from tl_funcnet.cli import main
    from tl_funcnet.models import load

    with pytest.raises(FuncnetError, match=r"could not boot 'smolm2'.*did you mean \['smollm2'"):
        load("smolm2", backend="bridge")  # offline here: the hub lookup fails at once
    assert main(["patch", "--backend", "bridge", "--model", "smolm2", "--task", "capital"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tl-funcnet patch: error: could not boot 'smolm2'") and len(err.splitlines()) == 1
