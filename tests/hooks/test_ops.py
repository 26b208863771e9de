"""Each op against a hand oracle, positions and padding, and the other hooked model classes."""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch

from tl_testing import count_hooks, guard
from tl_funcnet.hooks import (ablate, capture, clamp, custom, keep_only, last_token_positions, patch, project_onto,
                              project_out, scale, steer)

POST = "blocks.0.mlp.hook_post"
RESID = "blocks.0.hook_resid_post"


def captured(model, tokens, iv, site):
    store: dict = {}
    with (iv + capture(site, store)).applied(model):
        model(tokens)
    return store[site]


def test_ablate_neuron_equals_zeroed_w_out_row(tiny_model, tokens):
    j = 7
    with ablate(POST, units=[j]).applied(tiny_model):
        ours = tiny_model(tokens)
    edited = copy.deepcopy(tiny_model)
    with torch.no_grad():
        edited.blocks[0].mlp.W_out[j].zero_()
    torch.testing.assert_close(ours, edited(tokens), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours, tiny_model(tokens), atol=1e-5)


def test_patch_matches_transformer_lens_patching(gpt2_tiny):
    from transformer_lens import patching

    g = torch.Generator().manual_seed(3)
    clean = torch.randint(0, 50, (1, 6), generator=g)
    corrupt = clean.clone()
    corrupt[0, 2] = (corrupt[0, 2] + 5) % 50
    _, clean_cache = gpt2_tiny.run_with_cache(clean)

    def metric(logits):
        return logits[0, -1, 3] - logits[0, -1, 4]

    expected = patching.get_act_patch_resid_pre(gpt2_tiny, corrupt, clean_cache, metric)
    ours = torch.zeros_like(expected)
    for layer in range(gpt2_tiny.cfg.n_layers):
        site = f"blocks.{layer}.hook_resid_pre"
        for p in range(clean.shape[1]):
            with patch(site, clean_cache[site][0], pos=[p]).applied(gpt2_tiny):
                ours[layer, p] = metric(gpt2_tiny(corrupt))
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    assert count_hooks(gpt2_tiny) == 0


def test_ablate_heads_on_hook_z_gqa(llama_tiny, tokens):
    site = "blocks.1.attn.hook_z"

    def manual(z, hook):
        z = z.clone()
        z[:, :, [1, 3]] = 0
        return z

    with ablate(site, units=[1, 3]).applied(llama_tiny):
        ours = llama_tiny(tokens)
    with custom(site, manual).applied(llama_tiny):
        oracle = llama_tiny(tokens)
    torch.testing.assert_close(ours, oracle)
    z = captured(llama_tiny, tokens, ablate(site, units=[1, 3]), site)
    assert z.shape == (3, 10, 4, 4) and z[:, :, [1, 3]].abs().sum() == 0 and z[:, :, 0].abs().sum() > 0


def test_ablate_mean_and_keep_only(gpt2_tiny, tokens):
    values = torch.arange(32, dtype=torch.float32)
    a = captured(gpt2_tiny, tokens, ablate(POST, units=[2, 5], mode="mean", values=values), POST)
    assert torch.all(a[..., 2] == 2.0) and torch.all(a[..., 5] == 5.0)
    k = captured(gpt2_tiny, tokens, keep_only(POST, units=[4, 9]), POST)
    base = captured(gpt2_tiny, tokens, ablate(POST, units=[]), POST)
    others = [i for i in range(32) if i not in (4, 9)]
    assert k[..., others].abs().sum() == 0
    torch.testing.assert_close(k[..., [4, 9]], base[..., [4, 9]])


def test_ablate_bool_mask_equals_index_list(gpt2_tiny, tokens):
    mask = torch.zeros(32, dtype=torch.bool)
    mask[[3, 8, 30]] = True
    a = captured(gpt2_tiny, tokens, ablate(POST, units=mask), POST)
    b = captured(gpt2_tiny, tokens, ablate(POST, units=[3, 8, 30]), POST)
    assert torch.equal(a, b)


def test_steer_last_position_only_changes_last_logits(llama_tiny, tokens):
    base = llama_tiny(tokens)
    with steer(RESID, torch.randn(16), scale=5.0, pos="last").applied(llama_tiny):
        out = llama_tiny(tokens)
    torch.testing.assert_close(out[:, :-1], base[:, :-1])
    assert (out[:, -1] - base[:, -1]).abs().max() > 1e-3


