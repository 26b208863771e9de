"""Each op against a hand oracle, positions and padding, and the other hooked model classes."""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch

from tl_testing import count_hooks, guard
from tl_funcnet.errors import ShapeError, SiteConflictError
from tl_funcnet.hooks import (Intervention, ablate, capture, clamp, custom, detach, keep_only, last_token_positions,
                              patch, patch_subspace, project_onto, project_out, record, scale, steer)

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


def test_patch_subspace_moves_only_the_spanned_component(gpt2_tiny, tokens):
    base = captured(gpt2_tiny, tokens, ablate(RESID, units=[]), RESID)
    src = torch.randn_like(base)
    d = torch.randn(2, 16)
    out = captured(gpt2_tiny, tokens, patch_subspace(RESID, d, src), RESID)
    q, _ = torch.linalg.qr(d.T)  # (16, 2) orthonormal basis of the span
    torch.testing.assert_close(out @ q, src @ q, atol=1e-5, rtol=1e-5)  # the spanned part comes from the source
    rest = torch.eye(16) - q @ q.T
    torch.testing.assert_close(out @ rest, base @ rest, atol=1e-5, rtol=1e-5)  # the rest keeps its own value
    full = captured(gpt2_tiny, tokens, patch_subspace(RESID, torch.eye(16), src), RESID)
    torch.testing.assert_close(full, src, atol=1e-5, rtol=1e-5)  # the whole space: the patch itself
    last = captured(gpt2_tiny, tokens, patch_subspace(RESID, d, src, pos=-1), RESID)
    torch.testing.assert_close(last[:, :-1], base[:, :-1])


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


# --------------------------------------------------------------------------- detach


def _grad_model():
    from tl_testing import make_gpt2_style

    return guard(make_gpt2_style(seed=2).train())


def test_detach_stops_the_gradient_and_keeps_the_forward(tokens):
    model = _grad_model()
    base = model(tokens).detach()
    with detach([RESID]).applied(model):
        out = model(tokens)
        loss = model(tokens, return_type="loss")
    torch.testing.assert_close(out, base, rtol=0, atol=0)
    loss.backward()
    # every path from the embedding and block 0 to the output goes through blocks.0.hook_resid_post
    assert model.W_E.grad is None and model.blocks[0].mlp.W_in.grad is None
    assert model.blocks[1].mlp.W_in.grad is not None and model.blocks[1].mlp.W_in.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    model(tokens, return_type="loss").backward()  # without the detach the gradient reaches the embedding
    assert model.W_E.grad is not None and model.W_E.grad.abs().sum() > 0
    assert count_hooks(model) == 0


