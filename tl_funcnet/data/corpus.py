"""The built-in English text corpus and the loaders that turn "a corpus" argument into a list of strings.

The passages in ``tl_funcnet/data/texts/*.jsonl`` were written for tl_funcnet, CC0: every one is original
prose made for this project, so the package can ship calibration and evaluation text without a download
or a licence question. Three disjoint splits exist:

* ``"calibration"`` - fitting decompositions and statistics on activations;
* ``"evaluation"`` - held-out text for measuring what a fitted object does;
* ``"finetune"`` - a separate pool for fine-tuning experiments, disjoint from the other two.

Each line of a split file is a JSON object ``{"id": ..., "genre": ..., "text": ...}``. The genres are
listed in :data:`GENRES`.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Sequence, Union

from tl_funcnet.errors import FormatError, FuncnetError

SPLITS: tuple[str, ...] = ("calibration", "evaluation", "finetune")
GENRES: tuple[str, ...] = (
    "encyclopedic",
    "narrative",
    "dialogue",
    "instructions",
    "technical",
    "news",
    "letter",
    "essay",
)

TextSource = Union[str, "os.PathLike[str]", Sequence[str]]


def _check_split(split: object) -> str:
    if not isinstance(split, str) or split not in SPLITS:
        raise FuncnetError(
            f"unknown corpus split {split!r}; expected one of {', '.join(repr(s) for s in SPLITS)}. "
            f"Pass one of those names, or pass your own texts to read_texts()."
        )
    return split


@lru_cache(maxsize=None)
def _load_records(split: str) -> tuple[tuple[str, str, str], ...]:
    resource = resources.files("tl_funcnet.data").joinpath("texts", f"{split}.jsonl")
    raw = resource.read_text(encoding="utf-8")
    out: list[tuple[str, str, str]] = []
    for lineno, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            out.append((str(rec["id"]), str(rec["genre"]), str(rec["text"])))
        except (ValueError, KeyError, TypeError) as exc:  # pragma: no cover - the shipped files are tested
            raise FormatError(
                f"the built-in corpus file {split}.jsonl is damaged at line {lineno} ({exc}); "
                f"expected a JSON object with id, genre and text. Reinstall tl_funcnet."
            ) from exc
    return tuple(out)


def corpus_records(split: str = "calibration") -> list[dict[str, str]]:
    """Return the records of a built-in split as dicts with keys ``id``, ``genre`` and ``text``."""
    _check_split(split)
    return [{"id": i, "genre": g, "text": t} for i, g, t in _load_records(split)]


def load_corpus(
    split: str = "calibration",
    *,
    genres: Sequence[str] | None = None,
    limit: int | None = None,
) -> list[str]:
    """Return the passages of a built-in split, optionally restricted to some genres and to the first ``limit``.

    ``split`` is one of ``"calibration"``, ``"evaluation"`` or ``"finetune"``. ``genres`` keeps only passages
    of the named genres (see :data:`GENRES`); ``limit`` keeps at most that many passages, in file order.
    """
    _check_split(split)
    wanted: set[str] | None = None
    if genres is not None:
        if isinstance(genres, str):
            genres = [genres]
        wanted = set()
        for g in genres:
            if g not in GENRES:
                raise FuncnetError(
                    f"unknown genre {g!r}; expected some of {', '.join(GENRES)}. "
                    f"Pick genres from tl_funcnet.data.GENRES or pass genres=None for all."
                )
            wanted.add(g)
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise FuncnetError(
                f"limit must be a positive integer or None, got {limit!r}; pass e.g. limit=32 or leave it out."
            )
    texts = [t for _, g, t in _load_records(split) if wanted is None or g in wanted]
    if limit is not None:
        texts = texts[:limit]
    return texts


def _texts_from_txt(path: Path) -> list[str]:
    content = path.read_text(encoding="utf-8")
    blocks: list[str] = []
    current: list[str] = []
    for line in content.splitlines():
        if line.strip():
            current.append(line.strip())
        elif current:
            blocks.append(" ".join(current))
            current = []
    if current:
        blocks.append(" ".join(current))
    return blocks


def _texts_from_jsonl(path: Path) -> list[str]:
    texts: list[str] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                item: Any = json.loads(line)
            except ValueError as exc:
                raise FormatError(
                    f"{path}, line {lineno} is not valid JSON ({exc.args[0] if exc.args else exc}); "
                    f'expected one JSON object with a "text" field (or a JSON string) per line. '
                    f"Fix or remove that line."
                ) from None
            if isinstance(item, str):
                text = item
            elif isinstance(item, dict) and isinstance(item.get("text"), str):
                text = item["text"]
            else:
                raise FormatError(
                    f'{path}, line {lineno} has no string "text" field (got {type(item).__name__}'
                    f"{' with keys ' + ', '.join(map(str, item)) if isinstance(item, dict) else ''}); "
                    f'expected an object like {{"text": "..."}} or a JSON string. Fix or remove that line.'
                )
            if text.strip():
                texts.append(text)
    return texts


def _texts_from_path(path: Path) -> list[str]:
    if not path.exists():
        raise FuncnetError(
            f"corpus path {str(path)!r} does not exist; expected a .txt or .jsonl file, a directory of .txt "
            f"files, a list of strings, or a built-in split name ({', '.join(SPLITS)}). Check the path."
        )
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".txt")
        if not files:
            raise FuncnetError(
                f"the corpus is empty: directory {str(path)!r} holds no .txt files; "
                f"expected one or more .txt files of passages separated by blank lines. Add some or pass a file."
            )
        texts: list[str] = []
        for f in files:
            texts.extend(_texts_from_txt(f))
        return texts
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _texts_from_jsonl(path)
    if suffix == ".txt":
        return _texts_from_txt(path)
    raise FuncnetError(
        f"cannot read corpus file {str(path)!r}: unsupported extension {path.suffix or '(none)'!r}; "
        f"expected .txt (passages separated by blank lines) or .jsonl (one JSON object with \"text\" per line). "
        f"Rename or convert the file."
    )


def read_texts(source: TextSource) -> list[str]:
    """Read passages from a file, a directory, or an in-memory list.

    ``source`` may be a path to a ``.txt`` file (passages separated by blank lines), a ``.jsonl`` file (one
    JSON object with a ``"text"`` field, or one JSON string, per line), a directory whose ``.txt`` files
    are read in name order, or a list/tuple of non-empty strings. Raises a :class:`FuncnetError` when the
    source is missing, malformed or yields no text.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        texts = _texts_from_path(path)
        where = f"{str(path)!r}"
    elif isinstance(source, (list, tuple)):
        texts = []
        for i, item in enumerate(source):
            if not isinstance(item, str):
                raise FuncnetError(
                    f"corpus item {i} is a {type(item).__name__}, not a string; "
                    f"expected a list of text passages. Convert or drop that item."
                )
            if not item.strip():
                raise FuncnetError(
                    f"corpus item {i} is empty or only whitespace; expected non-empty text passages. "
                    f"Remove that item."
                )
            texts.append(item)
        where = f"the {type(source).__name__} passed in"
    else:
        raise FuncnetError(
            f"cannot read a corpus from a {type(source).__name__}; expected a split name "
            f"({', '.join(SPLITS)}), a path to a .txt/.jsonl file or directory, or a list of strings."
        )
    if not texts:
        raise FuncnetError(
            f"the corpus is empty: no text passages found in {where}; "
            f"expected at least one non-empty passage. Check the source."
        )
    return texts


def resolve_texts(texts_or_split: TextSource) -> list[str]:
    """Turn "a corpus" argument into a list of strings.

    A built-in split name (``"calibration"``, ``"evaluation"``, ``"finetune"``) loads that split; anything
    else goes through :func:`read_texts` (a path or a list of strings).
    """
    if isinstance(texts_or_split, str) and texts_or_split in SPLITS:
        return load_corpus(texts_or_split)
    return read_texts(texts_or_split)


__all__ = ["SPLITS", "GENRES", "load_corpus", "corpus_records", "read_texts", "resolve_texts"]
