"""``tl-funcnet fingerprint``: does a suspect model derive from a victim model (or a saved victim fingerprint)?"""

from __future__ import annotations

import argparse

from ._base import (Handler, add_json, add_model, check_model, check_out, check_texts, command, emit,
                    log_for, positive_int)


@command("fingerprint", "functional-network fingerprint: compare a suspect model with a victim model or a saved "
                        "victim fingerprint")
def _fingerprint(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("--victim", required=True,
                   help="model name, saved model folder, or a fingerprint file (.safetensors from --save)")
    p.add_argument("--suspect", default=None, help="model name or saved model folder (omit to only --save)")
    p.add_argument("--texts", default=None, help="split name, text file/folder or .jsonl (default: 10 built-in "
                   "passages; ignored when the victim is a fingerprint file, whose texts are used)")
    p.add_argument("--n-networks", type=positive_int, default=64)
    p.add_argument("--top-m", type=positive_int, default=None, help="matched pairs averaged into the score (default 16)")
    p.add_argument("--n-null", type=positive_int, default=200, help="circular-shift null samples for the p-value")
    p.add_argument("--save", default=None, help="write the victim fingerprint to this file")
    p.add_argument("--overwrite", action="store_true", help="replace a fingerprint file at --save")
    add_model(p, model=False)
    add_json(p)

    def run(args: argparse.Namespace) -> int:
        from pathlib import Path

        from ..errors import FuncnetError
        from ..fingerprint import Fingerprint, compare, fingerprint, is_fingerprint_file
        from ..fingerprint.compare import TOP_M
        from ..fingerprint.core import KIND
        from ..models import load

        log = log_for(args)
        victim_is_file = Path(args.victim).is_file()
        if victim_is_file and not is_fingerprint_file(args.victim):
            raise FuncnetError(f"{args.victim} is a file but not a readable fingerprint (expected a .safetensors "
                               f"written by --save or Fingerprint.save); it may be corrupt")
        if not victim_is_file:
            check_model(args.victim, args.backend)
        if args.suspect is None and not args.save:
            raise FuncnetError("nothing to do: pass --suspect to compare, or --save to store the fingerprint")
        if args.suspect is not None:
            check_model(args.suspect, args.backend)
        if args.texts is not None:
            check_texts(args.texts)
        if args.save:
            check_out(args.save, KIND, args.overwrite, folder=False)
        if victim_is_file:
            victim = Fingerprint.load(args.victim)
            log(f"victim: loaded {victim!r}")
        else:
            victim = fingerprint(load(args.victim, backend=args.backend), args.texts, n_networks=args.n_networks,
                                 name=str(args.victim))
            log(f"victim: {victim!r}")
        payload: dict = {"victim": args.victim}
        lines = []
        if args.save:
            victim.save(args.save, overwrite=args.overwrite)
            payload["saved"] = args.save
            lines.append(f"victim fingerprint saved to {args.save}")
        if args.suspect is None:
            emit(args, payload, lines)
            return 0
        suspect = fingerprint(load(args.suspect, backend=args.backend), list(victim.texts), n_networks=victim.n_networks,
                              random_state=victim.params.get("random_state", 0), name=str(args.suspect))
        res = compare(victim, suspect, top_m=args.top_m or TOP_M, n_null=args.n_null)
        payload.update({"suspect": args.suspect, **res.to_dict()})
        lines += [f"score   {res.score:.3f}  (mean |rho| of the top {res.settings['top_m']} matched networks)",
                  f"p-value {res.p_value:.4f}  (circular-shift null, mean {res.null_mean:.3f}, "
                  f"99th pct {res.null_q99:.3f}; margin {res.margin:+.3f})",
                  f"verdict {res.verdict}"]
        emit(args, payload, lines)
        return 0

    return run
