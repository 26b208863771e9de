"""The sections of the demo report, in the order they run; each adds to the report and returns its numbers.

Every section reads and writes one :class:`DemoState` (the model, the report, what earlier sections made).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..dashboards import (Report, bars, curves, feature_cards, network_cards, network_sizes, patching_heatmap,
                          pick_features)


@dataclass(frozen=True)
class Sizes:
    """How much each section runs (``FULL`` for the demo, ``QUICK`` for smoke runs and the tests)."""

    fit_tokens: int = 2048  # calibration tokens for the functional networks
    contexts: int = 8  # top-activating contexts per card
    card_eval_texts: int = 2  # held-out passages (~64 tokens) for each network's masking effect
    eval_texts: int = 8  # held-out passages for the masking section
    new_tokens: int = 10  # greedy tokens per steering sample
    patch_pairs: int = 4
    circuit_pairs: int = 3
    ig_steps: int = 3
    prune_tokens: int = 1024
    prune_ratios: tuple[float, ...] = (0.2, 0.4)
    prune_eval_texts: int = 4
    sae_tokens: int = 16_384
    sae_texts: int = 24  # calibration texts whose features the cards rank
    sae_cards: int = 6
    fingerprint_texts: int = 4


FULL = Sizes()
QUICK = Sizes(fit_tokens=512, contexts=5, card_eval_texts=1, eval_texts=2, new_tokens=4, patch_pairs=2,
              circuit_pairs=1, ig_steps=2, prune_tokens=256, prune_ratios=(0.3,), prune_eval_texts=2,
              sae_tokens=4096, sae_texts=8, sae_cards=3, fingerprint_texts=2)


@dataclass
class DemoState:
    """What the sections share."""

    model: Any
    model_name: str
    report: Report
    out: Path
    size: Sizes
    log: Callable[[str], None]
    calibration: list[Any] = field(default_factory=list)
    evaluation: list[Any] = field(default_factory=list)
    acts: Any = None
    networks: Any = None
    mask_effects: dict[int, tuple[float, float]] = field(default_factory=dict)


def networks_section(st: DemoState) -> dict[str, Any]:
    """Collect MLP neuron activity, fit functional networks with ICA, and show a card for each."""
    from ..activations import collect
    from ..funcnet import FunctionalNetworks
    from ..hooks import resolve_sites

    sites = resolve_sites(st.model, "mlp.hook_post")
    n_tokens = st.size.fit_tokens
    st.log(f"collecting {len(sites)} x {st.model.cfg.d_mlp} MLP neurons over {n_tokens} calibration tokens; "
           f"fitting 10 networks with ICA")
    st.acts = collect(st.model, st.calibration, sites, max_tokens=n_tokens, max_tokens_per_seq=128, progress=False)
    t = time.perf_counter()
    fn = st.networks = FunctionalNetworks(10, threshold=3.6, sides="one").fit(st.acts)
    fit_s = time.perf_counter() - t
    fn.save(st.out / "networks")
    summary = fn.summary()
    text = _held_out_text(st)
    st.log("network cards: top contexts, activity over a held-out text, loss of masking each network alone")
    # the loss effects of 21 masks are what cards cost: measured on two passages of ~64 tokens
    cards = network_cards(st.model, fn, st.acts, text=text, k=st.size.contexts, window=5,
                          eval_texts=[_cut(t, 280) for t in st.evaluation[:st.size.card_eval_texts]])
    st.mask_effects = {i: (c.numbers["loss_change"], c.numbers["loss_change_random"])
                       for i, c in zip(fn.network_ids(), cards)}
    s = st.report.section(TITLES["networks"],
                          f"{fn.n_networks_total} networks from one ICA over {st.acts.n_samples} tokens x "
                          f"{st.acts.n_units} MLP neurons of every layer ({fit_s:.1f} s). A neuron joins a network "
                          f"when its z-scored loading reaches 3.6: {summary['n_units']} key units "
                          f"({100 * summary['fraction']:.2f}% of all neurons).")
    s.figure(network_sizes(fn))
    s.text("Each card: the network's key units per layer; its activity (mean z-scored activation of its key "
           "units) over a held-out text, each token coloured (orange: above the calibration mean, blue: below; "
           "hover for the value); the calibration contexts where it peaks (outlined token); and the loss change "
           "on held-out text when only this network is masked, beside random units of the same number per layer.")
    s.cards(cards)
    return {"n_tokens": st.acts.n_samples, "n_networks": fn.n_networks_total, "ica_fit_s": fit_s,
            "n_units": summary["n_units"], "fraction": summary["fraction"], "network_sizes": summary["network_sizes"],
            "per_layer_counts": summary["per_site"],
            "mask_effects": {str(i): {"network": a, "random_per_layer": b} for i, (a, b) in st.mask_effects.items()}}


def _cut(text: Any, n_chars: int) -> str:
    text = str(text)
    cut = text[:n_chars]
    return cut[: cut.rfind(" ")] if " " in cut and len(text) > n_chars else cut


def _held_out_text(st: DemoState) -> str:
    return _cut(st.evaluation[-1], 360)


def masking_section(st: DemoState) -> dict[str, Any]:
    """Mask every network's key units at once against controls of the same size."""
    from ..evaluate import evaluate

    fn = st.networks
    texts = st.evaluation[:st.size.eval_texts]
    base = evaluate(st.model, texts, compare_to_base=False, progress=False)
    conditions = [("functional networks", fn.to_intervention("mask"))]
    conditions += [(f"random per layer (random_state {r})", fn.to_intervention("mask", control="per_layer",
                                                                                random_state=r)) for r in (0, 1)]
    conditions += [("random over all layers", fn.to_intervention("mask", control="global")),
                   ("top-variance units per layer", fn.to_intervention("mask", control="top_variance"))]
    n_units = fn.summary()["n_units"]
    rows = [{"condition": "no mask", "units": 0, "loss": base.loss, "perplexity": base.perplexity}]
    for name, iv in conditions:
        r = evaluate(st.model, texts, iv, compare_to_base=False, progress=False)
        rows.append({"condition": name, "units": n_units, "loss": r.loss, "perplexity": r.perplexity})
        st.log(f"      {name:36s} loss {r.loss:.3f}")
    rand = [r["loss"] for r in rows if r["condition"].startswith("random per layer")]
    ratio = (rows[1]["loss"] - base.loss) / max(1e-9, sum(rand) / len(rand) - base.loss)
    s = st.report.section(TITLES["masking"],
                          f"Next-token loss on {len(texts)} held-out passages when the {n_units} key units of all "
                          f"networks are zeroed, beside controls that zero as many units: random units with the same "
                          f"count per layer (two draws), random units anywhere, and the units of highest variance "
                          f"per layer (the strongest control: busy neurons).")
    s.figure(bars({r["condition"]: r["loss"] for r in rows[1:]}, title="Held-out loss under each mask",
                  x_title="next-token loss (nats)", reference=base.loss, reference_name="no mask"))
    s.table(rows)
    s.text(f"The networks' mask raises the loss {ratio:.1f}x as much as the per-layer random masks. "
           + ("It stays below the top-variance control: what the networks hold is largely what busy neurons hold."
              if rows[1]["loss"] < rows[-1]["loss"] else
              "It also exceeds the top-variance control, so activity level alone does not explain it."))
    return {"rows": rows, "ratio_vs_random_per_layer": ratio, "baseline_loss": base.loss}


