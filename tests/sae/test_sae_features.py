"""SAE feature activations as Activations, and FunctionalNetworks on feature space."""

from __future__ import annotations

import torch

from sae_testing import make_sae
from tl_funcnet.funcnet import FunctionalNetworks
from tl_funcnet.sae import capture_features, collect_features, feature_site

SITE = "blocks.1.hook_mlp_out"


def test_collect_features_rows_match_capture_in_corpus_order(tiny_model):
    sae = make_sae("standard", hook_name=SITE)
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(0, 50, (n,), generator=g) for n in (5, 12, 8)]
    acts = collect_features(tiny_model, sae, seqs, batch_size=2)
    name = feature_site(SITE)
    assert acts.sites == (name,) and acts.width(name) == 48
    assert acts.offsets.tolist() == [0, 5, 17, 25]
    assert torch.equal(acts.token_ids, torch.cat(seqs))
    for i, s in enumerate(seqs):
        store = {}
        with capture_features(sae, store, key="f").applied(tiny_model):
            tiny_model(s[None])
        torch.testing.assert_close(acts[name][acts.sequence_rows(i)], store["f"][0], atol=1e-5, rtol=1e-5)


def test_functional_networks_fit_on_feature_space(gpt2_tiny):
    sae = make_sae("standard", hook_name=SITE, d_sae=40)
    toks = torch.randint(0, 50, (30, 12), generator=torch.Generator().manual_seed(3))
    acts = collect_features(gpt2_tiny, sae, toks)
    assert acts.n_samples == 360
    fn = FunctionalNetworks(4, threshold=2.0).fit(acts)
    assert fn.maps_.shape == (4, 40)
    assert fn.sources_.shape == (360, 4)
    assert bool(fn.masks_.any(1).all())  # every network has at least one member feature


def test_collect_features_site_override_and_truncation(gpt2_tiny):
    import pytest

    from tl_funcnet.errors import FuncnetError

    sae = make_sae("standard")  # no hook_name in its config
    toks = torch.randint(0, 50, (3, 10), generator=torch.Generator().manual_seed(5))
    with pytest.raises(FuncnetError, match="hook_name"):
        collect_features(gpt2_tiny, sae, toks)
    acts = collect_features(gpt2_tiny, sae, toks, site="blocks.0.hook_resid_post", max_tokens_per_seq=4)
    name = feature_site("blocks.0.hook_resid_post")
    assert acts.sites == (name,) and acts.offsets.tolist() == [0, 4, 8, 12]
    store = {}
    with capture_features(sae, store, site="blocks.0.hook_resid_post", key="f").applied(gpt2_tiny):
        gpt2_tiny(toks[:, :4])
    torch.testing.assert_close(acts[name], store["f"].reshape(12, 48), atol=1e-5, rtol=1e-5)
