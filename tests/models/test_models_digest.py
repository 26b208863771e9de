"""models.digest.model_digest: a model's identity for resumable runs; any weight or config edit changes it."""

from __future__ import annotations

import copy

import torch

from tl_testing import make_gpt2_style, make_llama_style
from tl_funcnet.models import save
from tl_funcnet.models.digest import model_digest
from tl_funcnet.models.mlp import select_neurons, sync_config
from tl_funcnet.models.store import load


def test_digest_is_stable_for_the_same_model():
    a = make_gpt2_style(seed=0)
    assert model_digest(a) == model_digest(a) == model_digest(copy.deepcopy(a)) == model_digest(make_gpt2_style(seed=0))
    assert len(model_digest(a)) == 64


def test_digest_survives_a_save_and_load(tmp_path):
    a = make_llama_style(seed=0).eval()
    save(a, tmp_path / "m")
    assert model_digest(load(tmp_path / "m")) == model_digest(a)


def test_digest_changes_with_weights_config_and_widths():
    a = make_gpt2_style(seed=0)
    base = model_digest(a)
    tweaked = copy.deepcopy(a)
    with torch.no_grad():
        tweaked.blocks[1].attn.W_Q[0, 0, 0] += 1e-4  # one value
    swapped = copy.deepcopy(a)
    with torch.no_grad():  # the same values in another order: same sums, another sample
        swapped.blocks[0].mlp.W_out.copy_(swapped.blocks[0].mlp.W_out.flip(0))
    pruned = copy.deepcopy(a)
    select_neurons(pruned.blocks[0].mlp, torch.arange(30))
    sync_config(pruned)
    others = [make_gpt2_style(seed=1), make_gpt2_style(seed=0, act_fn="relu"), make_llama_style(seed=0), tweaked,
              swapped, pruned, copy.deepcopy(a).to(torch.float64)]
    digests = [model_digest(m) for m in others]
    assert base not in digests and len(set(digests)) == len(digests)


def test_digest_ignores_seed_and_device_fields():
    a = make_gpt2_style(seed=0)
    b = copy.deepcopy(a)
    b.cfg.seed = 123
    assert model_digest(a) == model_digest(b)



def test_the_digest_does_not_depend_on_summation_order():
    """Workers of a distributed sweep run torch with other thread counts (so other reduction orders) than the
    process that pinned the model: the weight sums are exact integer sums of bit patterns, so order is moot."""
    from tl_funcnet.models.digest import _bit_sums

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1_000_003, generator=g) * torch.logspace(-6, 6, 1_000_003)
    perm = torch.randperm(x.numel(), generator=g)
    assert torch.equal(_bit_sums(x), _bit_sums(x[perm]))
    assert float(x.double().sum()) != float(x[perm].double().sum())  # what a float sum would do
    y = x.clone()
    y[123] = torch.nextafter(y[123], torch.tensor(float("inf")))  # one value one ulp up
    assert not torch.equal(_bit_sums(x), _bit_sums(y))
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        assert torch.equal(_bit_sums(x.to(dtype)), _bit_sums(x.to(dtype)[perm]))
