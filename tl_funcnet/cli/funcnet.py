"""``tl-funcnet extract`` and ``tl-funcnet ablate``: fit functional networks, then mask, preserve or amplify them."""

from __future__ import annotations

import argparse

from ._base import (Handler, add_json, add_model, add_out, check_model, check_out, check_texts, command,
                    emit, finite_float, log_for, positive_float, positive_int)


@command("extract", "fit functional networks on a model's activity and save them (with plots)")
def _extract(p: argparse.ArgumentParser) -> Handler:
    add_model(p)
    p.add_argument("--site", default="hook_mlp_out",
                   help="hook name, or a per-layer suffix such as hook_mlp_out / mlp.hook_post (all layers)")
    p.add_argument("--n-networks", type=positive_int, default=10)
    p.add_argument("--threshold", type=positive_float, default=3.6)
    p.add_argument("--sides", choices=["one", "two"], default="one")
    p.add_argument("--scope", choices=["joint", "per_layer", "window"], default="joint")
    p.add_argument("--standardize", action="store_true", help="z-score each unit before ICA")
    p.add_argument("--texts", default="calibration", help="built-in split name, .txt/.jsonl file or folder")
    p.add_argument("--max-tokens", type=positive_int, default=2048)
    p.add_argument("--max-tokens-per-seq", type=positive_int, default=128)
    p.add_argument("--random-state", type=int, default=0)
    add_out(p, "output folder for the networks (and their plots)")
    add_json(p)

    def run(args: argparse.Namespace) -> int:
        from ..activations import collect
        from ..funcnet import FunctionalNetworks
        from ..funcnet.storage import KIND
        from ..funcnet.plots import plot_layer_counts, plot_network_map
        from ..hooks import resolve_sites
        from ..models import load

        check_model(args.model, args.backend)
        check_texts(args.texts)
        check_out(args.out, KIND, args.overwrite)
        fn = FunctionalNetworks(args.n_networks, threshold=args.threshold, sides=args.sides, scope=args.scope,
                                standardize=args.standardize, random_state=args.random_state)
        log_for(args)(f"loading {args.model}")
        model = load(args.model, backend=args.backend)
        sites = resolve_sites(model, args.site)
        acts = collect(model, args.texts, sites, max_tokens=args.max_tokens,
                       max_tokens_per_seq=args.max_tokens_per_seq, progress=False)
        fn.fit(acts)
        out = fn.save(args.out, overwrite=args.overwrite)
        plot_network_map(fn).savefig(out / "network_map.png", dpi=110)
        plot_layer_counts(fn).savefig(out / "layer_counts.png", dpi=110)
        s = fn.summary()
        payload = {"out": str(out), "model": args.model, "sites": len(sites), "n_tokens": acts.n_samples, **s}
        emit(args, payload, [f"fitted {s['n_networks']} networks on {acts.n_samples} tokens at {len(sites)} sites",
                             f"key units: {s['n_units']} of {s['total_units']} ({100 * s['fraction']:.2f}%)",
                             f"saved to {out} (with network_map.png and layer_counts.png)"])
        return 0

    return run


@command("ablate", "mask, preserve or amplify saved functional networks and measure the loss against a control")
def _ablate(p: argparse.ArgumentParser) -> Handler:
    add_model(p)
    p.add_argument("--networks", required=True, help="folder written by `tl-funcnet extract`")
    p.add_argument("--mode", choices=["mask", "preserve", "amplify"], default="mask")
    p.add_argument("--ids", type=int, nargs="*", default=None, help="network ids (default: all)")
    p.add_argument("--value", type=finite_float, default=1.0, help="amplify: constant added to each unit")
    p.add_argument("--gain", type=finite_float, default=None, help="amplify: multiply units by this instead")
    p.add_argument("--ablation", choices=["zero", "mean"], default="zero")
    p.add_argument("--control", choices=["per_layer", "global", "top_variance", "variance_matched"],
                   default="per_layer", help="the same edit on as many units chosen this way")
    p.add_argument("--texts", default="evaluation", help="held-out texts: split name, .txt/.jsonl file or folder")
    p.add_argument("--max-texts", type=positive_int, default=24)
    p.add_argument("--random-state", type=int, default=0, help="draws the random control")
    add_json(p)

    def run(args: argparse.Namespace) -> int:
        from ..data import resolve_texts
        from ..evaluate import evaluate
        from ..funcnet import FunctionalNetworks
        from ..models import load

        check_model(args.model, args.backend)
        fn = FunctionalNetworks.load(args.networks)
        texts = resolve_texts(args.texts)[: args.max_texts]
        kw = {"value": args.value, "gain": args.gain, "ablation": args.ablation}
        iv = fn.to_intervention(args.mode, args.ids, **kw)
        ctrl = fn.to_intervention(args.mode, args.ids, control=args.control, random_state=args.random_state, **kw)
        model = load(args.model, backend=args.backend)
        iv.validate(model)
        base = evaluate(model, texts, compare_to_base=False, progress=False)
        hit = evaluate(model, texts, iv, progress=False)
        rnd = evaluate(model, texts, ctrl, compare_to_base=False, progress=False)
        n_units = int(fn.union(args.ids).sum())
        payload = {"mode": args.mode, "n_units": n_units, "fraction": n_units / int(fn.union().numel()),
                   "baseline_loss": base.loss, "intervened_loss": hit.loss, "control_loss": rnd.loss,
                   "control": args.control, "kl_to_base": hit.kl, "n_tokens": base.n_tokens}
        emit(args, payload, [f"{args.mode} {n_units} units on {base.n_tokens} tokens",
                             f"  baseline loss      {base.loss:.3f}",
                             f"  networks           {hit.loss:.3f}  (KL to base {hit.kl:.3f})",
                             f"  {args.control} control {rnd.loss:.3f}"])
        return 0

    return run
