"""Shared fixtures: tiny random models (no downloads), seeding, and a hook-leak guard after every test."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

try:  # the TransformerLens 4 lane (make test-tl4) has no HookedTransformer: skip the modules that import it
    from transformer_lens import HookedTransformer  # noqa: F401
    collect_ignore: list[str] = []
except ImportError:
    collect_ignore = ["models/test_models_store.py", "patching/test_patching_exact.py"]

from tl_testing import GUARDED_MODELS, count_hooks, guard, make_gpt2_style, make_llama_style  # noqa: E402,F401


@pytest.fixture(scope="session")
def gpt2_tiny():
    return guard(make_gpt2_style().eval())


@pytest.fixture(scope="session")
def llama_tiny():
    return guard(make_llama_style().eval())


@pytest.fixture(scope="session", params=["gpt2_tiny", "llama_tiny"])
def tiny_model(request):
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="session")
def bridge():
    """A tiny TransformerBridge (grouped-query Llama style) in compatibility mode."""
    from tl_testing import guard, make_bridge_llama

    pytest.importorskip("transformer_lens.model_bridge")
    return guard(make_bridge_llama())


@pytest.fixture(scope="session")
def twin():
    """The HookedTransformer with the bridge's weights."""
    from tl_testing import guard, has_hooked_transformer, make_hooked_twin

    if not has_hooked_transformer():
        pytest.skip("this transformer-lens has no HookedTransformer (TransformerLens 4)")
    return guard(make_hooked_twin())


@pytest.fixture
def no_model_loads(monkeypatch):
    """Record any attempt to load a model, and fail it (the CLI's main() turns that into exit code 1)."""
    from tl_funcnet import models
    from tl_funcnet.models import _load, ref, store

    calls: list = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise RuntimeError("a model was loaded")

    for module in (models, _load, ref, store):
        monkeypatch.setattr(module, "load", refuse)
    return calls


@pytest.fixture
def tokens():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 50, (3, 10), generator=g)


@pytest.fixture(autouse=True)
def _seed_and_guard_hooks():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
    leaks = {id(m): count_hooks(m) for m in GUARDED_MODELS}
    for m in GUARDED_MODELS:  # keep one leak from failing every later test
        if count_hooks(m):
            m.reset_hooks(including_permanent=True)
    leaked = [n for n in leaks.values() if n]
    assert not leaked, f"hooks leaked onto a shared model: {leaked}"
