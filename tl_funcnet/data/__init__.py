"""Built-in text corpus (written for tl_funcnet, CC0) and loaders for user text."""

from tl_funcnet.data.corpus import (
    GENRES,
    SPLITS,
    corpus_records,
    load_corpus,
    read_texts,
    resolve_texts,
)

__all__ = ["SPLITS", "GENRES", "load_corpus", "corpus_records", "read_texts", "resolve_texts"]
