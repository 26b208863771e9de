"""Sweeps, target metrics, side effects and the plot, on a tiny model (token ids as prompts and words)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tl_funcnet.errors import FuncnetError
from tl_funcnet.steering import (NeutralReference, SteeringVector, best_config, plot_sweep, prompt_logprobs, sweep,
                                 target_metrics)

PROMPTS = [[1, 2, 3, 4], [5, 6, 7], [8, 9, 10, 11, 12]]
NEUTRAL = [[3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1, 8, 2, 8]]
R0, R1 = "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"


def _towards_7(model) -> torch.Tensor:
    """A direction that raises token 7's logit: the unembedding column of 7 minus that of 3."""
    return (model.W_U[:, 7] - model.W_U[:, 3]).detach()


@pytest.fixture(scope="module")
def neutral(gpt2_tiny):
    return NeutralReference(gpt2_tiny, NEUTRAL)


def test_target_metrics_oracle():
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]))
    m = target_metrics(logp, [0], [1, 2])
    assert abs(m["log_odds"] - (math.log(0.5 / 0.5) + math.log(0.1 / 0.9)) / 2) < 1e-6
    assert abs(m["pos_mass"] - 0.3) < 1e-6 and abs(m["neg_mass"] - 0.7) < 1e-6
    h = -(logp.exp() * logp).sum(-1).mean()
    assert abs(m["entropy"] - float(h)) < 1e-6


def test_prompt_logprobs_reads_last_real_token(gpt2_tiny):
    lp = prompt_logprobs(gpt2_tiny, PROMPTS)
    for i, p in enumerate(PROMPTS):
        ref = F.log_softmax(gpt2_tiny(torch.tensor([p]))[0, -1], -1)
        torch.testing.assert_close(lp[i], ref, rtol=1e-4, atol=1e-5)
    # a factory of the last real index steers each right-padded row at its own last token
    sv = SteeringVector(_towards_7(gpt2_tiny), R1)
    steered = prompt_logprobs(gpt2_tiny, PROMPTS, lambda last: sv.to_intervention(3.0, last))
    for i, p in enumerate(PROMPTS):
        with sv.to_intervention(3.0, "last").applied(gpt2_tiny):
            ref = F.log_softmax(gpt2_tiny(torch.tensor([p]))[0, -1], -1)
        torch.testing.assert_close(steered[i], ref, rtol=1e-4, atol=1e-5)


def test_neutral_reference_matches_evaluate(gpt2_tiny, neutral):
    from tl_funcnet.evaluate import evaluate

    sv = SteeringVector(torch.randn(16), R0)
    side = neutral.side_effects(sv.to_intervention(2.0))
    ev = evaluate(gpt2_tiny, NEUTRAL, sv.to_intervention(2.0), progress=False)
    assert abs(side["kl"] - ev.kl) < 1e-4 and abs(side["loss"] - ev.loss) < 1e-4
    assert abs(side["delta_loss"] - (ev.loss - neutral.base_loss)) < 1e-4
    assert neutral.side_effects(sv.to_intervention(0.0))["kl"] < 1e-6


def test_sweep_shift_grows_along_the_target_direction(gpt2_tiny, neutral):
    d = _towards_7(gpt2_tiny)
    vectors = {R1: SteeringVector(d, R1), R0: SteeringVector(d, R0)}
    df = sweep(gpt2_tiny, vectors, [0.0, 1.0, 4.0], PROMPTS, [7], [3], neutral=neutral)
    assert set(df["kind"]) == {"base", "steer", "random"} and len(df) == 1 + 2 * 2 * 3
    assert {"kind", "vector", "site", "layer", "scale", "norm", "shift", "kl"} <= set(df.columns)
    steer_rows = df[df["kind"] == "steer"]
    assert set(zip(steer_rows["site"], steer_rows["layer"])) == {(R1, 1), (R0, 0)}
    assert set(steer_rows["vector"]) == {R1, R0}  # named by the dict keys
    s = df[(df["kind"] == "steer") & (df["site"] == R1)].sort_values("scale")
    assert s["shift"].iloc[0] == pytest.approx(0.0, abs=1e-5)
    assert s["shift"].is_monotonic_increasing and s["shift"].iloc[-1] > 0.5
    assert (s["kl"].diff().dropna() > 0).all()
    r = df[(df["kind"] == "random") & (df["site"] == R1)]
    assert r["norm"].tolist() == pytest.approx(s["norm"].tolist(), rel=1e-5)
    best = best_config(df, kl_budget=1e9)
    assert best["scale"] == 4.0
    last = sweep(gpt2_tiny, [vectors[R1]], [4.0], PROMPTS, [7], [3], neutral=neutral, pos="last",
                 random_control=False)
    assert len(last) == 2 and last["shift"].iloc[1] > 0.5 and last["vector"].iloc[1] == "0"


