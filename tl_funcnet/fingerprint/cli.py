"""``tl-funcnet fingerprint``: does a suspect model derive from a victim? (registered by ``tl_funcnet.cli``)."""

from __future__ import annotations

import argparse
import sys

from ..cli import Handler, command, emit


def _read_texts(path: str) -> list[str]:
    from ..data import read_texts

    return list(read_texts(path))


@command("fingerprint", "functional-network fingerprint: compare a suspect model with a victim model or "
                        "a saved victim fingerprint")
def _fingerprint(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("--victim", required=True,
                   help="model name, saved model dir, or a fingerprint file (.safetensors from --save)")
    p.add_argument("--suspect", default=None, help="model name or saved model dir (omit to only --save)")
    p.add_argument("--texts", default=None, help="text file/folder/.jsonl (default: 10 built-in passages; "
                   "ignored when the victim is a fingerprint file, whose texts are used)")
    p.add_argument("--n-networks", type=int, default=64)
    p.add_argument("--top-m", type=int, default=None, help="matched pairs averaged into the score (default 16)")
    p.add_argument("--n-null", type=int, default=200, help="circular-shift null samples for the p-value")
    p.add_argument("--save", default=None, help="write the victim fingerprint to this file")
    p.add_argument("--json", action="store_true")

    def run(args: argparse.Namespace) -> int:
        from ..errors import FuncnetError
        from ..models import load
        from . import Fingerprint, compare, fingerprint, is_fingerprint_file
        from .compare import TOP_M

        log = (lambda s: print(s, file=sys.stderr)) if args.json else print
        if is_fingerprint_file(args.victim):
            victim = Fingerprint.load(args.victim)
            log(f"victim: loaded {victim!r}")
        else:
            texts = _read_texts(args.texts) if args.texts else None
            victim = fingerprint(load(args.victim), texts, n_networks=args.n_networks, name=str(args.victim))
            log(f"victim: {victim!r}")
        payload: dict = {"victim": args.victim}
        lines = []
        if args.save:
            victim.save(args.save)
            payload["saved"] = args.save
            lines.append(f"victim fingerprint saved to {args.save}")
        if args.suspect is None:
            if not args.save:
                raise FuncnetError("nothing to do: pass --suspect to compare, or --save to store the fingerprint")
            emit(args, payload, lines)
            return 0
        suspect = fingerprint(load(args.suspect), list(victim.texts), n_networks=victim.n_networks,
                              random_state=int(victim.params.get("random_state", 666)), name=str(args.suspect))
        res = compare(victim, suspect, top_m=args.top_m or TOP_M, n_null=args.n_null)
        payload.update({"suspect": args.suspect, **res.to_dict()})
        lines += [f"score   {res.score:.3f}  (mean |rho| of the top {res.settings['top_m']} matched networks)",
                  f"p-value {res.p_value:.4f}  (circular-shift null, mean {res.null_mean:.3f}, "
                  f"99th pct {res.null_q99:.3f}; margin {res.margin:+.3f})",
                  f"verdict {res.verdict}"]
        emit(args, payload, lines)
        return 0

    return run
