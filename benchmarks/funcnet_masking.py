"""Functional networks of SmolLM2 (tl_funcnet) against controls: mask, preserve and amplify them.

The method: temporal ICA with tokens as samples and units as features (as in fMRI group ICA); each
component's spatial map (its mixing column) is z-scored across units and thresholded, and a network is the set
of units past the threshold.

Two sites: ``hook_mlp_out`` (each MLP block's output, one unit per residual channel) and ``mlp.hook_post``
(intermediate MLP neurons). Networks: joint temporal ICA over all layers of a site on ~2048 calibration tokens,
z-scored maps thresholded at 3.6 (one- and two-sided), union of all networks; units raw or z-scored over
tokens before ICA (``--standardize``).

Controls of the same size: random per layer, random over all layers (the authors' control), the
highest-variance units per layer, and **variance-matched** random units (per layer and per variance decile,
outside the networks). Jaccard overlap of the networks with the top-variance units is reported.

(a) Masking (k=10): zero the union; ratios = network loss increase / control loss increase.
(b) Preserving (two-sided; k in 10..256, then the k=256 maps at lower thresholds up to 50% of the units):
    zero everything but the union.
(c) Amplifying (``mlp.hook_post``, k=32, one-sided): the networks most active on a task's prompts (mean
    activation of their units, z-scored against the calibration tokens) are multiplied by a gain; task
    accuracy and logit difference against the same gain on random and variance-matched units.

Loss: mean next-token loss on held-out chunks of 128 tokens of the evaluation split (the split's passages
joined and cut into chunks, each starting with BOS).

    python benchmarks/funcnet_masking.py [--stages mask,preserve,amplify] [--eval-texts 24] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import OUT_DIR, machine_info, peak_rss_mb, token_chunks, write_result  # noqa: E402

NAME = "funcnet_masking"
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", flush=True)


# ---------------------------------------------------------------------------- inputs

def tiny_model():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=3, d_model=32, n_heads=4, d_head=8, d_mlp=96, d_vocab=200, n_ctx=64,
                                  act_fn="gelu", normalization_type="LN", seed=0)
    return HookedTransformer(cfg).eval()


def wait_for_corpus(max_wait_s: float) -> None:
    texts_dir = Path(__import__("tl_funcnet.data", fromlist=["x"]).__file__).parent / "texts"
    need = [texts_dir / "calibration.jsonl", texts_dir / "evaluation.jsonl"]
    t0 = time.perf_counter()
    while not all(p.is_file() and p.stat().st_size > 0 for p in need):
        if time.perf_counter() - t0 > max_wait_s:
            raise SystemExit(f"corpus files {need} still missing after {max_wait_s:.0f} s")
        log(f"waiting for the corpus ({', '.join(p.name for p in need if not p.is_file())}) ...")
        time.sleep(60)


def stand_in_texts() -> tuple[list[str], list[str]]:
    """Docstrings of standard-library modules (only for testing the script before the corpus exists)."""
    import importlib

    docs = []
    for mod in ("argparse", "collections", "json", "logging", "pathlib", "subprocess", "threading", "typing",
                "unittest", "email", "http.client", "decimal", "fractions", "statistics", "textwrap", "csv",
                "shutil", "tempfile", "datetime", "calendar", "random", "heapq", "bisect", "functools"):
        m = importlib.import_module(mod)
        for obj in [m] + [getattr(m, a) for a in dir(m) if not a.startswith("_")]:
            d = getattr(obj, "__doc__", None)
            if isinstance(d, str) and len(d) > 400 and d not in docs:
                docs.append(d)
    return docs[::2], docs[1::2]


# ---------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--sites", default="mlp.hook_post,hook_mlp_out", help="comma-separated site suffixes")
    ap.add_argument("--max-tokens", type=int, default=2048, help="calibration tokens the networks are fitted on")
    ap.add_argument("--stages", default="mask,preserve,amplify", help="which parts to run: mask, preserve, amplify")
    ap.add_argument("--standardize", default="no,yes",
                    help="masking fits with raw units (no) and/or units z-scored over tokens before ICA (yes)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--eval-texts", type=int, default=24, help="evaluation chunks of --chunk-len tokens")
    ap.add_argument("--chunk-len", type=int, default=128)
    ap.add_argument("--mask-networks", type=int, default=10, help="ICA components (networks) of the masking fit")
    ap.add_argument("--preserve-networks", default="10,32,64,128,256",
                    help="comma-separated numbers of networks (one fit each) for the preserve curve")
    ap.add_argument("--preserve-fractions", default="0.3,0.4,0.5",
                    help="further preserve points: the largest fit's maps at the two-sided threshold that keeps "
                         "this fraction of the units")
    ap.add_argument("--threshold", type=float, default=3.6)
    ap.add_argument("--mask-per-layer-seeds", type=int, default=3)
    ap.add_argument("--mask-global-seeds", type=int, default=2)
    ap.add_argument("--vm-seeds", type=int, default=3, help="seeds of the variance-matched control when masking")
    ap.add_argument("--vm-bins", type=int, default=10,
                    help="variance bins per layer of the variance-matched control (10: deciles; the width: each "
                         "network unit matched to the nearest-variance unit outside the networks)")
    ap.add_argument("--preserve-seeds", type=int, default=1, help="seeds per random control on the preserve curve")
    ap.add_argument("--amplify-tasks", default="ioi,greater_than,capital,induction")
    ap.add_argument("--amplify-networks", type=int, default=32, help="ICA components of the amplification fit")
    ap.add_argument("--amplify-top", type=int, default=3, help="networks amplified: the most active on the task")
    ap.add_argument("--gains", default="1.5,2,3", help="multiplicative gains applied to the amplified units")
    ap.add_argument("--amplify-seeds", type=int, default=3, help="seeds per random control when amplifying")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--wait-corpus", type=float, default=1800, help="seconds to wait for the corpus files")
    ap.add_argument("--out", default=NAME)
    ap.add_argument("--quick", action="store_true", help="tiny random model on token ids (CI smoke run)")
    ap.add_argument("--stand-in", action="store_true",
                    help="use Python standard-library docstrings instead of the built-in corpus (testing only)")
    ap.add_argument("--report-from", metavar="JSON", help="only rebuild the markdown from a (partial) result file")
    args = ap.parse_args(argv)
    if args.report_from:
        import json

        res = json.loads(Path(args.report_from).read_text())
        md = markdown(res)
        print(md)
        Path(args.report_from).with_suffix(".md").write_text(md)
        return res

    from tl_funcnet.activations import collect
    from tl_funcnet.evaluate import evaluate
    from tl_funcnet.funcnet import FunctionalNetworks
    from tl_funcnet.hooks import resolve_sites

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    tasks = [t for t in args.amplify_tasks.split(",") if t]
    if args.quick:
        args.out = NAME + "_quick" if args.out == NAME else args.out
        args.mask_networks, args.preserve_networks, args.preserve_fractions = 3, "2,3", "0.5"
        args.mask_per_layer_seeds, args.mask_global_seeds, args.vm_seeds, args.amplify_seeds = 2, 1, 1, 1
        args.amplify_networks, args.amplify_top, args.gains = 3, 1, "2"
        model = tiny_model()
        g = torch.Generator().manual_seed(1)
        calib = [torch.randint(1, model.cfg.d_vocab, (32,), generator=g) for _ in range(16)]
        evals = [torch.randint(1, model.cfg.d_vocab, (32,), generator=g) for _ in range(4)]
        args.max_tokens, args.chunk_len = 512, 32
        args.threshold = min(args.threshold, 2.5)  # tiny widths: 3.6 often leaves the unions empty
        corpus_note = "random token ids (quick mode)"
        task_objs = {"induction": _quick_task(model)}
    else:
        from tl_funcnet.data import load_corpus
        from tl_funcnet.models import load
        from tl_funcnet.patching import load_task

        if args.stand_in:
            cal_p, ev_p = stand_in_texts()
        else:
            wait_for_corpus(args.wait_corpus)
            cal_p, ev_p = load_corpus("calibration"), load_corpus("evaluation")
        t = time.perf_counter()
        model = load(args.model).eval()
        log(f"loaded {args.model} in {time.perf_counter() - t:.1f} s")
        calib = cal_p
        evals = token_chunks(model, ev_p, args.eval_texts, args.chunk_len)
        if len(evals) < args.eval_texts:
            log(f"WARNING: the evaluation split gives only {len(evals)} chunks of {args.chunk_len} tokens")
        corpus_note = ("STAND-IN stdlib docstrings; " if args.stand_in else "") + (f"calibration split ({len(calib)} passages, capped at {args.chunk_len} tokens each, first "
                       f"{args.max_tokens} tokens); evaluation split joined and cut into {len(evals)} chunks "
                       f"of {args.chunk_len} tokens")
        task_objs = {t: load_task(t, model) for t in tasks}
    preserve_ks = [int(k) for k in args.preserve_networks.split(",")]
    preserve_fracs = [float(f) for f in args.preserve_fractions.split(",") if f]
    site_names = [s.strip() for s in args.sites.split(",") if s.strip()]
    std_arms = [x.strip() == "yes" for x in args.standardize.split(",") if x.strip()]
    gains = [float(x) for x in args.gains.split(",") if x]
    n_layers = model.cfg.n_layers
    stages = {x.strip() for x in args.stages.split(",")}

    result: dict[str, Any] = {"name": NAME, "machine": machine_info(), "quick": args.quick,
                              "config": dict(vars(args)), "corpus": corpus_note, "n_layers": n_layers,
                              "timings_s": {}, "sites": {}, "amplify": {}}

    def save() -> None:
        result["timings_s"]["total"] = round(time.perf_counter() - T0, 1)
        result["peak_rss_mb"] = round(peak_rss_mb(), 1)
        result["machine"]["loadavg_end"] = [round(x, 2) for x in __import__("os").getloadavg()]
        write_result(args.out, result)

    n_evals = [0]
    eval_time = [0.0]

    def ev(iv=None) -> float:
        t = time.perf_counter()
        r = evaluate(model, evals, iv, max_tokens_per_seq=args.chunk_len, batch_size=args.batch_size,
                     compare_to_base=False, progress=False)
        eval_time[0] += time.perf_counter() - t
        n_evals[0] += 1
        return r.loss

    # ---- baseline
    t = time.perf_counter()
    base = ev()
    result["baseline_loss"] = base
    result["eval_tokens"] = sum(len(e) - 1 for e in evals)
    result["timings_s"]["one_eval"] = round(time.perf_counter() - t, 2)
    log(f"baseline loss {base:.4f} on {len(evals)} chunks ({result['eval_tokens']} predicted tokens), "
        f"{result['timings_s']['one_eval']} s")

    # ---- activations (cached for the whole run, all sites in one pass)
    sites_by_name = {name: resolve_sites(model, name) for name in site_names}
    all_sites = [s for name in site_names for s in sites_by_name[name]]
    t = time.perf_counter()
    acts = collect(model, calib, all_sites, max_tokens_per_seq=args.chunk_len, max_tokens=args.max_tokens,
                   batch_size=args.batch_size, progress=False)
    result["timings_s"]["collect"] = round(time.perf_counter() - t, 1)
    result["calib_tokens"] = acts.n_samples
    log(f"collected {acts.n_samples} tokens x {acts.n_units} units at {len(all_sites)} sites in "
        f"{result['timings_s']['collect']} s")
    save()

    fits: dict[tuple[str, int, bool], FunctionalNetworks] = {}

    def get_fit(name: str, k: int, std: bool = False) -> FunctionalNetworks:
        """ICA fit (one-sided; two-sided is a re-threshold of the same maps), cached per (site, k, standardize)."""
        if (name, k, std) not in fits:
            R = result["sites"][name]
            t = time.perf_counter()
            # random_state=666: the recorded figures in BENCHMARKS.md were measured with this seed (the
            # library's default before it became 0)
            fn = FunctionalNetworks(k, threshold=args.threshold, sides="one", scope="joint",
                                    standardize=std, random_state=666).fit(acts, sites_by_name[name])
            dt = time.perf_counter() - t
            fits[(name, k, std)] = fn
            two = fn.with_threshold(args.threshold, "two")
            key = f"{k}{'|z' if std else ''}"
            R["fits"][key] = {"k": k, "standardize": std, "fit_s": round(dt, 2), "converged": bool(fn.converged_),
                              "units_one": int(fn.union().sum()), "units_two": int(two.union().sum())}
            log(f"{name} k={k} standardize={std}: ICA {dt:.1f} s, converged={fn.converged_}, union one-sided "
                f"{R['fits'][key]['units_one']}, two-sided {R['fits'][key]['units_two']}")
            save()
        return fits[(name, k, std)]

    def controls(fn: FunctionalNetworks, mode: str, n_pl: int, n_gl: int, n_vm: int) -> dict[str, Any]:
        """Loss with the networks' units edited, and with control sets of the same size edited instead
        (random per layer: seeds 0, 1, ...; random over all layers: seeds 100, ...; variance-matched: 200, ...)."""
        out: dict[str, Any] = {"networks": ev(fn.to_intervention(mode))}
        out["per_layer_random"] = [ev(fn.to_intervention(mode, control="per_layer", random_state=s))
                                   for s in range(n_pl)]
        out["global_random"] = [ev(fn.to_intervention(mode, control="global", random_state=100 + s))
                                for s in range(n_gl)]
        out["top_variance"] = ev(fn.to_intervention(mode, control="top_variance"))
        out["variance_matched"] = [ev(fn.to_intervention(mode, control="variance_matched", random_state=200 + s,
                                                         n_bins=args.vm_bins)) for s in range(n_vm)]
        return out

    for name in site_names:
        sites = sites_by_name[name]
        result["sites"][name] = {"width": acts.width(sites[0]), "n_units": sum(acts.width(s) for s in sites),
                                 "fits": {}, "mask": {}, "preserve": {}}

    # ---- (a) masking, every site first (the headline), then (b), (c)
    for name in (site_names if "mask" in stages else []):
        R = result["sites"][name]
        for std in std_arms:
            for sides in ("one", "two"):
                fn = get_fit(name, args.mask_networks, std).with_threshold(args.threshold, sides)
                u = fn.union()
                n = int(u.sum())
                t = time.perf_counter()
                losses = controls(fn, "mask", args.mask_per_layer_seeds, args.mask_global_seeds, args.vm_seeds)
                mean = lambda v: sum(v) / len(v) if v else float("nan")  # noqa: E731
                pl_mean, vm_mean = mean(losses["per_layer_random"]), mean(losses["variance_matched"])
                d_net, d_pl, d_vm = losses["networks"] - base, pl_mean - base, vm_mean - base
                d_top = losses["top_variance"] - base
                top = fn.control_mask("top_variance")
                per_layer = [int(c) for c in fn.per_site_counts().values()]  # one site per layer
                R["mask"][f"{sides}{'|z' if std else ''}"] = {
                    "k": args.mask_networks, "sides": sides, "standardize": std, "units": n,
                    "fraction": n / u.numel(), **losses, "per_layer_random_mean": pl_mean,
                    "variance_matched_mean": vm_mean,
                    "ratio_vs_per_layer_random": (d_net / d_pl) if d_pl > 0 else None,  # NaN > 0 is False
                    "ratio_vs_variance_matched": (d_net / d_vm) if d_vm > 0 else None,
                    "ratio_vs_top_variance": (d_net / d_top) if d_top > 0 else None,
                    "jaccard_top_variance": int((u & top).sum()) / max(1, int((u | top).sum())),
                    "delta_networks": d_net, "delta_per_layer_random": d_pl, "delta_variance_matched": d_vm,
                    "per_layer_counts": per_layer, "network_sizes": fn.summary()["network_sizes"],
                    "eval_s": round(time.perf_counter() - t, 1)}
                m = R["mask"][f"{sides}{'|z' if std else ''}"]
                log(f"{name} mask k={args.mask_networks} {sides}-sided std={std}: {n} units, networks "
                    f"{losses['networks']:.3f}, per-layer {['%.3f' % x for x in losses['per_layer_random']]}, "
                    f"var-matched {['%.3f' % x for x in losses['variance_matched']]}, top-var "
                    f"{losses['top_variance']:.3f}, ratio vs var-matched {m['ratio_vs_variance_matched']}, "
                    f"Jaccard top-var {m['jaccard_top_variance']:.2f}")
                save()

    # ---- (b) preserving, two-sided, raw units
    for name in (site_names if "preserve" in stages else []):
        R = result["sites"][name]
        # (k, None): k networks at the threshold; (k, f): the largest fit re-thresholded to keep a fraction f
        for k, frac in [(k, None) for k in preserve_ks] + [(preserve_ks[-1], f) for f in preserve_fracs]:
            fn = get_fit(name, k).with_threshold(args.threshold, "two")
            thr, label = args.threshold, str(k)
            if frac is not None:
                thr = threshold_for_fraction(fn, frac)
                fn = fn.with_threshold(thr, "two")
                label = f"{k}@{frac:g}"
            u = fn.union()
            n = int(u.sum())
            t = time.perf_counter()
            losses = controls(fn, "preserve", args.preserve_seeds, args.preserve_seeds, args.preserve_seeds)
            ctrl = (losses["per_layer_random"] + losses["global_random"] + [losses["top_variance"]]
                    + losses["variance_matched"])
            R["preserve"][label] = {"k": k, "threshold": thr, "sides": "two", "units": n, "fraction": n / u.numel(),
                                    **losses, "networks_below_every_control": bool(losses["networks"] < min(ctrl)),
                                    "eval_s": round(time.perf_counter() - t, 1)}
            log(f"{name} preserve {label} (|z| >= {thr:.2f}): {n} units ({100 * n / u.numel():.2f}%), networks "
                f"{losses['networks']:.3f}, per-layer {['%.3f' % x for x in losses['per_layer_random']]}, "
                f"global {['%.3f' % x for x in losses['global_random']]}, top-var {losses['top_variance']:.3f}, "
                f"var-matched {['%.3f' % x for x in losses['variance_matched']]}")
            summarize_preserve(R, base)
            save()

    # ---- (c) amplifying the networks most active on each task, mlp.hook_post (first site), one-sided
    if "amplify" in stages:
        from tl_funcnet.patching import task_report

        name = site_names[0]
        fn = get_fit(name, args.amplify_networks)
        sites = sites_by_name[name]
        calib_tc = fn.time_courses(acts, kind="mean")  # (tokens, networks) on the calibration tokens
        mu, sd = calib_tc.mean(0), calib_tc.std(0).clamp_min(1e-8)
        for tname, task in task_objs.items():
            tacts = collect(model, list(task.clean), sites, max_tokens_per_seq=None, batch_size=args.batch_size,
                            progress=False)
            z = (fn.time_courses(tacts, kind="mean").mean(0) - mu) / sd
            nonempty = fn.masks_.any(1)
            z = torch.where(nonempty, z, torch.full_like(z, -torch.inf))
            top = [int(i) for i in torch.argsort(z, descending=True)[: args.amplify_top]]
            units = int(fn.union(top).sum())
            A = result["amplify"][tname] = {"site": name, "k": args.amplify_networks, "networks": top,
                                            "activity_z": [float(z[i]) for i in top], "units": units,
                                            "base": task_report(model, task), "gains": {}}
            for gain in gains:
                row = {"networks": task_report(model, task, fn.to_intervention("amplify", top, gain=gain))}
                for ctrl, off in (("per_layer", 300), ("variance_matched", 400)):
                    row[ctrl] = [task_report(model, task, fn.to_intervention(
                        "amplify", top, control=ctrl, gain=gain, random_state=off + s))
                        for s in range(args.amplify_seeds)]
                A["gains"][f"{gain:g}"] = row
                ld = lambda r: r["logit_diff_clean"]  # noqa: E731
                log(f"amplify {tname} networks {top} ({units} units) x{gain:g}: logit diff "
                    f"{ld(A['base']):.3f} -> {ld(row['networks']):.3f}; per-layer random "
                    f"{['%.3f' % ld(r) for r in row['per_layer']]}; var-matched "
                    f"{['%.3f' % ld(r) for r in row['variance_matched']]}")
            save()

    result["n_evals"] = n_evals[0]
    result["timings_s"]["evals_total"] = round(eval_time[0], 1)
    save()
    md = markdown(result)
    print(md)
    (OUT_DIR / f"{args.out}.md").write_text(md)
    log(f"wrote {OUT_DIR / (args.out + '.json')} and .md; {n_evals[0]} evaluations")
    return result


def _quick_task(model: Any) -> Any:
    from tl_funcnet.patching import load_task

    return load_task({"name": "induction", "generator": {"kind": "induction", "n_pairs": 8, "seq_len": 6}}, model)


def threshold_for_fraction(fn: Any, fraction: float) -> float:
    """The two-sided |z| threshold at which the union of ``fn``'s maps holds ``fraction`` of the units (bisection)."""
    lo, hi = 1e-3, float(fn.maps_.abs().max()) + 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if float(fn.with_threshold(mid, "two").union().float().mean()) > fraction:
            lo = mid
        else:
            hi = mid
    return hi


