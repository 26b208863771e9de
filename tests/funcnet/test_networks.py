"""FunctionalNetworks on planted sources, what each intervention mode does to a model, controls, persistence
(checksums, hand-edited files, overwrite rules) and errors."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from networks_testing import PLANTED, SITES, found, planted_acts
from tl_testing import count_hooks
from tl_funcnet.activations import Activations, collect
from tl_funcnet.errors import FormatError, FuncnetError, NotFittedError, OverwriteError
from tl_funcnet.funcnet import FunctionalNetworks
from tl_funcnet.funcnet.networks import _variance_matched
from tl_funcnet.hooks import Intervention, capture


@pytest.fixture(scope="module")
def acts():
    return planted_acts()


@pytest.fixture(scope="module")
def fitted(acts):
    return FunctionalNetworks(3, random_state=0).fit(acts)


def test_networks_recover_planted_units(fitted):
    assert found(fitted) == sorted(PLANTED)
    assert fitted.union().sum() == 18
    assert fitted.per_site_counts() == {SITES[0]: 12, SITES[1]: 6}
    nets = fitted.networks()
    assert {SITES[0]: list(range(10, 16))} in nets
    assert fitted.network_ids() == [0, 1, 2] and fitted.network_ids([2, 0]) == [2, 0]
    s = fitted.summary()
    assert s["n_units"] == 18 and s["total_units"] == 400 and sorted(s["network_sizes"]) == [6, 6, 6]


def test_networks_maps_are_sign_canonical_and_zscored(fitted):
    m = fitted.maps_
    top = m.gather(1, m.abs().argmax(1, keepdim=True))
    assert (top > 0).all()
    torch.testing.assert_close(m.mean(1), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(m.std(1, correction=0), torch.ones(3), atol=1e-4, rtol=0)


def test_networks_same_seed_same_result(acts, fitted):
    again = FunctionalNetworks(3, random_state=0).fit(acts)
    assert torch.equal(again.maps_, fitted.maps_)
    default = FunctionalNetworks(3).fit(acts)  # random_state defaults to 0
    assert torch.equal(default.maps_, fitted.maps_)
    other = FunctionalNetworks(3, random_state=1).fit(acts)
    assert found(other) == sorted(PLANTED)  # another start, the same planted networks


def test_networks_per_layer_and_window_scopes(acts):
    per = FunctionalNetworks(2, scope="per_layer", random_state=0).fit(acts)
    assert per.n_networks_total == 4 and len(per.blocks_) == 2
    assert set(per.union().nonzero().flatten().tolist()) >= set(PLANTED[0] + PLANTED[1])
    win = FunctionalNetworks(3, scope="window", window=2, random_state=0).fit(acts)
    assert win.n_networks_total == 3 and found(win) == sorted(PLANTED)


def test_networks_two_sided_threshold_is_superset(fitted):
    two = fitted.with_threshold(2.0, "two")
    assert (two.union() | fitted.union()).sum() == two.union().sum()
    none = fitted.with_threshold(1e6)
    assert none.union().sum() == 0  # documented: a threshold that selects nothing gives empty networks
    assert len(none.to_intervention("mask")) == 0
    assert fitted.threshold == 3.6 and fitted.union().sum() == 18  # the original is unchanged


def test_networks_time_courses_and_connectivity(acts, fitted):
    tc = fitted.time_courses()
    assert tc.shape == (3000, 3)
    mean_tc = fitted.time_courses(acts, kind="mean")
    # the mean activity of each network's units tracks its own ICA source
    corr = torch.corrcoef(torch.cat([tc, mean_tc], 1).T)[:3, 3:]
    assert (corr.diagonal() > 0.95).all()
    conn = fitted.connectivity()
    assert conn.shape == (3, 3) and torch.allclose(conn.diagonal(), torch.ones(3))


def test_variance_matched_control_matches_each_variance_bin_outside_the_networks(fitted):
    c = fitted.control_mask("variance_matched", random_state=1)
    assert fitted.per_site_counts() == {s: len(u) for s, u in fitted.site_units(c).items()}
    assert not (c & fitted.union()).any()
    assert torch.equal(c, fitted.control_mask("variance_matched", random_state=1))
    assert not torch.equal(c, fitted.control_mask("variance_matched", random_state=2))
    with pytest.raises(FuncnetError, match="n_bins"):
        fitted.control_mask("variance_matched", n_bins=0)
    fine = fitted.control_mask("variance_matched", random_state=1, n_bins=1000)  # nearest-variance units
    assert int(fine.sum()) == int(c.sum()) and not (fine & fitted.union()).any()


@given(st.integers(1, 60), st.integers(1, 12), st.integers(0, 2**31 - 1))
@settings(max_examples=60, deadline=None)
def test_variance_matched_picks_same_bins_or_nearest(width, n_bins, seed):
    g = torch.Generator().manual_seed(seed)
    std = torch.rand(width, generator=g)
    members = torch.rand(width, generator=g) < 0.3
    pick = _variance_matched(std, members, n_bins, g)
    n = int(members.sum())
    assert len(pick) == n and len(set(pick.tolist())) == n
    if n <= width - n:  # enough other units: never a member
        assert not members[pick].any()
    rank = torch.argsort(torch.argsort(std, stable=True))
    bins = rank * min(n_bins, width) // width
    others = (~members).sum().item()
    if n <= others and all(((bins == b) & ~members).sum() >= ((bins == b) & members).sum()
                           for b in range(int(bins.max()) + 1)):
        # every bin has room: the control's bin histogram equals the networks'
        assert torch.equal(torch.bincount(bins[pick], minlength=n_bins), torch.bincount(bins[members], minlength=n_bins))


def test_networks_controls_have_matching_size(fitted):
    target = fitted.union()
    for kind in ("per_layer", "top_variance"):
        c = fitted.control_mask(kind, random_state=1)
        assert fitted.per_site_counts() == {s: len(u) for s, u in fitted.site_units(c).items()}
    g = fitted.control_mask("global", random_state=1)
    assert int(g.sum()) == int(target.sum())
    a = fitted.control_mask("per_layer", random_state=1)
    assert torch.equal(a, fitted.control_mask("per_layer", random_state=1))
    assert not torch.equal(a, fitted.control_mask("per_layer", random_state=2))
    assert torch.equal(fitted.control_mask("per_layer"), fitted.control_mask("per_layer", random_state=0))
    top = fitted.control_mask("top_variance")
    # top-variance units of this planted data are exactly the planted units
    assert torch.equal(top, target)
    # a control of a subset of the networks has that subset's size
    assert int(fitted.control_mask("global", [1]).sum()) == int(fitted.union([1]).sum()) == 6


# ------------------------------------------------------------------ interventions on a model


@pytest.fixture(scope="module")
def model_networks(gpt2_tiny):
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(0, 50, (12,), generator=g) for _ in range(40)]
    acts = collect(gpt2_tiny, seqs, "mlp.hook_post", progress=False)
    fn = FunctionalNetworks(4, threshold=2.0, random_state=0).fit(acts)
    units = fn.site_units(fn.union())
    assert all(len(u) > 0 for u in units.values()), "expected key units in every layer"
    return fn, units, seqs


def _before_after(model, iv, sites, toks):
    """Each site's activation just before and just after ``iv`` edits it, in one forward."""
    pre: dict = {}
    post: dict = {}
    with (capture(sites, pre) + iv + capture(sites, post)).applied(model):
        logits = model(toks)
    return pre, post, logits


