"""Network and SAE feature cards on a tiny model: the numbers behind them, their HTML, and bad input."""

from __future__ import annotations

import pytest
import torch

from sae_testing import make_sae
from tl_funcnet.activations import collect
from tl_funcnet.dashboards import Card, feature_cards, network_cards, pick_features
from tl_funcnet.errors import FuncnetError
from tl_funcnet.evaluate import evaluate
from tl_funcnet.funcnet import FunctionalNetworks
from tl_funcnet.sae import collect_features

SITES = ["blocks.0.mlp.hook_post", "blocks.1.mlp.hook_post"]


@pytest.fixture(scope="module")
def seqs():
    g = torch.Generator().manual_seed(3)
    return [torch.randint(0, 50, (12,), generator=g) for _ in range(40)]


@pytest.fixture(scope="module")
def fitted(gpt2_tiny, seqs):
    acts = collect(gpt2_tiny, seqs, SITES, progress=False)
    return acts, FunctionalNetworks(3, threshold=2.0, random_state=0).fit(acts)


def test_network_cards_hold_the_networks_activity_and_contexts(gpt2_tiny, fitted):
    acts, fn = fitted
    cards = network_cards(gpt2_tiny, fn, acts, k=4, window=2)
    assert [c.title for c in cards] == ["Network 0", "Network 1", "Network 2"]
    activity = fn.time_courses(acts, kind="zscore")
    for i, card in enumerate(cards):
        assert isinstance(card, Card) and len(card.contexts) == 4
        assert card.contexts[0].value == pytest.approx(float(activity[:, i].max()))
        assert card.layer_sizes == {"L0": fn.per_site_counts([i])[SITES[0]], "L1": fn.per_site_counts([i])[SITES[1]]}
        assert card.numbers["key_units"] == int(fn.masks_[i].sum())
        assert card.example is not None and card.example.value == card.contexts[0].value  # the peak's text
        page = card._repr_html_()
        assert "<style>" in page and "Network" in page and "<script" not in page


def test_network_cards_on_a_text_and_with_mask_effects(gpt2_tiny, fitted, seqs):
    acts, fn = fitted
    text = seqs[0]
    evals = seqs[:3]
    cards = network_cards(gpt2_tiny, fn, acts, ids=[1], text=text, k=2, window=1, eval_texts=evals)
    (card,) = cards
    again = collect(gpt2_tiny, [text], SITES, progress=False)
    assert card.example.values == pytest.approx(fn.time_courses(again, kind="zscore", ids=[1])[:, 0].tolist())
    assert card.example.tokens == tuple(f"<{int(t)}>" for t in text)
    base = evaluate(gpt2_tiny, evals, compare_to_base=False, progress=False).loss
    masked = evaluate(gpt2_tiny, evals, fn.to_intervention("mask", ids=[1]), compare_to_base=False, progress=False).loss
    assert card.numbers["loss_change"] == pytest.approx(masked - base)
    assert "loss change, random units of the same size per layer" in card.facts


@pytest.mark.parametrize("kwargs, message", [
    ({"ids": [3]}, r"network ids \[3\] are out of range; there are 3 networks"),
    ({"k": 200, "window": 5}, "holds only 80 separate contexts"),
    ({"text": ""}, "text should be a non-empty string"),
    ({"text": torch.tensor([[1, 2]])}, "1-D tensor of token ids"),
    ({"window": -1}, "window should be an integer >= 0"),
])
def test_network_cards_refuse_bad_input_before_running_anything(gpt2_tiny, fitted, kwargs, message, monkeypatch):
    acts, fn = fitted
    calls = []
    monkeypatch.setattr("tl_funcnet.evaluate.evaluate", lambda *a, **k: calls.append(1))
    with pytest.raises(FuncnetError, match=message):
        network_cards(gpt2_tiny, fn, acts, eval_texts=["x"], **kwargs)
    assert not calls