def summarize_preserve(R: dict, base: float) -> None:
    """Smallest preserved fraction within 10% of baseline per arm (worst seed), and the ordering check."""
    within: dict[str, Any] = {}
    for arm in ("networks", "per_layer_random", "global_random", "top_variance", "variance_matched"):
        ok = []
        for p in R["preserve"].values():
            v = p[arm]
            if (max(v) if isinstance(v, list) else v) <= 1.1 * base:
                ok.append(p["fraction"])
        within[arm] = min(ok) if ok else None
    R["smallest_fraction_within_10pct"] = within
    R["networks_below_every_control_at_every_size"] = all(
        p["networks_below_every_control"] for p in R["preserve"].values())
    R["networks_below_every_control_count"] = sum(p["networks_below_every_control"] for p in R["preserve"].values())


# ---------------------------------------------------------------------------- report

def _rng(v: list[float]) -> str:
    if not v:
        return ""
    return f"{min(v):.2f}" if len(v) == 1 else f"{min(v):.2f}-{max(v):.2f}"


def _x(r: Any) -> str:
    return "n/a" if r is None else f"{r:.1f}x"


def markdown(res: dict) -> str:
    base = res["baseline_loss"]
    n_layers = res.get("n_layers")
    L = [f"# Functional networks against controls ({'quick, tiny random model' if res['quick'] else res['config']['model']})",
         "",
         f"Calibration {res['calib_tokens']} tokens; evaluation {res['eval_tokens']} predicted tokens "
         f"({res['corpus']}). Baseline loss **{base:.3f}**. Threshold {res['config']['threshold']}, zero-ablation. "
         f"Total time {res['timings_s']['total']} s, {res.get('n_evals')} evaluations "
         f"({res['timings_s'].get('evals_total')} s), peak RSS {res['peak_rss_mb']} MB; load average at the start "
         f"{res['machine']['loadavg_1m_5m_15m']}, at the end {res['machine'].get('loadavg_end')}.",
         "",
         "## (a) Masking the union of networks",
         "",
         "| site | units z-scored | sides | units (%) | networks | random per layer | random global "
         "| variance-matched | top-variance | Jaccard w/ top-var | ratio vs per-layer | ratio vs var-matched "
         "| ratio vs top-var |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, R in res["sites"].items():
        for m in R["mask"].values():
            L.append(f"| `{name}` ({n_layers} x {R['width']}) | {'yes' if m.get('standardize') else 'no'} | "
                     f"{m.get('sides')} | {m['units']} ({100 * m['fraction']:.2f}%) | {m['networks']:.3f} | "
                     f"{_rng(m['per_layer_random'])} | {_rng(m['global_random'])} | "
                     f"{_rng(m.get('variance_matched', []))} | {m['top_variance']:.3f} | "
                     f"{m.get('jaccard_top_variance', float('nan')):.2f} | {_x(m['ratio_vs_per_layer_random'])} | "
                     f"**{_x(m.get('ratio_vs_variance_matched'))}** | {_x(m.get('ratio_vs_top_variance'))} |")
    L += ["", "Ratio = loss increase of the networks / mean loss increase of the control's seeds. Variance-matched: "
          f"{res['config'].get('vm_bins', 10)} variance bins per layer.", "",
          "Per-layer split of the masked union (layer:units, layers with none omitted):", ""]
    for name, R in res["sites"].items():
        for key, m in R["mask"].items():
            c = m["per_layer_counts"]
            s = " ".join(f"{i}:{n}" for i, n in enumerate(c) if n)
            top = max(range(len(c)), key=lambda i: c[i])
            L.append(f"- `{name}` {key}: {m['units']} units; largest layer {top} with "
                     f"{100 * c[top] / max(1, m['units']):.0f}%: {s}")
    if any(R["preserve"] for R in res["sites"].values()):
        L += ["", "## (b) Preserving only the union (two-sided), all other units zeroed", "",
              "| site | k (@ fraction) | |z| threshold | units | % preserved | networks | random per layer "
              "| random global | variance-matched | top-variance | networks below every control |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, R in res["sites"].items():
            for label, p in R["preserve"].items():
                L.append(f"| `{name}` | {label} | {p.get('threshold', res['config']['threshold']):.2f} | {p['units']} | "
                         f"{100 * p['fraction']:.2f}% | {p['networks']:.3f} | {_rng(p['per_layer_random'])} | "
                         f"{_rng(p['global_random'])} | {_rng(p.get('variance_matched', []))} | "
                         f"{p['top_variance']:.3f} | {'yes' if p['networks_below_every_control'] else 'no'} |")
        L += ["", f"Smallest preserved fraction with loss within 10% of baseline (<= {1.1 * base:.3f}):", ""]
        for name, R in res["sites"].items():
            if not R["preserve"]:
                continue
            w = R.get("smallest_fraction_within_10pct", {})
            parts = [f"{arm}: {'none' if v is None else f'{100 * v:.2f}%'}" for arm, v in w.items()]
            n_below = sum(bool(p["networks_below_every_control"]) for p in R["preserve"].values())
            L.append(f"- `{name}`: " + "; ".join(parts) +
                     f". Network curve below every control at {n_below} of {len(R['preserve'])} points.")
    if res.get("amplify"):
        L += ["", "## (c) Amplifying the networks most active on each task", "",
              "Logit difference (answer - distractor, mean over pairs) and top-1 accuracy; controls: the same gain on "
              "as many random units per layer / variance-matched units (range over seeds).", "",
              "| task | networks (activity z) | units | gain | unmodified | networks | random per layer "
              "| variance-matched | top-1: unmodified / networks / var-matched (mean) |",
              "|---|---|---|---|---|---|---|---|---|"]
        for tname, A in res["amplify"].items():
            b = A["base"]
            for gain, row in A["gains"].items():
                ld = lambda r: r["logit_diff_clean"]  # noqa: E731
                vm_acc = sum(r["top1_accuracy"] for r in row["variance_matched"]) / len(row["variance_matched"])
                L.append(f"| {tname} | {A['networks']} ({', '.join(f'{z:.1f}' for z in A['activity_z'])}) | "
                         f"{A['units']} | x{gain} | {ld(b):.3f} | {ld(row['networks']):.3f} | "
                         f"{_rng([ld(r) for r in row['per_layer']])} | "
                         f"{_rng([ld(r) for r in row['variance_matched']])} | {b['top1_accuracy']:.2f} / "
                         f"{row['networks']['top1_accuracy']:.2f} / {vm_acc:.2f} |")
    L += ["", "## ICA fit time (joint FastICA over all layers of the site)", "",
          "| site | k | units z-scored | units (tokens x units) | fit s | converged | union one-sided | union two-sided |",
          "|---|---|---|---|---|---|---|---|"]
    for name, R in res["sites"].items():
        for f in R["fits"].values():
            L.append(f"| `{name}` | {f['k']} | {'yes' if f['standardize'] else 'no'} | {res['calib_tokens']} x "
                     f"{R['n_units']} | {f['fit_s']} | {'yes' if f['converged'] else 'no'} | {f['units_one']} | "
                     f"{f['units_two']} |")
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
