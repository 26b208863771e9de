"""Interventions on disk: a versioned JSON description plus one safetensors file, checked on the way back.

Folder layout (written atomically; ``format`` ``tl_funcnet.intervention``, ``version`` 1)::

    intervention.json     {"format", "version", "hooks": [{"site", "op", "params"}], "hook_names",
                           "tensors_sha256"}
    tensors.safetensors   every tensor a param holds, keyed "hooks.<i>.<param>[...]"

Params hold numbers, strings, booleans, None, lists, dicts and tensors; a tensor is written as
``{"__tensor__": key}``. ``hook_names`` records the TransformerLens version and the legacy <-> canonical
pairs (for plain and gated MLPs) of the block-level names the hooks use, so the same file applies to a
``HookedTransformer`` and a ``TransformerBridge``; a table that disagrees with the installed version is refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import Tensor

from .._io import Kind, atomic_dir, field, read_json, tensor_digest
from ..errors import FormatError, NotSerializableError
from . import names

SCHEMA_VERSION = 1
FORMAT = "tl_funcnet.intervention"
META_FILE, TENSOR_FILE = "intervention.json", "tensors.safetensors"
KIND = Kind("intervention", META_FILE, FORMAT, (META_FILE, TENSOR_FILE))


def _encode(value: Any, key: str) -> Any:
    if isinstance(value, Tensor):
        return {"__tensor__": key}
    if isinstance(value, Mapping):
        return {str(k): _encode(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v, f"{key}.{i}") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise NotSerializableError(f"parameter {key!r} holds a {type(value).__name__}, which cannot be saved; use "
                               f"numbers, strings, lists, dicts or tensors")


def _collect(value: Any, key: str, found: dict[str, Tensor]) -> None:
    if isinstance(value, Tensor):
        found[key] = value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            _collect(v, f"{key}.{k}", found)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _collect(v, f"{key}.{i}", found)


def _decode(value: Any, tensors: Mapping[str, Tensor], where: str) -> Any:
    if isinstance(value, Mapping):
        if set(value) == {"__tensor__"}:
            ref = value["__tensor__"]
            if ref not in tensors:
                raise FormatError(f"{where}: tensor {ref!r} is referenced but missing from the saved tensors")
            return tensors[ref]
        return {k: _decode(v, tensors, where) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, tensors, where) for v in value]
    return value


def to_dict(hooks: Sequence[Any]) -> dict[str, Any]:
    """The saved form of a sequence of Hooks (see :meth:`Intervention.to_dict`)."""
    out = []
    for i, h in enumerate(hooks):
        if not h.spec.serializable:
            raise NotSerializableError(
                f"hook {i} ({h.op!r} at {h.site!r}) holds a Python object that cannot be saved; register the "
                f"function as an op with @tl_funcnet.hooks.register_op(...) to save it")
        out.append({"site": h.site, "op": h.op, "params": _encode(h.params, f"hooks.{i}")})
    return {"format": FORMAT, "version": SCHEMA_VERSION, "hooks": out,
            "hook_names": names.saved_aliases([h.site for h in hooks])}


def tensors(hooks: Sequence[Any]) -> dict[str, Tensor]:
    """The tensors the saved form of ``hooks`` references (see :meth:`Intervention.tensors`)."""
    found: dict[str, Tensor] = {}
    for i, h in enumerate(hooks):
        _collect(h.params, f"hooks.{i}", found)
    return found


def decode(data: Any, saved: Mapping[str, Tensor], where: str = "intervention") -> list[tuple[str, str, Any, str]]:
    """The hook specs ``(site, op, params, where)`` of a saved form, its structure checked (the params are
    checked by each op when the Hook is made)."""
    if not isinstance(data, Mapping):
        raise FormatError(f"{where}: expected a JSON object, got {type(data).__name__}")
    fmt = data.get("format", FORMAT)
    if fmt != FORMAT:
        raise FormatError(f"{where}: format {fmt!r} is not a tl_funcnet intervention ({FORMAT!r})")
    version = data.get("version")
    if version != SCHEMA_VERSION:
        raise FormatError(f"{where}: intervention schema version {version!r} is not supported; this tl_funcnet reads "
                          f"version {SCHEMA_VERSION}. Re-save it with a matching tl_funcnet release")
    names.check_saved_aliases(data.get("hook_names"), where)
    specs = []
    for i, h in enumerate(field(data, "hooks", list, where)):
        at = f"{where}, hook {i}"
        if not isinstance(h, Mapping):
            raise FormatError(f"{at}: expected an object with site, op and params, got {type(h).__name__}")
        site, op = field(h, "site", str, at), field(h, "op", str, at)
        params = h.get("params", {})
        if not isinstance(params, Mapping):
            raise FormatError(f"{at}: 'params' should be an object, got {type(params).__name__}")
        specs.append((site, op, _decode(params, saved, at), at))
    return specs


def write(path: str | os.PathLike[str], hooks: Sequence[Any], *, overwrite: bool = False) -> Path:
    """Write the saved form of ``hooks`` into the folder ``path`` (see :meth:`Intervention.save`)."""
    from safetensors.torch import save_file

    data = to_dict(hooks)  # raises before anything is written
    blobs = {k: v.detach().cpu().contiguous().clone() for k, v in tensors(hooks).items()}
    data["tensors_sha256"] = tensor_digest(blobs)
    text = json.dumps(data, indent=2) + "\n"
    with atomic_dir(path, KIND, overwrite=overwrite) as tmp:
        (tmp / META_FILE).write_text(text)
        save_file(blobs, str(tmp / TENSOR_FILE))
    return Path(path)


def read(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Tensor], str]:
    """The JSON description, the tensors (checksum verified) and the description's path, for :func:`decode`."""
    from safetensors.torch import load_file

    root = Path(path)
    meta, blob = root / META_FILE, root / TENSOR_FILE
    if not root.is_dir():
        state = "is missing" if not root.exists() else "is not a folder"
        raise FormatError(f"{root} {state}; expected a folder written by Intervention.save")
    data = read_json(meta, "a folder written by Intervention.save")
    if not blob.is_file():
        raise FormatError(f"{blob} is missing; expected a folder written by Intervention.save")
    try:
        saved = load_file(str(blob))
    except Exception as err:  # safetensors raises its own error types
        raise FormatError(f"{blob} could not be read ({err}); the file is corrupt") from None
    digest = data.get("tensors_sha256")
    if digest is not None and digest != tensor_digest(saved):
        raise FormatError(f"{blob} does not match the checksum in {meta}: the file was changed or is corrupt; "
                          f"save the intervention again")
    return data, saved, str(meta)


__all__ = ["SCHEMA_VERSION", "FORMAT", "KIND", "to_dict", "tensors", "decode", "write", "read"]
