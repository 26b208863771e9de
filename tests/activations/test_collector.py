"""Activation collection: exactness against run_with_cache, padding, caps, streaming, resume, errors."""

from __future__ import annotations

import json

import pytest
import torch

from tl_testing import count_hooks
from tl_funcnet.activations import ActivationCollector, Activations, collect
from tl_funcnet.errors import FormatError, FuncnetError, OverwriteError, UnknownSiteError
from tl_funcnet.hooks import ablate, resolve_sites


def _seqs(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 50, (n,), generator=g) for n in lengths]


def _reference(model, seqs, site):
    rows = []
    for s in seqs:
        _, cache = model.run_with_cache(s.unsqueeze(0), names_filter=[site])
        a = cache[site][0]
        rows.append(a.reshape(a.shape[0], -1))
    return torch.cat(rows)


@pytest.mark.parametrize("site", ["blocks.1.mlp.hook_post", "blocks.0.hook_resid_post", "blocks.1.attn.hook_z"])
def test_collect_matches_run_with_cache_without_pad_leaks(tiny_model, site):
    seqs = _seqs([12, 3, 7, 9, 1, 5])
    acts = collect(tiny_model, seqs, [site], batch_size=4, progress=False)
    ref = _reference(tiny_model, seqs, site)
    assert acts[site].shape == ref.shape
    torch.testing.assert_close(acts[site], ref, atol=1e-5, rtol=1e-5)
    assert acts.offsets.tolist() == [0, 12, 15, 22, 31, 32, 37]
    assert torch.equal(acts.token_ids, torch.cat(seqs))
    assert count_hooks(tiny_model) == 0


def test_collect_multiple_sites_matrix_and_slices(gpt2_tiny):
    seqs = _seqs([6, 4])
    sites = resolve_sites(gpt2_tiny, "mlp.hook_post")
    assert sites == ["blocks.0.mlp.hook_post", "blocks.1.mlp.hook_post"]
    acts = collect(gpt2_tiny, seqs, sites, progress=False)
    by_suffix = collect(gpt2_tiny, seqs, "mlp.hook_post", progress=False)  # the collector resolves suffixes too
    assert by_suffix.sites == tuple(sites) and torch.equal(by_suffix.matrix(), acts.matrix())
    one = collect(gpt2_tiny, seqs, "mlp.hook_post", layers=[1], progress=False)
    assert one.sites == ("blocks.1.mlp.hook_post",) and torch.equal(one["blocks.1.mlp.hook_post"], acts[sites[1]])
    m = acts.matrix()
    assert m.shape == (10, 64)
    sl = acts.unit_slices()
    torch.testing.assert_close(m[:, sl["blocks.1.mlp.hook_post"]], acts["blocks.1.mlp.hook_post"])


def test_collect_caps_tokens(gpt2_tiny):
    seqs = _seqs([12, 12, 12])
    acts = collect(gpt2_tiny, seqs, "blocks.0.hook_mlp_out", max_tokens_per_seq=5, max_tokens=12, progress=False)
    assert acts.offsets.tolist() == [0, 5, 10, 12]


def test_collect_under_intervention(gpt2_tiny):
    seqs = _seqs([8])
    site = "blocks.0.mlp.hook_post"
    acts = collect(gpt2_tiny, seqs, site, intervention=ablate(site, units=[2, 3]), progress=False)
    assert acts[site][:, [2, 3]].abs().sum() == 0 and acts[site][:, 4].abs().sum() > 0


def test_collect_streams_to_disk_and_matches_memory(llama_tiny, tmp_path):
    seqs = _seqs([12, 9, 4, 11, 7])
    site = "blocks.1.hook_resid_post"
    mem = collect(llama_tiny, seqs, site, batch_size=2, progress=False)
    disk = collect(llama_tiny, seqs, site, batch_size=2, memory_budget_mb=1e-6, store_dir=tmp_path / "s",
                   progress=False)
    assert disk.path == tmp_path / "s" and (tmp_path / "s" / "manifest.json").exists()
    assert not (tmp_path / "s.partial").exists()
    torch.testing.assert_close(disk[site], mem[site])
    again = Activations.load(tmp_path / "s")
    torch.testing.assert_close(again[site], mem[site])
    assert torch.equal(again.offsets, mem.offsets)


def test_unrequested_store_is_temporary(llama_tiny):
    import gc

    seqs = _seqs([12, 9, 4])
    site = "blocks.1.hook_resid_post"
    acts = collect(llama_tiny, seqs, site, batch_size=2, memory_budget_mb=1e-6, progress=False)
    scratch = acts.path.parent
    assert scratch.name.startswith("tlfn_acts_") and scratch.exists()
    kept = acts[site]
    del acts
    gc.collect()
    assert not scratch.exists()
    torch.testing.assert_close(kept, collect(llama_tiny, seqs, site, progress=False)[site])