@pytest.fixture(scope="module")
def sae_features(gpt2_tiny, seqs):
    sae = make_sae("standard", d_in=16, d_sae=48, hook_name="blocks.1.hook_resid_post")
    return sae, collect_features(gpt2_tiny, sae, seqs)


def test_feature_cards_facts_match_the_activations(gpt2_tiny, sae_features, seqs):
    sae, feats = sae_features
    col = feats[feats.sites[0]]
    ids = pick_features(feats, 2, min_frequency=0.0, max_frequency=1.0)
    assert len(ids) == 2
    cards = feature_cards(gpt2_tiny, sae, feats, ids, text=seqs[1], k=3, window=1, n_logits=2)
    for f, card in zip(ids, cards):
        assert card.title == f"Feature {f}" and card.subtitle.startswith("blocks.1.hook_resid_post")
        assert card.numbers["frequency"] == pytest.approx(float((col[:, f] > 0).float().mean()))
        assert card.numbers["max"] == pytest.approx(float(col[:, f].max()))
        assert all(c.value > 0 for c in card.contexts)
        logits = sae.W_dec[f].detach() @ gpt2_tiny.W_U.detach()
        assert card.facts["promotes"].startswith(repr(f"<{int(logits.argmax())}>"))
        assert len(card.example.tokens) == len(seqs[1])


def test_a_feature_that_never_fires_gets_a_card_without_contexts(gpt2_tiny, sae_features):
    sae, feats = sae_features
    col = feats[feats.sites[0]]
    dead = [int(i) for i in (col.max(0).values <= 0).nonzero().flatten()]
    if not dead:  # make one: a copy of the activations with a silent column
        data = col.clone()
        data[:, 0] = 0
        feats = type(feats)({feats.sites[0]: data}, feats.token_ids, feats.offsets)
        dead = [0]
    (card,) = feature_cards(gpt2_tiny, sae, feats, dead[:1], k=2)
    assert card.contexts == [] and card.example is None and "never active" in card.subtitle
    assert card.facts["fires on"].startswith("0.00%")


@pytest.mark.parametrize("ids, message", [([48], r"feature ids \[48\] are out of range; the SAE has 48"),
                                          ([], "out of range"), (3, "list of integer indices")])
def test_feature_cards_refuse_bad_ids(gpt2_tiny, sae_features, ids, message):
    sae, feats = sae_features
    with pytest.raises(FuncnetError, match=message):
        feature_cards(gpt2_tiny, sae, feats, ids)


def test_feature_cards_refuse_features_of_another_sae(gpt2_tiny, sae_features):
    _, feats = sae_features
    other = make_sae("standard", d_in=16, d_sae=40, hook_name="blocks.1.hook_resid_post")
    with pytest.raises(FuncnetError, match="d_sae=40"):
        feature_cards(gpt2_tiny, other, feats, [0])


def test_pick_features_keeps_cards_distinct_and_refuses_an_empty_range(sae_features):
    _, feats = sae_features
    with pytest.raises(FuncnetError, match="no feature fires"):
        pick_features(feats, 3, min_frequency=0.999, max_frequency=1.0)
    assert len(set(pick_features(feats, 5, min_frequency=0.0, max_frequency=1.0))) <= 5


def test_skip_positions_that_leave_nothing_are_refused(gpt2_tiny, sae_features):
    sae, feats = sae_features
    with pytest.raises(FuncnetError, match="leaves no token"):
        feature_cards(gpt2_tiny, sae, feats, [0], k=1, skip_positions=12)
    (card,) = feature_cards(gpt2_tiny, sae, feats, [0], k=1, skip_positions=11)
    assert all(c.position >= 11 for c in card.contexts)


def test_a_network_without_key_units_says_so(gpt2_tiny, fitted):
    acts, _ = fitted
    empty = FunctionalNetworks(3, threshold=50.0, random_state=0).fit(acts)
    (card,) = network_cards(gpt2_tiny, empty, acts, ids=[0], k=2, window=1)
    assert card.subtitle == "no key units at this threshold" and card.numbers["key_units"] == 0
