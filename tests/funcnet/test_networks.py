"""FunctionalNetworks on planted sources, its interventions and controls, persistence and errors."""

from __future__ import annotations

import pytest
import torch

from tl_testing import count_hooks
from tl_funcnet.activations import Activations, collect, layer_sites
from tl_funcnet.errors import FormatError, FuncnetError, NotFittedError
from tl_funcnet.funcnet import FunctionalNetworks, recurrence
from tl_funcnet.hooks import capture

SITES = ("blocks.0.mlp.hook_post", "blocks.1.mlp.hook_post")
PLANTED = [list(range(10, 16)), list(range(120, 126)), list(range(250, 253)) + list(range(300, 303))]


def planted_acts(n_tokens: int = 3000, seed: int = 0, noise: float = 0.05) -> Activations:
    """Three sparse sources, each driving six known units (out of 2 x 200), plus Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    S = torch.randn(n_tokens, 3, generator=g) * (torch.rand(n_tokens, 3, generator=g) < 0.15)
    S = S / S.std(0)
    A = torch.zeros(3, 400)
    for c, units in enumerate(PLANTED):
        A[c, units] = 1.0 + 0.2 * torch.rand(len(units), generator=g)
    X = S @ A + noise * torch.randn(n_tokens, 400, generator=g)
    offsets = torch.arange(0, n_tokens + 1, 100)
    return Activations({SITES[0]: X[:, :200], SITES[1]: X[:, 200:]}, torch.zeros(n_tokens, dtype=torch.long),
                       offsets, SITES)


@pytest.fixture(scope="module")
def acts():
    return planted_acts()


@pytest.fixture(scope="module")
def fitted(acts):
    return FunctionalNetworks(3, random_state=0).fit(acts)


def _found(fn):
    return sorted(sorted(m.nonzero().flatten().tolist()) for m in fn.masks_)


def test_networks_recover_planted_units(fitted):
    assert _found(fitted) == sorted(PLANTED)
    assert fitted.union().sum() == 18
    assert fitted.per_layer_counts() == {SITES[0]: 12, SITES[1]: 6}
    nets = fitted.networks()
    assert {SITES[0]: list(range(10, 16))} in nets


def test_networks_maps_are_sign_canonical_and_zscored(fitted):
    m = fitted.maps_
    top = m.gather(1, m.abs().argmax(1, keepdim=True))
    assert (top > 0).all()
    torch.testing.assert_close(m.mean(1), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(m.std(1, correction=0), torch.ones(3), atol=1e-4, rtol=0)


def test_networks_same_seed_same_result(acts, fitted):
    again = FunctionalNetworks(3, random_state=0).fit(acts)
    assert torch.equal(again.maps_, fitted.maps_)


def test_networks_per_layer_and_window_scopes(acts):
    per = FunctionalNetworks(2, scope="per_layer", random_state=0).fit(acts)
    assert per.n_networks_total == 4 and len(per.blocks_) == 2
    assert set(per.union().nonzero().flatten().tolist()) >= set(PLANTED[0] + PLANTED[1])
    win = FunctionalNetworks(3, scope="window", window=2, random_state=0).fit(acts)
    assert win.n_networks_total == 3 and _found(win) == sorted(PLANTED)


def test_networks_two_sided_threshold_is_superset(fitted):
    two = fitted.with_threshold(2.0, "two")
    assert (two.union() | fitted.union()).sum() == two.union().sum()
    none = fitted.with_threshold(1e6)
    assert none.union().sum() == 0  # documented: a threshold that selects nothing gives empty networks
    assert len(none.intervention("mask")) == 0


def test_networks_time_courses_and_connectivity(acts, fitted):
    tc = fitted.time_courses()
    assert tc.shape == (3000, 3)
    mean_tc = fitted.time_courses(acts, kind="mean")
    # the mean activity of each network's units tracks its own ICA source
    corr = torch.corrcoef(torch.cat([tc, mean_tc], 1).T)[:3, 3:]
    assert (corr.diagonal() > 0.95).all()
    conn = fitted.connectivity()
    assert conn.shape == (3, 3) and torch.allclose(conn.diagonal(), torch.ones(3))


def test_networks_controls_have_matching_size(fitted):
    target = fitted.union()
    for kind in ("per_layer", "top_variance"):
        c = fitted.control_mask(kind, seed=1)
        assert fitted.per_layer_counts() == {s: len(u) for s, u in fitted.site_units(c).items()}
    g = fitted.control_mask("global", seed=1)
    assert int(g.sum()) == int(target.sum())
    assert not torch.equal(fitted.control_mask("per_layer", seed=1), fitted.control_mask("per_layer", seed=2))
    top = fitted.control_mask("top_variance")
    # top-variance units of this planted data are exactly the planted units
    assert torch.equal(top, target)


def test_networks_save_load_roundtrip(fitted, tmp_path):
    fitted.save(tmp_path / "fn")
    back = FunctionalNetworks.load(tmp_path / "fn")
    assert torch.equal(back.maps_, fitted.maps_) and torch.equal(back.masks_, fitted.masks_)
    assert back.sites_ == fitted.sites_ and back.intervention("mask").allclose(fitted.intervention("mask"))
    (tmp_path / "fn" / "networks.json").write_text("{")
    with pytest.raises(FormatError):
        FunctionalNetworks.load(tmp_path / "fn")


def test_networks_errors(acts):
    with pytest.raises(NotFittedError, match="not fitted"):
        FunctionalNetworks(3).union()
    with pytest.raises(FuncnetError, match="exceeds"):
        FunctionalNetworks(250).fit(Activations({SITES[0]: acts[SITES[0]][:100]}, acts.token_ids[:100],
                                                    torch.tensor([0, 100])))
    bad = acts[SITES[0]].clone()
    bad[3, 4] = float("nan")
    with pytest.raises(FuncnetError, match="NaN"):
        FunctionalNetworks(3).fit(Activations({SITES[0]: bad}, acts.token_ids, acts.offsets))
    with pytest.raises(FuncnetError, match="constant"):
        FunctionalNetworks(3).fit(Activations({SITES[0]: torch.ones(50, 20)}, torch.zeros(50, dtype=torch.long),
                                              torch.tensor([0, 50])))
    with pytest.raises(FuncnetError, match="sides"):
        FunctionalNetworks(3, sides="both").fit(acts)


def test_networks_recurrence_on_planted_sources(acts):
    rep = recurrence(acts, n_splits=3, n_networks=3, random_state=0)
    assert rep.recurrence.tolist() == [1.0, 1.0, 1.0]
    assert rep.best_match.min() > 0.9
    iou = recurrence(acts, n_splits=2, similarity="iou", n_networks=3, random_state=0)
    assert iou.best_match.min() > 0.8


def test_networks_interventions_on_a_model(gpt2_tiny):
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(0, 50, (12,), generator=g) for _ in range(40)]
    sites = layer_sites(gpt2_tiny, "mlp.hook_post")
    acts = collect(gpt2_tiny, seqs, sites, progress=False)
    fn = FunctionalNetworks(4, threshold=2.0, random_state=0).fit(acts)
    units = fn.site_units(fn.union())
    assert sum(len(u) for u in units.values()) > 0
    for mode in ("mask", "preserve", "amplify"):
        store: dict = {}
        iv = fn.intervention(mode, value=5.0) + capture(sites, store)
        with iv.applied(gpt2_tiny):
            gpt2_tiny(seqs[0][None])
        for s in sites:
            a, u = store[s][0], units[s]
            rest = torch.ones(a.shape[-1], dtype=torch.bool)
            rest[u] = False
            if mode == "mask":
                assert a[:, u].abs().sum() == 0 and a[:, rest].abs().sum() > 0
            elif mode == "preserve":
                assert a[:, rest].abs().sum() == 0
    ctrl = fn.control("mask", "per_layer", seed=3)
    assert sum(len(h.params["units"]) for h in ctrl.hooks) == int(fn.union().sum())
    assert count_hooks(gpt2_tiny) == 0
