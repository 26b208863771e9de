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

#: Every model a fixture hands out is checked for leftover hooks after each test.
GUARDED_MODELS: list = []


def count_hooks(model) -> int:
    """Hooks attached to any hook point of ``model``, counted in torch's own hook dicts (the ground truth)."""
    return sum(len(hp._forward_hooks) + len(hp._backward_hooks) for hp in model.hook_dict.values())


def guard(model):
    GUARDED_MODELS.append(model)
    return model


def make_gpt2_style(seed: int = 0, **overrides):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    kw = dict(n_layers=2, d_model=16, n_heads=4, d_head=4, d_mlp=32, d_vocab=50, n_ctx=12, act_fn="gelu",
              normalization_type="LN", seed=seed)
    kw.update(overrides)
    return HookedTransformer(HookedTransformerConfig(**kw))


def make_llama_style(seed: int = 0, **overrides):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    kw = dict(n_layers=2, d_model=16, n_heads=4, d_head=4, n_key_value_heads=2, d_mlp=32, d_vocab=50, n_ctx=12,
              act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=4,
              gated_mlp=True, final_rms=True, seed=seed)
    kw.update(overrides)
    return HookedTransformer(HookedTransformerConfig(**kw))


@pytest.fixture(scope="session")
def gpt2_tiny():
    return guard(make_gpt2_style().eval())


@pytest.fixture(scope="session")
def llama_tiny():
    return guard(make_llama_style().eval())


@pytest.fixture(scope="session", params=["gpt2_tiny", "llama_tiny"])
def tiny_model(request):
    return request.getfixturevalue(request.param)


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
