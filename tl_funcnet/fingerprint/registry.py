"""A registry of fingerprints: many victims in one folder (or any fsspec URL), one suspect ranked against all.

>>> fps = fingerprint_models({"smollm2": "smollm2-135m", "mine": "out/pruned"}, executor=pool)
>>> reg = FingerprintRegistry.create("registry/")
>>> reg.add_many(fps)
>>> ranking = FingerprintRegistry("registry/").rank("suspect-model", executor=pool)
>>> ranking.to_frame()                            # name, score, p_value, verdict, margin, ... best first

Layout (``format`` ``tl_funcnet.fingerprint_registry``, ``version`` 1)::

    index.json          {"format", "version", "entries": [{"name", "file", "sha256", "model", "n_networks",
                                                           "texts_sha256", "params"}, ...]}
    <name>.safetensors  one fingerprint per entry (:meth:`Fingerprint.save`'s format)

Every fingerprint file is checked against the SHA-256 of its bytes recorded in the index before it is used.
The registry writes only ``index.json`` and the files of its entries: a file it did not write is never
replaced. Writes go to temporary siblings renamed into place, the index last (once per :meth:`add_many`).
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FormatError, FuncnetError, OverwriteError
from ..executors.fanout import Chunk, check_executor, fan_out, model_ref, spans
from ..hooks.values import positive_int
from ..models.ref import ModelRef, using
from .compare import TOP_M, Comparison, compare
from .core import Fingerprint
from .storage import Storage

FORMAT = "tl_funcnet.fingerprint_registry"
VERSION = 1
INDEX = "index.json"
SUFFIX = ".safetensors"
#: registry entries compared per chunk when :meth:`FingerprintRegistry.rank` runs on an executor
RANK_CHUNK = 8
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")
_ENTRY_KEYS = {"name": str, "file": str, "sha256": str, "model": dict, "n_networks": int, "texts_sha256": str,
               "params": dict}


# --------------------------------------------------------------------------- small helpers


def texts_key(fp: Fingerprint) -> str:
    """One SHA-256 over the fingerprint's text hashes, in order: equal keys mean the same texts."""
    return hashlib.sha256("\n".join(fp.text_sha256).encode()).hexdigest()