def test_positions_per_row_for_right_padding(gpt2_tiny, tokens):
    mask = torch.tensor([[1] * 10, [1] * 6 + [0] * 4, [1] * 8 + [0] * 2])
    last = last_token_positions(mask)
    assert last.tolist() == [9, 5, 7]
    vec = torch.ones(16)
    a = captured(gpt2_tiny, tokens, steer(RESID, vec, pos=last), RESID)
    b = captured(gpt2_tiny, tokens, ablate(RESID, units=[]), RESID)
    changed = (a - b).abs().sum(-1) > 0
    expected = torch.zeros(3, 10, dtype=torch.bool)
    expected[torch.arange(3), last] = True
    assert torch.equal(changed, expected)


@pytest.mark.parametrize("pos, idx", [([1, 4], [1, 4]), ({"slice": [2, 5, None]}, [2, 3, 4]), (0, [0])])
def test_scale_positions(gpt2_tiny, tokens, pos, idx):
    a = captured(gpt2_tiny, tokens, scale(RESID, 3.0, pos=pos), RESID)
    b = captured(gpt2_tiny, tokens, ablate(RESID, units=[]), RESID)
    changed = ((a - b).abs().sum(-1) > 0).any(0)
    assert changed.nonzero().flatten().tolist() == idx
    torch.testing.assert_close(a[:, idx], 3.0 * b[:, idx])


def test_project_out_and_onto(gpt2_tiny, tokens):
    d = torch.randn(2, 16, dtype=torch.float32)
    out = captured(gpt2_tiny, tokens, project_out(RESID, d), RESID)
    assert (out @ d.T).abs().max() < 1e-4
    onto = captured(gpt2_tiny, tokens, project_onto(RESID, d), RESID)
    base = captured(gpt2_tiny, tokens, ablate(RESID, units=[]), RESID)
    torch.testing.assert_close(out + onto, base, atol=1e-5, rtol=1e-5)


def test_clamp_units(gpt2_tiny, tokens):
    a = captured(gpt2_tiny, tokens, clamp(POST, min=0.0, max=0.05, units=[0, 1]), POST)
    assert a[..., :2].min() >= 0 and a[..., :2].max() <= 0.05
    base = captured(gpt2_tiny, tokens, ablate(POST, units=[]), POST)
    torch.testing.assert_close(a[..., 2:], base[..., 2:])


def test_capture_keeps_no_tensor_alive(gpt2_tiny, tokens):
    store: dict = {}
    iv = capture(RESID, store)
    with iv.applied(gpt2_tiny):
        gpt2_tiny(tokens)
    ref = weakref.ref(store[RESID])
    assert not store[RESID].requires_grad
    store.clear()
    gc.collect()
    assert ref() is None  # neither the hook nor the model kept a copy
    assert count_hooks(gpt2_tiny) == 0


def test_capture_append_across_passes(gpt2_tiny, tokens):
    store: dict = {}
    with capture([RESID, POST], store, append=True).applied(gpt2_tiny):
        gpt2_tiny(tokens)
        gpt2_tiny(tokens[:1])
    assert [t.shape[0] for t in store[RESID]] == [3, 1] and len(store[POST]) == 2


def test_works_on_hooked_encoder(tokens):
    from transformer_lens import HookedEncoder, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_heads=4, d_head=4, d_mlp=32, d_vocab=50, n_ctx=12,
                                  act_fn="gelu", attention_dir="bidirectional", seed=0)
    enc = guard(HookedEncoder(cfg).eval())
    with torch.no_grad():  # HookedEncoder leaves its weights at zero until loaded
        for p in enc.parameters():
            p.normal_(0.0, 0.2)
    site = "blocks.1.hook_resid_post"  # the random MLM head is zero-initialized, so compare hidden states
    base = captured(enc, tokens, ablate(POST, units=[]), site)
    out = captured(enc, tokens, ablate(POST, units=[1, 2]), site)
    assert out.shape == base.shape == (3, 10, 16) and not torch.allclose(out, base)
    assert count_hooks(enc) == 0


def test_works_on_hooked_sae_transformer_and_stacks_with_sae(tokens):
    from sae_lens import HookedSAETransformer, StandardSAE, StandardSAEConfig
    from transformer_lens import HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_heads=4, d_head=4, d_mlp=32, d_vocab=50, n_ctx=12,
                                  act_fn="gelu", seed=0)
    model = guard(HookedSAETransformer(cfg).eval())
    sae = StandardSAE(StandardSAEConfig(d_in=16, d_sae=32))
    sae.cfg.metadata.hook_name = RESID
    model.add_sae(sae)
    try:
        store: dict = {}
        feats = f"{RESID}.hook_sae_acts_post"
        iv = ablate(feats, units=[0, 1, 2]) + capture(feats, store) + steer("blocks.1.hook_resid_post", torch.ones(16))
        with iv.applied(model):
            model(tokens)
        assert store[feats][..., :3].abs().sum() == 0 and store[feats].shape[-1] == 32
        assert count_hooks(model) == 0
    finally:
        model.reset_saes()
