"""``tl-funcnet dashboard``: cards of saved functional networks or of a saved SAE's features, as one HTML report."""

from __future__ import annotations

import argparse

from ._base import (Handler, add_json, add_model, add_out, check_model, check_out, check_texts, command, emit,
                    log_for, non_negative_int, positive_int)


@command("dashboard", "what saved functional networks (--networks) or SAE features (--sae) respond to: a card each "
                      "(top-activating contexts, token-coloured activity), in one self-contained HTML report")
def _dashboard(p: argparse.ArgumentParser) -> Handler:
    add_model(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--networks", help="folder written by `tl-funcnet extract`")
    which.add_argument("--sae", help="folder of an SAE in sae-lens's format (e.g. from `tl-funcnet train-sae`)")
    p.add_argument("--ids", type=non_negative_int, nargs="+", default=None,
                   help="network or feature ids (default: every network; the SAE's most distinct features)")
    p.add_argument("--n-features", type=positive_int, default=6, help="--sae without --ids: how many features")
    p.add_argument("--text", default=None, help="a text to colour by each card's activity")
    p.add_argument("--texts", default="calibration", help="corpus for the top contexts: split name, file or folder")
    p.add_argument("--max-tokens", type=positive_int, default=2048, help="corpus tokens to rank")
    p.add_argument("--eval-texts", default=None,
                   help="--networks: held-out texts for the loss of masking each network alone (beside a random "
                        "same-size control); default none")
    p.add_argument("--max-eval-texts", type=positive_int, default=2)
    p.add_argument("--k", type=positive_int, default=8, help="top contexts per card")
    p.add_argument("--window", type=non_negative_int, default=6, help="tokens on either side of each peak")
    p.add_argument("--skip-positions", type=non_negative_int, default=0,
                   help="leave each text's first tokens out of the ranking (an attention sink without BOS)")
    add_out(p, "the report file to write (e.g. networks.html)")
    add_json(p)

    def run(args: argparse.Namespace) -> int:
        from ..dashboards.report import KIND
        from ..errors import FuncnetError

        check_model(args.model, args.backend)
        check_texts(args.texts)
        if args.eval_texts is not None:
            if args.sae:
                raise FuncnetError("--eval-texts applies to --networks only (the loss of masking each network)")
            check_texts(args.eval_texts)
        check_out(args.out, KIND, args.overwrite, folder=False)
        cards, report = (_networks if args.networks else _features)(args)
        path = report.save(args.out, overwrite=args.overwrite)
        emit(args, {"out": str(path), "cards": [{"title": c.title, **c.numbers} for c in cards]},
             [f"{len(cards)} cards -> {path}"])
        return 0

    return run


def _corpus(args: argparse.Namespace) -> list:
    from ..data import resolve_texts

    return list(resolve_texts(args.texts))


def _networks(args: argparse.Namespace):
    from ..activations import collect
    from ..dashboards import Report, network_cards, network_sizes
    from ..data import resolve_texts
    from ..funcnet import FunctionalNetworks
    from ..models import load

    fn = FunctionalNetworks.load(args.networks)
    ids = fn.network_ids(args.ids)  # out of range: refused before the model loads
    log = log_for(args)
    log(f"loading {args.model}")
    model = load(args.model, backend=args.backend)
    acts = collect(model, _corpus(args), fn.sites_, max_tokens=args.max_tokens, progress=False)
    evals = resolve_texts(args.eval_texts)[: args.max_eval_texts] if args.eval_texts else None
    cards = network_cards(model, fn, acts, ids, text=args.text, k=args.k, window=args.window, eval_texts=evals)
    report = Report(f"Functional networks of {args.model}", subtitle=f"networks from {args.networks}")
    report.section("Key units per layer").figure(network_sizes(fn, ids))
    report.section("Network cards", f"Top contexts from {acts.n_samples} tokens of {args.texts!r}.").cards(cards)
    return cards, report


def _features(args: argparse.Namespace):
    import torch

    from ..activations.tokens import tokenize
    from ..dashboards import Report, feature_cards, pick_features
    from ..errors import FuncnetError
    from ..models import load
    from ..sae import collect_features, load_sae

    sae = load_sae(args.sae)
    d_sae = int(sae.cfg.d_sae)
    bad = [i for i in args.ids or () if i >= d_sae]
    if bad:
        raise FuncnetError(f"feature ids {bad} are out of range; the SAE has {d_sae} features (0..{d_sae - 1})")
    log = log_for(args)
    log(f"loading {args.model}")
    model = load(args.model, backend=args.backend)
    seqs = tokenize(model, _corpus(args))
    ends = torch.tensor([len(s) for s in seqs]).cumsum(0)
    seqs = seqs[: int((ends < args.max_tokens).sum()) + 1]  # the texts holding the first max_tokens tokens
    feats = collect_features(model, sae, seqs)
    ids = args.ids or pick_features(feats, args.n_features, skip_positions=args.skip_positions)
    cards = feature_cards(model, sae, feats, ids, text=args.text, k=args.k, window=args.window,
                          skip_positions=args.skip_positions)
    site = feats.sites[0].removesuffix(".hook_sae_acts_post")
    report = Report(f"SAE features of {args.model}", subtitle=f"{d_sae} features at {site}, from {args.sae}")
    report.section("Feature cards", f"Top contexts from {feats.n_samples} tokens of {args.texts!r}.").cards(cards)
    return cards, report