def check_name(name: Any) -> str:
    """``name`` if it can name a registry entry (and its file), else a FuncnetError saying what is allowed."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name.endswith(".") or ".." in name:
        raise FuncnetError(f"registry entry name {name!r:.60} is not a safe file name: use 1-100 letters, digits, "
                           f"'.', '_', '+' or '-', starting with a letter or digit (no '/', no '..')")
    return name


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fingerprint_bytes(fp: Fingerprint) -> bytes:
    """The bytes :meth:`Fingerprint.save` writes for ``fp``."""
    with tempfile.TemporaryDirectory(prefix="tlfn-registry-") as d:
        path = Path(d) / f"fp{SUFFIX}"
        fp.save(path)
        return path.read_bytes()


def _fingerprint_from_bytes(data: bytes, shown: str) -> Fingerprint:
    """:meth:`Fingerprint.load` on ``data``; its errors name ``shown`` (the registry's file), not a temp file."""
    with tempfile.TemporaryDirectory(prefix="tlfn-registry-") as d:
        path = Path(d) / f"fp{SUFFIX}"
        path.write_bytes(data)
        try:
            return Fingerprint.load(path)
        except FormatError as err:
            raise FormatError(str(err).replace(str(path), shown)) from None


def _entry_of(name: str, fp: Fingerprint, data: bytes) -> dict[str, Any]:
    return {"name": name, "file": name + SUFFIX, "sha256": _sha(data), "model": dict(fp.model),
            "n_networks": fp.n_networks, "texts_sha256": texts_key(fp), "params": dict(fp.params)}


def _verified_bytes(storage: Storage, entry: Mapping[str, Any]) -> bytes:
    """The entry's file, after checking it against the index's SHA-256 (FormatError naming the file otherwise)."""
    shown = storage.shown(entry["file"])
    try:
        data = storage.read(entry["file"])
    except FileNotFoundError:
        raise FormatError(f"{shown} is missing; the registry's index lists it as entry {entry['name']!r}: restore "
                          f"the file or rebuild the index with FingerprintRegistry.build") from None
    got = _sha(data)
    if got != entry["sha256"]:
        raise FormatError(f"{shown}: its SHA-256 ({got[:12]}...) differs from the registry index's "
                          f"({entry['sha256'][:12]}...); the file was changed or corrupted since it was registered: "
                          f"register the fingerprint again (pass overwrite=True)")
    return data


def _read_verified(storage: Storage, entry: Mapping[str, Any]) -> Fingerprint:
    """The entry's fingerprint, its bytes checked against the index's SHA-256 and its contents against the index's
    description of it (FormatError naming the file otherwise)."""
    shown = storage.shown(entry["file"])
    fp = _fingerprint_from_bytes(_verified_bytes(storage, entry), shown)
    if texts_key(fp) != entry["texts_sha256"] or fp.n_networks != entry["n_networks"]:
        raise FormatError(f"{shown}: its texts or network count differ from what the registry index says of entry "
                          f"{entry['name']!r}; the index was edited: rebuild it with FingerprintRegistry.build")
    return fp


# --------------------------------------------------------------------------- worker tasks (module level: picklable)


def _fingerprint_task(model: Any, *, ref: ModelRef | None, texts: list[str], n_networks: int,
                      random_state: int | None, name: str, options: dict[str, Any]) -> Fingerprint:
    """One model's fingerprint: ``model`` when given (in process), else this process's copy of ``ref``."""
    from .record import fingerprint

    if model is not None:
        return fingerprint(model, texts, n_networks=n_networks, random_state=random_state, name=name, **options)
    if ref is None:
        raise FuncnetError("a fingerprint chunk needs a model or a ModelRef")
    with using(ref) as loaded:
        return fingerprint(loaded, texts, n_networks=n_networks, random_state=random_state, name=name, **options)


def _compare_task(model: Any, *, location: str, entries: list[dict[str, Any]], groups: list[int],
                  suspects: dict[int, Fingerprint], top_m: int, n_null: int,
                  random_state: int | None) -> list[Comparison]:
    """Compare each entry's fingerprint (read and verified here) with the suspect fingerprint of its group."""
    storage = Storage(location)
    out = []
    for entry, group in zip(entries, groups):
        victim = _read_verified(storage, entry)
        out.append(compare(victim, suspects[group], top_m=top_m, n_null=n_null, random_state=random_state))
    return out


# --------------------------------------------------------------------------- fingerprints of many models


def _as_reference(model: Any) -> Any:
    """A string or path becomes a ModelRef; a ModelRef or a loaded model stays as it is."""
    if isinstance(model, (str, os.PathLike)):
        return ModelRef(model)
    return model


def _named_models(models: Any) -> list[tuple[str, Any]]:
    if isinstance(models, Mapping):
        pairs = list(models.items())
        bad = [k for k, _ in pairs if not isinstance(k, str) or not k]
        if bad:
            raise FuncnetError(f"model names should be non-empty strings, got {bad[0]!r:.60}")
    elif isinstance(models, Sequence) and not isinstance(models, (str, bytes)):
        pairs = []
        for m in models:
            if isinstance(m, (str, os.PathLike)):
                pairs.append((os.fspath(m), m))
            elif isinstance(m, ModelRef):
                pairs.append((m.spec, m))
            else:
                raise FuncnetError(f"a sequence of models should hold model names, folders or ModelRefs (they name "
                                   f"the fingerprints); got a {type(m).__name__}: pass a mapping name -> model")
        seen: set[str] = set()
        dupes = [n for n, _ in pairs if n in seen or seen.add(n)]  # type: ignore[func-returns-value]
        if dupes:
            raise FuncnetError(f"the model {dupes[0]!r} is listed twice; pass a mapping name -> model to name them")
    else:
        raise FuncnetError(f"models should be a mapping name -> model (a name, saved folder or ModelRef) or a list "
                           f"of them, got {type(models).__name__}")
    if not pairs:
        raise FuncnetError("no models to fingerprint")
    return [(name, _as_reference(m)) for name, m in pairs]


def fingerprint_models(models: Mapping[str, Any] | Sequence[Any], texts: Any = None, *, n_networks: int = 64,
                       random_state: int | None = 0, executor: cf.Executor | None = None,
                       **fingerprint_options: Any) -> dict[str, Fingerprint]:
    """Fingerprints of many models on the same texts, ``{name: Fingerprint}`` in input order.

    ``models``: a mapping name -> model name / saved folder / :class:`ModelRef` (or a loaded model, in process),
    or a sequence of names / folders / ModelRefs (each named by its spec). ``texts`` is resolved here once (default:
    the built-in passages), so every model sees the same list. Without ``executor`` the models are loaded one by
    one in this process; with one, each model is a chunk that loads its own copy in a worker. The results are the
    same either way. Every model name is checked before any work; ``fingerprint_options`` go to
    :func:`~tl_funcnet.fingerprint.fingerprint` (``tokenizer``, ``threshold``, ``max_tokens_per_text``, ``dtype``).
    """
    from ..data import resolve_texts
    from .record import default_texts

    if "name" in fingerprint_options:
        raise FuncnetError("fingerprint_models names each fingerprint after its key; pass a mapping name -> model "
                           "instead of name=")
    named = _named_models(models)
    positive_int(n_networks, "n_networks")
    if executor is not None:
        check_executor(executor)
    refs: dict[str, Any] = {}
    for name, m in named:
        if isinstance(m, ModelRef):
            refs[name] = m.check()
        elif executor is not None:
            refs[name] = model_ref(m)  # a loaded model goes to workers by its reference (or is refused)
        else:
            refs[name] = m
    text_list = default_texts() if texts is None else resolve_texts(texts)
    common = {"texts": list(text_list), "n_networks": n_networks, "random_state": random_state,
              "options": dict(fingerprint_options)}
    if executor is None:
        out = {}
        for name, m in refs.items():
            loaded = None if isinstance(m, ModelRef) else m
            ref = m if isinstance(m, ModelRef) else None
            out[name] = _fingerprint_task(loaded, ref=ref, name=name, **common)
        return out
    chunks = [Chunk(f"model {name}", {"ref": ref, "name": name, **common}) for name, ref in refs.items()]
    results = fan_out(executor, _fingerprint_task, chunks, what="fingerprint_models")
    return dict(zip(refs, results))


# --------------------------------------------------------------------------- ranking


@dataclass(frozen=True, eq=False)
class Ranking:
    """A suspect compared with every registry entry, best match first (score descending, then name).

    ``rows``: ``(name, Comparison)`` pairs; ``best``: the first of them (``None`` for no rows).
    """

    suspect: str
    rows: tuple[tuple[str, Comparison], ...]
    registry: str = ""
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> tuple[str, Comparison] | None:
        return self.rows[0] if self.rows else None

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        best = ""
        if self.rows:
            name, c = self.rows[0]
            best = f", best {name!r} ({c.score:.3f}, {c.verdict})"
        return f"Ranking({self.suspect!r} vs {len(self.rows)} registered{best})"

    def _row(self, rank: int, name: str, c: Comparison, n_pairs: int) -> dict[str, Any]:
        row: dict[str, Any] = {"rank": rank, "name": name, **c.to_dict(n_pairs)}
        row.pop("settings", None)
        if n_pairs <= 0:
            row.pop("pairs", None)
        return row

    def to_dict(self, n_pairs: int = 0) -> dict[str, Any]:
        """JSON-ready: the suspect, the settings and one row per entry (``n_pairs`` matched pairs each)."""
        return {"suspect": self.suspect, "registry": self.registry, "settings": dict(self.settings),
                "best": self.rows[0][0] if self.rows else None,
                "ranking": [self._row(i + 1, name, c, n_pairs) for i, (name, c) in enumerate(self.rows)]}

    def to_frame(self) -> Any:
        """A pandas DataFrame: rank, name, score, p_value, verdict, margin, top1, null_mean, null_q99, n_texts,
        n_segments (one row per entry, best first)."""
        import pandas as pd

        cols = ["rank", "name", "score", "p_value", "verdict", "margin", "top1", "null_mean", "null_q99", "n_texts",
                "n_segments"]
        rows = [self._row(i + 1, name, c, 0) for i, (name, c) in enumerate(self.rows)]
        return pd.DataFrame(rows, columns=cols)


def _suspect_name(suspect: Any) -> str:
    if isinstance(suspect, Fingerprint):
        return str(suspect.model.get("name", "suspect"))
    if isinstance(suspect, ModelRef):
        return suspect.spec
    if isinstance(suspect, (str, os.PathLike)):
        return os.fspath(suspect)
    cfg = getattr(suspect, "cfg", None)
    return str(getattr(cfg, "model_name", None) or type(suspect).__name__)


def _group_key(entry: Mapping[str, Any]) -> tuple:
    """Entries whose suspect fingerprints are the same: texts, networks and recording settings."""
    p = entry["params"]
    return (entry["texts_sha256"], entry["n_networks"], p.get("random_state", 0),
            p.get("max_tokens_per_text", 512), p.get("tokenizer", "model"))


# --------------------------------------------------------------------------- the registry


class FingerprintRegistry:
    """Fingerprints of many models in one folder or fsspec location, indexed by name (see the module docstring).

    ``FingerprintRegistry(location)`` opens an existing registry; :meth:`create` makes a new one and :meth:`build`
    indexes a folder of fingerprint files.
    """

    def __init__(self, location: str | os.PathLike[str]):
        self._storage = Storage(location)
        self._load_index()

    # ------------------------------------------------------------------ opening

    @property
    def location(self) -> str:
        """The registry's folder (absolute) or URL."""
        return self._storage.location

    @property
    def index_file(self) -> str:
        return self._storage.shown(INDEX)

    def __repr__(self) -> str:
        return f"FingerprintRegistry({self.location!r}, {len(self)} entries)"

    @classmethod
    def exists(cls, location: str | os.PathLike[str]) -> bool:
        """Whether ``location`` holds a registry index (readable or not)."""
        return Storage(location).exists(INDEX)

    @classmethod
    def create(cls, location: str | os.PathLike[str], *, exist_ok: bool = False) -> FingerprintRegistry:
        """A new, empty registry at ``location`` (created); an existing one is opened only with ``exist_ok``."""
        storage = Storage(location)
        if cls._check_create(storage, exist_ok=exist_ok):
            return cls(storage.location)
        storage.makedirs()
        storage.write(INDEX, _index_bytes([]))
        return cls(storage.location)

    @classmethod
    def check_create(cls, location: str | os.PathLike[str], *, exist_ok: bool = False) -> None:
        """Raise now if :meth:`create` would be refused (nothing is written)."""
        storage = Storage(location)
        if cls._check_create(storage, exist_ok=exist_ok):
            cls(storage.location)  # an existing index must be readable

    @staticmethod
    def _check_create(storage: Storage, *, exist_ok: bool) -> bool:
        """True if a registry is already there (and exist_ok); raises if one may not be created."""
        if not isinstance(exist_ok, bool):
            raise FuncnetError(f"exist_ok should be True or False, got {exist_ok!r}")
        where = storage.location
        if storage.exists(INDEX):
            if exist_ok:
                return True
            raise OverwriteError(f"{where} already holds a fingerprint registry; open it with "
                                 f"FingerprintRegistry({where!r}) (or pass exist_ok=True)")
        if storage.exists() and not storage.is_dir():
            raise OverwriteError(f"cannot create a fingerprint registry at {where}: a file is there; choose a folder")
        if storage.is_dir():
            found = [f for f in storage.files() if f.endswith(SUFFIX) and not f.startswith(".")]
            if found:
                raise FuncnetError(f"{where} holds fingerprint files ({found[:3]}) but no registry index; index them "
                                   f"with FingerprintRegistry.build({where!r})")
        if storage.local:
            parent = Path(storage.root)
            while not parent.exists() and parent != parent.parent:
                parent = parent.parent
            if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
                raise OverwriteError(f"cannot create a fingerprint registry at {where}: {parent} is not a writable "
                                     f"folder")
        return False

    @classmethod
    def build(cls, folder: str | os.PathLike[str], *, overwrite: bool = False) -> FingerprintRegistry:
        """Index every fingerprint file (``*.safetensors``) at the top of ``folder``, named by file stem.

        Every file is read in full first: one that is not a readable fingerprint, or whose stem is no safe name,
        raises a FuncnetError naming it and no index is written. An existing index is replaced only with
        ``overwrite=True`` (rebuilding it from the files, e.g. after it was edited).
        """
        storage = Storage(folder)
        if not isinstance(overwrite, bool):
            raise FuncnetError(f"overwrite should be True or False, got {overwrite!r}")
        if not storage.is_dir():
            raise FuncnetError(f"{storage.location} is not a folder; FingerprintRegistry.build indexes a folder of "
                               f"fingerprint files (FingerprintRegistry.create makes an empty registry)")
        if storage.exists(INDEX):
            shown = storage.shown(INDEX)
            try:
                data = json.loads(storage.read(INDEX).decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                data = {"format": FORMAT}  # a corrupt index of ours: rebuilding is the fix
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise OverwriteError(f"{shown} exists and is not a fingerprint registry index; tl_funcnet never "
                                     f"replaces files it did not write: move it away first")
            if not overwrite:
                raise OverwriteError(f"{shown} already indexes a registry; pass overwrite=True to rebuild it from "
                                     f"the fingerprint files")
        entries, lowered = [], {}
        for file in storage.files():
            if file.startswith(".") or not file.endswith(SUFFIX):
                continue
            shown = storage.shown(file)
            name = file[: -len(SUFFIX)]
            try:
                check_name(name)
            except FuncnetError as err:
                raise FuncnetError(f"{shown}: {err}; rename the file") from None
            if name.lower() in lowered:
                raise FuncnetError(f"{shown} and {lowered[name.lower()]} differ only in case; rename one")
            lowered[name.lower()] = shown
            data = storage.read(file)
            try:
                fp = _fingerprint_from_bytes(data, shown)
            except FormatError as err:
                raise FuncnetError(f"{shown} is not a readable fingerprint ({err}); move it out of the folder "
                                   f"before building the registry") from None
            entries.append(_entry_of(name, fp, data))
        storage.write(INDEX, _index_bytes(entries))
        return cls(storage.location)

    def _load_index(self) -> None:
        storage = self._storage
        shown = storage.shown(INDEX)
        try:
            raw = storage.read(INDEX)
        except FileNotFoundError:
            where = storage.location
            if storage.is_dir():
                raise FormatError(f"{shown} is missing: {where} is a folder but not a fingerprint registry; index the "
                                  f"fingerprint files in it with FingerprintRegistry.build({where!r}), or create an "
                                  f"empty registry with FingerprintRegistry.create") from None
            raise FormatError(f"{shown} is missing: there is no fingerprint registry at {where}; create one with "
                              f"FingerprintRegistry.create({where!r}) or `tl-funcnet fingerprint --victim MODEL "
                              f"--register {where}`") from None
        except IsADirectoryError:
            raise FormatError(f"{shown} is a folder, not a registry index") from None
        entries = _parse_index(raw, shown)
        self._raw = raw
        self._entries = {e["name"]: e for e in entries}

    def reload(self) -> FingerprintRegistry:
        """Read the index again (another process may have added entries)."""
        self._load_index()
        return self

    # ------------------------------------------------------------------ reading

    @property
    def names(self) -> list[str]:
        """Entry names in the order they were added."""
        return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def entry(self, name: str) -> dict[str, Any]:
        """The index's record of ``name`` (a copy)."""
        if name not in self._entries:
            shown = ", ".join(repr(n) for n in self.names[:10]) or "none"
            raise FuncnetError(f"no fingerprint named {name!r:.60} in the registry at {self.location} (registered: "
                               f"{shown}{', ...' if len(self) > 10 else ''})")
        return json.loads(json.dumps(self._entries[name]))

    def get(self, name: str) -> Fingerprint:
        """The fingerprint registered as ``name``, checked against the index (FormatError naming the file)."""
        return _read_verified(self._storage, self.entry(name))

    def verify(self, names: Sequence[str] | None = None) -> None:
        """Check every (or the named) entry's file against its SHA-256 in the index; a FormatError names the first
        file that is missing or differs. Reads bytes only (no fingerprint is parsed)."""
        for name in self.names if names is None else list(names):
            _verified_bytes(self._storage, self.entry(name))

    # ------------------------------------------------------------------ writing

    def check_add(self, name: str, *, overwrite: bool = False) -> None:
        """Raise now if :meth:`add` of a fingerprint named ``name`` would be refused (nothing is written)."""
        self._check_names([name], overwrite=overwrite)

    def _check_names(self, names: Sequence[Any], *, overwrite: bool) -> None:
        if not isinstance(overwrite, bool):
            raise FuncnetError(f"overwrite should be True or False, got {overwrite!r}")
        lowered = {n.lower(): n for n in self._entries}
        seen: dict[str, str] = {}
        on_disk = None
        for name in names:
            check_name(name)
            if name.lower() in seen:
                raise FuncnetError(f"the names {seen[name.lower()]!r} and {name!r} are given twice (or differ only in "
                                   f"case); each entry needs its own name")
            seen[name.lower()] = name
            if name in self._entries:
                if not overwrite:
                    raise OverwriteError(f"the registry at {self.location} already holds {name!r}; pass "
                                         f"overwrite=True to replace it, or choose another name")
                continue
            if name.lower() in lowered:
                raise FuncnetError(f"{name!r} differs only in case from the registered {lowered[name.lower()]!r}; "
                                   f"choose another name (file names may clash on some disks)")
            if on_disk is None:
                on_disk = {f.lower() for f in self._storage.files()} if self._storage.is_dir() else set()
            if (name + SUFFIX).lower() in on_disk:
                raise OverwriteError(f"{self._storage.shown(name + SUFFIX)} exists but is not a registry entry; "
                                     f"tl_funcnet never replaces files it did not write: choose another name, or "
                                     f"index the folder's files with FingerprintRegistry.build")

    def add(self, name: str, fingerprint: Fingerprint, *, overwrite: bool = False) -> None:
        """Register ``fingerprint`` as ``name`` (see :meth:`add_many`)."""
        self.add_many({name: fingerprint}, overwrite=overwrite)

    def add_many(self, fingerprints: Mapping[str, Fingerprint], *, overwrite: bool = False) -> None:
        """Register several fingerprints at once: all are checked first (safe, unique names; Fingerprint values;
        a registered name only with ``overwrite=True``; never a file the registry did not write), then their files
        are written and the index once. If any item is bad nothing is written."""
        if not isinstance(fingerprints, Mapping):
            raise FuncnetError(f"add_many takes a mapping name -> Fingerprint, got {type(fingerprints).__name__}")
        self._load_index()  # another process may have written since this registry was opened
        items = list(fingerprints.items())
        for name, fp in items:
            if not isinstance(fp, Fingerprint):
                raise FuncnetError(f"the value for {name!r:.60} is a {type(fp).__name__}, not a Fingerprint; make "
                                   f"one with fingerprint(model) or Fingerprint.load(path)")
        self._check_names([n for n, _ in items], overwrite=overwrite)
        if not items:
            return
        blobs = [(name, fp, _fingerprint_bytes(fp)) for name, fp in items]  # fails before anything is written
        entries = dict(self._entries)
        for name, fp, data in blobs:
            entries[name] = _entry_of(name, fp, data)
        index = _index_bytes(list(entries.values()))
        storage = self._storage
        storage.makedirs()
        staged: list[tuple[str, str]] = []
        try:
            for name, _, data in blobs:
                staged.append((storage.stage(name + SUFFIX, data), name + SUFFIX))
            staged.append((storage.stage(INDEX, index), INDEX))
            try:
                unchanged = storage.read(INDEX) == self._raw
            except FileNotFoundError:
                unchanged = False
            if not unchanged:
                raise FuncnetError(f"{self.index_file} changed while the fingerprints were being written (another "
                                   f"writer?); nothing was added: try again")
            for tmp, rel in staged:  # the index last
                storage.commit(tmp, rel)
        finally:
            for tmp, _ in staged:
                if storage.exists(tmp):
                    storage.discard(tmp)
        self._load_index()

    # ------------------------------------------------------------------ ranking

    def rank(self, suspect: Any, *, executor: cf.Executor | None = None, top_m: int = TOP_M, n_null: int = 200,
             random_state: int | None = 0, chunk_size: int = RANK_CHUNK,
             fingerprint_options: Mapping[str, Any] | None = None) -> Ranking:
        """Compare ``suspect`` with every registered fingerprint; rows best first (score descending, then name).

        ``suspect``: a :class:`Fingerprint` (recorded on every entry's texts with its network count), or a model
        (name, saved folder, :class:`ModelRef` or loaded model), fingerprinted once per group of entries that share
        texts, network count and recording settings (those of the entries; ``fingerprint_options`` such as
        ``tokenizer`` or ``dtype`` override them). ``top_m``, ``n_null`` and ``random_state`` go to
        :func:`~tl_funcnet.fingerprint.compare` for every entry. With ``executor``, the comparisons run in chunks of
        ``chunk_size`` entries whose workers read the entries' files themselves (and a named model's fingerprints
        run in workers too); the ranking is the same as in process. Every entry's file is checked against its
        SHA-256 before any work; nothing partial is returned.
        """
        positive_int(top_m, "top_m")
        positive_int(n_null, "n_null")
        positive_int(chunk_size, "chunk_size")
        options = dict(fingerprint_options or {})
        if "name" in options:
            raise FuncnetError("fingerprint_options cannot set name (the suspect's fingerprint is named after it)")
        if executor is not None:
            check_executor(executor)
            if self._storage.in_memory and not isinstance(executor, cf.ThreadPoolExecutor):
                raise FuncnetError(f"{self.location} lives in this process's memory, which workers of other processes "
                                   f"cannot read; rank on a ThreadPoolExecutor or keep the registry on a shared disk")
        self._load_index()
        entries = [self._entries[n] for n in self.names]
        if not entries:
            raise FuncnetError(f"the registry at {self.location} holds no fingerprints; add some with "
                               f"FingerprintRegistry.add or `tl-funcnet fingerprint --victim MODEL --register ...`")
        keys: dict[tuple, int] = {}
        groups = [keys.setdefault(_group_key(e), len(keys)) for e in entries]
        if isinstance(suspect, Fingerprint):
            if options:
                raise FuncnetError("fingerprint_options apply to a suspect model, not to a suspect Fingerprint")
            for e in entries:
                if e["texts_sha256"] != texts_key(suspect) or e["n_networks"] != suspect.n_networks:
                    raise FuncnetError(
                        f"the suspect fingerprint ({len(suspect.texts)} texts, {suspect.n_networks} networks) was not "
                        f"recorded like the registry entry {e['name']!r} ({e['n_networks']} networks, other texts or "
                        f"order); pass the suspect model instead, so it is fingerprinted on each entry's texts")
            self.verify()
            suspects = {g: suspect for g in keys.values()}
        else:
            suspects = self._suspect_fingerprints(suspect, entries, keys, groups, options, executor)
        chunks_of = spans(len(entries), len(entries) if executor is None else chunk_size)
        chunks = [Chunk(f"entries {entries[s.start]['name']}..{entries[s.stop - 1]['name']} ({len(s)})",
                        {"location": self.location, "entries": [entries[i] for i in s],
                         "groups": [groups[i] for i in s], "suspects": {groups[i]: suspects[groups[i]] for i in s},
                         "top_m": top_m, "n_null": n_null, "random_state": random_state})
                  for s in chunks_of]
        if executor is None:
            results = [_compare_task(None, **c.params) for c in chunks]
        else:
            results = fan_out(executor, _compare_task, chunks, what="FingerprintRegistry.rank")
        comparisons = [c for part in results for c in part]
        rows = sorted(zip((e["name"] for e in entries), comparisons), key=lambda r: (-r[1].score, r[0]))
        settings = {"top_m": top_m, "n_null": n_null, "random_state": random_state, "n_entries": len(entries),
                    "n_groups": len(keys)}
        return Ranking(_suspect_name(suspect), tuple(rows), self.location, settings)

    def _suspect_fingerprints(self, suspect: Any, entries: list[dict[str, Any]], keys: dict[tuple, int],
                              groups: list[int], options: dict[str, Any],
                              executor: cf.Executor | None) -> dict[int, Fingerprint]:
        """The suspect model's fingerprint for each group of entries, on the group's texts and settings."""
        if isinstance(suspect, (str, os.PathLike)):
            suspect = ModelRef(suspect)
        if isinstance(suspect, ModelRef):
            suspect.check()
        elif not hasattr(suspect, "cfg"):
            raise FuncnetError(f"the suspect should be a Fingerprint, a model name or folder, a ModelRef or a loaded "
                               f"model, got {type(suspect).__name__}")
        self.verify()  # before any model is loaded
        name = _suspect_name(suspect)
        plans: dict[int, dict[str, Any]] = {}
        for key, g in keys.items():
            first = entries[groups.index(g)]
            texts = list(self.get(first["name"]).texts)
            random_state, max_tokens, tokenizer = key[2], key[3], key[4]
            opts: dict[str, Any] = {"max_tokens_per_text": max_tokens}
            if "threshold" in first["params"]:
                opts["threshold"] = first["params"]["threshold"]
            if tokenizer == "chars":
                opts["tokenizer"] = "chars"
            elif tokenizer == "custom" and "tokenizer" not in options:
                raise FuncnetError(f"the registry entry {first['name']!r} was recorded with a custom tokenizer; pass "
                                   f"the same one as fingerprint_options={{'tokenizer': ...}}")
            opts.update(options)
            plans[g] = {"texts": texts, "n_networks": key[1], "random_state": random_state, "name": name,
                        "options": opts}
        if executor is None or not isinstance(suspect, ModelRef):
            model = suspect if not isinstance(suspect, ModelRef) else None
            ref = suspect if isinstance(suspect, ModelRef) else None
            return {g: _fingerprint_task(model, ref=ref, **plan) for g, plan in plans.items()}
        chunks = [Chunk(f"suspect on group {g + 1} of {len(plans)}", {"ref": suspect, **plan})
                  for g, plan in plans.items()]
        return dict(zip(plans, fan_out(executor, _fingerprint_task, chunks, what="FingerprintRegistry.rank")))


# --------------------------------------------------------------------------- the index file


def _index_bytes(entries: list[dict[str, Any]]) -> bytes:
    return (json.dumps({"format": FORMAT, "version": VERSION, "entries": entries}, indent=1) + "\n").encode()


def _parse_index(raw: bytes, shown: str) -> list[dict[str, Any]]:
    """The index's entries, every field checked (FormatError naming the index file otherwise)."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise FormatError(f"{shown} is not valid JSON ({err}); the registry index is corrupt: rebuild it with "
                          f"FingerprintRegistry.build") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise FormatError(f"{shown} has format {got!r}; expected {FORMAT!r} (a fingerprint registry index)")
    if data.get("version") != VERSION:
        raise FormatError(f"{shown} has registry version {data.get('version')!r}; this tl_funcnet reads version "
                          f"{VERSION}")
    entries = data.get("entries")
    if not isinstance(entries, list):
        raise FormatError(f"{shown}: 'entries' should be a list; the index was edited or is corrupt")
    seen: set[str] = set()
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise FormatError(f"{shown}: entry {i} should be an object; the index was edited or is corrupt")
        for key, typ in _ENTRY_KEYS.items():
            value = e.get(key)
            if not isinstance(value, typ) or isinstance(value, bool):
                raise FormatError(f"{shown}: entry {i} has no valid {key!r} ({typ.__name__}); the index was edited "
                                  f"or is corrupt")
        name = e["name"]
        try:
            check_name(name)
        except FuncnetError:
            raise FormatError(f"{shown}: entry {i} has an unsafe name {name!r:.60}; the index was edited") from None
        if e["file"] != name + SUFFIX:
            raise FormatError(f"{shown}: entry {name!r} points at {e['file']!r:.60}, expected {name + SUFFIX!r}; the "
                              f"index was edited")
        if name.lower() in seen:
            raise FormatError(f"{shown}: the name {name!r} appears twice; the index was edited")
        seen.add(name.lower())
        if not re.fullmatch(r"[0-9a-f]{64}", e["sha256"]) or not re.fullmatch(r"[0-9a-f]{64}", e["texts_sha256"]):
            raise FormatError(f"{shown}: entry {name!r} has a malformed SHA-256; the index was edited")
        if e["n_networks"] < 1:
            raise FormatError(f"{shown}: entry {name!r} has n_networks {e['n_networks']}; the index was edited")
    return entries


__all__ = [
    "FORMAT",
    "INDEX",
    "RANK_CHUNK",
    "VERSION",
    "FingerprintRegistry",
    "Ranking",
    "check_name",
    "fingerprint_models",
    "texts_key",
]
