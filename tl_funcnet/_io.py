"""Saving without losing anything: atomic writes that replace only an artefact of their own kind, when asked.

Every writer of tl_funcnet names the :class:`Kind` of artefact it writes. A save to ``path``

- writes into a temporary sibling and renames it onto ``path`` only when complete (never half written);
- creates ``path`` when it is absent (or an empty folder);
- replaces ``path`` only if it holds an artefact of the same kind (recognised by its manifest, with no file
  the kind does not write) **and** ``overwrite=True``;
- refuses anything else (a regular file, a folder with other files, another kind) with an
  :class:`~tl_funcnet.errors.OverwriteError` naming the path and the fix;
- removes the temporary leftovers of earlier saves to the same place that were killed before finishing.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import secrets
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from .errors import FuncnetError, OverwriteError

_TAG = "tlfn"  # temporary names: .<name>.tlfn-<pid>-<token>.tmp / .old


@dataclass(frozen=True)
class Kind:
    """One kind of artefact: its name, the manifest that identifies it and the entries it may contain.

    ``format`` is the ``"format"`` value of a JSON manifest; ``recognize(path)`` replaces that test for
    formats without one (files, sae-lens folders). ``entries`` are glob patterns of the top-level names
    a folder artefact holds (ignored for single files).
    """

    name: str
    manifest: str = ""
    format: str = ""
    entries: tuple[str, ...] = ()
    recognize: Callable[[Path], bool] | None = None

    def holds(self, path: Path) -> bool:
        """Whether ``path`` is an artefact of this kind."""
        if self.recognize is not None:
            return bool(self.recognize(path))
        try:
            data = json.loads((path / self.manifest).read_text())
        except (OSError, ValueError):
            return False
        return isinstance(data, dict) and data.get("format") == self.format

    def foreign(self, folder: Path) -> list[str]:
        """Entries of ``folder`` this kind does not write."""
        return sorted(p.name for p in folder.iterdir()
                      if not any(fnmatch.fnmatch(p.name, pat) for pat in self.entries) and not _is_ours(p.name))


def _is_ours(name: str) -> bool:
    return name.startswith(".") and f".{_TAG}-" in name and name.endswith((".tmp", ".old"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(target: Path) -> None:
    """Delete temporary leftovers (``.<name>.tlfn-<pid>-*``) of saves to ``target`` whose process is gone."""
    parent = target.parent
    if not parent.is_dir():
        return
    prefix = f".{target.name}.{_TAG}-"
    for p in parent.iterdir():
        if not (p.name.startswith(prefix) and p.name.endswith((".tmp", ".old"))):
            continue
        try:
            pid = int(p.name[len(prefix):].split("-", 1)[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def check_target(path: str | os.PathLike[str], kind: Kind, *, overwrite: bool = False,
                 folder: bool = True) -> Path:
    """Raise unless a save of ``kind`` may write ``path`` (see the module docstring) and its folder is writable;
    nothing is left behind.

    Call it before expensive work, so a run that could not save its result stops at once.
    """
    target = _check_replace(path, kind, overwrite=overwrite, folder=folder)
    _check_writable(target, kind)
    return target


def _check_writable(target: Path, kind: Kind) -> None:
    """Raise unless a file can be created in the nearest existing folder above ``target`` (a save writes a
    temporary sibling there first); probed with a file of our own that is removed at once."""
    folder = target.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    probe = _temp_name(folder / "probe", "tmp")
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except OSError as e:
        raise OverwriteError(f"cannot save the {kind.name} to {target}: {folder} is not writable "
                             f"({e.strerror}); choose a folder you can write to") from None
    probe.unlink(missing_ok=True)


def _check_replace(path: str | os.PathLike[str], kind: Kind, *, overwrite: bool, folder: bool) -> Path:
    if not isinstance(overwrite, bool):
        raise FuncnetError(f"overwrite should be True or False, got {overwrite!r}")
    target = Path(path).expanduser()
    if target.name in ("", ".", ".."):  # a save replaces its target by a rename, never the current folder or '/'
        what = "folder" if folder else "file"
        raise FuncnetError(f"cannot save the {kind.name} to {os.fspath(path)!r}: name the {what} to create, e.g. "
                           f"{os.fspath(target / 'result')!r}")
    for parent in target.parents:
        if parent.exists() and not parent.is_dir():
            raise OverwriteError(f"cannot save the {kind.name} to {target}: {parent} is a file, not a folder; "
                                 f"choose a path inside a folder")
    if not target.exists() and not target.is_symlink():
        return target
    what = "folder" if folder else "file"
    if folder and target.is_dir() and not target.is_symlink():
        if not any(target.iterdir()):
            return target
        if kind.holds(target):
            extra = kind.foreign(target)
            if extra:
                raise OverwriteError(
                    f"{target} holds a saved {kind.name} but also files tl_funcnet did not write ({extra[:5]}); "
                    f"move them away or save to another path")
            if not overwrite:
                raise OverwriteError(f"{target} already holds a saved {kind.name}; pass overwrite=True to replace "
                                     f"it, or save to another path")
            return target
        raise OverwriteError(f"{target} exists and is not a saved {kind.name} (it holds "
                             f"{sorted(p.name for p in target.iterdir())[:5]}); tl_funcnet never replaces files it "
                             f"did not write: choose an empty or new {what}")
    if not folder and target.is_file() and not target.is_symlink():
        if not kind.holds(target):
            raise OverwriteError(f"{target} exists and is not a {kind.name} file; tl_funcnet never replaces files "
                                 f"it did not write: choose another path")
        if not overwrite:
            raise OverwriteError(f"{target} already holds a {kind.name}; pass overwrite=True to replace it, or "
                                 f"save to another path")
        return target
    found = "a folder" if target.is_dir() else "a file" if target.is_file() else "something else"
    raise OverwriteError(f"cannot save the {kind.name} to {target}: {found} is there and a {kind.name} is saved "
                         f"as a {what}; choose another path")


def _temp_name(target: Path, suffix: str) -> Path:
    return target.with_name(f".{target.name}.{_TAG}-{os.getpid()}-{secrets.token_hex(4)}.{suffix}")


def _mkdir_parent(target: Path, kind: Kind) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OverwriteError(f"cannot save the {kind.name} to {target}: part of the path is a file; choose a "
                             f"path inside a folder") from None


@contextmanager
def atomic_dir(path: str | os.PathLike[str], kind: Kind, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it becomes ``path`` only if the block succeeds."""
    target = check_target(path, kind, overwrite=overwrite)
    _mkdir_parent(target, kind)
    remove_stale(target)
    tmp = _temp_name(target, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        check_target(target, kind, overwrite=overwrite)  # nothing else appeared there meanwhile
        if target.exists():
            old = _temp_name(target, "old")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_file(path: str | os.PathLike[str], kind: Kind, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; it replaces ``path`` only if the block succeeds."""
    target = check_target(path, kind, overwrite=overwrite, folder=False)
    _mkdir_parent(target, kind)
    remove_stale(target)
    tmp = _temp_name(target, "tmp")
    try:
        yield tmp
        check_target(target, kind, overwrite=overwrite, folder=False)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` and rename it onto ``path`` on success.

    For files tl_funcnet owns inside its own folders (checkpoints, reports); user-facing saves use
    :func:`atomic_dir` or :func:`atomic_file`, which check what they would replace.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(target, "tmp")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: str | os.PathLike[str], obj: Any, *, default: Any = None) -> None:
    """Write ``obj`` as indented JSON to a file tl_funcnet owns, atomically (see :func:`atomic_path`)."""
    text = json.dumps(obj, indent=2, default=default) + "\n"  # fails before touching the disk
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from ``path``; a missing, unreadable or non-object file is a FormatError naming it."""
    from .errors import FormatError

    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FormatError(f"{path} is missing; expected {what}") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise FormatError(f"{path} is not valid JSON ({err}); the file is corrupt: save it again") from None
    if not isinstance(data, dict):
        raise FormatError(f"{path} holds a JSON {type(data).__name__}, expected an object ({what})")
    return data


def field(data: Mapping[str, Any], key: str, types: type | tuple[type, ...], where: str) -> Any:
    """``data[key]`` if it has one of ``types``, else a FormatError naming the file and the key."""
    from .errors import FormatError

    if key not in data:
        raise FormatError(f"{where}: the key {key!r} is missing; the file is corrupt or was edited by hand")
    value = data[key]
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in _as_tuple(types))
    if not ok:
        names = "/".join(t.__name__ for t in _as_tuple(types))
        raise FormatError(f"{where}: {key!r} should be {names}, got {type(value).__name__} {value!r:.60}")
    return value


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def tensor_digest(tensors: Mapping[str, Any]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes (sorted by name): a checksum of the data."""
    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


__all__ = ["Kind", "check_target", "atomic_dir", "atomic_file", "atomic_path", "write_json_atomic", "read_json",
           "field", "tensor_digest", "remove_stale"]
