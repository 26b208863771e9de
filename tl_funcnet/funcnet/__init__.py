"""Functional networks: a torch ICA engine, networks from unit activity, recurrence, and interventions."""

from .ica import FastICA as FastICA
from .networks import FunctionalNetworks as FunctionalNetworks
from .recurrence import RecurrenceReport as RecurrenceReport
from .recurrence import recurrence as recurrence

__all__ = ["FastICA", "FunctionalNetworks", "recurrence", "RecurrenceReport"]

try:  # the spatial (CanICA-style) variant
    from .ica import CanICA as CanICA  # noqa: F401

    __all__.append("CanICA")
except ImportError:  # pragma: no cover
    pass