def steering_section(st: DemoState) -> dict[str, Any]:
    """A sentiment steering vector, its samples, and the same vector stacked with a network mask."""
    from ..steering import generate, mean_difference
    from ..steering.evaluation import prompt_logprobs, target_metrics, word_ids
    from ..steering.prompts import load_pairs

    pairs = load_pairs("sentiment")
    layer, scale, n_new = 15, 1.0, st.size.new_tokens
    site = f"blocks.{layer}.hook_resid_post"
    v = mean_difference(st.model, pairs.positive, pairs.negative, site)
    prompts = list(pairs.test_prompts[:1])
    samples = []
    for p in prompts:
        row = {"prompt": p}
        for label, s in (("unsteered", 0.0), ("toward negative", -scale), ("toward positive", scale)):
            row[label] = generate(st.model, p, v if s else None, scale=s or 1.0, max_new_tokens=n_new)
        samples.append(row)
    quiet = min(st.mask_effects, key=lambda i: abs(st.mask_effects[i][0]))  # the mask that hurts the loss least
    mask = st.networks.to_intervention("mask", ids=[quiet])
    steer = v.to_intervention(-scale)
    composed = mask + steer
    pos_ids, neg_ids = word_ids(st.model, pairs.positive_words), word_ids(st.model, pairs.negative_words)
    rows = []
    for name, iv in (("none", None), (f"mask network {quiet}", mask), ("steer toward negative", steer),
                     (f"mask network {quiet} + steer toward negative", composed)):
        m = target_metrics(prompt_logprobs(st.model, list(pairs.test_prompts), iv), pos_ids, neg_ids)
        rows.append({"intervention": name, "P(positive words)": m["pos_mass"], "P(negative words)": m["neg_mass"],
                     "log-odds positive vs negative": m["log_odds"]})
    text = generate(st.model, prompts[0], composed, max_new_tokens=n_new)
    s = st.report.section(TITLES["steering"],
                          f"A mean-difference (CAA-style) sentiment vector at {site}, from {len(pairs)} shipped "
                          f"positive/negative sentence pairs, added at every position with scale {scale:g}; "
                          f"{n_new} greedy tokens.")
    s.table(samples)
    s.text(f"Interventions stack: below, the negative vector is chained with a mask of network {quiet} (the network "
           f"whose mask changes the held-out loss least, {st.mask_effects[quiet][0]:+.3f}). Probabilities are of "
           f"the next token after the {len(pairs.test_prompts)} test prompts, summed over the shipped "
           f"positive words {list(pairs.positive_words)} and negative words {list(pairs.negative_words)}.")
    s.code(composed.describe())
    s.table(rows)
    s.text(f"Composed, on {prompts[0]!r}: {text!r}")
    return {"site": site, "scale": scale, "samples": samples, "composed": rows, "composed_text": text,
            "masked_network": quiet}


