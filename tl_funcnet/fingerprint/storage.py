"""Where a fingerprint registry lives: a local folder (plain os calls, atomic renames) or any fsspec location."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .._io import _temp_name, remove_stale
from ..errors import FuncnetError


def _temp_rel(rel: str) -> str:
    """A temporary sibling's name, as tl_funcnet._io names them (so stale ones are recognised and removed)."""
    return _temp_name(Path(rel), "tmp").name


class Storage:
    """The registry's folder: a local path (plain os calls, atomic renames) or an fsspec location."""

    def __init__(self, location: Any):
        if isinstance(location, os.PathLike):
            location = os.fspath(location)
        if not isinstance(location, str) or not location.strip():
            raise FuncnetError(f"a registry location should be a folder path or an fsspec URL such as "
                               f"'s3://bucket/registry', got {location!r:.60}")
        from fsspec.core import url_to_fs
        from fsspec.implementations.local import LocalFileSystem

        try:
            fs, root = url_to_fs(os.path.expanduser(location))
        except (ImportError, ValueError) as err:
            raise FuncnetError(f"cannot open the registry location {location!r}: {err} (an fsspec URL needs its "
                               f"filesystem's package installed)") from None
        self.local = isinstance(fs, LocalFileSystem)
        self.fs = fs
        self.root = os.path.abspath(root) if self.local else str(root).rstrip("/")
        #: what a worker passes to reopen this storage (an absolute path when local)
        self.location = self.root if self.local else location.rstrip("/")

    @property
    def in_memory(self) -> bool:
        """Whether the files live in this process's memory (fsspec ``memory://``): no other process sees them."""
        protocol = self.fs.protocol
        return not self.local and "memory" in (protocol if isinstance(protocol, (tuple, list)) else (protocol,))

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel) if self.local else f"{self.root}/{rel}"

    def shown(self, rel: str) -> str:
        """How messages name a file: its path, or its URL."""
        return self.path(rel) if self.local else f"{self.location}/{rel}"

    def is_dir(self) -> bool:
        return os.path.isdir(self.root) if self.local else bool(self.fs.isdir(self.root))

    def exists(self, rel: str | None = None) -> bool:
        target = self.root if rel is None else self.path(rel)
        return os.path.lexists(target) if self.local else bool(self.fs.exists(target))

    def read(self, rel: str) -> bytes:
        """The file's bytes; FileNotFoundError if there is none."""
        if self.local:
            return Path(self.path(rel)).read_bytes()
        try:
            return bytes(self.fs.cat_file(self.path(rel)))
        except (FileNotFoundError, IsADirectoryError):
            raise FileNotFoundError(self.shown(rel)) from None

    def files(self) -> list[str]:
        """Names of the regular files at the top of the folder, sorted."""
        if self.local:
            return sorted(p.name for p in Path(self.root).iterdir() if p.is_file())
        return sorted(str(info["name"]).rstrip("/").rsplit("/", 1)[-1]
                      for info in self.fs.ls(self.root, detail=True) if info.get("type") == "file")

    def makedirs(self) -> None:
        if self.local:
            os.makedirs(self.root, exist_ok=True)
        else:
            self.fs.makedirs(self.root, exist_ok=True)

    def stage(self, rel: str, data: bytes) -> str:
        """Write ``data`` to a temporary sibling of ``rel``; returns its name (for :meth:`commit`)."""
        tmp = _temp_rel(rel)
        if self.local:
            remove_stale(Path(self.path(rel)))  # leftovers of writers killed before they finished
            with open(self.path(tmp), "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        else:
            self.fs.pipe_file(self.path(tmp), data)
        return tmp

    def commit(self, tmp: str, rel: str) -> None:
        """Rename the staged file onto ``rel`` (atomic on a local disk)."""
        if self.local:
            os.replace(self.path(tmp), self.path(rel))
        else:
            self.fs.mv(self.path(tmp), self.path(rel))

    def discard(self, tmp: str) -> None:
        try:
            if self.local:
                os.unlink(self.path(tmp))
            else:
                self.fs.rm_file(self.path(tmp))
        except (OSError, FileNotFoundError):
            pass

    def write(self, rel: str, data: bytes) -> None:
        """Write one file atomically (staged, then renamed)."""
        tmp = self.stage(rel, data)
        try:
            self.commit(tmp, rel)
        finally:
            if self.exists(tmp):
                self.discard(tmp)


__all__ = ["Storage"]
