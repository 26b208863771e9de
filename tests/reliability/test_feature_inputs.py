"""Bad inputs to the feature packages: collection, evaluation, functional networks, pruning, fingerprints,
patching, steering and SAE features reject them before any forward pass, leaving no hook and no file."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch

from reliability_tally import try_bad_input
from tl_funcnet.fingerprint import compare, fingerprint
from tl_funcnet.fingerprint import transforms as T
from tl_funcnet.funcnet import recurrence
from tl_funcnet.hooks import detach
from tl_testing import make_gpt2_style

NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="session")
def gpt2(gpt2_tiny):
    return gpt2_tiny


@pytest.fixture(scope="session")
def llama(llama_tiny):
    return llama_tiny


def _seqs(n: int = 8, length: int = 12, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 50, (length,), generator=g) for _ in range(n)]


@pytest.fixture(scope="module")
def fitted(gpt2):
    from tl_funcnet.activations import collect
    from tl_funcnet.funcnet import FunctionalNetworks

    return FunctionalNetworks(3, threshold=1.5, max_iter=50).fit(collect(gpt2, _seqs(12), "mlp.hook_post",
                                                                          progress=False))


@pytest.fixture(scope="module")
def acts(gpt2):
    from tl_funcnet.activations import collect

    return collect(gpt2, _seqs(12), "mlp.hook_post", progress=False)


def _collect(m: Any, **kw: Any) -> Callable[[], Any]:
    from tl_funcnet.activations import collect

    texts = kw.pop("texts", _seqs())
    sites = kw.pop("sites", "mlp.hook_post")
    return lambda: collect(m, texts, sites, progress=False, **kw)


COLLECT = {
    "batch_size 0": dict(batch_size=0), "batch_size -1": dict(batch_size=-1), "batch_size 1.5": dict(batch_size=1.5),
    "batch_size '8'": dict(batch_size="8"), "batch_size True": dict(batch_size=True), "max_tokens 0": dict(max_tokens=0),
    "max_tokens 2.5": dict(max_tokens=2.5), "memory budget 0": dict(memory_budget_mb=0),
    "memory budget nan": dict(memory_budget_mb=NAN), "dtype int64": dict(dtype=torch.int64),
    "dtype a string": dict(dtype="float32"), "stop_at_layer a string": dict(stop_at_layer="top"),
    "unknown site": dict(sites="blocks.0.hook_nothing"), "no sites": dict(sites=[]),
    "sites a number": dict(sites=3), "layers out of range": dict(layers=[0, 9]), "layers floats": dict(layers=[0.5]),
    "layers for a full hook name": dict(sites="blocks.0.mlp.hook_post", layers=[0]),
    "token id 50 of 50": dict(texts=[torch.tensor([1, 2, 50])]), "negative token id": dict(texts=[[1, -2, 3]]),
    "float token ids": dict(texts=[torch.tensor([1.0, 2.0])]), "2-D token ids item": dict(texts=[[[1, 2], [3, 4]]]),
    "empty text list": dict(texts=[]), "empty string text": dict(texts=["hello", ""]),
    "texts a number": dict(texts=5), "texts a missing path": dict(texts="/nonexistent/corpus.txt"),
    "intervention not an Intervention": dict(intervention="ablate"),
    "intervention at an unknown site": dict(intervention=detach("blocks.0.nowhere")),
    "restart not a bool": dict(restart="yes"), "max_tokens_per_seq 0": dict(max_tokens_per_seq=0),
}


@pytest.mark.parametrize("name", list(COLLECT))
def test_bad_collection(name, gpt2, user_folder):
    out = try_bad_input(f"collect: {name}", _collect(gpt2, **dict(COLLECT[name])), models=[gpt2], folder=user_folder)
    assert out.clean, out


def test_collection_store_dir_holding_user_files(gpt2, user_folder):
    out = try_bad_input("collect: store_dir holds a user's files", _collect(gpt2, store_dir=user_folder),
                        models=[gpt2], folder=user_folder)
    assert out.clean, out


def test_collection_store_dir_a_file(gpt2, user_folder):
    out = try_bad_input("collect: store_dir is a file", _collect(gpt2, store_dir=user_folder / "thesis.txt"),
                        models=[gpt2], folder=user_folder)
    assert out.clean, out


def _evaluate(m: Any, texts: Any = None, **kw: Any) -> Callable[[], Any]:
    from tl_funcnet.evaluate import evaluate

    return lambda: evaluate(m, _seqs() if texts is None else texts, progress=False, **kw)


EVALUATE = {
    "one-token texts": dict(texts=[[1], [2]]), "batch_size 0": dict(batch_size=0),
    "intervention a string": dict(intervention="mask"), "token id beyond vocabulary": dict(texts=[[1, 2, 99]]),
    "max_tokens_per_seq -1": dict(max_tokens_per_seq=-1),
}


@pytest.mark.parametrize("name", list(EVALUATE))
def test_bad_evaluation(name, gpt2):
    out = try_bad_input(f"evaluate: {name}", _evaluate(gpt2, **dict(EVALUATE[name])), models=[gpt2])
    assert out.clean, out


def test_evaluate_refuses_an_encoder():
    from transformer_lens import HookedEncoder, HookedTransformerConfig

    enc = HookedEncoder(HookedTransformerConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, d_vocab=50,
                                                n_ctx=12, act_fn="gelu", attention_dir="bidirectional"))
    out = try_bad_input("evaluate: an encoder", _evaluate(enc), models=[enc])
    assert out.clean, out


NETWORK_PARAMS = {
    "n_networks 0": dict(n_networks=0), "n_networks -1": dict(n_networks=-1), "n_networks 1.5": dict(n_networks=1.5),
    "n_networks too many": dict(n_networks=500), "threshold 0": dict(threshold=0), "threshold nan": dict(threshold=NAN),
    "threshold a string": dict(threshold="3.6"), "sides three": dict(sides="three"), "scope unknown": dict(scope="x"),
    "window 0": dict(scope="window", window=0), "window beyond the sites": dict(scope="window", window=9),
    "standardize a string": dict(standardize="yes"), "dtype float16": dict(dtype="float16"),
    "fun unknown": dict(fun="tanh"), "max_iter 0": dict(max_iter=0), "tol negative": dict(tol=-1.0),
}


@pytest.mark.parametrize("name", list(NETWORK_PARAMS))
def test_bad_network_settings(name, acts):
    from tl_funcnet.funcnet import FunctionalNetworks

    params = dict(NETWORK_PARAMS[name])
    out = try_bad_input(f"FunctionalNetworks: {name}", lambda: FunctionalNetworks(**params).fit(acts))
    assert out.clean, out


NETWORK_USE = {
    "fit on a tensor": lambda fn, a: type(fn)(3).fit(torch.randn(10, 5)),
    "fit on sites not collected": lambda fn, a: type(fn)(3).fit(a, ["blocks.0.hook_resid_post"]),
    "mode unknown": lambda fn, a: fn.to_intervention("erase"),
    "ids out of range": lambda fn, a: fn.to_intervention("mask", [99]),
    "ids floats": lambda fn, a: fn.to_intervention("mask", [0.5]),
    "ids negative": lambda fn, a: fn.to_intervention("mask", [-1]),
    "control unknown": lambda fn, a: fn.to_intervention("mask", control="nearby"),
    "gain inf": lambda fn, a: fn.to_intervention("amplify", gain=INF),
    "value nan": lambda fn, a: fn.to_intervention("amplify", value=NAN),
    "ablation unknown": lambda fn, a: fn.to_intervention("mask", ablation="median"),
    "time courses kind unknown": lambda fn, a: fn.time_courses(kind="pca"),
    "re-threshold negative": lambda fn, a: fn.with_threshold(-1.0),
    "unfitted use": lambda fn, a: type(fn)(3).to_intervention("mask"),
    "recurrence one split": lambda fn, a: recurrence(a, 1),
    "recurrence similarity unknown": lambda fn, a: recurrence(a, 2, similarity="cosine"),
}


@pytest.mark.parametrize("name", list(NETWORK_USE))
def test_bad_network_use(name, fitted, acts):
    out = try_bad_input(f"networks: {name}", lambda: NETWORK_USE[name](fitted, acts))
    assert out.clean, out


def _plan(m: Any, ratio: Any = 0.25, method: Any = "wanda", **kw: Any) -> Callable[[], Any]:
    from tl_funcnet.pruning import plan_pruning

    kw.setdefault("protect_first", 0)
    kw.setdefault("protect_last", 0)
    texts = kw.pop("texts", _seqs())
    return lambda: plan_pruning(m, ratio, method, texts, **kw)


PRUNING = {
    "ratio 0": dict(ratio=0), "ratio 1": dict(ratio=1), "ratio 1.5": dict(ratio=1.5), "ratio nan": dict(ratio=NAN),
    "ratio a string": dict(ratio="0.2"), "ratio True": dict(ratio=True), "method unknown": dict(method="sparsegpt"),
    "option of another method": dict(n_networks=8), "option unknown": dict(seed=3),
    "fn option unknown": dict(method="fn", n_components=8), "fn n_networks 0": dict(method="fn", n_networks=0),
    "fn too few tokens": dict(method="fn", n_networks=64), "protect_first -1": dict(protect_first=-1),
    "protect layer 9": dict(protect=[9]), "all layers protected": dict(protect_first=2),
    "bias_compensation a string": dict(bias_compensation="yes"), "allocation unknown": dict(allocation="greedy"),
    "texts missing file": dict(texts="/no/such/file.txt"), "max_tokens 1": dict(max_tokens=1),
    "min_keep leaves nothing": dict(ratio=0.9, min_keep=30),
}


@pytest.mark.parametrize("name", list(PRUNING))
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_bad_pruning(arch, name, request):
    model = request.getfixturevalue(arch)
    out = try_bad_input(f"{arch} pruning: {name}", _plan(model, **dict(PRUNING[name])), models=[model])
    assert out.clean, out


def test_pruning_an_attention_only_model():
    model = make_gpt2_style(attn_only=True)
    out = try_bad_input("pruning: attention-only model", _plan(model), models=[model])
    assert out.clean, out


def _fp_pair(m):
    text = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau"
    a = fingerprint(m, [text, text + " phi"], n_networks=3, tokenizer="chars")
    return a, a


FINGERPRINT = {
    "compare n_null 0": lambda m, a, b: compare(a, b, n_null=0),
    "compare n_null -5": lambda m, a, b: compare(a, b, n_null=-5),
    "compare top_m 0": lambda m, a, b: compare(a, b, top_m=0),
    "compare alpha 2": lambda m, a, b: compare(a, b, alpha=2.0),
    "compare thresholds crossed": lambda m, a, b: compare(
        a, b, derived_at=0.3, independent_below=0.6),
    "compare a model": lambda m, a, b: compare(a, m),
    "fingerprint n_networks 0": lambda m, a, b: fingerprint(
        m, ["some text here"], n_networks=0, tokenizer="chars"),
    "fingerprint empty text": lambda m, a, b: fingerprint(
        m, ["   "], tokenizer="chars"),
    "fingerprint too many networks": lambda m, a, b: fingerprint(
        m, ["tiny text"], n_networks=500, tokenizer="chars"),
    "fingerprint threshold nan": lambda m, a, b: fingerprint(
        m, ["some text here"], threshold=NAN, tokenizer="chars"),
    "fingerprint without tokenizer": lambda m, a, b: fingerprint(
        m, ["some text here"], n_networks=2),
    "transform rotate an LN model": lambda m, a, b: T.rotate_residual(m),
    "transform drop layer 9": lambda m, a, b: T.drop_layer(m, 9),
}


@pytest.mark.parametrize("name", list(FINGERPRINT))
def test_bad_fingerprint_use(name, gpt2):
    a, b = _fp_pair(gpt2)
    out = try_bad_input(f"fingerprint: {name}", lambda: FINGERPRINT[name](gpt2, a, b), models=[gpt2])
    assert out.clean, out


def _task(n_pos: int = 8, mismatch: bool = False):
    from tl_funcnet.patching import Task

    clean = torch.stack(_seqs(4, n_pos, 1))
    corrupted = torch.stack(_seqs(4, n_pos + (1 if mismatch else 0), 2))
    return Task("t", clean, corrupted, torch.tensor([1, 2, 3, 4]), torch.tensor([5, 6, 7, 8]))


def _patching():
    from tl_funcnet import patching as P

    return P


PATCHING = {
    "method unknown": lambda m: _patching().run_patching(m, _task(), method="acdc"),
    "rules with exact": lambda m: _patching().run_patching(m, _task(), method="exact", rules="LN"),
    "rule unknown": lambda m: _patching().run_patching(m, _task(), method="relp", rules="XYZ"),
    "node kind unknown": lambda m: _patching().run_patching(m, _task(), nodes="edges"),
    "direction unknown": lambda m: _patching().run_patching(m, _task(), direction="both"),
    "max_rows below the prompts": lambda m: _patching().run_patching(m, _task(), max_rows=2),
    "task not a Task": lambda m: _patching().run_patching(m, "ioi"),
    "clean and corrupted of different length": lambda m: _patching().exact_patch(
        m, _task().clean, _task(mismatch=True).corrupted, _patching().node_grid(m, "mlp", 8), _task().metric()),
    "float token ids": lambda m: _patching().exact_patch(m, _task().clean.float(), _task().corrupted,
                                                         _patching().node_grid(m, "mlp", 8), _task().metric()),
    "node grid n_pos 0": lambda m: _patching().node_grid(m, "mlp", 0),
    "node grid layer 9": lambda m: _patching().node_grid(m, "resid", 8, layers=[9]),
    "node grid neuron 999": lambda m: _patching().node_grid(m, "neuron", 8, neurons=[999]),
    "node position beyond the prompt": lambda m: _patching().run_patching(
        m, _task(), nodes=_patching().units_nodes("blocks.0.hook_resid_post", [[1]], pos=20)),
    "unit group empty": lambda m: _patching().units_nodes("blocks.0.hook_resid_post", [[]]),
    "unit group of floats": lambda m: _patching().units_nodes("blocks.0.hook_resid_post", [[1.5]]),
    "metric returning a scalar": lambda m: _patching().run_patching(m, _task(), metric=lambda logits: logits.sum()),
    "answers and distractors of different count": lambda m: _patching().logit_diff([1, 2], [3]),
    "normalized with equal baselines": lambda m: _patching().Normalized(lambda x: x, 1.0, 1.0),
    "task n_pairs 0": lambda m: _patching().load_task("ioi", m, n_pairs=0),
}


@pytest.mark.parametrize("name", list(PATCHING))
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_bad_patching(arch, name, request):
    model = request.getfixturevalue(arch)
    out = try_bad_input(f"{arch} patching: {name}", lambda: PATCHING[name](model), models=[model])
    assert out.clean, out


def _vector(site: str = "blocks.1.hook_resid_post"):
    from tl_funcnet.steering import SteeringVector

    return SteeringVector(torch.ones(16), site)


def _steering():
    from tl_funcnet import steering as S

    return S


POS, NEG = [[1, 2, 3], [4, 5, 6]], [[7, 8, 9], [10, 11, 12]]
STEERING = {
    "vector with nan": lambda m: _steering().SteeringVector(torch.tensor([1.0, NAN]), "blocks.0.hook_resid_post"),
    "vector 2-D": lambda m: _steering().SteeringVector(torch.ones(2, 16), "blocks.0.hook_resid_post"),
    "scale inf": lambda m: _vector().to_intervention(INF),
    "pos all": lambda m: _vector().to_intervention(2.0, "all"),
    "pos unknown mode": lambda m: _vector().to_intervention(2.0, "middle"),
    "layers empty": lambda m: _vector().to_intervention(2.0, layers=[]),
    "layers floats": lambda m: _vector().to_intervention(2.0, layers=[0.5]),
    "layers beyond the model": lambda m: _vector().to_intervention(2.0, layers=[9], model=m),
    "normalize a string": lambda m: _vector().to_intervention(2.0, normalize="yes"),
    "applied at a site of another width": lambda m: _vector("blocks.1.mlp.hook_post").to_intervention(1.0, model=m),
    "mean difference over several sites": lambda m: _steering().mean_difference(m, POS, NEG, "hook_resid_post"),
    "mean difference unbalanced pairs": lambda m: _steering().mean_difference(m, POS, NEG[:1],
                                                                              "blocks.0.hook_resid_post"),
    "mean difference empty set": lambda m: _steering().mean_difference(m, [], NEG, "blocks.0.hook_resid_post"),
    "mean difference a string set": lambda m: _steering().mean_difference(m, "good", NEG, "blocks.0.hook_resid_post"),
    "mean difference reduce unknown": lambda m: _steering().mean_difference(m, POS, NEG, "blocks.0.hook_resid_post",
                                                                            reduce="max"),
    "pca of one pair": lambda m: _steering().pca_direction(m, POS[:1], NEG[:1], "blocks.0.hook_resid_post"),
    "entropy weighting one example": lambda m: _steering().entropy_weighted(m, POS[:1], "blocks.0.hook_resid_post"),
    "entropy weighting negative entropies": lambda m: _steering().entropy_weighted(
        m, POS, "blocks.0.hook_resid_post", entropies=[-1.0, 1.0]),
    "generate max_new_tokens 0": lambda m: _steering().generate(m, torch.tensor([[1, 2]]), max_new_tokens=0,
                                                                return_tokens=True),
    "generate float prompt": lambda m: _steering().generate(m, torch.tensor([[1.0, 2.0]]), return_tokens=True),
    "generate prompt beyond vocabulary": lambda m: _steering().generate(m, torch.tensor([[1, 99]]),
                                                                        return_tokens=True),
    "generate without tokenizer to decode": lambda m: _steering().generate(m, torch.tensor([[1, 2]])),
    "generate steering a string": lambda m: _steering().generate(m, torch.tensor([[1, 2]]), "happy",
                                                                 return_tokens=True),
    "sweep no vectors": lambda m: _steering().sweep(m, [], [1.0], POS, [1], [2], neutral=_seqs(2)),
    "sweep pos unknown": lambda m: _steering().sweep(m, [_vector()], [1.0], POS, [1], [2], pos="first",
                                                     neutral=_seqs(2)),
    "sweep target word beyond vocabulary": lambda m: _steering().sweep(m, [_vector()], [1.0], POS, [99], [2],
                                                                       neutral=_seqs(2)),
    "from network out of range": lambda m: _steering().from_network(None, 0),
}


@pytest.mark.parametrize("name", list(STEERING))
def test_bad_steering(name, gpt2):
    out = try_bad_input(f"steering: {name}", lambda: STEERING[name](gpt2), models=[gpt2])
    assert out.clean, out


def _sae():
    from sae_lens import SAE, StandardSAEConfig

    sae = SAE.from_dict(StandardSAEConfig(d_in=16, d_sae=24, device="cpu").to_dict())
    sae.cfg.metadata.hook_name = "blocks.0.hook_resid_post"
    return sae


def _sae_api():
    from tl_funcnet import sae as S

    return S


SAE = {
    "ablate feature 24 of 24": lambda m: _sae_api().ablate_features(_sae(), [24]),
    "ablate feature -1": lambda m: _sae_api().ablate_features(_sae(), [-1]),
    "ablate feature 1.5": lambda m: _sae_api().ablate_features(_sae(), [1.5]),
    "set values nan": lambda m: _sae_api().set_features(_sae(), [1], NAN),
    "set values of wrong count": lambda m: _sae_api().set_features(_sae(), [1, 2], [1.0, 2.0, 3.0]),
    "clamp min > max": lambda m: _sae_api().clamp_features(_sae(), [1], min=2.0, max=1.0),
    "clamp without bounds": lambda m: _sae_api().clamp_features(_sae(), [1]),
    "edit kind unknown": lambda m: _sae_api().edit_features(_sae(), [{"kind": "erase", "features": [1]}]),
    "edit unknown key": lambda m: _sae_api().edit_features(_sae(), [{"kind": "ablate", "features": [1], "x": 1}]),
    "edits not a list": lambda m: _sae_api().edit_features(_sae(), {"kind": "ablate"}),
    "not an SAE": lambda m: _sae_api().splice(object()),
    "SAE at a site of another width": lambda m: _apply(m, _sae_api().splice(_sae(), site="blocks.0.mlp.hook_post")),
    "train unknown SAE option": lambda m: _sae_api().train_sae(m, "blocks.0.hook_resid_post", _seqs(),
                                                              no_such_option=1),
    "train unknown architecture": lambda m: _sae_api().train_sae(m, "blocks.0.hook_resid_post", _seqs(),
                                                                architecture="mystery"),
    "train on a per-head site": lambda m: _sae_api().train_sae(m, "blocks.0.attn.hook_z", _seqs()),
    "train k 0": lambda m: _sae_api().train_sae(m, "blocks.0.hook_resid_post", _seqs(), k=0),
    "load a folder without cfg.json": lambda m: _sae_api().load_sae("/nonexistent/sae"),
}


def _apply(model, iv):
    with iv.applied(model):
        model(torch.zeros(1, 4, dtype=torch.long))


@pytest.mark.parametrize("name", list(SAE))
def test_bad_sae_use(name, gpt2):
    out = try_bad_input(f"sae: {name}", lambda: SAE[name](gpt2), models=[gpt2])
    assert out.clean, out
