"""sae_edit / sae_capture as hook functions: exactness, oracles against sae-lens, composition, validation."""

from __future__ import annotations

import pytest
import torch

from tl_testing import count_hooks, guard
from sae_testing import make_sae
from tl_funcnet.errors import FuncnetError, ShapeError, SiteConflictError, UnknownSiteError
from tl_funcnet.hooks import Intervention, capture, steer
from tl_funcnet.sae import (ablate_features, capture_features, clamp_features, edit_features, sae_params,
                            scale_features, set_features, splice, steer_features)

SITE = "blocks.1.hook_resid_post"


def _x_at(model, tokens, site):
    store = {}
    with capture(site, store).applied(model):
        model(tokens)
    return store[site]


@pytest.mark.parametrize("site", ["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out", "blocks.0.hook_resid_pre"])
@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
def test_splice_with_error_term_is_exact_identity(tiny_model, tokens, site, arch):
    sae = make_sae(arch, k=4) if arch == "topk" else make_sae(arch)
    base = tiny_model(tokens)
    with splice(sae, site=site, use_error_term=True).applied(tiny_model):
        out = tiny_model(tokens)
    torch.testing.assert_close(out, base, atol=1e-6, rtol=0)


def test_splice_with_error_term_on_hook_z(llama_tiny, tokens):
    sae = make_sae("standard", d_in=16, reshape_activations="hook_z")  # 4 heads x d_head 4
    with splice(sae, site="blocks.0.attn.hook_z", use_error_term=True).applied(llama_tiny):
        out = llama_tiny(tokens)
    torch.testing.assert_close(out, llama_tiny(tokens), atol=1e-6, rtol=0)
    with splice(sae, site="blocks.0.attn.hook_z").applied(llama_tiny):
        assert (llama_tiny(tokens) - out).abs().max() > 1e-3


def test_splice_without_error_term_matches_sae_forward(gpt2_tiny, tokens):
    sae = make_sae("topk", k=4)
    with torch.no_grad():
        ref = gpt2_tiny.run_with_hooks(tokens, fwd_hooks=[(SITE, lambda a, hook: sae(a))])
    with splice(sae, site=SITE).applied(gpt2_tiny):
        out = gpt2_tiny(tokens)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert (out - gpt2_tiny(tokens)).abs().max() > 1e-3


@pytest.fixture(scope="module")
def sae_model():
    """A HookedSAETransformer with the same weights as the gpt2_tiny fixture."""
    from tl_testing import make_sae_transformer

    return guard(make_sae_transformer())


def test_ablate_matches_sae_lens_error_term_oracle(sae_model, tokens):
    sae = make_sae("standard", hook_name=SITE)
    f = sae.encode(_x_at(sae_model, tokens, SITE))
    feat = int((f != 0).float().sum((0, 1)).argmax())

    def zero(acts, hook):
        acts[..., feat] = 0.0
        return acts

    sae.use_error_term = True
    sae_model.add_sae(sae)
    try:
        with torch.no_grad():
            ref = sae_model.run_with_hooks(tokens, fwd_hooks=[(f"{SITE}.hook_sae_acts_post", zero)])
    finally:
        sae_model.reset_saes()
        sae.use_error_term = False
    with ablate_features(sae, [feat]).applied(sae_model):
        out = sae_model(tokens)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert (out - sae_model(tokens)).abs().max() > 1e-4


def test_edit_on_hooked_sae_transformer_with_sae_attached_elsewhere(sae_model, tokens):
    attached = make_sae("standard", hook_name="blocks.0.hook_resid_post", seed=1)
    ours = make_sae("standard", hook_name=SITE, seed=2)
    sae_model.add_sae(attached)  # no error term: it changes the run
    try:
        with torch.no_grad():
            with_attached = sae_model(tokens)
            x = _x_at(sae_model, tokens, SITE)
            f = ours.encode(x)
            delta = (f[..., [3]] * 0 - f[..., [3]]) @ ours.W_dec[[3]]  # ablating feature 3 moves x by -f3 d3
            ref = sae_model.run_with_hooks(tokens, fwd_hooks=[(SITE, lambda a, hook: a + delta)])
            with ablate_features(ours, [3]).applied(sae_model):
                out = sae_model(tokens)
            assert (with_attached - sae_model.run_with_hooks(tokens, fwd_hooks=[])).abs().max() == 0
    finally:
        sae_model.reset_saes()
    assert (with_attached - sae_model(tokens)).abs().max() > 1e-4  # the attached SAE did act
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert float(f[..., 3].abs().max()) > 0


