"""The one batched forward loop (activations/forward.py) and how inputs become token sequences (tokens.py)."""

from __future__ import annotations

import pytest
import torch

from tl_testing import count_hooks
from tl_funcnet.activations import run_batches, tokenize
from tl_funcnet.activations.tokens import batches, resolve_inputs
from tl_funcnet.errors import FuncnetError, ShapeError
from tl_funcnet.hooks import ablate, capture, steer

SITE = "blocks.0.hook_resid_post"


def _seqs(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 50, (n,), generator=g) for n in lengths]


def test_run_batches_padding_never_changes_real_tokens(gpt2_tiny):
    seqs = _seqs([7, 3, 5, 2, 6])
    seen = []
    for batch, logits in run_batches(gpt2_tiny, seqs, batch_size=2):
        assert batch.tokens.shape == batch.mask.shape == logits.shape[:2]
        for row, i in enumerate(batch.index):
            n = len(seqs[i])
            assert batch.mask[row].tolist() == [1] * n + [0] * (batch.tokens.shape[1] - n)
            torch.testing.assert_close(logits[row, :n], gpt2_tiny(seqs[i][None])[0], atol=1e-5, rtol=1e-5)
            seen.append(i)
    assert sorted(seen) == list(range(5)) and seen[0] == 0  # longest first


def test_run_batches_under_a_fixed_or_per_batch_intervention(gpt2_tiny):
    seqs = _seqs([6, 4, 5])
    iv = ablate("blocks.0.mlp.hook_post", units=[1, 2])
    fixed = [out for _, out in run_batches(gpt2_tiny, seqs, batch_size=3, intervention=iv)]
    with iv.applied(gpt2_tiny):
        expected = [out for _, out in run_batches(gpt2_tiny, seqs, batch_size=3)]
    torch.testing.assert_close(fixed, expected)
    store: dict = {}
    per_batch = list(run_batches(gpt2_tiny, seqs, batch_size=2,
                                 intervention=lambda b: capture(SITE, store, append=True)))
    assert [t.shape[0] for t in store[SITE]] == [len(b.index) for b, _ in per_batch]
    assert count_hooks(gpt2_tiny) == 0


def test_run_batches_checks_its_arguments_before_any_forward(gpt2_tiny):
    for bad in (0, 2.5, True):
        with pytest.raises(FuncnetError, match="batch_size should be a positive int"):
            next(run_batches(gpt2_tiny, _seqs([3]), batch_size=bad))
    with pytest.raises(FuncnetError, match="intervention should be an Intervention, a function"):
        next(run_batches(gpt2_tiny, _seqs([3]), intervention="ablate"))
    with pytest.raises(ShapeError):
        next(run_batches(gpt2_tiny, _seqs([3]), intervention=steer(SITE, torch.ones(5))))
    assert count_hooks(gpt2_tiny) == 0


def test_run_batches_removes_hooks_when_the_consumer_stops_early(gpt2_tiny):
    gen = run_batches(gpt2_tiny, _seqs([3, 3, 3]), batch_size=1, intervention=steer(SITE, torch.ones(16)))
    next(gen)
    gen.close()
    assert count_hooks(gpt2_tiny) == 0


def test_resolve_inputs_accepts_tokens_texts_and_splits(tmp_path):
    ids = torch.arange(6).reshape(2, 3)
    assert [t.tolist() for t in resolve_inputs(ids)] == [[0, 1, 2], [3, 4, 5]]
    assert resolve_inputs([[1, 2], [3]]) == [[1, 2], [3]]
    assert resolve_inputs(["a text"]) == ["a text"]
    assert len(resolve_inputs("evaluation")) >= 60
    (tmp_path / "t.txt").write_text("one\n\ntwo\n")
    assert resolve_inputs(str(tmp_path / "t.txt")) == ["one", "two"]
    with pytest.raises(FuncnetError, match=r"\(batch, pos\)"):
        resolve_inputs(torch.arange(3))
    with pytest.raises(FuncnetError, match="does not exist"):
        resolve_inputs(str(tmp_path / "missing.txt"))


def test_tokenize_caps_and_checks_token_ids(gpt2_tiny):
    seqs = tokenize(gpt2_tiny, [[1, 2, 3, 4], torch.tensor([5, 6])], max_tokens_per_seq=3)
    assert [s.tolist() for s in seqs] == [[1, 2, 3], [5, 6]]
    assert tokenize(gpt2_tiny, [list(range(1, 40))], max_tokens_per_seq=None)[0].numel() == 12  # n_ctx
    for bad, match in [([[1, 50]], "outside the model's vocabulary 0..49"), ([[-3]], "token id -3"),
                       ([[[1, 2]]], "1-D sequence"), ([], "the corpus is empty"), (["text"], "no tokenizer")]:
        with pytest.raises(FuncnetError, match=match):
            tokenize(gpt2_tiny, bad)
    for bad in (0, -1, 1.5):
        with pytest.raises(FuncnetError, match="max_tokens_per_seq should be a positive int or None"):
            tokenize(gpt2_tiny, [[1]], max_tokens_per_seq=bad)


def test_batches_keep_every_sequence_once():
    seqs = _seqs([1, 5, 3, 5, 2])
    out = list(batches(seqs, 2, pad_id=7))
    assert sorted(i for b in out for i in b.index) == list(range(5))
    for b in out:
        for row, i in enumerate(b.index):
            n = len(seqs[i])
            assert torch.equal(b.tokens[row, :n], seqs[i]) and (b.tokens[row, n:] == 7).all()
    unsorted = list(batches(seqs, 2, sort_by_length=False))
    assert [b.index for b in unsorted] == [[0, 1], [2, 3], [4]]
    with pytest.raises(FuncnetError, match="batch_size should be >= 1"):
        next(batches(seqs, 0))
