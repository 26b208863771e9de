"""Activation sparsity: the sparsify op, calibrated thresholds of each method, FN-aware protection, bad input."""

from __future__ import annotations

import pytest
import torch

from tl_funcnet.errors import FuncnetError, ShapeError
from tl_funcnet.hooks import sparsify
from tl_funcnet.pruning import Calibration
from tl_funcnet.sparsity import METHODS, calibrate_sparsity

POST = "blocks.{}.mlp.hook_post"


def _texts(n=24, length=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return list(torch.randint(0, 50, (n, length), generator=g))


def _post(model, iv, tokens):
    store = {}
    from tl_funcnet.hooks import capture

    with (iv + capture([POST.format(l) for l in range(model.cfg.n_layers)], store)).applied(model):
        model(tokens)
    return store


def test_sparsify_zeroes_exactly_the_units_scoring_below_their_threshold(gpt2_tiny, tokens):
    site = POST.format(0)
    dense = _post(gpt2_tiny, sparsify(site, torch.zeros(32)), tokens)[site]
    weight = torch.rand(32, generator=torch.Generator().manual_seed(0)) + 0.5
    threshold = torch.full((32,), 0.05)
    threshold[:4] = 0.0  # never zeroed
    out = _post(gpt2_tiny, sparsify(site, threshold, weight=weight), tokens)[site]
    expected = torch.where(dense.abs() * weight >= threshold, dense, torch.zeros(()))
    torch.testing.assert_close(out, expected)
    assert bool((out[..., :4] == dense[..., :4]).all()) and bool((out == 0).any())


def test_sparsify_through_the_activation_zeroes_the_neuron(llama_tiny, tokens):
    pre = "blocks.1.mlp.hook_pre"
    out = _post(llama_tiny, sparsify(pre, torch.full((32,), 0.2), activation="silu"), tokens)[POST.format(1)]
    store = {}
    from tl_funcnet.hooks import capture

    with capture(pre, store).applied(llama_tiny):
        llama_tiny(tokens)
    gated_off = torch.nn.functional.silu(store[pre]).abs() < 0.2
    assert bool((out[gated_off] == 0).all()) and bool((out[~gated_off] != 0).all())


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("target", [0.25, 0.5])
def test_calibrated_thresholds_reach_the_target_on_the_calibration_text(tiny_model, method, target):
    calib = Calibration.from_texts(tiny_model, _texts())
    sp = calibrate_sparsity(tiny_model, calib, method, target)
    reached = sp.measure(tiny_model, calib)
    assert reached["dense_mean"] < 0.01
    for frac in reached["per_layer"].values():
        assert abs(frac - target) < 0.01, reached
    held_out = sp.measure(tiny_model, _texts(seed=5))  # other text: near, not exact
    assert abs(held_out["mean"] - target) < 0.1


@pytest.mark.parametrize("method", ["magnitude", "wina"])
def test_the_mlp_input_can_be_sparsified_instead(tiny_model, method):
    calib = Calibration.from_texts(tiny_model, _texts())
    sp = calibrate_sparsity(tiny_model, calib, method, 0.3, where="input")
    assert sp.sites[0] == "blocks.0.ln2.hook_normalized" and sp.thresholds[0].shape == (16,)
    if method == "wina":  # the norm of the rows of [W_in | W_gate] that read each input unit
        mlp = tiny_model.blocks[1].mlp
        parts = [mlp.W_in] + ([mlp.W_gate] if getattr(mlp, "W_gate", None) is not None else [])
        torch.testing.assert_close(sp.weights[1], torch.cat([w.detach() for w in parts], 1).norm(dim=1))
    reached = sp.measure(tiny_model, calib)
    assert abs(reached["per_layer"][0] - 0.3) < 0.01 and abs(reached["mean"] - 0.3) < 0.02


def test_methods_differ_and_wina_weighs_by_the_output_norm(gpt2_tiny):
    calib = Calibration.from_texts(gpt2_tiny, _texts())
    mag, wina = (calibrate_sparsity(gpt2_tiny, calib, m, 0.5) for m in ("magnitude", "wina"))
    torch.testing.assert_close(wina.weights[0], gpt2_tiny.blocks[0].mlp.W_out.detach().norm(dim=1))
    assert mag.weights[0] is None
    toks = torch.stack(_texts(4, seed=9))
    a = _post(gpt2_tiny, mag.to_intervention(gpt2_tiny), toks)[POST.format(0)] == 0
    b = _post(gpt2_tiny, wina.to_intervention(gpt2_tiny), toks)[POST.format(0)] == 0
    assert not torch.equal(a, b)


def test_chess_on_a_gated_mlp_weighs_the_gate_by_the_mean_up_projection(llama_tiny):
    sp = calibrate_sparsity(llama_tiny, _texts(), "chess", 0.4)
    assert sp.activation == "silu" and sp.sites[0] == "blocks.0.mlp.hook_pre"
    assert sp.weights[0].shape == (32,) and bool((sp.weights[0] > 0).all())


def test_protected_units_are_never_zeroed_and_the_layer_still_reaches_the_target(tiny_model):
    calib = Calibration.from_texts(tiny_model, _texts())
    keep = {0: [0, 1, 2, 3, 4, 5], 1: torch.arange(32) >= 26}
    sp = calibrate_sparsity(tiny_model, calib, "magnitude", 0.5, protect=keep)
    assert sp.protected == {0: 6, 1: 6}
    post = _post(tiny_model, sp.to_intervention(tiny_model), torch.stack(calib.seqs))
    assert bool((post[POST.format(0)][..., :6] != 0).all()) and bool((post[POST.format(1)][..., 26:] != 0).all())
    for frac in sp.measure(tiny_model, calib)["per_layer"].values():
        assert abs(frac - 0.5) < 0.01


def test_functional_networks_protect_their_key_units(gpt2_tiny):
    from tl_funcnet.activations import collect
    from tl_funcnet.funcnet import FunctionalNetworks

    sites = [POST.format(l) for l in range(2)]
    fn = FunctionalNetworks(3, threshold=1.5, random_state=0).fit(collect(gpt2_tiny, _texts(), sites), sites)
    sp = calibrate_sparsity(gpt2_tiny, _texts(), "wina", 0.3, protect=fn)
    key = fn.site_units(fn.union())
    for site, units in key.items():
        l = int(site.split(".")[1])
        assert bool((sp.thresholds[l][units] == 0).all()) and sp.protected[l] == len(units)


@pytest.mark.parametrize("bad", [1.0, -0.1, float("nan"), "0.3", True])
def test_a_target_outside_0_1_is_refused(gpt2_tiny, bad):
    with pytest.raises(FuncnetError, match="in \\[0, 1\\)"):
        calibrate_sparsity(gpt2_tiny, _texts(), "magnitude", bad)


def test_thresholds_from_another_model_are_refused_before_anything_is_attached(gpt2_tiny):
    from tl_testing import count_hooks, make_gpt2_style

    other = make_gpt2_style(seed=3).eval()
    sp = calibrate_sparsity(other, _texts(), "magnitude", 0.3)
    with pytest.raises(FuncnetError, match="calibrated on another model"):
        sp.to_intervention(gpt2_tiny)
    assert count_hooks(gpt2_tiny) == 0
    sp.to_intervention(other)  # the model it was made on


def test_bad_settings_are_refused(gpt2_tiny):
    with pytest.raises(FuncnetError, match="method should be one of"):
        calibrate_sparsity(gpt2_tiny, _texts(), "teal", 0.3)
    with pytest.raises(FuncnetError, match="where should be one of"):
        calibrate_sparsity(gpt2_tiny, _texts(), "wina", 0.3, where="attention")
    with pytest.raises(FuncnetError, match="chess sparsifies the MLP's gate"):
        calibrate_sparsity(gpt2_tiny, _texts(), "chess", 0.3, where="input")
    with pytest.raises(FuncnetError, match="goes with where='hidden'"):
        calibrate_sparsity(gpt2_tiny, _texts(), "wina", 0.3, where="input", protect={0: [1]})
    with pytest.raises(FuncnetError, match="at most"):
        calibrate_sparsity(gpt2_tiny, _texts(), "magnitude", 0.5, protect={0: list(range(20))})
    with pytest.raises(FuncnetError, match="should be unit indices"):
        calibrate_sparsity(gpt2_tiny, _texts(), "magnitude", 0.3, protect={0: [1.5, 2.0]})
    with pytest.raises(FuncnetError, match="empty"):
        calibrate_sparsity(gpt2_tiny, _texts(), "magnitude", 0.3).measure(gpt2_tiny, [])
    with pytest.raises(FuncnetError, match="outside 0..31"):
        calibrate_sparsity(gpt2_tiny, _texts(), "magnitude", 0.5, protect={0: [40]})
    with pytest.raises(FuncnetError, match="layers should be"):
        calibrate_sparsity(gpt2_tiny, _texts(), "magnitude", 0.5, layers=[5])
    with pytest.raises(ShapeError, match="calibrate the thresholds on this model"):
        sparsify(POST.format(0), torch.zeros(7)).validate(gpt2_tiny)
    with pytest.raises(FuncnetError, match="non-negative"):
        sparsify(POST.format(0), -torch.ones(32))
    with pytest.raises(FuncnetError, match="activation should be"):
        sparsify(POST.format(0), torch.ones(32), activation="tanh")


def test_a_model_without_an_mlp_input_norm_says_which_site_is_missing():
    from tl_funcnet.errors import UnknownSiteError
    from tl_testing import make_gpt2_style

    bare = make_gpt2_style(normalization_type=None).eval()
    with pytest.raises(UnknownSiteError, match="ln2.hook_normalized"):
        calibrate_sparsity(bare, _texts(), "wina", 0.3, where="input")


def test_an_attention_only_model_has_no_neurons_to_sparsify():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_heads=2, d_head=4, d_vocab=20, n_ctx=8, attn_only=True)
    with pytest.raises(FuncnetError, match="no MLP neurons"):
        calibrate_sparsity(HookedTransformer(cfg), _texts(), "wina", 0.3)
