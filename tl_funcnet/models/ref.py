"""A model *reference*: what a worker needs to load its own copy of a model (never the model itself).

>>> ref = ModelRef("smollm2-135m")                     # embedded name, saved folder or hub name
>>> ref = ModelRef("out/pruned", dtype=torch.float16)  # plus the options of :func:`tl_funcnet.models.load`
>>> model = ref.load()                                 # loaded once per process, then cached

A reference can pin the model's :func:`~tl_funcnet.models.digest.model_digest`: a worker whose copy differs
(another checkpoint under the same name, a folder edited since) refuses to run instead of mixing models.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from contextlib import contextmanager
from typing import Any, Iterator

import torch

from ..errors import FuncnetError
from ._load import BACKENDS, LOADED_AS, load, resolve

CACHED_MODELS = 2  # models a worker keeps loaded; a sweep uses one, a zoo streams through many
_cache: OrderedDict[tuple, Any] = OrderedDict()
_locks: dict[tuple, threading.Lock] = {}
_cache_lock = threading.Lock()


def _plain_option(key: str, value: Any) -> Any:
    if key == "dtype" and value is not None and not isinstance(value, torch.dtype):
        raise FuncnetError(f"dtype should be a torch.dtype such as torch.float32, got {value!r}")
    if key == "backend" and value is not None and value not in BACKENDS:
        raise FuncnetError(f"backend should be one of {list(BACKENDS)}, got {value!r}")
    if key == "device" and not isinstance(value, (str, torch.device)):
        raise FuncnetError(f"device should be a string such as 'cpu' or 'cuda:0', got {value!r}")
    return str(value) if isinstance(value, torch.device) else value


class ModelRef:
    """``load(spec, **options)`` by name, for workers; hashable, picklable and cheap to send.

    ``spec``: an embedded name, a folder written by :func:`tl_funcnet.models.save`, or a TransformerLens /
    Hugging Face name; ``options``: :func:`~tl_funcnet.models.load`'s keyword arguments (``device``, ``dtype``,
    ``backend``, ...); ``digest``: the expected :func:`~tl_funcnet.models.digest.model_digest`, checked after
    loading (``None``: not checked; :meth:`pinned` fills it in).
    """

    __slots__ = ("spec", "options", "digest")

    def __init__(self, spec: str | os.PathLike[str], *, digest: str | None = None, **options: Any):
        if isinstance(spec, os.PathLike):
            spec = os.fspath(spec)
        if not isinstance(spec, str) or not spec:
            raise FuncnetError(f"a model reference needs a model name or saved-model folder (a string), got "
                               f"{type(spec).__name__}; a loaded model cannot be sent to workers: save it with "
                               f"tl_funcnet.models.save(model, folder) and pass ModelRef(folder)")
        if digest is not None and not isinstance(digest, str):
            raise FuncnetError(f"digest should be a model_digest string or None, got {type(digest).__name__}")
        if os.path.exists(os.path.expanduser(spec)):  # a saved folder: the same path from any working directory
            spec = os.path.abspath(os.path.expanduser(spec))
        plain = {k: _plain_option(k, v) for k, v in sorted(options.items())}
        object.__setattr__(self, "spec", spec)
        object.__setattr__(self, "options", tuple(plain.items()))
        object.__setattr__(self, "digest", digest)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a ModelRef is immutable")

    def __reduce__(self) -> tuple:
        return (_rebuild, (self.spec, self.digest, self.options))

    @property
    def key(self) -> tuple:
        """What identifies the loaded model in a worker's cache."""
        return (self.spec, tuple((k, repr(v)) for k, v in self.options), self.digest)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModelRef) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in self.options)
        pin = f", digest={self.digest[:12]!r}..." if self.digest else ""
        return f"ModelRef({self.spec!r}{opts}{pin})"

    @classmethod
    def of(cls, model: Any) -> "ModelRef":
        """The reference of a model loaded with :func:`tl_funcnet.models.load` (or a ModelRef as it is), pinned
        to the model's current digest so that workers refuse a copy that differs (an in-place edit since)."""
        if isinstance(model, ModelRef):
            return model
        try:
            spec, options = LOADED_AS[model]
        except (KeyError, TypeError):
            raise FuncnetError(f"this {type(model).__name__} was not loaded by tl_funcnet.models.load (or is a copy "
                               f"made since), so workers cannot load it: save it with tl_funcnet.models.save(model, "
                               f"folder) and pass ModelRef(folder), or pass ModelRef(name, **load_options)") from None
        from .digest import model_digest

        return cls(spec, digest=model_digest(model), **options)

    def check(self) -> "ModelRef":
        """Raise a :class:`FuncnetError` here if the name resolves to nothing (before any work is sent)."""
        resolve(self.spec, dict(self.options).get("backend"))
        return self

    def load(self) -> Any:
        """This process's copy of the model (loaded on first use, then cached; see :func:`using`)."""
        with using(self) as model:
            return model

    def pinned(self) -> "ModelRef":
        """The same reference with the digest of the model it loads here, so every worker checks it has it."""
        from .digest import model_digest

        return ModelRef(self.spec, digest=model_digest(self.load()), **dict(self.options))


def _rebuild(spec: str, digest: str | None, options: tuple) -> ModelRef:
    return ModelRef(spec, digest=digest, **dict(options))


def _load_checked(ref: ModelRef) -> Any:
    try:
        model = load(ref.spec, **dict(ref.options))
    except FuncnetError:
        raise
    except Exception as e:  # a hub or file error on this worker
        raise FuncnetError(f"{ref!r} could not be loaded here ({type(e).__name__}: {e}); every worker needs the "
                           f"model's name or folder to resolve (a shared path, or the embedded models installed)"
                           ) from None
    if ref.digest is not None:
        from .digest import model_digest

        got = model_digest(model)
        if got != ref.digest:
            raise FuncnetError(f"{ref!r} loads a different model here (digest {got[:12]}...); the folder or "
                               f"checkpoint differs between machines: give every worker the same copy")
    return model


@contextmanager
def using(ref: ModelRef) -> Iterator[Any]:
    """This process's cached model for ``ref``, held exclusively while the block runs (hooks attached by one
    thread's chunk never meet another thread's forward)."""
    if not isinstance(ref, ModelRef):
        raise FuncnetError(f"expected a ModelRef, got {type(ref).__name__}")
    with _cache_lock:
        lock = _locks.setdefault(ref.key, threading.Lock())
    with lock:
        with _cache_lock:
            model = _cache.get(ref.key)
            if model is not None:
                _cache.move_to_end(ref.key)
        if model is None:
            model = _load_checked(ref)
            with _cache_lock:
                _cache[ref.key] = model
                while len(_cache) > CACHED_MODELS:
                    _cache.popitem(last=False)
        yield model


def as_model(model: Any) -> Any:
    """A loaded model as it is; a :class:`ModelRef` loaded (and cached) in this process."""
    return model.load() if isinstance(model, ModelRef) else model


__all__ = ["ModelRef", "using", "as_model", "CACHED_MODELS"]