def test_failed_disk_write_is_reported_and_leaves_no_store(gpt2_tiny, tmp_path, monkeypatch):
    from tl_funcnet.activations import store as store_module

    def disk_full(self, start, rows):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_module.RowFile, "write", disk_full)
    with pytest.raises(FuncnetError, match="storing activations failed: .*No space left"):
        collect(gpt2_tiny, _seqs([6, 5, 4, 3]), "blocks.0.hook_mlp_out", batch_size=1, store_dir=tmp_path / "s",
                progress=False)
    assert count_hooks(gpt2_tiny) == 0
    assert not (tmp_path / "s").exists()
    assert json.loads((tmp_path / "s.partial" / "progress.json").read_text())["done"] == []
    assert not _writer_threads()


def test_failed_forward_in_memory_leaves_no_hook_or_thread(gpt2_tiny):
    from tl_funcnet.hooks import custom

    def fail(x, hook):
        if x.shape[1] > 2:
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        collect(gpt2_tiny, _seqs([6, 5, 4]), "blocks.0.hook_mlp_out", progress=False,
                intervention=custom("blocks.0.hook_resid_pre", fail))
    assert count_hooks(gpt2_tiny) == 0 and not _writer_threads()


def _writer_threads():
    import threading

    return [t for t in threading.enumerate() if t.name == "tl_funcnet-collect-writer"]


def test_collect_bad_input(gpt2_tiny, tmp_path):
    with pytest.raises(FuncnetError, match="empty"):
        collect(gpt2_tiny, [], "blocks.0.hook_mlp_out")
    with pytest.raises(UnknownSiteError, match="Did you mean"):
        collect(gpt2_tiny, _seqs([4]), "blocks.0.hook_mlp_ot")
    with pytest.raises(FuncnetError, match="max_tokens_per_seq"):
        collect(gpt2_tiny, _seqs([4]), "blocks.0.hook_mlp_out", max_tokens_per_seq=0)
    with pytest.raises(FormatError, match="manifest.json is missing"):
        Activations.load(tmp_path)
    assert count_hooks(gpt2_tiny) == 0


def test_activations_save_load_roundtrip(gpt2_tiny, tmp_path):
    acts = collect(gpt2_tiny, _seqs([5, 3]), ["blocks.0.hook_mlp_out", "blocks.1.mlp.hook_post"], progress=False)
    acts.save(tmp_path / "a")
    back = Activations.load(tmp_path / "a", mmap=False)
    for s in acts.sites:
        assert torch.equal(back[s], acts[s])
    assert back.sites == acts.sites


def test_collector_stops_early(gpt2_tiny):
    c = ActivationCollector(gpt2_tiny, ["blocks.0.hook_resid_post"])
    assert c._forward_kwargs() == {"stop_at_layer": 1}
    assert ActivationCollector(gpt2_tiny, ["blocks.1.hook_resid_post"])._forward_kwargs() == {"return_type": None}
    assert ActivationCollector(gpt2_tiny, ["blocks.0.hook_resid_post", "ln_final.hook_normalized"]
                               )._forward_kwargs() == {"return_type": None}
    assert ActivationCollector(gpt2_tiny, ["blocks.0.hook_resid_post"], stop_at_layer=None
                               )._forward_kwargs() == {"return_type": None}


def test_stopping_early_gives_the_same_rows(gpt2_tiny):
    seqs = _seqs([7, 5])
    early = collect(gpt2_tiny, seqs, "blocks.0.hook_resid_post", progress=False)
    full = collect(gpt2_tiny, seqs, "blocks.0.hook_resid_post", stop_at_layer=None, progress=False)
    assert torch.equal(early["blocks.0.hook_resid_post"], full["blocks.0.hook_resid_post"])


@pytest.mark.parametrize("options, match", [
    ({"batch_size": 0}, "batch_size should be an integer >= 1"),
    ({"batch_size": 2.0}, "batch_size"),
    ({"max_tokens": 0}, "max_tokens should be an integer >= 1"),
    ({"memory_budget_mb": 0}, "memory_budget_mb should be a positive number"),
    ({"memory_budget_mb": True}, "memory_budget_mb"),
    ({"dtype": torch.int32}, "dtype should be one of"),
    ({"dtype": "float32"}, "dtype should be one of"),
    ({"stop_at_layer": "early"}, "stop_at_layer should be 'auto', None or a layer index"),
    ({"restart": "yes"}, "restart should be True or False"),
    ({"intervention": "ablate"}, "intervention should be an Intervention"),
    ({"layers": [5]}, r"layers \[5\] are out of range"),
])
def test_collector_checks_its_settings_at_construction(gpt2_tiny, options, match):
    site = "mlp.hook_post" if "layers" in options else "blocks.0.mlp.hook_post"
    with pytest.raises(FuncnetError, match=match):
        ActivationCollector(gpt2_tiny, site, **options)


