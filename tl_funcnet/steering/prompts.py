"""Paired prompt sets shipped as package data, and readers for user prompt files."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import FormatError, FuncnetError

_DATA = Path(__file__).resolve().parent.parent / "data" / "steering"


@dataclass(frozen=True)
class PromptPairs:
    """A contrast set: ``positive[i]`` and ``negative[i]`` differ only in the concept.

    ``positive_words``/``negative_words`` are next-token targets for measuring a shift (scored by the
    first token of ``" " + word``); ``test_prompts`` are neutral openings to steer.
    """

    name: str
    positive: tuple[str, ...]
    negative: tuple[str, ...]
    positive_words: tuple[str, ...] = ()
    negative_words: tuple[str, ...] = ()
    test_prompts: tuple[str, ...] = ()
    labels: tuple[str, str] = ("positive", "negative")
    description: str = ""

    def __len__(self) -> int:
        return len(self.positive)

    def split(self, n_train: int) -> tuple["PromptPairs", "PromptPairs"]:
        """The first ``n_train`` pairs and the rest (same words and test prompts)."""
        if not 0 < n_train < len(self):
            raise FuncnetError(f"n_train should be in 1..{len(self) - 1} for {len(self)} pairs, got {n_train}")
        a = PromptPairs(self.name, self.positive[:n_train], self.negative[:n_train], self.positive_words,
                        self.negative_words, self.test_prompts, self.labels, self.description)
        b = PromptPairs(self.name, self.positive[n_train:], self.negative[n_train:], self.positive_words,
                        self.negative_words, self.test_prompts, self.labels, self.description)
        return a, b


def available() -> list[str]:
    """Names of the shipped prompt sets."""
    return sorted(p.stem for p in _DATA.glob("*.json"))


def load_pairs(name: str) -> PromptPairs:
    """A shipped contrast set by name (``"sentiment"``, ``"formality"``) or a path to such a JSON file."""
    path = Path(name) if str(name).endswith(".json") else _DATA / f"{name}.json"
    if not path.is_file():
        raise FuncnetError(f"unknown prompt set {name!r}; shipped sets: {available()}, or pass a .json path")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        pairs = d["pairs"]
        pos = tuple(p["positive"] for p in pairs)
        neg = tuple(p["negative"] for p in pairs)
    except (ValueError, KeyError, TypeError) as err:
        raise FormatError(f"{path} is not a prompt-pair file ({err}); expected "
                          f'{{"pairs": [{{"positive": ..., "negative": ...}}, ...]}}') from None
    return PromptPairs(d.get("name", path.stem), pos, neg, tuple(d.get("positive_words", ())),
                       tuple(d.get("negative_words", ())), tuple(d.get("test_prompts", ())),
                       (d.get("positive_label", "positive"), d.get("negative_label", "negative")),
                       d.get("description", ""))


def read_prompts(path: str | os.PathLike[str]) -> list[str]:
    """Prompts from a file: ``.jsonl`` (a JSON string or an object with ``"text"``/``"prompt"`` per line)
    or any other text file with one prompt per line. Blank lines are skipped."""
    p = Path(path)
    if not p.is_file():
        raise FuncnetError(f"prompt file {str(p)!r} does not exist; expected a .txt (one prompt per line) "
                           f"or .jsonl file")
    out = []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if p.suffix.lower() == ".jsonl":
            try:
                item = json.loads(line)
            except ValueError:
                raise FormatError(f"{p}, line {i} is not valid JSON; expected a string or "
                                  f'{{"text": ...}} per line') from None
            if isinstance(item, dict):
                item = item.get("text", item.get("prompt"))
            if not isinstance(item, str) or not item.strip():
                raise FormatError(f'{p}, line {i} has no non-empty string (or "text"/"prompt" field)')
            out.append(item)
        else:
            out.append(line.strip())
    if not out:
        raise FuncnetError(f"prompt file {str(p)!r} holds no prompts; expected one prompt per line")
    return out


__all__ = ["PromptPairs", "load_pairs", "read_prompts", "available"]
