"""Activation collection: exactness against run_with_cache, padding, caps, streaming, resume, errors."""

from __future__ import annotations

import json

import pytest
import torch

from tl_testing import count_hooks
from tl_funcnet.activations import ActivationCollector, Activations, collect, layer_sites
from tl_funcnet.errors import FormatError, FuncnetError, UnknownSiteError
from tl_funcnet.hooks import ablate


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
    sites = layer_sites(gpt2_tiny, "mlp.hook_post")
    assert sites == ["blocks.0.mlp.hook_post", "blocks.1.mlp.hook_post"]
    acts = collect(gpt2_tiny, seqs, sites, progress=False)
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


def test_collect_resumes_interrupted_run(gpt2_tiny, tmp_path):
    seqs = _seqs([10, 9, 8, 7, 6, 5])
    site = "blocks.0.hook_mlp_out"
    store = tmp_path / "s"
    calls = {"n": 0}

    def fail_on_third(x, hook):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("interrupted")

    from tl_funcnet.hooks import custom

    with pytest.raises(RuntimeError):
        collect(gpt2_tiny, seqs, site, batch_size=2, store_dir=store, progress=False,
                intervention=custom("blocks.0.hook_resid_pre", fail_on_third))
    assert count_hooks(gpt2_tiny) == 0
    prog = json.loads((tmp_path / "s.partial" / "progress.json").read_text())
    assert len(prog["done"]) == 2  # probe forward + one batch of 2 finished before the failure
    resumed = collect(gpt2_tiny, seqs, site, batch_size=2, store_dir=store, progress=False)
    fresh = collect(gpt2_tiny, seqs, site, progress=False)
    torch.testing.assert_close(resumed[site], fresh[site])


def test_checkpoint_from_before_a_machine_restart_starts_over(gpt2_tiny, tmp_path):
    seqs = _seqs([10, 9, 8, 7])
    site = "blocks.0.hook_mlp_out"
    store = tmp_path / "s"

    def fail(x, hook):
        if x.shape[1] > 2:  # the probe forward passes, the first batch fails
            raise RuntimeError("interrupted")

    from tl_funcnet.hooks import custom

    with pytest.raises(RuntimeError):
        collect(gpt2_tiny, seqs, site, batch_size=2, store_dir=store, progress=False,
                intervention=custom("blocks.0.hook_resid_pre", fail))
    progress = tmp_path / "s.partial" / "progress.json"
    prog = json.loads(progress.read_text())
    prog["boot_id"], prog["done"] = "another-boot", [0, 1]  # claims rows that were never written
    progress.write_text(json.dumps(prog))
    with pytest.warns(UserWarning, match="machine restart"):
        restarted = collect(gpt2_tiny, seqs, site, batch_size=2, store_dir=store, progress=False)
    torch.testing.assert_close(restarted[site], collect(gpt2_tiny, seqs, site, progress=False)[site])


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
    assert c._stop_layer() == 1
    assert ActivationCollector(gpt2_tiny, ["blocks.1.hook_resid_post"])._stop_layer() is None
