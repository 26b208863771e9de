"""Resuming an interrupted streamed collection (activations/resume.py): only with the same model, sites, texts,
intervention and dtype; anything else, a corrupt checkpoint or one from before a restart is refused by name."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from tl_testing import count_hooks, make_gpt2_style, snapshot
from tl_funcnet.activations import Activations, collect
from tl_funcnet.activations import collector as collector_module
from tl_funcnet.activations import resume
from tl_funcnet.activations.store import RowFile
from tl_funcnet.errors import CheckpointError, FuncnetError, OverwriteError
from tl_funcnet.hooks import ablate, custom

SITES = ["blocks.0.hook_mlp_out", "blocks.1.attn.hook_z"]
LENGTHS = [10, 9, 8, 7, 6, 5]


def _seqs(lengths=LENGTHS, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 50, (n,), generator=g) for n in lengths]


class Forwards:
    """Counts the collector's forward passes (the first is the probe that measures widths), failing one."""

    def __init__(self, monkeypatch, fail_at: int | None = None):
        self.calls, self.fail_at = 0, fail_at
        real = collector_module.forward

        def counted(model, batch, **kwargs):
            self.calls += 1
            if self.calls == self.fail_at:
                raise RuntimeError("interrupted")
            return real(model, batch, **kwargs)

        monkeypatch.setattr(collector_module, "forward", counted)


def _collect(model, store, seqs=None, sites=SITES, **options):
    options = {"batch_size": 2, "progress": False, **options}
    return collect(model, _seqs() if seqs is None else seqs, sites, store_dir=store, **options)


def _interrupt(model, store, monkeypatch, fail_at=4, **options):
    """Run a streamed collection that stops with an error at forward ``fail_at`` (probe + fail_at - 2 batches)."""
    with monkeypatch.context() as m:
        Forwards(m, fail_at)
        with pytest.raises(RuntimeError, match="interrupted"):
            _collect(model, store, **options)
    assert count_hooks(model) == 0
    partial = store.with_name(store.name + ".partial")
    assert partial.is_dir() and not store.exists()
    return partial


def _done(partial):
    return json.loads((partial / "progress.json").read_text())["done"]


@pytest.fixture
def model():
    return make_gpt2_style().eval()


@pytest.fixture
def interrupted(model, tmp_path, monkeypatch):
    store = tmp_path / "s"
    partial = _interrupt(model, store, monkeypatch)
    assert len(_done(partial)) == 4  # the two longest batches of two finished before the failure
    return store, partial


def _check_same(acts, expected):
    assert acts.sites == expected.sites
    assert torch.equal(acts.offsets, expected.offsets) and torch.equal(acts.token_ids, expected.token_ids)
    for s in expected.sites:
        torch.testing.assert_close(acts[s], expected[s], rtol=1e-6, atol=1e-6)


def test_resume_with_the_same_settings_gives_the_rows_of_an_uninterrupted_run(model, interrupted, tmp_path,
                                                                              monkeypatch):
    store, partial = interrupted
    counter = Forwards(monkeypatch)
    resumed = _collect(model, store)
    assert counter.calls == 2  # the probe and the one batch left: finished sequences are not run again
    assert not partial.exists() and resumed.path == store
    assert sorted(p.name for p in store.iterdir()) == ["manifest.json", "site_000.npy", "site_001.npy", "tokens.pt"]
    monkeypatch.undo()
    uninterrupted = _collect(model, tmp_path / "u")
    _check_same(resumed, uninterrupted)
    _check_same(Activations.load(store), collect(model, _seqs(), SITES, progress=False))