def _rest(width, units):
    rest = torch.ones(width, dtype=torch.bool)
    rest[units] = False
    return rest


MODES = {
    "mask": dict(mode="mask"),
    "mask_mean": dict(mode="mask", ablation="mean"),
    "preserve": dict(mode="preserve"),
    "preserve_mean": dict(mode="preserve", ablation="mean"),
    "amplify_value": dict(mode="amplify", value=5.0),
    "amplify_gain": dict(mode="amplify", gain=3.0),
}


@pytest.mark.parametrize("name", list(MODES))
def test_each_mode_edits_exactly_the_network_units(gpt2_tiny, model_networks, name):
    fn, units, seqs = model_networks
    sites = list(fn.sites_)
    toks = seqs[0][None]
    with torch.no_grad():
        _, clean = gpt2_tiny.run_with_cache(toks, names_filter=sites)
        clean_logits = gpt2_tiny(toks)
    iv = fn.to_intervention(**MODES[name])
    assert iv.sites <= set(sites) and iv.serializable
    pre, post, logits = _before_after(gpt2_tiny, iv, sites, toks)
    # the first site sees the clean activation (nothing upstream is edited)
    assert torch.equal(pre[sites[0]], clean[sites[0]])
    means = {s: fn.unit_mean_[sum(fn.widths_[:i]):sum(fn.widths_[:i + 1])] for i, s in enumerate(sites)}
    for s in sites:
        a, b, u = pre[s][0], post[s][0], units[s]
        rest = _rest(a.shape[-1], u)
        if name == "mask":
            assert torch.equal(b[:, u], torch.zeros_like(b[:, u])) and torch.equal(b[:, rest], a[:, rest])
        elif name == "mask_mean":
            assert torch.equal(b[:, u], means[s][u].expand_as(b[:, u])) and torch.equal(b[:, rest], a[:, rest])
        elif name == "preserve":
            assert torch.equal(b[:, rest], torch.zeros_like(b[:, rest])) and torch.equal(b[:, u], a[:, u])
        elif name == "preserve_mean":
            assert torch.equal(b[:, rest], means[s][rest].expand_as(b[:, rest])) and torch.equal(b[:, u], a[:, u])
        elif name == "amplify_value":
            torch.testing.assert_close(b[:, u], a[:, u] + 5.0, atol=1e-6, rtol=0)
            assert torch.equal(b[:, rest], a[:, rest])
        else:
            torch.testing.assert_close(b[:, u], a[:, u] * 3.0, atol=1e-6, rtol=1e-6)
            assert torch.equal(b[:, rest], a[:, rest])
    assert not torch.allclose(logits, clean_logits)  # every mode changes the model's output
    assert count_hooks(gpt2_tiny) == 0


