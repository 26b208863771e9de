"""FNF on tiny random models (char-level tokens): invariances, alignment, scoring, file format, safe saves."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tl_testing import make_gpt2_style, make_llama_style
from tl_funcnet.errors import FormatError, FuncnetError, OverwriteError
from tl_funcnet.fingerprint import Fingerprint, compare, fingerprint, verdict_of
from tl_funcnet.fingerprint import transforms as T
from tl_funcnet.fingerprint.compare import segment_means, word_spans

TEXTS = [
    "The old lift stopped between the second and third floors, with four people inside. "
    "Nobody spoke for a while; then the boy asked whether sharks ever sleep, and everyone laughed.",
    "To repot a fern, water it the day before, loosen the root ball gently, and choose a pot "
    "only slightly larger than the old one. Keep it out of direct sun for a week afterwards.",
    "Dear Marta, thank you for the parcel of seeds. The tomatoes came up in nine days, faster "
    "than any year before, and the beans are already climbing the fence by the shed.",
]
KW = dict(n_networks=6, tokenizer="chars", dtype=torch.float64)


def rms_model(seed: int = 0, **kw):
    base = dict(normalization_type="RMSPre", n_ctx=512, d_vocab=128, d_model=32, d_head=8, rotary_dim=8)
    return make_llama_style(seed, **{**base, **kw}).eval()


@pytest.fixture(scope="module")
def victim():
    return rms_model(0)


@pytest.fixture(scope="module")
def victim_fp(victim):
    return fingerprint(victim, TEXTS, **KW)


def test_fingerprint_shapes_and_offsets(victim_fp):
    assert len(victim_fp.series) == 3 and victim_fp.n_networks == 6
    for text, s, o in zip(TEXTS, victim_fp.series, victim_fp.offsets):
        assert s.shape == (len(text), 6) and o.shape == (len(text), 2)
        assert o[:, 0].tolist() == list(range(len(text)))
    S = torch.cat(victim_fp.series).double()
    assert torch.allclose(S.std(0, correction=0), torch.ones(6, dtype=torch.float64), atol=1e-4)
    assert (S.pow(3).mean(0) > 0).all()  # sign canonicalised by skew
    assert torch.allclose(victim_fp.layer_energy.sum(1), torch.ones(6), atol=1e-5)
    assert victim_fp.params["ica_converged"]
    assert victim_fp.params["random_state"] == 0 and victim_fp.params["n_networks"] == 6


def test_fingerprint_is_reproducible_and_seeded_by_random_state(victim, victim_fp):
    again = fingerprint(victim, TEXTS, **KW)
    assert all(torch.equal(a, b) for a, b in zip(again.series, victim_fp.series))
    other = fingerprint(victim, TEXTS, random_state=1, **KW)
    assert other.params["random_state"] == 1
    # another ICA start finds the same sources (up to order/sign): compare still calls it derived
    assert compare(victim_fp, other, top_m=4, n_null=20).score > 0.9


def test_rotated_residual_gives_the_same_time_courses(victim, victim_fp):
    rotated = T.rotate_residual(victim, random_state=3)
    toks = torch.randint(0, 128, (2, 12))
    assert torch.allclose(rotated(toks), victim(toks), atol=1e-4)  # function-preserving
    W = victim.blocks[0].mlp.W_in
    assert not torch.allclose(rotated.blocks[0].mlp.W_in, W, atol=1e-2)  # but every weight changed
    fp = fingerprint(rotated, TEXTS, **KW)
    for a, b in zip(victim_fp.series, fp.series):
        assert torch.allclose(a, b, atol=1e-4)
    res = compare(victim_fp, fp, top_m=4, n_null=100)
    assert res.score == pytest.approx(1.0, abs=1e-6) and res.verdict == "derived"
    assert res.p_value == pytest.approx(1 / 101)


def test_permuted_mlp_gives_the_same_time_courses(victim, victim_fp):
    fp = fingerprint(T.permute_mlp(victim, random_state=1), TEXTS, **KW)
    for a, b in zip(victim_fp.series, fp.series):
        assert torch.allclose(a, b, atol=1e-4)


def test_rotate_residual_refuses_layernorm():
    with pytest.raises(FuncnetError, match="RMSPre"):
        T.rotate_residual(make_gpt2_style(normalization_type="LN"))


def test_independent_model_scores_lower_and_other_shapes_work(victim_fp):
    other = rms_model(7, n_layers=3, d_model=24, d_head=6, rotary_dim=6, d_mlp=40)
    res = compare(victim_fp, fingerprint(other, TEXTS, n_networks=5, tokenizer="chars"), top_m=4, n_null=50)
    assert res.rho.shape == (6, 5) and len(res.pairs) == 5
    assert res.score < 0.9
    assert 0 < res.p_value <= 1 and res.n_texts == 3


def test_segment_means_average_tokens_within_words():
    text = "ab cd  e"
    words = word_spans(text)
    assert words.tolist() == [[0, 2], [3, 5], [7, 8]]
    offs = np.array([[0, 1], [1, 2], [2, 4], [4, 5], [5, 7], [7, 8]])  # " c" starts at its 'c'; "  " is blank
    series = np.arange(6, dtype=float)[:, None]
    means, covered = segment_means(text, series, offs, words)
    assert covered.tolist() == [True, True, True]
    assert means[:, 0].tolist() == [0.5, 2.5, 5.0]


def test_different_tokenizations_align(victim):
    def words_tok(text):  # one token per word, with its leading space, as BPE does
        spans = [m.span() for m in __import__("re").finditer(r"\s*\S+", text)]
        return [len(text[a:b]) % 128 for a, b in spans], spans

    a = fingerprint(victim, TEXTS, **KW)
    b = fingerprint(victim, TEXTS, n_networks=6, tokenizer=words_tok, dtype=torch.float64)
    res = compare(a, b, top_m=3, n_null=20)
    assert res.n_segments == sum(len(word_spans(t)) for t in TEXTS)
    assert np.isfinite(res.score) and 0 <= res.score <= 1


@pytest.mark.parametrize("bad", [{"n_null": 0}, {"n_null": -5}, {"n_null": 2.5}, {"n_null": True}, {"top_m": 0},
                                 {"top_m": -1}, {"alpha": 1.5}, {"derived_at": float("nan")},
                                 {"derived_at": 0.3, "independent_below": 0.5}])
def test_compare_refuses_bad_settings(victim_fp, bad):
    with pytest.raises(FuncnetError):
        compare(victim_fp, victim_fp, **bad)


def test_compare_is_seeded_by_random_state(victim, victim_fp):
    other = fingerprint(victim, TEXTS[:2], n_networks=4, tokenizer="chars", dtype=torch.float64)
    a = compare(victim_fp, other, top_m=2, n_null=30)
    b = compare(victim_fp, other, top_m=2, n_null=30, random_state=0)
    c = compare(victim_fp, other, top_m=2, n_null=30, random_state=1)
    assert (a.null_mean, a.p_value) == (b.null_mean, b.p_value)
    assert a.score == c.score and a.null_mean != c.null_mean
    assert a.settings["random_state"] == 0 and c.settings["random_state"] == 1
    assert compare(victim_fp, other, top_m=2, n_null=1).p_value in (0.5, 1.0)  # n_null=1 is the minimum


def test_compare_needs_a_shared_text(victim, victim_fp):
    other = fingerprint(victim, ["A completely different passage, not among the victim's texts at all."], **KW)
    with pytest.raises(FuncnetError, match="share no text"):
        compare(victim_fp, other)


def test_verdict_thresholds():
    assert verdict_of(0.95, 0.005) == "derived"
    assert verdict_of(0.95, 0.2) == "independent"
    assert verdict_of(0.3, 0.005) == "independent"
    assert verdict_of(0.7, 0.005, derived_at=0.8, independent_below=0.6) == "inconclusive"


def test_save_load_roundtrip(victim_fp, tmp_path):
    path = victim_fp.save(tmp_path / "v.fnf.safetensors")
    back = Fingerprint.load(path)
    assert back.texts == victim_fp.texts and back.params == victim_fp.params
    for a, b in zip(back.series, victim_fp.series):
        assert torch.equal(a, b.float())
    assert compare(victim_fp, back, n_null=10).score == pytest.approx(1.0, abs=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == ["v.fnf.safetensors"]  # no temp file left


def test_save_never_replaces_other_files_and_needs_overwrite(victim_fp, tmp_path):
    other = tmp_path / "notes.safetensors"
    other.write_bytes(b"my own file")
    with pytest.raises(OverwriteError, match="not a fingerprint"):
        victim_fp.save(other)
    with pytest.raises(OverwriteError, match="not a fingerprint"):
        victim_fp.save(other, overwrite=True)
    assert other.read_bytes() == b"my own file"
    folder = tmp_path / "a_folder"
    folder.mkdir()
    with pytest.raises(OverwriteError):
        victim_fp.save(folder, overwrite=True)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "weights.safetensors"))  # a safetensors file, not ours
    with pytest.raises(OverwriteError):
        victim_fp.save(tmp_path / "weights.safetensors", overwrite=True)
    # a fingerprint is replaced only with overwrite=True
    path = tmp_path / "fp.safetensors"
    victim_fp.save(path)
    first = path.read_bytes()
    smaller = Fingerprint(victim_fp.texts[:1], victim_fp.series[:1], victim_fp.offsets[:1], victim_fp.layer_energy,
                          victim_fp.units_per_layer, victim_fp.params, victim_fp.model)
    with pytest.raises(OverwriteError, match="overwrite=True"):
        smaller.save(path)
    assert path.read_bytes() == first
    smaller.save(path, overwrite=True)
    assert Fingerprint.load(path).texts == victim_fp.texts[:1]
    with pytest.raises(FuncnetError, match="overwrite"):
        smaller.save(path, overwrite="yes")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_folder", "fp.safetensors", "notes.safetensors",
                                                          "weights.safetensors"]


def test_load_detects_a_flipped_byte(victim_fp, tmp_path):
    path = victim_fp.save(tmp_path / "v.safetensors")
    data = bytearray(path.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    for where in (8 + header_len + 5, len(data) - 1):  # inside the tensor bytes (first tensor, last tensor)
        bad = bytearray(data)
        bad[where] ^= 0x01
        (tmp_path / "bad.safetensors").write_bytes(bytes(bad))
        with pytest.raises(FormatError, match="checksum"):
            Fingerprint.load(tmp_path / "bad.safetensors")
    Fingerprint.load(path)  # the untouched file still loads


def test_load_rejects_other_versions_and_files(victim_fp, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = victim_fp.save(tmp_path / "v.safetensors")
    with safe_open(str(path), framework="pt") as f:
        header = json.loads(f.metadata()["tl_funcnet"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    header["version"] = 99
    save_file(tensors, str(tmp_path / "v99.safetensors"), metadata={"tl_funcnet": json.dumps(header)})
    with pytest.raises(FormatError, match="version 99"):
        Fingerprint.load(tmp_path / "v99.safetensors")
    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(FormatError, match="not a fingerprint"):
        Fingerprint.load(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(FormatError):
        Fingerprint.load(tmp_path / "junk.safetensors")


def test_model_without_tokenizer_needs_one(victim):
    with pytest.raises(FuncnetError, match="no tokenizer"):
        fingerprint(victim, TEXTS, n_networks=4)


def test_texts_too_short_for_the_networks_is_a_clear_error(victim):
    with pytest.raises(FuncnetError, match="n_networks"):
        fingerprint(victim, ["a short text"], n_networks=64, tokenizer="chars")
    with pytest.raises(FuncnetError, match="non-empty"):
        fingerprint(victim, ["   "], n_networks=4, tokenizer="chars")
