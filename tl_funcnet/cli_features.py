"""Feature subcommands of ``tl-funcnet`` (extract, ablate, fingerprint, patch, prune, steer).

Only argument parsing lives at import time; each handler imports its feature when it runs.
"""

from __future__ import annotations