def test_resume_after_a_failed_write(model, tmp_path, monkeypatch):
    """The writer thread failing part way (a full disk) leaves a checkpoint of the batches written before it."""
    store = tmp_path / "s"
    real_write, writes = RowFile.write, {"n": 0}

    def write_then_fail(self, start, rows):
        writes["n"] += 1
        if writes["n"] > 5:  # 2 sites x 2 sequences of the first batch, then one more row block
            raise OSError(28, "No space left on device")
        real_write(self, start, rows)

    with monkeypatch.context() as m:
        m.setattr(RowFile, "write", write_then_fail)
        with pytest.raises(FuncnetError, match="storing activations failed: .*No space left"):
            _collect(model, store)
    partial = store.with_name("s.partial")
    assert len(_done(partial)) == 2 and not store.exists()
    resumed = _collect(model, store)
    _check_same(resumed, collect(model, _seqs(), SITES, progress=False))


def test_resume_with_another_batch_size_is_allowed(model, interrupted):
    """Batching does not change a sequence's rows, so it is not part of the key."""
    store, _ = interrupted
    _check_same(_collect(model, store, batch_size=3), collect(model, _seqs(), SITES, progress=False))


def _edited(model):
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.blocks[1].mlp.W_out[3, 5] += 1e-3  # a small fine-tune
    return other


#: how the refusal names each part of the key
NAMES = {"intervention": "intervention", "model": r"model \(weights or config\)", "texts": "texts or tokenization",
         "sites": "sites", "dtype": "dtype"}
