"""LinEAS: coordinate-wise affine maps trained end to end towards a target distribution, the sparse-group-lasso
prox, the maps as a saveable intervention, and bad training sets."""

from __future__ import annotations

import pytest
import torch

from tl_funcnet.errors import FuncnetError
from tl_funcnet.hooks import Intervention, capture
from tl_funcnet.steering import LinEASMaps, train_lineas

SITES = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


def _texts(low: int, high: int, seed: int, n: int = 12) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return list(torch.randint(low, high, (n, 10), generator=g))


def _distance(model, source, target, iv: Intervention, site: str) -> float:
    """Mean squared gap between the per-unit quantiles of (steered) source and target activations."""
    acts: dict = {}
    q = torch.linspace(0, 1, 16)
    with torch.no_grad():
        with (iv + capture(site, acts)).applied(model):
            model(torch.stack(source))
        s = acts[site][:, 1:].reshape(-1, acts[site].shape[-1])
        with capture(site, acts).applied(model):
            model(torch.stack(target))
        t = acts[site][:, 1:].reshape(-1, acts[site].shape[-1])
    return float(((torch.quantile(s, q, dim=0) - torch.quantile(t, q, dim=0)) ** 2).mean())


def test_training_moves_the_source_distribution_to_the_target(gpt2_tiny):
    source, target = _texts(0, 25, 1), _texts(25, 50, 2)
    maps = train_lineas(gpt2_tiny, source, target, "hook_resid_post", steps=60, lr=0.05)
    assert isinstance(maps, LinEASMaps) and maps.sites == SITES
    assert maps.losses[-1] < 0.5 * maps.losses[0]
    iv = maps.to_intervention()
    for site in SITES:
        assert _distance(gpt2_tiny, source, target, iv, site) < 0.5 * _distance(gpt2_tiny, source, target,
                                                                                  Intervention(), site)
    assert not any(p.grad is not None for p in gpt2_tiny.parameters())  # the model's own weights get no grad


def test_the_intervention_is_the_trained_affine_map(gpt2_tiny, tmp_path):
    maps = train_lineas(gpt2_tiny, _texts(0, 25, 1), _texts(25, 50, 2), SITES[0], steps=5, lr=0.05)
    x = torch.randint(0, 50, (2, 7))
    plain, edited = {}, {}
    with capture("blocks.0.hook_resid_post", plain).applied(gpt2_tiny), torch.no_grad():
        gpt2_tiny(x)
    iv = maps.to_intervention()
    with (iv + capture("blocks.0.hook_resid_post", edited)).applied(gpt2_tiny), torch.no_grad():
        gpt2_tiny(x)
    w, b = maps.weight[SITES[0]], maps.bias[SITES[0]]
    torch.testing.assert_close(edited[SITES[0]], plain[SITES[0]] * w + b)
    half = maps.to_intervention(0.5)
    assert [h.op for h in half] == ["scale", "add"]
    torch.testing.assert_close(half._hooks[0].params["factor"], 1 + 0.5 * (w - 1))
    assert len(maps.to_intervention(0.0)) == 0  # strength 0 is the identity
    back = Intervention.load(iv.save(tmp_path / "lineas"))
    assert back.allclose(iv)


def test_the_prox_switches_off_units_and_sites(gpt2_tiny):
    source, target = _texts(0, 25, 1), _texts(25, 50, 2)
    sparse = train_lineas(gpt2_tiny, source, target, "hook_resid_post", steps=30, lr=0.05, l1=2.0)
    active = sparse.active()
    assert sum(active.values()) < 2 * 2 * 16  # some units are exactly the identity again
    off = train_lineas(gpt2_tiny, source, target, "hook_resid_post", steps=10, lr=0.05, group=1e3)
    assert off.active() == {s: 0 for s in SITES} and len(off.to_intervention()) == 0


@pytest.mark.parametrize("kwargs, message", [
    ({"source": []}, "source set is empty"),
    ({"target": []}, "target set is empty"),
    ({"target": "same"}, "one class only"),
    ({"steps": 0}, "steps should be"),
    ({"lr": -1.0}, "lr should be > 0"),
    ({"l1": -0.1}, "l1, group >= 0"),
    ({"skip_positions": 10}, "leaves no token"),
])
def test_bad_training_sets_are_refused(gpt2_tiny, kwargs, message):
    source, target = _texts(0, 25, 1), _texts(25, 50, 2)
    args = {"source": source, "target": target, "steps": 2}
    args.update(kwargs)
    if args["target"] == "same":
        args["target"] = source
    with pytest.raises(FuncnetError, match=message):
        train_lineas(gpt2_tiny, args.pop("source"), args.pop("target"), SITES[0], **args)
