"""Sentiment steering on SmolLM2-135M: the vector moves the next-token sentiment, a random one of the same
norm much less; steered cached generation equals uncached; the CLI runs end to end."""

from __future__ import annotations

import json

import pytest
import torch

from tl_funcnet.steering import (NeutralReference, generate, load_pairs, mean_difference, mean_differences,
                                 random_like, sweep)

pytestmark = pytest.mark.slow

SITE = "blocks.9.hook_resid_post"


@pytest.fixture(scope="module")
def sentiment_vector(smollm2):
    pairs = load_pairs("sentiment")
    return pairs, mean_difference(smollm2, list(pairs.positive), list(pairs.negative), SITE)


def test_sentiment_vector_shifts_target_words_more_than_random(smollm2, sentiment_vector):
    pairs, sv = sentiment_vector
    assert sv.site == SITE and sv.provenance["n_positive"] == len(pairs)
    neutral = NeutralReference(smollm2, "evaluation", max_texts=4, max_tokens_per_seq=32)
    df = sweep(smollm2, [sv], [4.0, -4.0], list(pairs.test_prompts[:8]), list(pairs.positive_words),
               list(pairs.negative_words), neutral=neutral)
    steer = df[df["kind"] == "steer"].set_index("scale")
    rnd = df[df["kind"] == "random"].set_index("scale")
    assert set(steer["site"]) == {SITE} and set(steer["layer"]) == {9}
    assert steer.loc[4.0, "shift"] > 1.0 and steer.loc[-4.0, "shift"] < -1.0
    assert abs(rnd.loc[4.0, "shift"]) < 0.5 * steer.loc[4.0, "shift"]
    assert 0.0 < steer.loc[4.0, "kl"] < 2.0


def test_mean_differences_reads_several_layers_in_one_pass(smollm2, sentiment_vector):
    pairs, sv = sentiment_vector
    vs = mean_differences(smollm2, list(pairs.positive[:6]), list(pairs.negative[:6]), "hook_resid_post",
                          layers=[3, 9])
    assert list(vs) == ["blocks.3.hook_resid_post", SITE]
    one = mean_difference(smollm2, list(pairs.positive[:6]), list(pairs.negative[:6]), SITE)
    torch.testing.assert_close(vs[SITE].vector, one.vector, atol=1e-4, rtol=1e-4)
    assert vs[SITE].cosine(sv) > 0.8  # six pairs already point the way of all of them


def test_steered_generation_cache_equals_no_cache(smollm2, sentiment_vector):
    _, sv = sentiment_vector
    prompt = "The meal we had yesterday was"
    modes = ("generated", "from_last", None)  # None: every position
    outs = {(pos, c): generate(smollm2, prompt, sv, scale=4.0, pos=pos, max_new_tokens=8, use_past_kv_cache=c)
            for pos in modes for c in (True, False)}
    for pos in modes:
        assert outs[pos, True] == outs[pos, False], pos
    assert outs[None, True] != generate(smollm2, prompt, random_like(sv), scale=4.0, max_new_tokens=8)
    assert outs[None, True] != generate(smollm2, prompt, None, max_new_tokens=8)


def test_cli_steer(smollm2, tmp_path, monkeypatch, capsys):
    import tl_funcnet.models as models
    from tl_funcnet.cli import main

    pairs = load_pairs("sentiment")
    (tmp_path / "pos.txt").write_text("\n".join(pairs.positive[:6]))
    (tmp_path / "neg.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in pairs.negative[:6]))
    monkeypatch.setattr(models, "load", lambda name, **kw: smollm2)
    code = main(["steer", "--positive", str(tmp_path / "pos.txt"), "--negative", str(tmp_path / "neg.jsonl"),
                 "--site", SITE, "--scale", "4", "--prompt", "The movie was", "--max-new-tokens", "5", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["site"] == SITE and out["n_positive"] == 6 and out["pos"] is None
    assert out["steered"] != out["unsteered"]
    code = main(["steer", "--positive", str(tmp_path / "pos.txt"), "--negative", str(tmp_path / "neg.jsonl"),
                 "--site", SITE, "--pos", "from_last", "--prompt", "The movie was", "--max-new-tokens", "5", "--json"])
    assert code == 0 and json.loads(capsys.readouterr().out)["pos"] == "from_last"
    code = main(["steer", "--positive", str(tmp_path / "pos.txt"), "--negative", str(tmp_path / "neg.jsonl"),
                 "--site", "blocks.30.hook_resid_post", "--prompt", "x"])
    assert code == 2 and "not a hook point" in capsys.readouterr().err
