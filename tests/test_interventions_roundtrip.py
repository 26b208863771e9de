"""Every intervention a public function returns saves and loads back equal, and acts the same after loading;
the few that hold a caller's object (a dict, a callback) refuse to save, saying why."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch

from tl_funcnet.errors import NotSerializableError
from tl_funcnet.hooks import (Intervention, ablate, add, capture, capture_grad, clamp, custom, detach, keep_only, patch,
                              patch_subspace, project_onto, project_out, record, scale, sparsify, steer)
from tl_funcnet.patching import relp_rules
from tl_funcnet.sae import (ablate_features, capture_features, clamp_features, scale_features, set_features, splice,
                            steer_features)
from tl_testing import make_gpt2_style, make_llama_style

SITE = "blocks.0.hook_resid_post"
POST = "blocks.1.mlp.hook_post"


@pytest.fixture(scope="module")
def models():
    return {"gpt2": make_gpt2_style().eval(), "llama": make_llama_style().eval()}


def _networks(model):
    from tl_funcnet.activations import collect
    from tl_funcnet.funcnet import FunctionalNetworks

    g = torch.Generator().manual_seed(0)
    acts = collect(model, [torch.randint(0, 50, (12,), generator=g) for _ in range(12)], "mlp.hook_post",
                   progress=False)
    return FunctionalNetworks(3, threshold=1.5, max_iter=50).fit(acts)


def _plan(model, bias_compensation):
    from tl_funcnet.pruning import plan_pruning

    g = torch.Generator().manual_seed(1)
    texts = [torch.randint(0, 50, (10,), generator=g) for _ in range(6)]
    return plan_pruning(model, 0.25, "wanda", texts, protect_first=0, protect_last=0,
                        bias_compensation=bias_compensation)


def _sae(model):
    from sae_lens import SAE, StandardSAEConfig

    cfg = StandardSAEConfig(d_in=16, d_sae=24, device="cpu")
    sae = SAE.from_dict(cfg.to_dict()) if hasattr(SAE, "from_dict") else SAE(cfg)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    sae.cfg.metadata.hook_name = SITE
    return sae


def _vector():
    from tl_funcnet.steering import SteeringVector

    return SteeringVector(torch.linspace(-1, 1, 16), SITE, {"method": "test"})


BUILDERS: dict[str, Callable[[Any], Intervention]] = {
    "steer": lambda m: steer(SITE, torch.randn(16), scale=2.0, pos="last"),
    "add": lambda m: add(POST, 0.5, units=[1, 3], pos=[0, 2]),
    "scale": lambda m: scale(POST, torch.rand(32), pos={"slice": [1, None]}),
    "ablate mean": lambda m: ablate(POST, units=[2, 4], mode="mean", values=torch.randn(32)),
    "ablate heads": lambda m: ablate("blocks.0.attn.hook_z", units=[1]),
    "keep_only": lambda m: keep_only(POST, units=torch.arange(32) < 5),
    "patch": lambda m: patch(SITE, torch.randn(2, 10, 16), where=torch.rand(4, 10, 16) > 0.5),
    "project_out": lambda m: project_out(SITE, torch.randn(2, 16)),
    "project_onto": lambda m: project_onto(SITE, torch.randn(16)),
    "patch_subspace": lambda m: patch_subspace(SITE, torch.randn(2, 16), torch.randn(2, 10, 16), pos=[1, 3]),
    "clamp": lambda m: clamp(POST, min=-0.1, max=0.2, units=[0, 1]),
    "detach": lambda m: detach([SITE, POST]),
    "sparsify": lambda m: sparsify(POST, torch.rand(32) * 0.1, weight=torch.rand(32) + 0.5),
    "sparsify through activation": lambda m: sparsify("blocks.0.mlp.hook_pre", torch.full((32,), 0.05),
                                                      activation="silu", pos="last"),
    "networks mask": lambda m: _networks(m).to_intervention("mask"),
    "networks preserve (mean)": lambda m: _networks(m).to_intervention("preserve", ablation="mean"),
    "networks amplify": lambda m: _networks(m).to_intervention("amplify", gain=1.5),
    "networks control": lambda m: _networks(m).to_intervention("mask", control="top_variance"),
    "pruning plan": lambda m: _plan(m, False).to_intervention(bias_compensation=False),
    "pruning plan compensated": lambda m: _plan(m, True).to_intervention(),
    "steering vector": lambda m: _vector().to_intervention(3.0),
    "steering vector last": lambda m: _vector().to_intervention(3.0, "last", normalize=True),
    "steering vector prompt": lambda m: _vector().to_intervention(3.0, "prompt", layers=[0, 1]),
    "relp rules": lambda m: relp_rules(m),
    "sae splice": lambda m: splice(_sae(m)),
    "sae ablate features": lambda m: ablate_features(_sae(m), [1, 5]),
    "sae set features": lambda m: set_features(_sae(m), [2], 3.0),
    "sae steer features": lambda m: steer_features(_sae(m), [2, 3], [1.0, -1.0]),
    "sae scale features": lambda m: scale_features(_sae(m), [4], 2.0),
    "sae clamp features": lambda m: clamp_features(_sae(m), [0], max=0.1),
}


def _outputs(model, iv, tokens):
    """Logits under ``iv`` and every parameter's gradient of a loss on them (so gradient-only ops count too)."""
    model.zero_grad(set_to_none=True)
    with iv.applied(model):
        logits = model(tokens)
        logits.float().pow(2).mean().backward()
    grad = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in model.parameters()])
    model.zero_grad(set_to_none=True)
    return logits.detach(), grad


@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_builder_saves_and_loads_back_equal(name, arch, models, tmp_path):
    model = models[arch]
    iv = BUILDERS[name](model)
    assert isinstance(iv, Intervention) and len(iv) > 0
    iv.save(tmp_path / "iv")
    back = Intervention.load(tmp_path / "iv")
    assert back.allclose(iv, rtol=0, atol=0)
    assert back.to_dict() == iv.to_dict()
    tokens = torch.randint(0, 50, (4, 10), generator=torch.Generator().manual_seed(5))
    (la, ga), (lb, gb) = _outputs(model, iv, tokens), _outputs(model, back, tokens)
    assert torch.equal(la, lb) and torch.equal(ga, gb)
    plain_logits, plain_grad = _outputs(model, Intervention(), tokens)
    assert not (torch.equal(la, plain_logits) and torch.equal(ga, plain_grad)), f"{name} changed nothing"


def test_interventions_holding_a_callers_object_refuse_to_save(tmp_path):
    for iv in (capture(SITE, {}), capture_grad(SITE, {}), record(SITE, lambda site, act: None),
               custom(SITE, lambda act, hook: act), capture_features(_sae(None), {})):
        assert not iv.serializable
        with pytest.raises(NotSerializableError, match="cannot be saved"):
            iv.save(tmp_path / "iv")
        assert not (tmp_path / "iv").exists()