def test_selected_networks_and_neutral_settings(gpt2_tiny, model_networks):
    fn, _, seqs = model_networks
    sites = list(fn.sites_)
    toks = seqs[1][None]
    only = fn.site_units(fn.union([1]))
    pre, post, _ = _before_after(gpt2_tiny, fn.to_intervention("mask", [1]), sites, toks)
    for s in sites:
        u = only[s]
        assert torch.equal(post[s][0][:, u], torch.zeros(12, len(u)))
        rest = _rest(post[s].shape[-1], u)
        assert torch.equal(post[s][0][:, rest], pre[s][0][:, rest])
    # amplify with value 0 / gain 1 changes nothing
    with torch.no_grad():
        clean = gpt2_tiny(toks)
    for kw in ({"value": 0.0}, {"gain": 1.0}):
        with fn.to_intervention("amplify", **kw).applied(gpt2_tiny), torch.no_grad():
            assert torch.equal(gpt2_tiny(toks), clean)


def test_control_interventions_edit_a_matched_random_set(gpt2_tiny, model_networks):
    fn, units, seqs = model_networks
    ctrl = fn.to_intervention("mask", control="per_layer", random_state=3)
    per_site = {h.site: len(h.params["units"]) for h in ctrl.hooks}
    assert per_site == {s: len(u) for s, u in units.items()}
    assert ctrl.to_dict() == fn.to_intervention("mask", control="per_layer", random_state=3).to_dict()
    assert ctrl.to_dict() != fn.to_intervention("mask", control="per_layer", random_state=4).to_dict()
    chosen = fn.site_units(fn.control_mask("per_layer", random_state=3))
    _, post, _ = _before_after(gpt2_tiny, ctrl, list(fn.sites_), seqs[0][None])
    for s, u in chosen.items():
        assert torch.equal(post[s][0][:, u], torch.zeros(12, len(u)))
    g = fn.to_intervention("amplify", control="global", gain=2.0, random_state=1)
    assert sum(len(h.params["units"]) for h in g.hooks) == int(fn.union().sum())
    with pytest.raises(FuncnetError, match="control"):
        fn.to_intervention("mask", control="random")


@pytest.mark.parametrize("kw,match", [({"mode": "ablate"}, "mode"), ({"ablation": "max"}, "ablation"),
                                      ({"mode": "amplify", "value": float("nan")}, "value"),
                                      ({"mode": "amplify", "gain": float("inf")}, "gain"),
                                      ({"ids": [99]}, "out of range"), ({"ids": [0.5]}, "integer"),
                                      ({"ids": 1}, "list")])
def test_to_intervention_refuses_bad_arguments(fitted, kw, match):
    with pytest.raises(FuncnetError, match=match):
        fitted.to_intervention(**kw)


# ------------------------------------------------------------------ persistence


