"""Feature subcommands of ``tl-funcnet``. Only argument parsing runs at import; handlers import features lazily."""

from __future__ import annotations

import argparse
from pathlib import Path

from .cli import Handler, command, emit


def _expand_site(model, site: str) -> list[str]:
    from .activations import layer_sites

    if site in model.hook_dict:
        return [site]
    return layer_sites(model, site)


@command("extract", "fit functional networks on a model's activity and save them (with plots)")
def _extract(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("--model", default="smollm2-135m", help="embedded name, TransformerLens name or saved dir")
    p.add_argument("--site", default="hook_mlp_out",
                   help="hook name, or a per-layer suffix such as hook_mlp_out / mlp.hook_post (all layers)")
    p.add_argument("--n-networks", type=int, default=10)
    p.add_argument("--threshold", type=float, default=3.6)
    p.add_argument("--sides", choices=["one", "two"], default="one")
    p.add_argument("--scope", choices=["joint", "per_layer", "window"], default="joint")
    p.add_argument("--standardize", action="store_true", help="z-score each unit before ICA")
    p.add_argument("--corpus", default="calibration", help="built-in split name, .txt/.jsonl file or folder")
    p.add_argument("--max-tokens", type=int, default=2048)
    p.add_argument("--max-tokens-per-seq", type=int, default=128)
    p.add_argument("--seed", type=int, default=666)
    p.add_argument("--out", required=True, help="output directory for the networks")
    p.add_argument("--json", action="store_true")

    def run(args: argparse.Namespace) -> int:
        from .activations import collect
        from .funcnet import FunctionalNetworks
        from .funcnet.plots import plot_layer_counts, plot_network_map
        from .models import load

        model = load(args.model)
        sites = _expand_site(model, args.site)
        acts = collect(model, args.corpus, sites, max_tokens=args.max_tokens,
                       max_tokens_per_seq=args.max_tokens_per_seq)
        fn = FunctionalNetworks(args.n_networks, threshold=args.threshold, sides=args.sides, scope=args.scope,
                                standardize=args.standardize, random_state=args.seed).fit(acts)
        out = Path(args.out)
        fn.save(out)
        plot_network_map(fn, out.with_name(out.name + "_map.png"))
        plot_layer_counts(fn, out.with_name(out.name + "_layers.png"))
        s = fn.summary()
        payload = {"out": str(out), "model": args.model, "sites": len(sites), "n_tokens": acts.n_samples, **s}
        emit(args, payload, [f"fitted {s['n_networks']} networks on {acts.n_samples} tokens at {len(sites)} sites",
                             f"key units: {s['n_units']} of {s['total_units']} ({100 * s['fraction']:.2f}%)",
                             f"saved to {out} (plots: {out.name}_map.png, {out.name}_layers.png)"])
        return 0

    return run


@command("ablate", "mask, preserve or amplify saved functional networks and measure the loss against a random control")
def _ablate(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--networks", required=True, help="directory written by `tl-funcnet extract`")
    p.add_argument("--mode", choices=["mask", "preserve", "amplify"], default="mask")
    p.add_argument("--ids", type=int, nargs="*", default=None, help="network ids (default: all)")
    p.add_argument("--value", type=float, default=1.0, help="amplify: constant added to each unit")
    p.add_argument("--gain", type=float, default=None, help="amplify: multiply units by this instead")
    p.add_argument("--ablation", choices=["zero", "mean"], default="zero")
    p.add_argument("--control", choices=["per_layer", "global", "top_variance"], default="per_layer")
    p.add_argument("--corpus", default="evaluation")
    p.add_argument("--max-texts", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")

    def run(args: argparse.Namespace) -> int:
        from .activations.tokens import resolve_corpus
        from .evaluate import evaluate
        from .funcnet import FunctionalNetworks
        from .models import load

        fn = FunctionalNetworks.load(args.networks)
        kw = {"value": args.value, "gain": args.gain, "ablation": args.ablation}
        iv = fn.intervention(args.mode, args.ids, **kw)
        ctrl = fn.control(args.mode, args.control, args.ids, seed=args.seed, **kw)
        model = load(args.model)
        iv.validate(model)
        texts = resolve_corpus(args.corpus)[: args.max_texts]
        base = evaluate(model, texts, compare_to_base=False)
        hit = evaluate(model, texts, iv)
        rnd = evaluate(model, texts, ctrl, compare_to_base=False)
        n_units = int(fn.union(args.ids).sum())
        payload = {"mode": args.mode, "n_units": n_units, "fraction": n_units / int(fn.union().numel()),
                   "baseline_loss": base.loss, "intervened_loss": hit.loss, "random_control_loss": rnd.loss,
                   "control": args.control, "kl_to_base": hit.kl, "n_tokens": base.n_tokens}
        emit(args, payload, [f"{args.mode} {n_units} units on {base.n_tokens} tokens",
                             f"  baseline loss      {base.loss:.3f}",
                             f"  networks           {hit.loss:.3f}  (KL to base {hit.kl:.3f})",
                             f"  {args.control} control {rnd.loss:.3f}"])
        return 0

    return run