CHANGES = {
    "intervention": (lambda m: m, {"intervention": ablate("blocks.0.mlp.hook_post", units=[1])}, "intervention"),
    "model weights": (lambda m: make_gpt2_style(seed=1).eval(), {}, "model"),
    "one weight": (_edited, {}, "model"),
    "model config": (lambda m: make_gpt2_style(act_fn="relu").eval(), {}, "model"),
    "texts": (lambda m: m, {"seqs": _seqs(seed=1)}, "texts"),
    "fewer texts": (lambda m: m, {"seqs": _seqs()[:-1]}, "texts"),
    "sites": (lambda m: m, {"sites": SITES[:1]}, "sites"),
    "dtype": (lambda m: m, {"dtype": torch.float16}, "dtype"),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_resume_with_other_settings_is_refused_and_keeps_the_partial_store(model, interrupted, change):
    store, partial = interrupted
    other_model, options, what = CHANGES[change]
    before = snapshot(partial)
    with pytest.raises(CheckpointError, match=rf"differs from this run in its {NAMES[what]}; .*restart=True"):
        _collect(other_model(model), store, **options)  # names what differs, and nothing else
    assert snapshot(partial) == before and not store.exists()
    assert count_hooks(model) == 0
    _check_same(_collect(model, store), collect(model, _seqs(), SITES, progress=False))  # still resumable


def test_resume_names_every_difference(model, interrupted):
    store, partial = interrupted
    with pytest.raises(CheckpointError, match=r"in its sites, dtype;"):
        _collect(model, store, sites=SITES[:1], dtype=torch.float64)


def test_restart_starts_over_with_new_settings(model, interrupted, tmp_path):
    store, partial = interrupted
    iv = ablate("blocks.0.mlp.hook_post", units=[1])
    acts = _collect(model, store, restart=True, intervention=iv, dtype=torch.float64)
    assert not partial.exists()
    expected = collect(model, _seqs(), SITES, intervention=iv, dtype=torch.float64, progress=False)
    _check_same(acts, expected)
    assert acts[SITES[0]].dtype == torch.float64


@pytest.mark.parametrize("damage", ["truncated", "empty", "not an object", "bad done", "missing"])
def test_corrupt_checkpoint_is_refused_unless_restart(model, interrupted, damage):
    store, partial = interrupted
    progress = partial / "progress.json"
    text = progress.read_text()
    if damage == "truncated":
        progress.write_text(text[: len(text) // 2])
    elif damage == "empty":
        progress.write_text("")
    elif damage == "not an object":
        progress.write_text("[0, 1]")
    elif damage == "bad done":
        progress.write_text(json.dumps({**json.loads(text), "done": ["0", 1]}))
    else:
        progress.unlink()
    before = snapshot(partial)
    match = "without a checkpoint" if damage == "missing" else r"progress\.json of an interrupted collection is corrupt"
    with pytest.raises(CheckpointError, match=match + ".*restart=True"):
        _collect(model, store)
    assert snapshot(partial) == before
    _check_same(_collect(model, store, restart=True), collect(model, _seqs(), SITES, progress=False))


def test_checkpoint_from_before_a_machine_restart_is_refused_unless_restart(model, interrupted):
    store, partial = interrupted
    progress = partial / "progress.json"
    prog = json.loads(progress.read_text())
    prog["boot_id"], prog["done"] = "another-boot", [0, 1, 2, 3, 4]  # claims rows that may never have been written
    progress.write_text(json.dumps(prog))
    with pytest.raises(CheckpointError, match="machine restart.*restart=True"):
        _collect(model, store)
    assert json.loads(progress.read_text()) == prog
    _check_same(_collect(model, store, restart=True), collect(model, _seqs(), SITES, progress=False))


def test_an_intervention_holding_python_functions_cannot_resume(model, tmp_path, monkeypatch):
    store = tmp_path / "s"
    identity = custom("blocks.0.hook_resid_pre", lambda x, hook: x)
    partial = _interrupt(model, store, monkeypatch, intervention=identity)
    before = snapshot(partial)
    with pytest.raises(CheckpointError, match="holds Python functions.*restart=True"):
        _collect(model, store, intervention=identity)  # the same function: still cannot be checked
    assert snapshot(partial) == before
    acts = _collect(model, store, intervention=identity, restart=True)
    _check_same(acts, collect(model, _seqs(), SITES, progress=False))


def test_a_python_function_intervention_cannot_resume_a_checked_run(model, interrupted):
    store, partial = interrupted
    before = snapshot(partial)
    with pytest.raises(CheckpointError, match="holds Python functions"):
        _collect(model, store, intervention=custom("blocks.0.hook_resid_pre", lambda x, hook: x))
    assert snapshot(partial) == before


def test_restart_never_deletes_files_it_did_not_write(model, interrupted):
    store, partial = interrupted
    (partial / "notes.txt").write_text("mine")
    with pytest.raises(OverwriteError, match=r"notes\.txt"):
        _collect(model, store, restart=True)
    assert (partial / "notes.txt").read_text() == "mine"


def test_a_file_where_the_partial_store_goes_is_refused(model, tmp_path):
    (tmp_path / "s.partial").write_text("mine")
    with pytest.raises(OverwriteError, match="is a file"):
        _collect(model, tmp_path / "s")
    assert (tmp_path / "s.partial").read_text() == "mine"


def test_resume_key_components(model):
    seqs = _seqs()
    tokens = torch.cat(seqs)
    offsets = torch.tensor([0, *torch.cumsum(torch.tensor([len(s) for s in seqs]), 0).tolist()])
    units = {SITES[0]: 16, SITES[1]: 16}
    key = resume.resume_key(model, SITES, units, tokens, offsets, torch.float32, ablate(SITES[0], units=[1]))
    assert set(key) == {"model", "sites", "tokens", "intervention", "dtype"}
    again = resume.resume_key(copy.deepcopy(model), list(SITES), dict(units), tokens.clone(), offsets.clone(),
                              torch.float32, ablate(SITES[0], units=[1]))
    assert again == key  # a copy of everything gives the same key
    assert resume.intervention_key(ablate(SITES[0], units=[2])) != key["intervention"]
    assert resume.intervention_key(custom(SITES[0], lambda x, hook: x)) is None


def test_resume_with_the_same_model_loaded_from_disk(model, interrupted, tmp_path):
    """A saved and reloaded copy of the model is the same model (its config comes back as plain numbers)."""
    from tl_funcnet import models

    store, _ = interrupted
    models.save(model, tmp_path / "m")
    _check_same(_collect(models.load(tmp_path / "m"), store), collect(model, _seqs(), SITES, progress=False))
