"""One exception hierarchy for tl_funcnet.

Every error raised on bad user input is a :class:`FuncnetError` (a ``ValueError``), and its message says
what was wrong, what was expected, and how to fix it. Checks run before anything is attached or written.
"""

from __future__ import annotations


class FuncnetError(ValueError):
    """Base class of every error tl_funcnet raises on bad input."""


class UnknownSiteError(FuncnetError, KeyError):
    """A hook name that the model does not have."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


class ShapeError(FuncnetError):
    """A tensor, vector or index whose shape does not fit the site it is meant for."""


class SiteConflictError(FuncnetError):
    """Two interventions joined with ``|`` both write the same site."""


class NotSerializableError(FuncnetError):
    """An intervention holds a custom Python function, which cannot be saved."""


class UnknownOpError(FuncnetError, KeyError):
    """An op name that is not in the registry."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class InputTypeError(FuncnetError, TypeError):
    """Input of a type that cannot be used at all (a sparse matrix, non-numeric objects)."""


class FormatError(FuncnetError):
    """A saved file that is corrupt, of another version, or of another kind."""


class OverwriteError(FuncnetError, FileExistsError):
    """A save would replace something that is not its own kind of artefact, or was not asked to replace it."""


class CheckpointError(FuncnetError):
    """An interrupted run's checkpoint that cannot be resumed (other settings, corrupt, or untrusted)."""


class NotFittedError(FuncnetError, AttributeError):
    """A fitted-only method called before ``fit``."""


class EmbeddedModelMissingError(FuncnetError, ImportError):
    """An embedded-model wheel is not installed."""


class ChunkError(FuncnetError):
    """A chunk of a fanned-out sweep that failed twice (or whose worker died twice); nothing partial is returned."""


__all__ = [
    "FuncnetError",
    "UnknownSiteError",
    "ShapeError",
    "SiteConflictError",
    "NotSerializableError",
    "UnknownOpError",
    "FormatError",
    "InputTypeError",
    "OverwriteError",
    "CheckpointError",
    "NotFittedError",
    "EmbeddedModelMissingError",
    "ChunkError",
]