def test_sweep_accepts_a_list_or_a_dict(gpt2_tiny, neutral):
    d = _towards_7(gpt2_tiny)
    vs = [SteeringVector(d, R1), SteeringVector(-d, R1)]
    as_list = sweep(gpt2_tiny, vs, [2.0], PROMPTS, [7], [3], neutral=neutral, random_control=False)
    as_dict = sweep(gpt2_tiny, {"up": vs[0], "down": vs[1]}, [2.0], PROMPTS, [7], [3], neutral=neutral,
                    random_control=False)
    assert as_list["vector"].tolist() == ["", "0", "1"] and as_dict["vector"].tolist() == ["", "up", "down"]
    cols = ["shift", "kl", "loss", "log_odds"]
    assert as_list[cols].values.ravel().tolist() == pytest.approx(as_dict[cols].values.ravel().tolist(), rel=1e-6,
                                                                  abs=1e-9)
    up, down = as_dict.set_index("vector").loc[["up", "down"], "shift"]
    assert up > 0.1 and down < -0.1  # two vectors at one site stay apart
    with_controls = sweep(gpt2_tiny, vs, [2.0], PROMPTS, [7], [3], neutral=neutral, random_state=5)
    rnd = with_controls[with_controls["kind"] == "random"]
    assert rnd["norm"].tolist() == pytest.approx([vs[0].norm, vs[1].norm], rel=1e-5)
    again = sweep(gpt2_tiny, vs, [2.0], PROMPTS, [7], [3], neutral=neutral, random_state=5)
    assert again["shift"].tolist() == with_controls["shift"].tolist()  # random controls are reproducible


def test_plot_sweep_returns_a_figure_and_leaves_the_backend_alone(gpt2_tiny, neutral, tmp_path):
    import sys

    import matplotlib
    from matplotlib.figure import Figure

    d = _towards_7(gpt2_tiny)
    df = sweep(gpt2_tiny, {R0: SteeringVector(d, R0), R1: SteeringVector(d, R1)}, [1.0, 4.0], PROMPTS, [7], [3],
               neutral=neutral)
    backend, had_pyplot = matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules
    fig = plot_sweep(df, title="tiny sweep")
    assert isinstance(fig, Figure)
    assert matplotlib.get_backend() == backend
    assert ("matplotlib.pyplot" in sys.modules) == had_pyplot  # no pyplot: no global figure state
    assert fig._suptitle.get_text() == "tiny sweep" and len(fig.axes) == 5  # three panels, two colour bars
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["0", "1"]  # one row per layer
    fig.savefig(tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").stat().st_size > 5000
    # two vectors at one layer: one row per vector, never averaged together
    two = sweep(gpt2_tiny, {"up": SteeringVector(d, R1), "down": SteeringVector(-d, R1)}, [1.0, 4.0], PROMPTS,
                [7], [3], neutral=neutral, random_control=False)
    fig = plot_sweep(two)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["up", "down"]
    assert fig.axes[0].get_ylabel() == "vector"


def test_sweep_bad_input(gpt2_tiny, neutral):
    sv = SteeringVector(torch.ones(16), R0)
    with pytest.raises(FuncnetError, match="vectors should be SteeringVectors"):
        sweep(gpt2_tiny, {}, [1.0], PROMPTS, [1], [2], neutral=neutral)
    with pytest.raises(FuncnetError, match="vectors should be SteeringVectors"):
        sweep(gpt2_tiny, [sv.vector], [1.0], PROMPTS, [1], [2], neutral=neutral)
    with pytest.raises(FuncnetError, match="no scales"):
        sweep(gpt2_tiny, [sv], [], PROMPTS, [1], [2], neutral=neutral)
    with pytest.raises(FuncnetError, match="None .every position. or 'last'"):
        sweep(gpt2_tiny, [sv], [1.0], PROMPTS, [1], [2], neutral=neutral, pos="all")
    with pytest.raises(FuncnetError, match="outside the vocabulary"):
        sweep(gpt2_tiny, {0: sv}, [1.0], PROMPTS, [99], [2], neutral=neutral)
    with pytest.raises(FuncnetError, match="tokenizer"):
        sweep(gpt2_tiny, {0: sv}, [1.0], PROMPTS, ["great"], [2], neutral=neutral)
    with pytest.raises(FuncnetError, match="no rows of kind"):
        best_config(sweep(gpt2_tiny, [sv], [1.0], PROMPTS, [1], [2], neutral=neutral, random_control=False),
                    kind="random")
