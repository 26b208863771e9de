"""Sweeps on real distributed engines (a Dask local cluster of 2 single-threaded process workers; Ray when it
is installed) give exactly the in-process numbers: the in-process reference runs with one torch thread too,
since a different thread count changes float rounding, not the method."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from tl_funcnet.circuits import Graph, edge_scores, exact_edge_scores, faithfulness_curve
from tl_funcnet.errors import ChunkError
from tl_funcnet.executors import Chunk, fan_out
from tl_funcnet.models import load, save
from tl_funcnet.models.ref import ModelRef
from tl_funcnet.patching import exact_patch, logit_diff, node_grid
from tl_funcnet.pruning import sweep as pruning_sweep
from tl_funcnet.steering import SteeringVector
from tl_funcnet.steering import sweep as steering_sweep

METRIC = logit_diff([1, 2, 3], [4, 5, 6])
SEQS = [torch.randint(0, 50, (12,), generator=torch.Generator().manual_seed(s)).tolist() for s in range(24)]


@contextmanager
def one_thread():
    """The workers' torch thread count, for the in-process reference."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    from tl_testing import make_llama_style

    folder = tmp_path_factory.mktemp("engines") / "tiny-llama"
    save(make_llama_style(seed=3).eval(), folder)
    return ModelRef(folder)


@contextmanager
def environ_restored():
    """Dask's LocalCluster and ray.init set OMP_NUM_THREADS=1 and more in the calling process's environment (for
    their workers) and leave them there; every later subprocess of the test run (notebook kernels, benchmarks)
    would inherit them, so the fixtures put the environment back."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
def dask_executor():
    distributed = pytest.importorskip("distributed")
    with environ_restored():
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      dashboard_address=None) as cl, distributed.Client(cl) as client:
            yield client.get_executor()


@pytest.fixture(scope="module")
def ray_executor():
    ray = pytest.importorskip("ray")
    from tl_funcnet.executors import RayExecutor

    with environ_restored():
        # Ray's workers import this module's task functions by name: give them the tests folder on their path
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).parent),
                                                               os.environ.get("PYTHONPATH")) if p)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            yield RayExecutor()
        finally:
            ray.shutdown()


@pytest.fixture(scope="module", params=["dask", "ray"])
def executor(request):
    return request.getfixturevalue(f"{request.param}_executor")


@pytest.fixture(scope="module")
def pair():
    g = torch.Generator().manual_seed(9)
    clean = torch.randint(0, 50, (3, 7), generator=g)
    corrupted = clean.clone()
    corrupted[:, 2] = (clean[:, 2] + 17) % 50
    return clean, corrupted


def test_exact_node_patching_matches_in_process(executor, ref, pair):
    model = ref.load()
    nodes = node_grid(model, "head_pos", 7)
    with one_thread():
        want = exact_patch(model, *pair, nodes, METRIC, max_rows=9)
    got = exact_patch(ref, *pair, nodes, METRIC, max_rows=9, executor=executor, chunk_size=5)
    assert torch.equal(got.per_prompt, want.per_prompt) and got.baseline == want.baseline
    assert got.info["n_run"] == want.info["n_run"] < len(nodes)  # positions before the change are skipped


def test_exact_edge_patching_and_the_faithfulness_curve_match_in_process(executor, ref, pair):
    model = load(ref.spec)  # a loaded model: its reference is derived and pinned
    graph = Graph.from_model(model)
    with one_thread():
        want = exact_edge_scores(model, graph, *pair, METRIC, max_rows=16)
        curve = faithfulness_curve(model, edge_scores(model, graph, *pair, METRIC), pair[0], METRIC,
                                   corrupted=pair[1], max_rows=8)
    got = exact_edge_scores(model, graph, *pair, METRIC, max_rows=16, executor=executor)
    assert torch.equal(got.scores, want.scores) and got.info["chunks"] > 1
    fanned = faithfulness_curve(model, edge_scores(model, graph, *pair, METRIC), pair[0], METRIC,
                                corrupted=pair[1], max_rows=8, executor=executor)
    assert fanned.faithfulness == curve.faithfulness and fanned.metric == curve.metric


def test_a_pruning_grid_matches_in_process(executor, ref):
    kw = dict(methods=["magnitude", "wanda", "random"], ratios=[0.25, 0.5], texts=SEQS[:16], eval_texts=SEQS[16:],
              protect_first=0, protect_last=0, max_tokens=None)
    with one_thread():
        want = pruning_sweep(ref.load(), **kw)
    got = pruning_sweep(ref, executor=executor, **kw)
    assert got.equals(want) and list(got["method"].unique()) == ["dense", "magnitude", "wanda", "random"]


def test_a_steering_grid_matches_in_process(executor, ref):
    model = ref.load()
    vectors = {f"L{l}": SteeringVector(torch.randn(16, generator=torch.Generator().manual_seed(l)),
                                       f"blocks.{l}.hook_resid_post") for l in range(2)}
    kw = dict(scales=[1.0, 4.0], test_prompts=SEQS[:3], positive_words=[7], negative_words=[3], neutral=SEQS[3:6])
    with one_thread():
        want = steering_sweep(model, vectors, **kw)
    got = steering_sweep(ref, vectors, executor=executor, **kw)
    assert got.equals(want)


def _flaky(model, *, marker):
    import pathlib

    if not pathlib.Path(marker).exists():
        pathlib.Path(marker).write_text("once")
        raise RuntimeError("a transient failure")
    return sum(p.numel() for p in model.parameters())


def test_a_failing_chunk_is_retried_then_reported(executor, ref, tmp_path):
    n = sum(p.numel() for p in ref.load().parameters())
    assert fan_out(executor, _flaky, [Chunk("flaky", {"marker": str(tmp_path / "m")})], ref=ref) == [n]
    gone = ModelRef(tmp_path / "nothing-here")
    with pytest.raises(ChunkError, match="chunk 1 of 1 .*nothing-here"):
        fan_out(executor, _flaky, [Chunk("unloadable", {"marker": str(tmp_path / "m")})], ref=gone)


def test_a_fingerprint_zoo_and_its_registry_ranking_match_in_process(executor, ref, tmp_path_factory):
    from tl_testing import make_gpt2_style

    from tl_funcnet.fingerprint import FingerprintRegistry, fingerprint_models
    from tl_funcnet.fingerprint.transforms import permute_mlp

    folder = tmp_path_factory.mktemp("zoo")
    base = load(ref.spec)
    save(permute_mlp(base, random_state=1), folder / "permuted")
    save(make_gpt2_style(seed=7).eval(), folder / "other")
    zoo = {"base": ref, "permuted": ModelRef(folder / "permuted"), "other": ModelRef(folder / "other")}
    texts = ["alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau"] * 2
    kw = dict(n_networks=4, tokenizer="chars", max_tokens_per_text=12)
    with one_thread():
        want = fingerprint_models(zoo, texts, **kw)
    got = fingerprint_models(zoo, texts, executor=executor, **kw)
    assert list(got) == list(want) and all(torch.equal(torch.cat(got[k].series), torch.cat(want[k].series))
                                           for k in want)
    registry = FingerprintRegistry.create(folder / "registry")
    registry.add_many(got)
    ranked = registry.rank(got["permuted"], executor=executor, n_null=20, chunk_size=1)
    local = registry.rank(got["permuted"], n_null=20)
    assert [(n, c.score, c.p_value) for n, c in ranked.rows] == [(n, c.score, c.p_value) for n, c in local.rows]
    scores = {name: c.score for name, c in ranked.rows}
    assert scores["permuted"] >= max(scores.values()) - 1e-9  # a fingerprint matches itself best