def patching_section(st: DemoState) -> dict[str, Any]:
    """Exact activation patching beside its attribution estimates (AtP, RelP) on IOI, per MLP output and token."""
    from ..patching import correlation, load_task, run_patching

    task = load_task("ioi", st.model, n_pairs=st.size.patch_pairs)
    results = {m: run_patching(st.model, task, method=m, nodes="mlp") for m in ("exact", "atp", "relp")}
    s = st.report.section(TITLES["patching"],
                          f"{len(task)} indirect-object prompt pairs (clean: {task.prompts[0][0]!r}; corrupted: "
                          f"{task.prompts[0][1]!r}). Each cell is the change of the logit difference (right name "
                          f"minus wrong name) when one MLP output at one token is patched from the corrupted run "
                          f"into the clean one: measured by exact patching, estimated by AtP and RelP. Hover a cell "
                          f"for every token the prompts hold at that position.")
    rows = []
    for m, r in results.items():
        s.figure(patching_heatmap(r, model=st.model, tokens=task.clean, title=f"{m}: MLP outputs, IOI"))
        c = correlation(r, results["exact"]) if m != "exact" else {"pearson": 1.0, "spearman": 1.0}
        rows.append({"method": m, "seconds": r.seconds, "Pearson vs exact": c["pearson"],
                     "Spearman vs exact": c["spearman"], "top node": r.top(1)[0][0]})
    s.table(rows)
    return {"n_pairs": len(task), "methods": rows}


