"""executors.fan_out and ModelRef: chunk order, one retry, a clear report, and references that load once."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import pickle

import pytest
import torch

from tl_funcnet.errors import ChunkError, FuncnetError
from tl_funcnet.executors import Chunk, RayExecutor, fan_out
from tl_funcnet.executors.fanout import model_ref, spans
from tl_funcnet.models import load, save
from tl_funcnet.models.ref import ModelRef, using


def _double(model, *, x):
    return 2 * x


def _flaky(model, *, x, marker):
    """Fails the first time it runs for ``marker`` (a file), then succeeds."""
    import pathlib

    flag = pathlib.Path(marker)
    if not flag.exists():
        flag.write_text("failed once")
        raise RuntimeError("transient failure")
    return x


def _always_fails(model, *, x):
    raise RuntimeError(f"chunk {x} cannot be computed")


def _dies(model, *, x):
    import os

    os._exit(3)


def _n_params(model, *, scale):
    return scale * sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    from tl_testing import make_gpt2_style

    folder = tmp_path_factory.mktemp("ref") / "tiny"
    save(make_gpt2_style().eval(), folder)
    return folder


def test_results_come_back_in_chunk_order_whatever_the_workers():
    chunks = [Chunk(f"x={i}", {"x": i}) for i in range(17)]
    want = [2 * i for i in range(17)]
    for workers in (1, 3, 8):
        with cf.ThreadPoolExecutor(workers) as ex:
            assert fan_out(ex, _double, chunks) == want


def test_a_chunk_that_fails_once_is_retried(tmp_path):
    chunks = [Chunk("a", {"x": 1, "marker": str(tmp_path / "a")}), Chunk("b", {"x": 2, "marker": str(tmp_path / "b")})]
    with cf.ThreadPoolExecutor(2) as ex:
        assert fan_out(ex, _flaky, chunks) == [1, 2]
    assert (tmp_path / "a").exists() and (tmp_path / "b").exists()


def test_a_chunk_that_fails_twice_is_reported_with_its_parameters():
    chunks = [Chunk("first", {"x": 0}), Chunk("the bad one", {"x": list(range(50))})]
    with cf.ThreadPoolExecutor(2) as ex, pytest.raises(ChunkError) as e:
        fan_out(ex, _always_fails, chunks, what="my sweep")
    msg = str(e.value)
    assert "my sweep: chunk 1 of 2 (first)" in msg and "failed twice" in msg and "x=0" in msg
    assert isinstance(e.value, FuncnetError) and "No partial results" in msg


def test_a_dead_worker_is_reported_not_hung():
    ctx = mp.get_context("fork")
    with cf.ProcessPoolExecutor(1, mp_context=ctx) as ex, pytest.raises(ChunkError, match="chunk 1 of 1 .*x=5"):
        fan_out(ex, _dies, [Chunk("dies", {"x": 5})])


@pytest.mark.parametrize("bad", [None, 3, "dask", cf.ThreadPoolExecutor, object()])
def test_anything_but_an_executor_is_refused(bad):
    with pytest.raises(FuncnetError, match="concurrent.futures.Executor"):
        fan_out(bad, _double, [Chunk("a", {"x": 1})])


def test_spans_cover_every_item_once():
    assert [list(s) for s in spans(7, 3)] == [[0, 1, 2], [3, 4, 5], [6]]
    assert spans(0, 4) == []


def test_a_model_ref_pickles_hashes_and_loads_once(saved_tiny):
    ref = ModelRef(saved_tiny)
    again = pickle.loads(pickle.dumps(ref))
    assert again == ref and hash(again) == hash(ref) and {ref: 1}[again] == 1
    assert ModelRef(saved_tiny, dtype=torch.float64) != ref
    assert ref.load() is again.load()  # one copy per process
    with cf.ThreadPoolExecutor(2) as ex:
        out = fan_out(ex, _n_params, [Chunk(str(s), {"scale": s}) for s in (1, 2, 3)], ref=ref)
    n = sum(p.numel() for p in ref.load().parameters())
    assert out == [n, 2 * n, 3 * n]


def test_a_loaded_model_gives_its_reference_pinned_to_its_weights(saved_tiny):
    model = load(saved_tiny)
    ref = model_ref(model)
    assert ref.spec == str(saved_tiny) and ref.digest
    with torch.no_grad():
        model.blocks[0].mlp.W_out.add_(1.0)  # an in-place edit since loading
    edited = model_ref(model)
    assert edited.digest != ref.digest
    with cf.ThreadPoolExecutor(1) as ex, pytest.raises(ChunkError, match="loads a different model"):
        fan_out(ex, _n_params, [Chunk("edited", {"scale": 1})], ref=edited)


def test_models_that_workers_cannot_load_are_refused(tiny_model, tmp_path):
    with pytest.raises(FuncnetError, match="not loaded by tl_funcnet.models.load"):
        model_ref(tiny_model)
    with pytest.raises(FuncnetError, match="unknown model"):
        model_ref(ModelRef("no-such-model-anywhere"))
    for bad in (None, 3, tiny_model):
        with pytest.raises(FuncnetError, match="model name or saved-model folder"):
            ModelRef(bad)
    with pytest.raises(FuncnetError, match="dtype"):
        ModelRef("smollm2-135m", dtype="float32")
    gone = ModelRef(tmp_path / "gone")  # resolves nowhere on this worker
    with cf.ThreadPoolExecutor(1) as ex, pytest.raises(ChunkError, match="chunk 1 of 1"):
        fan_out(ex, _n_params, [Chunk("gone", {"scale": 1})], ref=gone)
    with pytest.raises(FuncnetError):
        with using(None):
            pass


def test_ray_executor_needs_ray_initialised():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("Ray is running in this process")
    with pytest.raises(FuncnetError, match="ray.init"):
        RayExecutor()


def test_nothing_imports_dask_or_ray_until_an_executor_is_made():
    import subprocess
    import sys

    code = ("import sys, tl_funcnet.executors, tl_funcnet.fingerprint, tl_funcnet.circuits, tl_funcnet.patching, "
            "tl_funcnet.pruning, tl_funcnet.steering; print(sorted(m for m in ('ray', 'dask', 'distributed') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
