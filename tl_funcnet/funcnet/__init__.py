"""Functional networks: a torch ICA engine and semi-NMF, networks from unit activity, recurrence, and interventions."""

from .ica import CanICA as CanICA
from .ica import FastICA as FastICA
from .networks import FunctionalNetworks as FunctionalNetworks
from .recurrence import RecurrenceReport as RecurrenceReport
from .recurrence import recurrence as recurrence
from .snmf import SNMF as SNMF

__all__ = ["FastICA", "CanICA", "SNMF", "FunctionalNetworks", "recurrence", "RecurrenceReport"]