def circuit_section(st: DemoState) -> dict[str, Any]:
    """An edge-level IOI circuit from EAP-IG, its faithfulness beside random circuits, and its drawing."""
    from ..circuits import Graph, ablated_values, edge_scores, faithfulness, plot_circuit
    from ..circuits.circuit import Circuit
    from ..patching import load_task

    task = load_task("ioi", st.model, n_pairs=st.size.circuit_pairs)
    graph = Graph.from_model(st.model)
    metric = task.metric()
    ig = edge_scores(st.model, graph, task.clean, task.corrupted, metric, method="eap-ig-inputs",
                      steps=st.size.ig_steps)
    ablated = ablated_values(st.model, graph, "patching", corrupted=task.corrupted)
    n = 300
    best = ig.circuit(n)
    g = torch.Generator().manual_seed(0)
    randoms = []
    for _ in range(2):
        mask = torch.zeros(graph.n_edges, dtype=torch.bool)
        mask[torch.randperm(graph.n_edges, generator=g)[:n]] = True
        randoms.append(Circuit(graph, mask))
    f = faithfulness(st.model, [best, *randoms], task.clean, metric, ablated=ablated)
    s = st.report.section(TITLES["circuit"],
                          f"EAP-IG (integrated gradients over the inputs, {st.size.ig_steps} steps) scores all {graph.n_edges:,} edges "
                          f"of the model's graph on {len(task)} IOI pairs. The {n} best edges, run as an "
                          f"intervention with every other edge patched from the corrupted prompt, keep "
                          f"{f[0]:.1%} of the model's logit difference (faithfulness); {n} random edges keep "
                          f"{f[1]:.1%} and {f[2]:.1%}.")
    s.figure(plot_circuit(ig.circuit(40), ig, title="IOI: the 40 best EAP-IG edges, pruned to input->logits paths"))
    return {"n_edges_graph": graph.n_edges, "circuit_edges": n, "faithfulness": f[0], "random_faithfulness": f[1:]}


def pruning_section(st: DemoState) -> dict[str, Any]:
    """Soft pruning of MLP neurons: held-out perplexity against the fraction pruned, per method."""
    from ..evaluate import evaluate
    from ..pruning import Calibration, plan_from_scores, score

    cal = Calibration.from_texts(st.model, st.calibration, max_tokens=st.size.prune_tokens)
    ratios = st.size.prune_ratios
    texts = st.evaluation[:st.size.prune_eval_texts]
    base = evaluate(st.model, texts, compare_to_base=False, progress=False).perplexity
    series: dict[str, list[tuple[float, float]]] = {}
    # fn with 32 CanICA components and one restart per layer (the paper: 128 and 10) keeps the demo quick
    options = {"fn": {"n_networks": 32, "n_restarts": 1}, "wanda": {}}
    for method, opts in options.items():
        sc = score(st.model, cal, method, **opts)
        series[method] = [(0.0, base)]
        for r in ratios:
            iv = plan_from_scores(st.model, sc, r, method).to_intervention(bias_compensation=False)
            series[method].append((r, evaluate(st.model, texts, iv, compare_to_base=False, progress=False).perplexity))
        st.log(f"      {method:10s} " + " ".join(f"{r:.0%}: {p:.1f}" for r, p in series[method][1:]))
    s = st.report.section(TITLES["pruning"],
                          f"Soft pruning (pruned neurons zeroed, no bias compensation) of "
                          f"{', '.join(f'{r:.0%}' for r in ratios)} of the MLP neurons of the unprotected layers, scored on {cal.n_tokens} calibration tokens: "
                          f"fn keeps the key neurons of functional networks (CanICA with 32 components per layer, "
                          f"one restart), wanda (the baseline) scores |W| x input activation norm. Perplexity on "
                          f"{len(texts)} held-out passages; `tl-funcnet prune` and benchmarks/prune.py run the "
                          f"full settings with bias compensation.")
    s.figure(curves(series, title="Held-out perplexity against the fraction of MLP neurons pruned",
                    x_title="fraction pruned", y_title="perplexity", log_y=True))
    (r, fn_ppl), (_, wanda_ppl) = series["fn"][-1], series["wanda"][-1]
    s.text(f"At {r:.0%}: fn {fn_ppl:.1f}, wanda {wanda_ppl:.1f} (unpruned {base:.1f}). "
           + ("Functional-network pruning does not beat the Wanda-style baseline here, as in BENCHMARKS.md's full "
              "run; fn_guided (Wanda with each layer's strongest network units kept) matches Wanda there."
              if fn_ppl > wanda_ppl else "Functional-network pruning keeps perplexity lower than the baseline here."))
    return {"ratios": list(ratios), "perplexity": series}


