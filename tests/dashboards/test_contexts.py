"""Top-activating contexts: highest peaks, separated within a text, cut at text ends; bad corpora refused."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tl_funcnet.dashboards import Context, token_strings, top_contexts
from tl_funcnet.dashboards.contexts import context_capacity, positions
from tl_funcnet.errors import FuncnetError, ShapeError


class _NoTokenizer:
    tokenizer = None


MODEL = _NoTokenizer()


def _corpus(lengths):
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    n = int(offsets[-1])
    return torch.arange(n) % 50, offsets


def test_picks_the_highest_tokens_with_their_neighbours():
    ids, offsets = _corpus([10, 10])
    scores = torch.zeros(20)
    scores[3], scores[15], scores[7] = 5.0, 4.0, 3.0
    ctxs = top_contexts(MODEL, scores, ids, offsets, k=3, window=2)
    assert [(c.text, c.position, c.value) for c in ctxs] == [(0, 3, 5.0), (1, 5, 4.0), (0, 7, 3.0)]
    first = ctxs[0]
    assert isinstance(first, Context)
    assert first.tokens == tuple(f"<{i}>" for i in range(1, 6)) and first.peak == 2
    assert first.values[first.peak] == 5.0


def test_contexts_stop_at_the_ends_of_their_text():
    ids, offsets = _corpus([4, 6])
    scores = torch.zeros(10)
    scores[4] = 9.0  # first token of text 1
    scores[3] = 8.0  # last token of text 0
    a, b = top_contexts(MODEL, scores, ids, offsets, k=2, window=3)
    assert (a.text, a.position, a.peak, len(a.tokens)) == (1, 0, 0, 4)
    assert (b.text, b.position, b.peak, len(b.tokens)) == (0, 3, 3, 4)


def test_peaks_of_one_text_are_kept_apart():
    ids, offsets = _corpus([30])
    scores = torch.arange(30, dtype=torch.float)  # rising: the best tokens are neighbours
    ctxs = top_contexts(MODEL, scores, ids, offsets, k=3, window=4)
    assert [c.position for c in ctxs] == [29, 24, 19]


def test_positive_only_and_skip_positions():
    ids, offsets = _corpus([8, 8])
    scores = torch.zeros(16)
    scores[0], scores[8], scores[5] = 10.0, 9.0, 1.0
    assert [c.position for c in top_contexts(MODEL, scores, ids, offsets, k=2, window=1, positive_only=True,
                                             skip_positions=1)] == [5]
    assert [c.value for c in top_contexts(MODEL, scores, ids, offsets, k=2, window=1)] == [10.0, 9.0]
    assert positions(offsets).tolist() == list(range(8)) * 2


@pytest.mark.parametrize("k, window, lengths, message", [
    (5, 2, [6, 4], "holds only 3 separate contexts"),
    (1, 0, [], "holds only 0"),
])
def test_a_corpus_too_small_is_refused(k, window, lengths, message):
    ids, offsets = _corpus(lengths) if lengths else (torch.zeros(0, dtype=torch.long), torch.tensor([0]))
    with pytest.raises(FuncnetError, match=message):
        top_contexts(MODEL, torch.zeros(len(ids)), ids, offsets, k=k, window=window)


def test_bad_scores_and_settings_are_refused():
    ids, offsets = _corpus([10])
    with pytest.raises(ShapeError, match="9 scores"):
        top_contexts(MODEL, torch.zeros(9), ids, offsets, k=1)
    with pytest.raises(FuncnetError, match="NaN"):
        top_contexts(MODEL, torch.tensor([float("nan")] * 10), ids, offsets, k=1)
    for bad in ({"k": 0}, {"k": 2.0}, {"window": -1}, {"skip_positions": -1}):
        with pytest.raises(FuncnetError):
            top_contexts(MODEL, torch.zeros(10), ids, offsets, **{"k": 1, **bad})


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(1, 12), min_size=1, max_size=5), window=st.integers(0, 3),
       seed=st.integers(0, 10_000))
def test_any_corpus_within_capacity_gives_k_separate_sorted_contexts(lengths, window, seed):
    ids, offsets = _corpus(lengths)
    scores = torch.randn(len(ids), generator=torch.Generator().manual_seed(seed))
    k = context_capacity(offsets, window)
    ctxs = top_contexts(MODEL, scores, ids, offsets, k=k, window=window)
    assert len(ctxs) == k
    assert [c.value for c in ctxs] == sorted((c.value for c in ctxs), reverse=True)
    for a in ctxs:
        assert a.value == float(scores[int(offsets[a.text]) + a.position]) == a.values[a.peak]
        assert all(abs(a.position - b.position) > window for b in ctxs if b is not a and b.text == a.text)


def test_token_strings_use_the_tokenizer():
    class Tok:
        def batch_decode(self, ids, clean_up_tokenization_spaces=False):
            return [f"w{i[0]}" for i in ids]

    class M:
        tokenizer = Tok()

    assert token_strings(M(), torch.tensor([3, 4])) == ["w3", "w4"]
    assert token_strings(MODEL, [7]) == ["<7>"]
