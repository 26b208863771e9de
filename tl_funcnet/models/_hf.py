"""Offline access to transformers: never reach a model hub."""

from __future__ import annotations

import os
from typing import Any


def offline_transformers() -> Any:
    """Import ``transformers`` with the hub switched off and return the module."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import transformers

    return transformers
