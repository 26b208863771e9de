"""Test helpers shared across the suite, imported as ``tl_testing`` (conftest modules cannot be
imported by name reliably: several test folders have one)."""

from __future__ import annotations

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


def make_sae_transformer(seed: int = 0):
    """A sae-lens HookedSAETransformer with the weights of ``make_gpt2_style(seed)``."""
    from sae_lens import HookedSAETransformer

    base = make_gpt2_style(seed)
    model = HookedSAETransformer(base.cfg)
    model.load_state_dict(base.state_dict())
    return model.eval()


def make_llama_style(seed: int = 0, **overrides):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    kw = dict(n_layers=2, d_model=16, n_heads=4, d_head=4, n_key_value_heads=2, d_mlp=32, d_vocab=50, n_ctx=12,
              act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=4,
              gated_mlp=True, final_rms=True, seed=seed)
    kw.update(overrides)
    return HookedTransformer(HookedTransformerConfig(**kw))
