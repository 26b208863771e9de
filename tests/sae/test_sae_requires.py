"""SAE features without sae-lens (the TransformerLens 4 lane has none): training and loading say what they need;
the ops, which act on an SAE's tensors, run on a TransformerBridge."""

from __future__ import annotations

import sys

import pytest
import torch

from tl_funcnet.errors import FuncnetError

pytestmark = pytest.mark.bridge


def test_training_and_loading_say_they_need_sae_lens(monkeypatch, tmp_path):
    from tl_funcnet.sae import load_sae, require_sae_lens, train_sae

    monkeypatch.setitem(sys.modules, "sae_lens", None)  # as if it were not installed
    with pytest.raises(FuncnetError, match=r"needs sae-lens, which requires transformer-lens<4.*tl_funcnet\[sae\]"):
        require_sae_lens("training an SAE")
    with pytest.raises(FuncnetError, match="needs sae-lens"):
        load_sae(tmp_path)
    with pytest.raises(FuncnetError, match="needs sae-lens"):
        train_sae(None, "blocks.0.hook_resid_post")


def test_sae_ops_from_tensors_run_on_a_bridge():
    from tl_testing import make_bridge_llama

    from tl_funcnet.sae import ablate_features, splice

    bridge = make_bridge_llama()
    g = torch.Generator().manual_seed(0)
    params = {"architecture": "standard", "d_in": 16, "d_sae": 24, "W_enc": torch.randn(16, 24, generator=g),
              "W_dec": torch.randn(24, 16, generator=g), "b_enc": torch.zeros(24), "b_dec": torch.zeros(16),
              "apply_b_dec_to_input": False, "normalize_activations": "none", "reshape_activations": "none",
              "hook_name": "blocks.0.hook_resid_post"}
    toks = torch.randint(0, 50, (2, 6), generator=g)
    with torch.no_grad():
        base = bridge(toks)
        with splice(params, use_error_term=True).applied(bridge):
            same = bridge(toks)
        with ablate_features(params, [0, 1, 2]).applied(bridge):
            edited = bridge(toks)
    assert torch.allclose(same, base, atol=1e-5) and not torch.allclose(edited, base, atol=1e-5)


def test_sae_lens_bridge_class_takes_the_same_interventions_and_patching():
    """sae-lens's SAETransformerBridge registers an attached SAE's hook points under the canonical site name
    (``blocks.0.hook_out.hook_sae_acts_post``); the legacy form works the same."""
    sae_lens = pytest.importorskip("sae_lens")
    from sae_testing import make_sae
    from tl_testing import _tiny_hf_llama

    from tl_funcnet.hooks import ablate
    from tl_funcnet.hooks.sites import site_shape
    from tl_funcnet.models import locate
    from tl_funcnet.models.smollm2 import gguf_tokenizer
    from tl_funcnet.patching import exact_patch, logit_diff, sae_feature_nodes

    model = sae_lens.SAETransformerBridge.boot_transformers("tiny-llama", hf_model=_tiny_hf_llama(0),
                                                           tokenizer=gguf_tokenizer(locate("smollm2-135m")))
    model.enable_compatibility_mode(disable_warnings=True)
    model.add_sae(make_sae(d_in=16, d_sae=24, hook_name="blocks.0.hook_resid_post"), use_error_term=True)
    site = "blocks.0.hook_resid_post.hook_sae_acts_post"
    assert site_shape(model, site) == (24,) == site_shape(model, "blocks.0.hook_out.hook_sae_acts_post")
    g = torch.Generator().manual_seed(2)
    toks = torch.randint(0, 50, (2, 5), generator=g)
    with torch.no_grad():
        base = model(toks)
        with ablate(site, units=[1, 2, 3]).applied(model):
            edited = model(toks)
    assert not torch.allclose(base, edited)
    clean, corrupted = torch.randint(0, 50, (2, 2, 5), generator=g)
    result = exact_patch(model, clean, corrupted, sae_feature_nodes("blocks.0.hook_resid_post", [1, 2, 3]),
                         logit_diff([1, 2], [3, 4]))
    assert result.effects.shape == (3,) and result.effects.abs().max() > 0