def test_edits_match_manual_feature_arithmetic(gpt2_tiny, tokens):
    sae = make_sae("standard")
    p = sae_params(sae)
    x = _x_at(gpt2_tiny, tokens, SITE)
    f = sae.encode(x).detach()
    feats = [1, 5, 9]
    cases = {
        "set": (set_features(sae, feats, [2.0, 0.0, 1.0], site=SITE), torch.tensor([2.0, 0.0, 1.0])),
        "add": (steer_features(sae, feats, 1.5, site=SITE), f[..., feats] + 1.5),
        "scale": (scale_features(sae, feats, 3.0, site=SITE), f[..., feats] * 3.0),
        "clamp": (clamp_features(sae, feats, max=0.05, site=SITE), f[..., feats].clamp(max=0.05)),
        "ablate": (ablate_features(sae, feats, site=SITE), torch.zeros(())),
    }
    for name, (iv, new_vals) in cases.items():
        f_edit = f.clone()
        f_edit[..., feats] = new_vals
        x_expected = x + (f_edit - f) @ p["W_dec"]
        got = {}
        with (iv + capture(SITE, got)).applied(gpt2_tiny):
            gpt2_tiny(tokens)
        torch.testing.assert_close(got[SITE], x_expected, atol=1e-5, rtol=1e-5, msg=name)


def test_pos_restricts_the_edit(gpt2_tiny, tokens):
    sae = make_sae("standard")
    x = _x_at(gpt2_tiny, tokens, SITE)
    got = {}
    with (steer_features(sae, [0], 5.0, site=SITE, pos="last") + capture(SITE, got)).applied(gpt2_tiny):
        gpt2_tiny(tokens)
    torch.testing.assert_close(got[SITE][:, :-1], x[:, :-1])
    assert (got[SITE][:, -1] - x[:, -1]).abs().max() > 1.0


def test_capture_features_equals_sae_encode(tiny_model, tokens):
    sae = make_sae("jumprelu", hook_name=SITE)
    store = {}
    with capture_features(sae, store).applied(tiny_model):
        tiny_model(tokens)
    ref = sae.encode(_x_at(tiny_model, tokens, SITE)).detach()
    torch.testing.assert_close(store[f"{SITE}.hook_sae_acts_post"], ref)
    assert not store[f"{SITE}.hook_sae_acts_post"].requires_grad


def test_stacks_with_other_hooks_on_the_same_site(gpt2_tiny, tokens):
    sae = make_sae("standard", hook_name=SITE)
    v = torch.randn(16)
    with steer(SITE, v).applied(gpt2_tiny):
        steered = gpt2_tiny(tokens)
    # the error-term splice is an identity, so chaining it before or after a steer changes nothing
    for iv in (steer(SITE, v) + splice(sae, use_error_term=True), splice(sae, use_error_term=True) + steer(SITE, v)):
        with iv.applied(gpt2_tiny):
            torch.testing.assert_close(gpt2_tiny(tokens), steered, atol=1e-5, rtol=0)
    # a feature ablation sees the steered activation when chained after it, so order matters
    a, b = steer(SITE, v * 3) + ablate_features(sae, [0, 1, 2]), ablate_features(sae, [0, 1, 2]) + steer(SITE, v * 3)
    with a.applied(gpt2_tiny):
        out_a = gpt2_tiny(tokens)
    with b.applied(gpt2_tiny):
        out_b = gpt2_tiny(tokens)
    assert (out_a - out_b).abs().max() > 1e-5
    with pytest.raises(SiteConflictError):
        steer(SITE, v) | ablate_features(sae, [0])


def test_capture_after_edit_sees_the_edited_activation(gpt2_tiny, tokens):
    sae = make_sae("standard", hook_name=SITE)
    other = make_sae("standard", hook_name="blocks.0.hook_resid_post", seed=3)
    store = {}
    iv = (ablate_features(sae, [0], use_error_term=False) + capture_features(sae, store, key="f")) \
        | capture_features(other, store, key="g")  # capture only reads: it joins other sites with |
    with iv.applied(gpt2_tiny):
        gpt2_tiny(tokens)
    assert store["f"].shape == (3, 10, 48) and store["g"].shape == (3, 10, 48)
    # re-encoding the spliced reconstruction (feature 0 removed) gives a different code than the clean run
    clean = sae.encode(_x_at(gpt2_tiny, tokens, SITE)).detach()
    assert (store["f"] - clean).abs().max() > 1e-3


def test_save_load_round_trip(gpt2_tiny, tokens, tmp_path):
    sae = make_sae("topk", k=4, hook_name=SITE)
    iv = edit_features(sae, [{"kind": "ablate", "features": [1, 2]}, {"kind": "add", "features": [3], "values": [2.0]}])
    with iv.applied(gpt2_tiny):
        ref = gpt2_tiny(tokens)
    loaded = Intervention.load(iv.save(tmp_path / "iv"))
    assert loaded.allclose(iv)
    with loaded.applied(gpt2_tiny):
        torch.testing.assert_close(gpt2_tiny(tokens), ref)


