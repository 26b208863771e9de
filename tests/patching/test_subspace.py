"""The subspace-patching illusion check on planted one-layer models: one built to show the illusion (a direction
mixing a varying but unread neuron with a read but constant one) and one without it."""

from __future__ import annotations

import pytest
import torch

from tl_funcnet.errors import FuncnetError, ShapeError
from tl_funcnet.patching import IllusionCheck, Task, subspace_illusion
from tl_testing import make_gpt2_style

SITE = "blocks.0.mlp.hook_post"


def planted(connected_varying: bool):
    """Neuron 0 varies with the input but nothing reads it; neuron 1 is read (strongly) but constant; neuron 2
    varies and is read only when ``connected_varying``. Attention writes nothing."""
    model = make_gpt2_style(n_layers=1, d_model=16, d_mlp=8, seed=3).eval()
    g = torch.Generator().manual_seed(0)
    b = model.blocks[0]
    with torch.no_grad():
        b.attn.W_O.zero_()
        b.attn.b_O.zero_()
        b.mlp.W_in.zero_()
        b.mlp.b_in.zero_()
        b.mlp.W_out.zero_()
        b.mlp.b_out.zero_()
        b.mlp.W_in[:, 0] = torch.randn(16, generator=g) * 3
        b.mlp.b_in[1] = 1.0
        b.mlp.W_in[:, 2] = torch.randn(16, generator=g) * 3
        readout = model.W_U[:, 1] - model.W_U[:, 2]
        b.mlp.W_out[1] = 4 * readout / readout.norm()
        if connected_varying:  # not parallel to neuron 1's row, so neurons 1 and 2 are both read on their own
            b.mlp.W_out[2] = 4 * readout / readout.norm() + torch.randn(16, generator=g)
    return model


@pytest.fixture(scope="module")
def task():
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(3, 50, (6, 5), generator=g)
    corrupted = torch.randint(3, 50, (6, 5), generator=g)
    return Task("planted", clean, corrupted, torch.full((6,), 1), torch.full((6,), 2))


def test_a_direction_mixing_an_unread_and_a_dormant_neuron_is_an_illusion(task):
    model = planted(connected_varying=False)
    v = torch.zeros(8)
    v[0] = v[1] = 1.0
    check = subspace_illusion(model, task, SITE, v)
    assert isinstance(check, IllusionCheck)
    assert check.null_fraction == pytest.approx(0.5)
    assert check.effects["null_space"] == 0.0 or abs(check.effects["null_space"]) < 1e-6
    assert abs(check.effects["row_space"]) < 1e-6  # the read neuron does not vary between the runs
    assert abs(check.effects["full"]) < 1e-6  # patching the whole site changes nothing read
    assert abs(check.effects["subspace"]) > 0.1
    assert check.coefficient_shares["null_space"] > 0.99
    assert check.illusion and check.full_patch_does_little and "dormant pathway" in check.reason


def test_a_read_and_varying_direction_is_not_an_illusion(task):
    model = planted(connected_varying=True)
    v = torch.zeros(8)
    v[2] = 1.0
    check = subspace_illusion(model, task, SITE, v)
    assert check.null_fraction == pytest.approx(0.0, abs=1e-9)
    assert check.effects["subspace"] == pytest.approx(check.effects["row_space"], rel=1e-4)
    assert abs(check.effects["subspace"]) > 0.1 and check.coefficient_shares["row_space"] > 0.99
    assert not check.illusion and "no sign of an illusion" in check.reason
    denoise = subspace_illusion(model, task, SITE, v, direction="denoise", pos=[-1])
    assert not denoise.illusion and denoise.direction == "denoise"


def test_bad_directions_and_read_outs_are_refused_before_any_forward(task, monkeypatch):
    model = planted(connected_varying=True)
    calls = []
    monkeypatch.setattr(model, "forward", lambda *a, **k: calls.append(1))
    with pytest.raises(ShapeError, match=r"directions should be \(8,\)"):
        subspace_illusion(model, task, SITE, torch.ones(16))
    with pytest.raises(FuncnetError, match="zero vector"):
        subspace_illusion(model, task, SITE, torch.zeros(8))
    with pytest.raises(FuncnetError, match="span only"):
        subspace_illusion(model, task, SITE, torch.ones(2, 8))
    with pytest.raises(FuncnetError, match="no default read-out"):
        subspace_illusion(model, task, "blocks.0.hook_resid_mid", torch.ones(16))
    with pytest.raises(ShapeError, match="read_out should be"):
        subspace_illusion(model, task, SITE, torch.ones(8), read_out=torch.ones(7, 16))
    with pytest.raises(FuncnetError, match="direction should be"):
        subspace_illusion(model, task, SITE, torch.ones(8), direction="sideways")
    assert calls == []