def test_detach_is_saveable_and_refuses_no_sites(tmp_path):
    from tl_funcnet.errors import FuncnetError
    from tl_funcnet.hooks import Intervention, detach as detach_builder

    iv = detach_builder([RESID, POST])
    assert [h.op for h in iv] == ["detach", "detach"] and iv.serializable and iv.written_sites == {RESID, POST}
    iv.save(tmp_path / "d")
    assert Intervention.load(tmp_path / "d").allclose(iv)
    for bad in ([], "", None, 3):
        with pytest.raises(FuncnetError):
            detach_builder(bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- record


def test_record_hands_every_activation_to_the_sink(gpt2_tiny, tokens):
    from tl_funcnet.errors import NotSerializableError

    seen: list = []
    iv = record([RESID, POST], lambda site, act: seen.append((site, act.detach().clone())))
    assert not iv.serializable and not iv.written_sites
    ref = captured(gpt2_tiny, tokens, Intervention(), RESID)
    with iv.applied(gpt2_tiny):
        gpt2_tiny(tokens)
        gpt2_tiny(tokens[:1])
    assert [s for s, _ in seen] == [POST, RESID, POST, RESID]  # in forward order
    torch.testing.assert_close(seen[1][1], ref)
    assert seen[0][1].shape == (3, 10, 32) and seen[3][1].shape == (1, 10, 16)
    with pytest.raises(NotSerializableError):
        iv.to_dict()
    # recording only reads: it joins an edit of another site with `|`, not one of its own sites (order matters)
    assert len(iv | steer("blocks.1.hook_resid_post", torch.ones(16))) == 3
    with pytest.raises(SiteConflictError):
        iv | steer(RESID, torch.ones(16))


def test_record_sees_the_edited_activation_when_chained_after_an_edit(gpt2_tiny, tokens):
    seen: dict = {}
    iv = scale(RESID, 0.0) + record(RESID, lambda site, act: seen.__setitem__(site, act.clone()))
    with iv.applied(gpt2_tiny):
        gpt2_tiny(tokens)
    assert seen[RESID].abs().sum() == 0


# --------------------------------------------------------------------------- stash + ops that read the scratch space

_READ_STASH = "_test_add_stashed"


@pytest.fixture
def add_stashed_op():
    """A test op: adds ``gain *`` what a ``stash`` op kept earlier in the same forward."""
    from tl_funcnet.hooks import OPS, register_op

    @register_op(_READ_STASH, uses_scratch=True)
    def add_stashed(key: str, scratch: dict, gain: float = 1.0):
        def hook_fn(act, hook=None):
            return act + gain * scratch[key]

        return hook_fn

    yield add_stashed
    OPS.pop(_READ_STASH, None)


def test_stash_and_an_op_reading_the_scratch_space(gpt2_tiny, tokens, add_stashed_op, tmp_path):
    from tl_funcnet.hooks import Hook, Intervention

    early, late = "blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"
    iv = Intervention((Hook(early, "stash", {"key": "x"}), Hook(late, _READ_STASH, {"key": "x", "gain": 0.5})))
    stash_hook = iv.hooks[0]
    assert not stash_hook.writes and stash_hook.spec.uses_scratch
    box: dict = {}

    def oracle(act, hook):
        if hook.name == early:
            box["x"] = act
            return act
        return act + 0.5 * box["x"]

    with iv.applied(gpt2_tiny):
        ours = gpt2_tiny(tokens)
    with (custom(early, oracle) + custom(late, oracle)).applied(gpt2_tiny):
        expected = gpt2_tiny(tokens)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    assert not torch.allclose(ours, gpt2_tiny(tokens))
    # each application has its own scratch space
    hooks_a, hooks_b = iv.fwd_hooks(), iv.fwd_hooks()
    act = torch.ones(1, 2, 16)
    hooks_a[0][1](act)
    with pytest.raises(KeyError):
        hooks_b[1][1](act)
    torch.testing.assert_close(hooks_a[1][1](act), 1.5 * act)
    # stash holds no Python object: the pair is saveable (the reading op comes from the registry)
    iv.save(tmp_path / "iv")
    back = Intervention.load(tmp_path / "iv")
    with back.applied(gpt2_tiny):
        torch.testing.assert_close(gpt2_tiny(tokens), expected, rtol=0, atol=0)


def test_stash_needs_a_key():
    from tl_funcnet.errors import FuncnetError
    from tl_funcnet.hooks import Hook

    for bad in ({}, {"key": ""}, {"key": 3}):
        with pytest.raises(FuncnetError, match="stash"):
            Hook(RESID, "stash", bad)


# --------------------------------------------------------------------------- register_op


def test_register_op_refuses_a_duplicate_name_unless_replace():
    from tl_funcnet.errors import FuncnetError
    from tl_funcnet.hooks import OPS, Hook, register_op

    name = "_test_dup_op"
    try:
        @register_op(name)
        def first(gain: float = 1.0):
            return lambda act, hook=None: act * gain

        register_op(name)(first)  # registering the same function again (a re-import) is harmless
        with pytest.raises(FuncnetError, match=r"'_test_dup_op' is already registered.*replace=True"):
            @register_op(name)
            def second(gain: float = 1.0):
                return lambda act, hook=None: act * gain * 2
        assert OPS[name].factory is first
        with pytest.raises(FuncnetError, match="already registered"):
            register_op("ablate")(lambda units=None: None)
        assert OPS["ablate"].factory.__name__ == "ablate_op"

        @register_op(name, replace=True)
        def third(gain: float = 1.0):
            return lambda act, hook=None: act * gain * 3

        assert OPS[name].factory is third
        fn = Hook(RESID, name, {"gain": 2.0}).build()
        torch.testing.assert_close(fn(torch.ones(2)), torch.full((2,), 6.0))
    finally:
        OPS.pop(name, None)


def test_register_op_checks_its_arguments():
    from tl_funcnet.errors import FuncnetError
    from tl_funcnet.hooks import register_op

    with pytest.raises(FuncnetError, match="identifiers"):
        register_op("not an identifier")
    with pytest.raises(FuncnetError, match="direction"):
        register_op("_test_bad_direction", direction="sideways")


# --------------------------------------------------------------------------- patch(where=...)


def test_patch_where_per_row_mask_and_row_tiling(gpt2_tiny):
    g = torch.Generator().manual_seed(5)
    toks = torch.randint(0, 50, (4, 6), generator=g)
    stored = torch.randn(2, 6, 32, generator=g)  # two stored rows tile a batch of four: row r takes r % 2
    where = torch.rand(4, 6, 32, generator=g) > 0.7
    where[3] = False  # a row patched nowhere
    base = captured(gpt2_tiny, toks, Intervention(), POST)
    got = captured(gpt2_tiny, toks, patch(POST, stored, where=where), POST)
    expected = torch.where(where, stored[torch.tensor([0, 1, 0, 1])], base)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    # with units: only cells marked in `where` AND in units
    got_u = captured(gpt2_tiny, toks, patch(POST, stored, where=where, units=[0, 1, 2]), POST)
    sel = torch.zeros(32, dtype=torch.bool)
    sel[:3] = True
    torch.testing.assert_close(got_u, torch.where(where & sel, stored[torch.tensor([0, 1, 0, 1])], base))


def test_patch_where_on_a_per_head_site(llama_tiny, tokens):
    site = "blocks.1.attn.hook_z"
    clean = torch.randn(10, 4, 4)  # one stored (pos, head, d_head) row for every row of the batch
    where = torch.zeros(3, 10, 4, dtype=torch.bool)
    where[0, 2, 1] = where[2, 7, 3] = True  # one (position, head) cell in rows 0 and 2
    base = captured(llama_tiny, tokens, Intervention(), site)
    got = captured(llama_tiny, tokens, patch(site, clean, where=where), site)
    expected = torch.where(where[..., None], clean.expand(3, -1, -1, -1), base)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert not torch.equal(got, base)


def test_patch_rows_that_do_not_tile_or_a_wrong_where_fail_at_run_time_and_leave_no_hooks(gpt2_tiny, tokens):
    from tl_funcnet.errors import ShapeError

    for iv in (patch(POST, torch.randn(2, 10, 32)),  # 2 rows do not tile a batch of 3
               patch(POST, torch.randn(10, 32), where=torch.ones(2, 10, 32, dtype=torch.bool)),
               patch(POST, torch.randn(9, 32))):  # another length
        with pytest.raises(ShapeError, match="patch at 'blocks.0.mlp.hook_post'"):
            with iv.applied(gpt2_tiny):
                gpt2_tiny(tokens)
        assert count_hooks(gpt2_tiny) == 0


def test_patch_checks_its_activation_at_construction_and_against_the_model(gpt2_tiny):
    from tl_funcnet.errors import FuncnetError, ShapeError

    with pytest.raises(ShapeError, match=r"\(pos, \*units\)"):
        patch(POST, torch.randn(32))
    with pytest.raises(FuncnetError, match="where should be a bool tensor"):
        patch(POST, torch.randn(10, 32), where=torch.ones(10, 32, dtype=torch.bool))
    with pytest.raises(ShapeError, match="expects"):
        with patch(POST, torch.randn(10, 16)).applied(gpt2_tiny):
            pass
    assert count_hooks(gpt2_tiny) == 0


def test_applied_turns_on_the_flags_a_site_needs_and_restores_them(llama_tiny, tokens):
    from tl_funcnet.hooks import capture

    store: dict = {}
    sites = ["blocks.0.attn.hook_result", "blocks.1.hook_q_input", "blocks.1.hook_k_input", "blocks.0.hook_mlp_in"]
    iv = capture(sites, store)
    assert iv.model_flags() == {"use_attn_result", "use_split_qkv_input", "use_hook_mlp_in"}
    before = {f: getattr(llama_tiny.cfg, f) for f in iv.model_flags()}
    with iv.applied(llama_tiny):
        assert all(getattr(llama_tiny.cfg, f) for f in iv.model_flags())
        llama_tiny(tokens)
    assert {f: getattr(llama_tiny.cfg, f) for f in before} == before
    assert store["blocks.0.attn.hook_result"].shape == (3, 10, 4, 16)  # (batch, pos, head, d_model)
    assert store["blocks.1.hook_k_input"].shape == (3, 10, 2, 16)  # grouped: one k input per KV head
    # the residual stream is the sum of the head outputs, MLP outputs and embedding (no biases in this model)
    embed_plus = capture(["hook_embed", "blocks.0.hook_mlp_out"], store)
    with (iv + embed_plus).applied(llama_tiny):
        llama_tiny(tokens)
    resid = store["hook_embed"] + store["blocks.0.attn.hook_result"].sum(2) + store["blocks.0.hook_mlp_out"]
    torch.testing.assert_close(store["blocks.1.hook_q_input"][:, :, 0], resid, rtol=1e-5, atol=1e-5)


def test_applied_restores_flags_when_validation_fails(gpt2_tiny):
    from tl_funcnet.hooks import steer

    iv = steer("blocks.0.hook_q_input", torch.ones(7))  # wrong width: refused after the flags were set
    with pytest.raises(ShapeError):
        with iv.applied(gpt2_tiny):
            pass
    assert gpt2_tiny.cfg.use_split_qkv_input is False