def test_collector_validates_the_intervention_against_the_model(gpt2_tiny):
    from tl_funcnet.errors import ShapeError

    with pytest.raises(ShapeError, match=r"\(7,\)"):
        ActivationCollector(gpt2_tiny, "blocks.0.mlp.hook_post",
                            intervention=ablate("blocks.0.mlp.hook_post", units=[1]) + ablate(
                                "blocks.0.hook_resid_post", mode="constant", values=torch.ones(7)))
    assert count_hooks(gpt2_tiny) == 0


def test_token_ids_outside_the_vocabulary_are_refused(gpt2_tiny):
    for bad, match in [([torch.tensor([1, 2, 50])], "token id 50, outside the model's vocabulary 0..49"),
                       ([torch.tensor([-1, 2])], "token id -1"),
                       ([torch.tensor([1.0, 2.0])], "integer token ids")]:
        with pytest.raises(FuncnetError, match=match):
            collect(gpt2_tiny, bad, "blocks.0.hook_mlp_out", progress=False)
    assert count_hooks(gpt2_tiny) == 0


def test_store_dir_is_checked_before_any_forward(gpt2_tiny, tmp_path, monkeypatch):
    from tl_funcnet.activations import collector as collector_module

    monkeypatch.setattr(collector_module, "forward", lambda *a, **k: pytest.fail("a forward pass ran"))
    user = tmp_path / "user"
    (user / "sub").mkdir(parents=True)
    (user / "thesis.txt").write_text("mine")
    (user / "sub" / "data.csv").write_text("1,2")
    (tmp_path / "plain").write_text("plain")
    for store, match in [(user, "is not a saved activation store"), (tmp_path / "plain", "a file is there"),
                         (tmp_path / "plain" / "below", "is a file, not a folder")]:
        with pytest.raises(OverwriteError, match=match):
            collect(gpt2_tiny, _seqs([4]), "blocks.0.hook_mlp_out", store_dir=store, progress=False)
    assert (user / "thesis.txt").read_text() == "mine" and (user / "sub" / "data.csv").read_text() == "1,2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain", "user"]


def test_store_dir_holding_a_finished_store_is_refused(gpt2_tiny, tmp_path):
    site = "blocks.0.hook_mlp_out"
    first = collect(gpt2_tiny, _seqs([4, 3]), site, store_dir=tmp_path / "s", progress=False)
    with pytest.raises(FuncnetError, match=r"already holds a finished activation store; load it with "
                                           r"Activations.load"):
        collect(gpt2_tiny, _seqs([4, 3]), site, store_dir=tmp_path / "s", progress=False)
    assert torch.equal(Activations.load(tmp_path / "s")[site], first[site])


def test_streamed_into_an_empty_folder(gpt2_tiny, tmp_path):
    (tmp_path / "s").mkdir()
    acts = collect(gpt2_tiny, _seqs([4, 3]), "blocks.0.hook_mlp_out", store_dir=tmp_path / "s", progress=False)
    assert acts.path == tmp_path / "s" and sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_activations_save_follows_the_saving_rules(gpt2_tiny, tmp_path):
    from tl_testing import check_save_rules

    a = collect(gpt2_tiny, _seqs([5, 3]), "blocks.0.hook_mlp_out", progress=False)
    b = collect(gpt2_tiny, _seqs([4]), "blocks.0.hook_mlp_out", progress=False)
    check_save_rules(lambda p, o: a.save(p, overwrite=o), lambda p, o: b.save(p, overwrite=o), tmp_path)


def test_activations_save_overwrite_replaces_and_load_checks(gpt2_tiny, tmp_path):
    site = "blocks.0.hook_mlp_out"
    a = collect(gpt2_tiny, _seqs([5, 3]), site, progress=False)
    b = collect(gpt2_tiny, _seqs([4], seed=1), site, progress=False)
    a.save(tmp_path / "a")
    with pytest.raises(OverwriteError, match="overwrite=True"):
        b.save(tmp_path / "a")
    assert torch.equal(Activations.load(tmp_path / "a")[site], a[site])
    b.save(tmp_path / "a", overwrite=True)
    back = Activations.load(tmp_path / "a", mmap=False)
    assert torch.equal(back[site], b[site]) and torch.equal(back.offsets, b.offsets)
    manifest = tmp_path / "a" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["n_tokens"] = "4"
    manifest.write_text(json.dumps(data))
    with pytest.raises(FormatError, match="'n_tokens' should be int"):
        Activations.load(tmp_path / "a")
