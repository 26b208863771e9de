"""Tests for the built-in corpus and the text loaders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tl_funcnet.data import (
    GENRES,
    SPLITS,
    corpus_records,
    load_corpus,
    read_texts,
    resolve_texts,
)
from tl_funcnet.errors import FormatError, FuncnetError

MIN_PASSAGES = {"calibration": 160, "evaluation": 60, "finetune": 40}
MIN_WORDS = {"calibration": 28_000, "evaluation": 10_000, "finetune": 7_000}


def _words(text: str) -> int:
    return len(text.split())


# ---------------------------------------------------------------- built-in corpus


@pytest.mark.parametrize("split", SPLITS)
def test_split_sizes(split: str) -> None:
    texts = load_corpus(split)
    assert len(texts) >= MIN_PASSAGES[split]
    assert sum(_words(t) for t in texts) >= MIN_WORDS[split]


def test_corpus_totals() -> None:
    texts = [t for s in SPLITS for t in load_corpus(s)]
    assert len(texts) >= 260
    assert sum(_words(t) for t in texts) >= 45_000


def test_splits_disjoint_and_unique() -> None:
    seen: dict[str, str] = {}
    for split in SPLITS:
        for text in load_corpus(split):
            key = " ".join(text.split()).lower()
            assert key not in seen, f"passage appears in {seen.get(key)} and {split}"
            seen[key] = split


def test_ids_unique_and_prefixed() -> None:
    prefixes = {"calibration": "cal-", "evaluation": "eval-", "finetune": "ft-"}
    all_ids = []
    for split in SPLITS:
        recs = corpus_records(split)
        assert all(r["id"].startswith(prefixes[split]) for r in recs)
        all_ids += [r["id"] for r in recs]
    assert len(all_ids) == len(set(all_ids))


@pytest.mark.parametrize("split", ["calibration", "evaluation", "finetune"])
def test_every_genre_present(split: str) -> None:
    genres = {r["genre"] for r in corpus_records(split)}
    assert genres == set(GENRES)


def test_genres_roughly_balanced() -> None:
    recs = corpus_records("calibration")
    counts = {g: sum(r["genre"] == g for r in recs) for g in GENRES}
    assert min(counts.values()) >= 12
    assert max(counts.values()) <= 3 * min(counts.values())


@pytest.mark.parametrize("split", SPLITS)
def test_passage_shape(split: str) -> None:
    for rec in corpus_records(split):
        assert set(rec) == {"id", "genre", "text"}
        n = _words(rec["text"])
        assert 120 <= n <= 260, (rec["id"], n)
        assert rec["text"].isascii(), rec["id"]
        assert rec["text"] == rec["text"].strip()


def test_shipped_files_are_valid_jsonl() -> None:
    import tl_funcnet.data as data_pkg

    texts_dir = Path(data_pkg.__file__).parent / "texts"
    for split in SPLITS:
        lines = (texts_dir / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(lines) == len(corpus_records(split))
        for line in lines:
            rec = json.loads(line)
            assert isinstance(rec["text"], str) and rec["genre"] in GENRES


def test_load_corpus_filters() -> None:
    all_cal = load_corpus()
    assert all_cal == load_corpus("calibration")
    assert load_corpus(limit=5) == all_cal[:5]
    news = load_corpus("calibration", genres=["news"])
    expected = [r["text"] for r in corpus_records("calibration") if r["genre"] == "news"]
    assert news == expected and len(news) >= 12
    two = load_corpus("evaluation", genres=("letter", "essay"), limit=3)
    recs = {r["text"]: r["genre"] for r in corpus_records("evaluation")}
    assert len(two) == 3 and all(recs[t] in {"letter", "essay"} for t in two)
    assert load_corpus("finetune", genres="dialogue") == load_corpus("finetune", genres=["dialogue"])


def test_load_corpus_returns_fresh_list() -> None:
    a = load_corpus("finetune")
    a.clear()
    assert len(load_corpus("finetune")) >= 40


def test_load_corpus_errors() -> None:
    with pytest.raises(FuncnetError, match="unknown corpus split 'train'.*'calibration', 'evaluation', 'finetune'"):
        load_corpus("train")
    with pytest.raises(FuncnetError, match="unknown corpus split"):
        corpus_records("test")
    with pytest.raises(FuncnetError, match="unknown genre 'poetry'"):
        load_corpus(genres=["poetry"])
    with pytest.raises(FuncnetError, match="limit must be a positive integer"):
        load_corpus(limit=0)
    with pytest.raises(FuncnetError, match="limit must be a positive integer"):
        load_corpus(limit=True)  # type: ignore[arg-type]


# ---------------------------------------------------------------- read_texts


def test_read_txt(tmp_path: Path) -> None:
    p = tmp_path / "notes.txt"
    p.write_text("First passage\nwraps here.\n\n\nSecond one.\n  \nThird.\n", encoding="utf-8")
    assert read_texts(p) == ["First passage wraps here.", "Second one.", "Third."]
    assert read_texts(str(p)) == read_texts(p)


def test_read_jsonl(tmp_path: Path) -> None:
    p = tmp_path / "data.jsonl"
    p.write_text('{"text": "alpha beta", "id": 1}\n\n"a bare string"\n{"text": "gamma"}\n', encoding="utf-8")
    assert read_texts(p) == ["alpha beta", "a bare string", "gamma"]


def test_read_directory(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("bee one\n\nbee two\n", encoding="utf-8")
    (tmp_path / "a.txt").write_text("ay\n", encoding="utf-8")
    (tmp_path / "ignored.md").write_text("not read\n", encoding="utf-8")
    assert read_texts(tmp_path) == ["ay", "bee one", "bee two"]


def test_read_list_and_tuple() -> None:
    assert read_texts(["one", "two"]) == ["one", "two"]
    assert read_texts(("x y",)) == ["x y"]
    out = read_texts(src := ["keep"])
    assert out == src and out is not src


def test_read_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FuncnetError, match="does not exist"):
        read_texts(tmp_path / "nope.txt")


def test_read_empty_sources(tmp_path: Path) -> None:
    empty_txt = tmp_path / "empty.txt"
    empty_txt.write_text("\n   \n\n", encoding="utf-8")
    with pytest.raises(FuncnetError, match="the corpus is empty"):
        read_texts(empty_txt)
    empty_jsonl = tmp_path / "empty.jsonl"
    empty_jsonl.write_text('{"text": "  "}\n\n', encoding="utf-8")
    with pytest.raises(FuncnetError, match="the corpus is empty"):
        read_texts(empty_jsonl)
    empty_dir = tmp_path / "d"
    empty_dir.mkdir()
    with pytest.raises(FuncnetError, match="the corpus is empty.*no .txt files"):
        read_texts(empty_dir)
    with pytest.raises(FuncnetError, match="the corpus is empty"):
        read_texts([])


def test_read_bad_jsonl(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{not json}\n', encoding="utf-8")
    with pytest.raises(FormatError, match="line 2 is not valid JSON"):
        read_texts(bad)
    no_text = tmp_path / "notext.jsonl"
    no_text.write_text('{"text": "ok"}\n\n{"body": "x"}\n', encoding="utf-8")
    with pytest.raises(FormatError, match=r'line 3 has no string "text" field.*keys body'):
        read_texts(no_text)
    wrong_type = tmp_path / "num.jsonl"
    wrong_type.write_text("42\n", encoding="utf-8")
    with pytest.raises(FormatError, match="line 1 has no string"):
        read_texts(wrong_type)


def test_read_bad_list_items() -> None:
    with pytest.raises(FuncnetError, match="corpus item 1 is a int, not a string"):
        read_texts(["fine", 3])  # type: ignore[list-item]
    with pytest.raises(FuncnetError, match="corpus item 2 is empty or only whitespace"):
        read_texts(["a", "b", "   "])


def test_read_unsupported(tmp_path: Path) -> None:
    p = tmp_path / "data.csv"
    p.write_text("a,b\n", encoding="utf-8")
    with pytest.raises(FuncnetError, match="unsupported extension '.csv'"):
        read_texts(p)
    with pytest.raises(FuncnetError, match="cannot read a corpus from a int"):
        read_texts(5)  # type: ignore[arg-type]


# ---------------------------------------------------------------- resolve_texts


def test_resolve_texts(tmp_path: Path) -> None:
    assert resolve_texts("evaluation") == load_corpus("evaluation")
    assert resolve_texts(["hello there"]) == ["hello there"]
    p = tmp_path / "t.txt"
    p.write_text("one\n\ntwo\n", encoding="utf-8")
    assert resolve_texts(str(p)) == ["one", "two"]
    with pytest.raises(FuncnetError, match="does not exist"):
        resolve_texts("validation")


def test_errors_are_value_errors() -> None:
    with pytest.raises(ValueError):
        load_corpus("nope")
