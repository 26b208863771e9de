"""CFSP: the coarse allocation from block influence, the fine within-block score, and the FN-aware variant."""

from __future__ import annotations

import math

import pytest
import torch

from tl_funcnet.errors import FuncnetError
from tl_funcnet.pruning import Calibration, plan_from_scores, score
from tl_funcnet.pruning.calibration import block_influence
from tl_funcnet.pruning.scores import cfsp_fine, cfsp_keep_shares
from tl_testing import guard, make_gpt2_style, make_llama_style

ICA_OK = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
LAYERS = [1, 2, 3, 4]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def setup(request):
    mk = make_llama_style if request.param == "llama" else make_gpt2_style
    model = guard(mk(0, n_layers=6).eval())
    g = torch.Generator().manual_seed(0)
    return model, Calibration.from_texts(model, list(torch.randint(0, 50, (40, 12), generator=g)), max_tokens=None)


def test_block_influence_is_the_mean_angular_distance(setup):
    model, calib = setup
    got = block_influence(model, calib, LAYERS)
    _, cache = model.run_with_cache(torch.stack(calib.seqs))
    for l in LAYERS:
        cos = torch.nn.functional.cosine_similarity(cache[f"blocks.{l}.hook_resid_pre"],
                                                    cache[f"blocks.{l}.hook_resid_post"], dim=-1)
        assert got[l] == pytest.approx(float(torch.arccos(cos.clamp(-1, 1)).mean()) / math.pi, rel=1e-4)


def test_fine_score_shares_weights_among_neurons_and_scales_by_activation_rms(setup):
    model, calib = setup
    rms = calib.stats(model).sq_mean[2].sqrt()
    mlp = model.blocks[2].mlp

    def share(w):  # w: (d_model, d_mlp)
        return (w.abs() / w.abs().sum(1, keepdim=True)).mean(0)

    expect = share(mlp.W_out.detach().double().T * rms) + share(mlp.W_in.detach().double())
    if getattr(mlp, "W_gate", None) is not None:
        expect = expect + share(mlp.W_gate.detach().double())
    torch.testing.assert_close(cfsp_fine(model, calib, 2), expect * rms)


def test_blocks_that_change_the_stream_more_keep_more_neurons(setup):
    model, calib = setup
    influence = block_influence(model, calib, LAYERS)
    plan = plan_from_scores(model, score(model, calib, "cfsp", layers=LAYERS), 0.4, "cfsp", protect_first=1,
                            protect_last=1)
    kept = {l: int((~plan.pruned[l]).sum()) for l in LAYERS}
    order = sorted(LAYERS, key=influence.get)
    assert [kept[l] for l in order] == sorted(kept[l] for l in order)  # more influence, more kept
    assert plan.n_pruned == round(0.4 * 6 * 32)
    shares = cfsp_keep_shares(influence, 26.2)
    for l in LAYERS:  # kept ≈ share · (1 - ratio') · width, with the ratio over prunable layers only
        assert abs(kept[l] - min(32, shares[l] * (1 - 0.4 * 6 / 4) * 32)) <= 2


def test_zero_temperature_is_a_uniform_allocation_in_fine_score_order(setup):
    model, calib = setup
    plan = plan_from_scores(model, score(model, calib, "cfsp", layers=LAYERS, temperature=0.0), 0.3, "cfsp",
                            protect_first=1, protect_last=1)
    widths = [int(p.sum()) for p in plan.pruned]
    assert max(widths[1:5]) - min(widths[1:5]) <= 1
    for l in LAYERS:
        fine = cfsp_fine(model, calib, l)
        assert fine[~plan.pruned[l]].min() >= fine[plan.pruned[l]].max()


@ICA_OK
def test_fn_cfsp_prunes_key_units_last_and_keeps_the_allocation(setup):
    model, calib = setup
    opts = {"n_networks": 6, "n_restarts": 2}
    fn = score(model, calib, "fn", layers=LAYERS, **opts)
    aware = plan_from_scores(model, score(model, calib, "fn_cfsp", layers=LAYERS, key_fraction=0.25, **opts), 0.25,
                             "fn_cfsp", protect_first=1, protect_last=1)
    plain = plan_from_scores(model, score(model, calib, "cfsp", layers=LAYERS), 0.25, "cfsp", protect_first=1,
                             protect_last=1)
    assert max(int(p.sum()) for p in plain.pruned) <= 24  # no layer needs its key units at this ratio
    for l in LAYERS:
        top = torch.argsort(fn[l], descending=True, stable=True)[:8]
        assert not aware.pruned[l][top].any()
        assert abs(int(aware.pruned[l].sum()) - int(plain.pruned[l].sum())) <= 1
    with pytest.raises(FuncnetError, match="key_fraction"):
        score(model, calib, "fn_cfsp", layers=LAYERS, key_fraction=2.0, **opts)


def test_extreme_temperatures_saturate_instead_of_failing(setup):
    model, calib = setup
    for t in (1e9, -1e9):
        plan = plan_from_scores(model, score(model, calib, "cfsp", layers=LAYERS, temperature=t), 0.3, "cfsp",
                                protect_first=1, protect_last=1)
        assert plan.n_pruned == round(0.3 * 6 * 32)


@pytest.mark.parametrize("bad", [float("nan"), "hot", None])
def test_a_bad_temperature_is_refused(setup, bad):
    model, calib = setup
    with pytest.raises(FuncnetError, match="temperature"):
        score(model, calib, "cfsp", layers=LAYERS, temperature=bad)