def sae_section(st: DemoState) -> dict[str, Any]:
    """A quick sae-lens SAE on the residual stream and cards for some of its features."""
    from ..sae import collect_features, evaluate_sae, train_sae

    site = "blocks.6.hook_resid_post"
    n_train = st.size.sae_tokens
    sae = train_sae(st.model, site, st.calibration, d_sae=1152, k=16, training_tokens=n_train,
                    train_batch_size_tokens=256, n_batches_in_buffer=8, lr=4e-3, random_state=0)
    feats = collect_features(st.model, sae, st.calibration[:st.size.sae_texts])
    m = evaluate_sae(st.model, sae, st.evaluation[:2])
    # SmolLM2 prepends no BOS: each text's first token is an attention sink with a huge residual norm, which
    # would top every feature; it is left out of the picking and the contexts
    ids = pick_features(feats, st.size.sae_cards, skip_positions=1)
    cards = feature_cards(st.model, sae, feats, ids, text=_held_out_text(st), k=6, window=5, skip_positions=1)
    s = st.report.section(TITLES["sae"],
                          f"A top-k sparse autoencoder (sae-lens, 1152 features, k=16) trained for {n_train:,} tokens "
                          f"at {site} - a quick run, far from converged. Explained variance "
                          f"{m.explained_variance:.2f}, "
                          f"L0 {m.l0:.1f}, next-token loss with the SAE spliced in {m.ce_loss_sae:.3f} (without: "
                          f"{m.ce_loss_base:.3f}). Cards for features firing on 0.1-5% "
                          f"of {feats.n_samples} tokens (each text's first token, an attention sink, left out), "
                          f"strongest first, with the tokens each decoder direction "
                          f"promotes and suppresses through the unembedding.")
    s.cards(cards)
    metrics = {"explained_variance": m.explained_variance, "l0": m.l0, "ce_loss_sae": m.ce_loss_sae,
               "ce_loss_base": m.ce_loss_base}
    return {"site": site, "training_tokens": n_train, "metrics": metrics, "features": ids}


def fingerprint_section(st: DemoState) -> dict[str, Any]:
    """Functional-network fingerprints of a derived and an independent model against the original."""
    from ..fingerprint import compare, fingerprint
    from ..fingerprint.transforms import permute_mlp, random_init

    texts = st.evaluation[:st.size.fingerprint_texts]
    victim = fingerprint(st.model, texts, name="original")
    rows = []
    for name, make in (("neurons permuted (derived)", lambda: permute_mlp(st.model, random_state=1)),
                       ("random init (independent)", lambda: random_init(st.model, random_state=7))):
        suspect = make()
        d = compare(victim, fingerprint(suspect, texts, name=name)).to_dict()
        rows.append({"suspect": name, "score": d["score"], "p_value": d["p_value"], "verdict": d["verdict"]})
        del suspect
    st.report.section(TITLES["fingerprint"],
                      f"Fingerprints from {len(texts)} held-out texts; a derived copy (MLP neurons permuted, same "
                      f"function) should be called derived and an independently initialised model independent."
                      ).table(rows)
    return {"rows": rows}


TITLES = {
    "networks": "Functional networks",
    "masking": "Masking against controls of the same size",
    "steering": "Steering, and stacking it with a network mask",
    "patching": "Activation patching on IOI",
    "circuit": "An edge circuit for IOI",
    "pruning": "Pruning MLP neurons",
    "sae": "SAE features",
    "fingerprint": "Functional-network fingerprints",
}

SECTIONS: tuple[tuple[str, Callable[[DemoState], dict[str, Any]]], ...] = (
    ("networks", networks_section),
    ("masking", masking_section),
    ("steering", steering_section),
    ("patching", patching_section),
    ("circuit", circuit_section),
    ("pruning", pruning_section),
    ("sae", sae_section),
    ("fingerprint", fingerprint_section),
)

__all__ = ["FULL", "QUICK", "DemoState", "SECTIONS", "Sizes", "TITLES"]