def test_networks_save_load_roundtrip(fitted, tmp_path):
    path = fitted.save(tmp_path / "fn")
    assert sorted(p.name for p in path.iterdir()) == ["networks.json", "networks.safetensors"]
    back = FunctionalNetworks.load(tmp_path / "fn")
    assert torch.equal(back.maps_, fitted.maps_) and torch.equal(back.masks_, fitted.masks_)
    assert torch.equal(back.sources_, fitted.sources_) and torch.equal(back.unit_mean_, fitted.unit_mean_)
    assert back.sites_ == fitted.sites_ and back.widths_ == fitted.widths_ and back.blocks_ == fitted.blocks_
    assert back._params() == fitted._params() and back.converged_ == fitted.converged_
    assert back.to_intervention("mask").allclose(fitted.to_intervention("mask"))
    assert back.to_intervention("mask", ablation="mean").allclose(fitted.to_intervention("mask", ablation="mean"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fn"]  # no temp folder left


def test_networks_save_replaces_only_networks_and_only_when_asked(acts, fitted, tmp_path):
    fitted.save(tmp_path / "fn")
    other = FunctionalNetworks(2, random_state=0).fit(acts)
    with pytest.raises(OverwriteError, match="overwrite=True"):
        other.save(tmp_path / "fn")
    assert FunctionalNetworks.load(tmp_path / "fn").n_networks_total == 3
    other.save(tmp_path / "fn", overwrite=True)
    assert FunctionalNetworks.load(tmp_path / "fn").n_networks_total == 2
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(OverwriteError):
        fitted.save(mine, overwrite=True)
    assert (mine / "notes.txt").read_text() == "keep me" and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(OverwriteError):
        fitted.save(tmp_path / "file", overwrite=True)
    # extra files beside saved networks are never deleted
    (tmp_path / "fn" / "extra.txt").write_text("mine")
    with pytest.raises(OverwriteError, match="extra.txt"):
        fitted.save(tmp_path / "fn", overwrite=True)


def test_networks_load_detects_a_flipped_byte(fitted, tmp_path):
    fitted.save(tmp_path / "fn")
    blob = tmp_path / "fn" / "networks.safetensors"
    data = bytearray(blob.read_bytes())
    data[-3] ^= 0x10  # inside the tensor bytes
    blob.write_bytes(bytes(data))
    with pytest.raises(FormatError, match=r"networks\.safetensors.*checksum"):
        FunctionalNetworks.load(tmp_path / "fn")
    blob.write_bytes(b"garbage")
    with pytest.raises(FormatError, match=r"networks\.safetensors"):
        FunctionalNetworks.load(tmp_path / "fn")
    blob.unlink()
    with pytest.raises(FormatError, match=r"networks\.safetensors"):
        FunctionalNetworks.load(tmp_path / "fn")


def _edit(path, change):
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize("change,key", [
    (lambda m: m.update(converged="yes"), "converged"),
    (lambda m: m.update(sites="blocks.0.mlp.hook_post"), "sites"),
    (lambda m: m.update(widths=[200, "200"]), "widths"),
    (lambda m: m.update(widths=[200]), "widths"),
    (lambda m: m.update(params=[3]), "params"),
    (lambda m: m.pop("sites"), "sites"),
    (lambda m: m.pop("params"), "params"),
    (lambda m: m.pop("blocks"), "blocks"),
    (lambda m: m.update(blocks=[{"sites": []}]), "blocks"),
    (lambda m: m["params"].update(n_networks="3"), "params"),
    (lambda m: m["params"].update(colour="red"), "params"),
    (lambda m: m.update(version=1), "version"),
    (lambda m: m.update(format="something.else"), "format"),
    (lambda m: m.pop("tensors_sha256"), "checksum"),
])
def test_networks_load_refuses_hand_edited_json(fitted, tmp_path, change, key):
    fitted.save(tmp_path / "fn")
    meta_f = tmp_path / "fn" / "networks.json"
    _edit(meta_f, change)
    with pytest.raises(FormatError, match=key) as err:
        FunctionalNetworks.load(tmp_path / "fn")
    assert "networks." in str(err.value)  # names the file


def test_networks_load_refuses_broken_folders(fitted, tmp_path):
    with pytest.raises(FormatError, match="missing"):
        FunctionalNetworks.load(tmp_path / "nothing")
    fitted.save(tmp_path / "fn")
    (tmp_path / "fn" / "networks.json").write_text("{")
    with pytest.raises(FormatError, match=r"networks\.json"):
        FunctionalNetworks.load(tmp_path / "fn")
    (tmp_path / "fn" / "networks.json").write_text("[1, 2]")
    with pytest.raises(FormatError, match=r"networks\.json"):
        FunctionalNetworks.load(tmp_path / "fn")


# ------------------------------------------------------------------ errors


def test_networks_errors(acts):
    with pytest.raises(NotFittedError, match="not fitted"):
        FunctionalNetworks(3).union()
    with pytest.raises(NotFittedError, match="not fitted"):
        FunctionalNetworks(3).to_intervention()
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
    with pytest.raises(FuncnetError, match="scope"):
        FunctionalNetworks(3, scope="global").fit(acts)
    with pytest.raises(FuncnetError, match="window"):
        FunctionalNetworks(3, scope="window", window=5).fit(acts)
    with pytest.raises(FuncnetError, match="n_networks"):
        FunctionalNetworks(0).fit(acts)
    with pytest.raises(FuncnetError, match="dtype"):
        FunctionalNetworks(3, dtype="float16").fit(acts)
    with pytest.raises(FuncnetError, match="not collected"):
        FunctionalNetworks(3).fit(acts, sites=["blocks.5.mlp.hook_post"])
    with pytest.raises(FuncnetError, match="Activations"):
        FunctionalNetworks(3).fit(torch.zeros(10, 4))


def test_intervention_type(fitted):
    assert isinstance(fitted.to_intervention(), Intervention)
    d = fitted.to_intervention().to_dict()
    assert {h["op"] for h in d["hooks"]} == {"ablate"}
