"""Steering-vector builders and conversion to interventions, on tiny random models."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from tl_funcnet.errors import FuncnetError
from tl_funcnet.hooks import Intervention, capture
from tl_funcnet.steering import (SteeringVector, entropy_weighted, from_network, from_sae, mean_difference,
                                 mean_differences, pca_direction, random_like, read_examples)
from tl_funcnet.steering.builders import entropy_weighted_of, pca_direction_of


def _prompts(seed: int, n: int, length: int = 6) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 50, (length,), generator=g).tolist() for _ in range(n)]


POS, NEG = _prompts(1, 5), _prompts(2, 5)
R0, R1 = "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"


def _resid(model, prompts, layer):
    _, cache = model.run_with_cache(torch.tensor(prompts), names_filter=f"blocks.{layer}.hook_resid_post")
    return cache[f"blocks.{layer}.hook_resid_post"]


def _delta(model, tokens, iv, site=R0):
    """What ``iv`` adds to the activation at ``site`` (batch, pos, d)."""
    base, got = {}, {}
    with capture(site, base).applied(model):
        model(tokens)
    with (iv + capture(site, got)).applied(model):
        model(tokens)
    return got[site] - base[site]


def test_mean_difference_matches_manual_cache(tiny_model):
    sv = mean_difference(tiny_model, POS, NEG, R1)
    a, b = _resid(tiny_model, POS, 1), _resid(tiny_model, NEG, 1)
    torch.testing.assert_close(sv.vector, a[:, -1].mean(0) - b[:, -1].mean(0), rtol=1e-4, atol=1e-5)
    assert sv.site == R1 and sv.layer == 1
    assert sv.provenance["method"] == "mean_difference" and sv.provenance["n_positive"] == 5
    sv_mean = mean_difference(tiny_model, POS, NEG, R0, reduce="mean")
    a, b = _resid(tiny_model, POS, 0), _resid(tiny_model, NEG, 0)
    torch.testing.assert_close(sv_mean.vector, a.mean((0, 1)) - b.mean((0, 1)), rtol=1e-4, atol=1e-5)


def test_mean_difference_at_a_non_residual_site(gpt2_tiny):
    site = "blocks.1.mlp.hook_post"
    sv = mean_difference(gpt2_tiny, POS, NEG, site)
    _, ca = gpt2_tiny.run_with_cache(torch.tensor(POS), names_filter=site)
    _, cb = gpt2_tiny.run_with_cache(torch.tensor(NEG), names_filter=site)
    assert sv.site == site and sv.d == 32
    torch.testing.assert_close(sv.vector, ca[site][:, -1].mean(0) - cb[site][:, -1].mean(0), rtol=1e-4, atol=1e-5)


def test_mean_difference_refuses_a_suffix_naming_several_hooks(gpt2_tiny):
    with pytest.raises(FuncnetError, match="names 2 hooks"):
        mean_difference(gpt2_tiny, POS, NEG, "hook_resid_post")
    with pytest.raises(FuncnetError, match="names 2 hooks"):
        pca_direction(gpt2_tiny, POS, NEG, "hook_resid_post")
    with pytest.raises(FuncnetError, match="names 2 hooks"):
        entropy_weighted(gpt2_tiny, POS, "mlp.hook_post", entropies=[1.0] * 5)
    # a suffix that names one hook (the model has one layer) is that hook
    from tl_testing import make_gpt2_style

    one = make_gpt2_style(n_layers=1).eval()
    assert mean_difference(one, POS, NEG, "hook_resid_post").site == R0


def test_read_examples_handles_unequal_lengths(gpt2_tiny):
    texts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    got = read_examples(gpt2_tiny, texts, [R0, R1], reduce="last")
    assert set(got) == {R0, R1}
    for i, t in enumerate(texts):
        for layer, site in enumerate((R0, R1)):
            torch.testing.assert_close(got[site][i], _resid(gpt2_tiny, [t], layer)[0, -1], rtol=1e-4, atol=1e-5)
    mean = read_examples(gpt2_tiny, texts, [R1], reduce="mean")[R1]
    torch.testing.assert_close(mean[0], _resid(gpt2_tiny, [texts[0]], 1)[0].mean(0), rtol=1e-4, atol=1e-5)


def test_mean_differences_returns_one_vector_per_site(gpt2_tiny):
    vs = mean_differences(gpt2_tiny, POS, NEG[:3], "hook_resid_post", layers=[1, 0], paired=False)
    assert list(vs) == [R1, R0]  # in the order of layers=
    for site, sv in vs.items():
        assert sv.site == site
        torch.testing.assert_close(sv.vector, mean_difference(gpt2_tiny, POS, NEG[:3], site, paired=False).vector)
    assert list(mean_differences(gpt2_tiny, POS, NEG)) == [R0, R1]  # default: hook_resid_post of every layer
    assert list(mean_differences(gpt2_tiny, POS, NEG, "hook_resid_post", layers=[1])) == [R1]
    assert list(mean_differences(gpt2_tiny, POS, NEG, "mlp.hook_post", layers=[0])) == ["blocks.0.mlp.hook_post"]
    named = mean_differences(gpt2_tiny, POS, NEG, [R1, "blocks.0.hook_mlp_out"])
    assert list(named) == [R1, "blocks.0.hook_mlp_out"]
    with pytest.raises(FuncnetError, match="negative index"):
        mean_differences(gpt2_tiny, POS, NEG, layers=[-1])
    with pytest.raises(FuncnetError, match="out of range"):
        mean_differences(gpt2_tiny, POS, NEG, layers=[2])
    with pytest.raises(FuncnetError, match="layers= does not apply"):
        mean_differences(gpt2_tiny, POS, NEG, R0, layers=[0])


def test_pca_direction_of_recovers_planted_direction_with_sign():
    g = torch.Generator().manual_seed(0)
    u = torch.zeros(8)
    u[3] = 1.0
    diffs = (2.0 + torch.randn(40, 1, generator=g) * 0.5) * u + 0.05 * torch.randn(40, 8, generator=g)
    v = pca_direction_of(diffs)
    assert float(torch.nn.functional.cosine_similarity(v, u, dim=0)) > 0.99
    assert abs(float(v @ u) - float(diffs[:, 3].mean())) < 0.05
    assert float(pca_direction_of(-diffs) @ u) < 0  # sign follows the mean difference


def test_pca_direction_aligned_with_mean_difference(tiny_model):
    md = mean_difference(tiny_model, POS, NEG, R1)
    pc = pca_direction(tiny_model, POS, NEG, R1)
    assert pc.cosine(md) > 0 and pc.site == R1
    assert pc.provenance["method"] == "pca"


def test_entropy_weighted_formula_oracle():
    acts = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    h = torch.tensor([2.0, 1.0, 1.0])
    expected = 0.5 * acts[0] + 0.25 * acts[1] + 0.25 * acts[2] - acts.mean(0)
    torch.testing.assert_close(entropy_weighted_of(acts, h), expected)
    torch.testing.assert_close(entropy_weighted_of(acts, torch.ones(3)), torch.zeros(2))


def test_entropy_weighted_on_model(tiny_model):
    texts = POS + NEG
    sv = entropy_weighted(tiny_model, texts, R1, entropies=torch.arange(1.0, 11.0))
    a = _resid(tiny_model, texts, 1)[:, -1]
    w = torch.arange(1.0, 11.0) / 55.0
    torch.testing.assert_close(sv.vector, (w[:, None] * a).sum(0) - a.mean(0), rtol=1e-4, atol=1e-5)
    auto = entropy_weighted(tiny_model, texts, R1)  # the model's own next-token entropies
    assert auto.provenance["entropy_source"] == "model_next_token" and auto.norm > 0


def test_from_sae_reads_decoder_row_and_hook_name():
    w = torch.randn(10, 16)
    new = SimpleNamespace(W_dec=w, cfg=SimpleNamespace(metadata=SimpleNamespace(hook_name=R1)))
    old = SimpleNamespace(W_dec=w, cfg=SimpleNamespace(hook_name=R0))
    sv = from_sae(new, 3)
    torch.testing.assert_close(sv.vector, w[3])
    assert sv.site == R1 and from_sae(old, 3).site == R0
    with pytest.raises(FuncnetError, match="out of range"):
        from_sae(new, 10)
    with pytest.raises(FuncnetError, match="pass site"):
        from_sae(SimpleNamespace(W_dec=w), 0)


def test_from_network_amplifies_network_units(gpt2_tiny):
    from tl_funcnet.activations import collect
    from tl_funcnet.funcnet import FunctionalNetworks

    toks = [torch.randint(0, 50, (12,), generator=torch.Generator().manual_seed(i)).tolist() for i in range(20)]
    sites = ["blocks.0.mlp.hook_post", "blocks.1.mlp.hook_post"]
    fn = FunctionalNetworks(3, threshold=1.5, random_state=0).fit(collect(gpt2_tiny, toks, sites, progress=False))
    nid = int(fn.masks_.sum(1).argmax())
    sv = from_network(fn, nid)
    units = fn.site_units(fn.masks_[nid])[sv.site]
    assert sv.d == 32 and set(sv.vector.nonzero().flatten().tolist()) == set(units.tolist())
    assert float(sv.vector.sum()) == len(units)
    x = torch.tensor(toks[:2])
    with fn.to_intervention("amplify", ids=[nid], value=0.7).applied(gpt2_tiny):
        ref = gpt2_tiny(x)
    iv = Intervention()
    for s, u in fn.site_units(fn.masks_[nid]).items():
        if len(u):
            iv = iv + from_network(fn, nid, site=s).to_intervention(0.7)
    with iv.applied(gpt2_tiny):
        torch.testing.assert_close(gpt2_tiny(x), ref)
    with pytest.raises(FuncnetError, match="out of range"):
        from_network(fn, 99)


def test_to_intervention_every_position_equals_manual_addition(tiny_model, tokens):
    sv = SteeringVector(torch.randn(16), R0, {"method": "test"})

    def manual(act, hook):
        return act + 2.5 * sv.vector

    ref = tiny_model.run_with_hooks(tokens, fwd_hooks=[(R0, manual)])
    for iv in (sv.to_intervention(2.5), sv.to_intervention(2.5, pos=None)):  # pos=None is every position
        with iv.applied(tiny_model):
            torch.testing.assert_close(tiny_model(tokens), ref)


def test_to_intervention_core_positions(gpt2_tiny, tokens):
    sv = SteeringVector(torch.full((16,), 2.0), R0)
    last = _delta(gpt2_tiny, tokens, sv.to_intervention(1.0, "last"))  # the last position of each forward
    torch.testing.assert_close(last[:, -1], sv.vector.expand(3, 16))
    assert float(last[:, :-1].abs().max()) == 0.0
    some = _delta(gpt2_tiny, tokens, sv.to_intervention(1.0, [0, -2]))
    assert (some[0, :, 0] != 0).nonzero().flatten().tolist() == [0, 8]
    per_row = _delta(gpt2_tiny, tokens, sv.to_intervention(1.0, torch.tensor([1, 4, 9])))
    assert [(per_row[b, :, 0] != 0).nonzero().flatten().tolist() for b in range(3)] == [[1], [4], [9]]
    window = _delta(gpt2_tiny, tokens, sv.to_intervention(1.0, {"slice": [2, 5]}))
    assert (window[0, :, 0] != 0).nonzero().flatten().tolist() == [2, 3, 4]


def test_to_intervention_normalize_and_layers(gpt2_tiny, tokens):
    sv = SteeringVector(torch.full((16,), 2.0), R0)
    iv = sv.to_intervention(3.0, normalize=True, layers=[0, 1], model=gpt2_tiny)
    assert [h.site for h in iv] == [R0, R1]
    assert abs(float(iv.hooks[0].params["vector"].norm()) - 1.0) < 1e-6
    assert [h.site for h in sv.to_intervention(1.0, layers=1)] == [R1]
    d = _delta(gpt2_tiny, tokens, sv.to_intervention(3.0, normalize=True))
    torch.testing.assert_close(d, (3.0 * sv.unit).expand(3, 10, 16))
    mlp = SteeringVector(torch.ones(16), "hook_embed")
    with pytest.raises(FuncnetError, match="not per-layer"):
        mlp.to_intervention(1.0, layers=[0])


def test_intervention_round_trips_through_dict(gpt2_tiny, tokens):
    sv = SteeringVector(torch.randn(16), R1)
    iv = sv.to_intervention(2.0, "generated", prompt_len=4) + sv.to_intervention(1.0) + \
        sv.to_intervention(0.5, "last")
    back = Intervention.from_dict(json.loads(json.dumps(iv.to_dict())), iv.tensors())
    assert back.allclose(iv)
    with iv.applied(gpt2_tiny):
        ref = gpt2_tiny(tokens)
    with back.applied(gpt2_tiny):
        torch.testing.assert_close(gpt2_tiny(tokens), ref)
    again = SteeringVector.from_dict(json.loads(json.dumps(sv.to_dict())))
    torch.testing.assert_close(again.vector, sv.vector)
    assert again.site == sv.site


def test_random_like_same_norm_site_and_reproducible():
    sv = SteeringVector(torch.randn(16) * 5, R0)
    r = random_like(sv, random_state=1)
    assert abs(r.norm - sv.norm) < 1e-4 and r.site == sv.site and abs(r.cosine(sv)) < 0.9
    assert r.provenance["random_state"] == 1 and r.provenance["method"] == "random"
    torch.testing.assert_close(random_like(sv, random_state=1).vector, r.vector)
    torch.testing.assert_close(random_like(sv).vector, random_like(sv, random_state=0).vector)  # default 0
    assert random_like(sv, random_state=2).cosine(r) < 0.99
    state = torch.random.get_rng_state()
    random_like(sv, random_state=3)
    assert torch.equal(state, torch.random.get_rng_state())  # a local generator: the global RNG is untouched
