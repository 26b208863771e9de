"""Sweeps, target metrics, side effects and the plot, on a tiny model (token ids as prompts and words)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tl_funcnet.errors import FuncnetError
from tl_funcnet.steering import NeutralReference, SteeringVector, best_config, plot_sweep, sweep, target_metrics
from tl_funcnet.steering.evaluation import next_token_logprobs

PROMPTS = [[1, 2, 3, 4], [5, 6, 7], [8, 9, 10, 11, 12]]
NEUTRAL = [[3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1, 8, 2, 8]]


def test_target_metrics_oracle():
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]))
    m = target_metrics(logp, [0], [1, 2])
    assert abs(m["log_odds"] - (math.log(0.5 / 0.5) + math.log(0.1 / 0.9)) / 2) < 1e-6
    assert abs(m["pos_mass"] - 0.3) < 1e-6 and abs(m["neg_mass"] - 0.7) < 1e-6
    h = -(logp.exp() * logp).sum(-1).mean()
    assert abs(m["entropy"] - float(h)) < 1e-6


def test_next_token_logprobs_reads_last_real_token(gpt2_tiny):
    lp = next_token_logprobs(gpt2_tiny, PROMPTS)
    for i, p in enumerate(PROMPTS):
        ref = F.log_softmax(gpt2_tiny(torch.tensor([p]))[0, -1], -1)
        torch.testing.assert_close(lp[i], ref, rtol=1e-4, atol=1e-5)


def test_neutral_reference_matches_evaluate(gpt2_tiny):
    from tl_funcnet.evaluate import evaluate

    sv = SteeringVector(torch.randn(16), "blocks.0.hook_resid_post")
    ref = NeutralReference(gpt2_tiny, NEUTRAL)
    side = ref.side_effects(sv.to_intervention(2.0))
    ev = evaluate(gpt2_tiny, NEUTRAL, sv.to_intervention(2.0), progress=False)
    assert abs(side["kl"] - ev.kl) < 1e-4 and abs(side["loss"] - ev.loss) < 1e-4
    assert ref.side_effects(sv.to_intervention(0.0))["kl"] < 1e-6


def test_sweep_shift_grows_along_the_target_direction(gpt2_tiny, tmp_path):
    # a direction that raises token 7's logit: the unembedding column of 7 minus that of 3
    d = (gpt2_tiny.W_U[:, 7] - gpt2_tiny.W_U[:, 3]).detach()
    vectors = {1: SteeringVector(d, "blocks.1.hook_resid_post"), 0: SteeringVector(d, "blocks.0.hook_resid_post")}
    df = sweep(gpt2_tiny, vectors, [0.0, 1.0, 4.0], PROMPTS, [7], [3], neutral=NeutralReference(gpt2_tiny, NEUTRAL))
    assert set(df["kind"]) == {"base", "steer", "random"} and len(df) == 1 + 2 * 2 * 3
    s = df[(df["kind"] == "steer") & (df["layer"] == 1)].sort_values("scale")
    assert s["shift"].iloc[0] == pytest.approx(0.0, abs=1e-5)
    assert s["shift"].is_monotonic_increasing and s["shift"].iloc[-1] > 0.5
    assert (s["kl"].diff().dropna() > 0).all()
    r = df[(df["kind"] == "random") & (df["layer"] == 1)]
    assert r["norm"].tolist() == pytest.approx(s["norm"].tolist(), rel=1e-5)
    best = best_config(df, kl_budget=1e9)
    assert best["scale"] == 4.0
    last = sweep(gpt2_tiny, {1: vectors[1]}, [4.0], PROMPTS, [7], [3], neutral=NeutralReference(gpt2_tiny, NEUTRAL),
                 pos="last", random_control=False)
    assert last["shift"].iloc[1] > 0.5
    out = plot_sweep(df, tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").stat().st_size > 5000 and out == tmp_path / "sweep.png"


def test_sweep_bad_input(gpt2_tiny):
    sv = SteeringVector(torch.ones(16), "blocks.0.hook_resid_post")
    ref = NeutralReference(gpt2_tiny, NEUTRAL)
    with pytest.raises(FuncnetError, match="no vectors"):
        sweep(gpt2_tiny, {}, [1.0], PROMPTS, [1], [2], neutral=ref)
    with pytest.raises(FuncnetError, match="outside the vocabulary"):
        sweep(gpt2_tiny, {0: sv}, [1.0], PROMPTS, [99], [2], neutral=ref)
    with pytest.raises(FuncnetError, match="tokenizer"):
        sweep(gpt2_tiny, {0: sv}, [1.0], PROMPTS, ["great"], [2], neutral=ref)
