"""Resuming an interrupted streamed collection only when nothing that shapes the data has changed.

A streamed collection writes into ``<store_dir>.partial`` and records, after each batch's rows, which
sequences are done (``progress.json``). Its key covers everything that changes the rows: the model (class,
config and a weight digest), the sites and their widths, the tokens (texts and tokenization), the
intervention active while collecting (its saved form), and the dtype. A rerun with the same key resumes; any
difference, a corrupt checkpoint, or one from before a machine restart is refused (naming what differs)
unless the caller asks to start over with ``restart=True``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from .._io import Kind, tensor_digest, write_json_atomic
from ..errors import CheckpointError, OverwriteError

PROGRESS = "progress.json"
#: what a partial store may hold (anything else there is not ours to delete)
PARTIAL = Kind("interrupted collection", PROGRESS, "tl_funcnet.activations.partial",
               (PROGRESS, "site_*.npy", "tokens.pt", "manifest.json"))
_WHAT = {"model": "model (weights or config)", "sites": "sites", "tokens": "texts or tokenization",
         "intervention": "intervention", "dtype": "dtype"}


def _sha(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()


def intervention_key(intervention: Any) -> str | None:
    """A hash of the intervention's saved form, or ``None`` when it holds Python objects (cannot be checked)."""
    if not intervention.serializable:
        return None
    return _sha(intervention.to_dict(), tensor_digest(intervention.tensors()))


def resume_key(model: Any, sites: Sequence[str], units: Mapping[str, int], token_ids: Tensor, offsets: Tensor,
               dtype: torch.dtype, intervention: Any) -> dict[str, str | None]:
    """Everything that shapes a collection's rows, hashed per component."""
    from ..models.digest import model_digest

    return {"model": model_digest(model), "sites": _sha(list(sites), dict(units)),
            "tokens": _sha(token_ids.numpy().tobytes(), offsets.numpy().tobytes()),
            "intervention": intervention_key(intervention), "dtype": str(dtype)}


def boot_id() -> str | None:
    """This boot's identifier (Linux), so a checkpoint can tell whether the machine restarted since."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _read_progress(partial: Path) -> dict[str, Any]:
    file = partial / PROGRESS
    try:
        data = json.loads(file.read_text())
        if not (isinstance(data, dict) and isinstance(data.get("key"), dict)
                and isinstance(data.get("done"), list) and all(isinstance(i, int) for i in data["done"])):
            raise ValueError("unexpected structure")
    except (OSError, ValueError) as err:
        raise CheckpointError(f"the checkpoint {file} of an interrupted collection is corrupt ({err}); pass "
                              f"restart=True to start the collection over") from None
    return data


def _remove(partial: Path) -> None:
    extra = PARTIAL.foreign(partial)
    if extra:
        raise OverwriteError(f"{partial} holds files an interrupted collection does not write ({extra[:5]}); "
                             f"tl_funcnet will not delete them: move them away or choose another store_dir")
    shutil.rmtree(partial)


def start(partial: Path, key: Mapping[str, str | None], *, restart: bool) -> set[int]:
    """Open ``partial`` for writing and return the sequences already done (empty for a fresh start)."""
    if partial.exists() and not partial.is_dir():
        raise OverwriteError(f"{partial} is a file; the collection needs that path for its partial store: "
                             f"move the file away or choose another store_dir")
    if partial.is_dir() and any(partial.iterdir()):
        if restart:
            _remove(partial)
        elif not (partial / PROGRESS).is_file():
            raise CheckpointError(f"{partial} holds an interrupted collection without a checkpoint; pass "
                                  f"restart=True to start over")
        else:
            data = _read_progress(partial)
            stored = data["key"]
            if key.get("intervention") is None:
                raise CheckpointError(f"{partial} holds an interrupted collection, but this run's intervention holds "
                                      f"Python functions, so it cannot be checked against it; pass restart=True")
            differs = [_WHAT.get(k, k) for k in key if stored.get(k) != key[k]]
            if differs:
                raise CheckpointError(f"{partial} holds an interrupted collection that differs from this run in its "
                                      f"{', '.join(differs)}; resuming would mix their rows. Pass restart=True to "
                                      f"start over, or choose another store_dir")
            if data.get("boot_id") != boot_id():
                raise CheckpointError(f"{partial} was interrupted before a machine restart, so its rows may not have "
                                      f"reached the disk; pass restart=True to start over")
            return set(data["done"])
    partial.mkdir(parents=True, exist_ok=True)
    save_progress(partial, key, set())
    return set()


def save_progress(partial: Path, key: Mapping[str, str | None], done: set[int]) -> None:
    """Record that the sequences ``done`` are written (called by the writer thread after their rows)."""
    write_json_atomic(partial / PROGRESS, {"format": PARTIAL.format, "key": dict(key), "boot_id": boot_id(),
                                           "done": sorted(done)})


__all__ = ["resume_key", "intervention_key", "start", "save_progress", "boot_id", "PARTIAL"]