def test_attach_time_errors_attach_nothing(gpt2_tiny, llama_tiny, tokens):
    sae = make_sae("standard", hook_name=SITE)
    bad = [
        (gpt2_tiny, splice(sae, site="blocks.0.mlp.hook_post"), ShapeError, "d_in=16"),  # d_mlp is 32
        (gpt2_tiny, steer(SITE, torch.ones(16)) + ablate_features(sae, [1], site="blocks.0.mlp.hook_post"),
         ShapeError, "width 32"),
        (gpt2_tiny, splice(sae, site="blocks.1.hook_resid_pots"), UnknownSiteError, "Did you mean"),
        (llama_tiny, capture_features(sae, {}, site="blocks.0.attn.hook_k"), ShapeError, "width 8"),  # 2 kv heads
    ]
    for model, iv, err, msg in bad:
        with pytest.raises(err, match=msg):
            with iv.applied(model):
                pass
        assert count_hooks(model) == 0
    with pytest.raises(FuncnetError, match="hook_name"):
        splice(make_sae("standard"))


def test_edits_are_checked_when_built():
    """Every edit is validated when the Intervention is made, naming the op and site; nothing needs a model."""
    sae = make_sae("standard", hook_name=SITE)
    bad = [
        (lambda: ablate_features(sae, [48]), ShapeError, "index 48 is out of range .* d_sae=48"),
        (lambda: ablate_features(sae, [1.5]), FuncnetError, "integers only"),
        (lambda: ablate_features(sae, [2.0]), FuncnetError, "never rounded"),
        (lambda: ablate_features(sae, torch.tensor([1.0])), FuncnetError, "integers"),
        (lambda: ablate_features(sae, [-1]), FuncnetError, "negative index -1"),
        (lambda: ablate_features(sae, True), FuncnetError, "integer indices"),
        (lambda: scale_features(sae, [0, 1], torch.tensor([1.0, 2.0, 3.0])), ShapeError, "3 values for 2 features"),
        (lambda: set_features(sae, [1, 2], [1.0, 2.0, 3.0]), ShapeError, "3 values for 2 features"),
        (lambda: set_features(sae, [1], float("nan")), FuncnetError, "finite"),
        (lambda: steer_features(sae, [1, 2], [1.0, float("inf")]), FuncnetError, "NaN or infinite"),
        (lambda: set_features(sae, [1], "2"), FuncnetError, "numbers"),
        (lambda: clamp_features(sae, [1]), FuncnetError, "needs 'min', 'max' or both"),
        (lambda: clamp_features(sae, [1], min=2.0, max=1.0), FuncnetError, "min <= max"),
        (lambda: clamp_features(sae, [1], max=float("nan")), FuncnetError, "finite"),
        (lambda: edit_features(sae, [{"kind": "boost", "features": [1]}]), FuncnetError, "kind one of"),
        (lambda: edit_features(sae, [{"kind": "ablate", "features": [1], "values": [2.0]}]), FuncnetError,
         r"unknown keys \['values'\]"),
        (lambda: edit_features(sae, [{"kind": "clamp", "features": [1], "max": 1.0, "scale": 2}]), FuncnetError,
         "unknown keys"),
        (lambda: edit_features(sae, [{"kind": "set", "features": [1]}]), FuncnetError, "needs 'values'"),
        (lambda: edit_features(sae, [{"kind": "ablate"}]), FuncnetError, "needs 'features'"),
        (lambda: edit_features(sae, {"kind": "ablate", "features": [1]}), FuncnetError, "list of dicts"),
        (lambda: splice(sae, use_error_term="yes"), FuncnetError, "use_error_term"),
        (lambda: splice(sae, pos="all"), FuncnetError, "all positions are pos=None"),
    ]
    for build, err, msg in bad:
        with pytest.raises(err, match=msg) as info:
            build()
        assert f"sae_edit() at {SITE!r}" in str(info.value)
    # the accepted forms: one int, a list, an int tensor; values as numbers, lists or tensors
    edits = set_features(sae, torch.tensor([3, 4]), torch.tensor([1.0, 2.0])).hooks[0].params["edits"]
    assert edits[0]["features"] == (3, 4) and edits[0]["values"] == (1.0, 2.0)
    assert ablate_features(sae, 7).hooks[0].params["edits"][0]["features"] == (7,)
    assert clamp_features(sae, [1], min=0, max=2).hooks[0].params["edits"][0]["max"] == 2.0


def test_edit_params_are_read_only_copies():
    sae = make_sae("standard", hook_name=SITE)
    feats, edits = [1, 2], [{"kind": "ablate", "features": [1, 2]}]
    iv = edit_features(sae, edits)
    feats.append(3)
    edits[0]["features"].append(3)
    assert iv.hooks[0].params["edits"][0]["features"] == (1, 2)
    with pytest.raises(TypeError):
        iv.hooks[0].params["edits"][0]["features"] = (5,)
