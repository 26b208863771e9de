"""``tl-funcnet fingerprint``: does a suspect model derive from a victim model (or a saved victim fingerprint)?
With ``--register`` the victim's fingerprint joins a registry; with ``--registry`` a suspect is ranked against
every model registered there."""

from __future__ import annotations

import argparse
from typing import Any

from ._base import (Handler, add_json, add_model, check_model, check_out, check_texts, command, emit,
                    log_for, positive_int)

DEFAULT_N_NETWORKS = 64


@command("fingerprint", "functional-network fingerprint: compare a suspect model with a victim model or a saved "
                        "victim fingerprint, or rank it against a registry of fingerprints")
def _fingerprint(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("--victim", default=None,
                   help="model name, saved model folder, or a fingerprint file (.safetensors from --save)")
    p.add_argument("--suspect", default=None, help="model name or saved model folder (omit to only --save or "
                   "--register)")
    p.add_argument("--texts", default=None, help="split name, text file/folder or .jsonl (default: 10 built-in "
                   "passages; ignored when the victim is a fingerprint file, whose texts are used)")
    p.add_argument("--n-networks", type=positive_int, default=None, help=f"default {DEFAULT_N_NETWORKS}")
    p.add_argument("--top-m", type=positive_int, default=None,
                   help="matched pairs averaged into the score (default 16)")
    p.add_argument("--n-null", type=positive_int, default=200, help="circular-shift null samples for the p-value")
    p.add_argument("--tokenizer", choices=("model", "chars"), default=None,
                   help="'chars' (one token per character) for models without a tokenizer; default: the model's "
                        "own, or what the victim's / registered fingerprints were recorded with")
    p.add_argument("--save", default=None, help="write the victim fingerprint to this file")
    p.add_argument("--register", default=None, metavar="DIR_OR_URL",
                   help="add the victim's fingerprint to this registry (a folder or fsspec URL; created if absent)")
    p.add_argument("--name", default=None, help="the victim's name in --register (default: from --victim)")
    p.add_argument("--registry", default=None, metavar="DIR_OR_URL",
                   help="rank --suspect against every fingerprint in this registry (no --victim)")
    p.add_argument("--overwrite", action="store_true", help="replace a fingerprint file at --save, or the entry "
                   "of the same name in --register")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=positive_int, default=None,
                       help="run --registry / --register chunks on this many worker processes")
    where.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="run --registry / --register chunks on a Dask scheduler (e.g. tcp://host:8786)")
    add_model(p, model=False)
    add_json(p)

    def run(args: argparse.Namespace) -> int:
        _check_modes(args)
        if args.registry is not None:
            return _rank(args)
        return _victim(args)

    return run


def _check_modes(args: argparse.Namespace) -> None:
    """Refuse combinations of options that do not go together (before anything is read)."""
    from ..errors import FuncnetError

    if args.registry is not None:
        if args.suspect is None:
            raise FuncnetError("--registry ranks a --suspect against every registered model: pass --suspect MODEL")
        for flag, value in (("--victim", args.victim), ("--register", args.register), ("--save", args.save),
                            ("--name", args.name), ("--texts", args.texts), ("--n-networks", args.n_networks)):
            if value is not None:
                raise FuncnetError(f"{flag} does not apply to --registry (the suspect is fingerprinted on each "
                                   f"registered model's texts); to add a victim use --victim MODEL --register DIR")
        return
    if args.victim is None:
        raise FuncnetError("pass --victim (a model or fingerprint file), or --registry DIR with --suspect to rank a "
                           "suspect against a registry")
    if args.name is not None and args.register is None:
        raise FuncnetError("--name names the victim in --register DIR; pass --register too")
    if (args.workers is not None or args.scheduler is not None) and args.register is None:
        raise FuncnetError("--workers and --scheduler apply to --registry and --register")
    if args.suspect is None and not args.save and args.register is None:
        raise FuncnetError("nothing to do: pass --suspect to compare, --save to store the fingerprint, or --register "
                           "to add it to a registry")


def _tokenizer(args: argparse.Namespace, recorded: dict | None = None) -> str | None:
    """The tokenizer option: as asked, else 'chars' if the fingerprint we match was recorded that way."""
    if args.tokenizer is not None:
        return "chars" if args.tokenizer == "chars" else None
    return "chars" if recorded is not None and recorded.get("tokenizer") == "chars" else None


def _entry_name(args: argparse.Namespace) -> str:
    """The victim's registry name: --name, else the victim's folder / file stem / model name."""
    from pathlib import Path

    from ..errors import FuncnetError
    from ..fingerprint.registry import SUFFIX, check_name

    if args.name is not None:
        return check_name(args.name)
    path = Path(args.victim).expanduser()
    name = path.name if path.exists() else str(args.victim).replace("/", "--")
    name = name.removesuffix(SUFFIX)
    try:
        return check_name(name)
    except FuncnetError:
        raise FuncnetError(f"cannot name the registry entry after --victim {args.victim!r}; pass --name NAME "
                           f"(letters, digits, '.', '_', '+', '-')") from None


def _executor(args: argparse.Namespace, stack: Any) -> Any:
    """The executor --workers / --scheduler ask for (closed by ``stack``), or None."""
    from ..errors import FuncnetError

    if args.workers is not None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        return stack.enter_context(ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")))
    if args.scheduler is None:
        return None
    try:
        from distributed import Client
    except ImportError:
        raise FuncnetError("--scheduler needs Dask's distributed package: pip install 'tl_funcnet[dask]' (or use "
                           "--workers N for processes on this machine)") from None
    try:
        client = Client(args.scheduler)
    except (OSError, TimeoutError, ValueError) as err:
        raise FuncnetError(f"cannot connect to the Dask scheduler at {args.scheduler!r} ({type(err).__name__}: "
                           f"{err}); check the address (e.g. tcp://host:8786) and that the scheduler runs") from None
    stack.callback(client.close)
    return client.get_executor()


def _rank(args: argparse.Namespace) -> int:
    from contextlib import ExitStack

    from ..fingerprint import FingerprintRegistry
    from ..fingerprint.compare import TOP_M
    from ..models.ref import ModelRef

    log = log_for(args)
    check_model(args.suspect, args.backend)
    registry = FingerprintRegistry(args.registry)
    registry.verify()  # every entry's file, before any model is loaded
    options = {} if args.tokenizer is None else {"tokenizer": _tokenizer(args)}
    with ExitStack() as stack:
        executor = _executor(args, stack)
        log(f"ranking {args.suspect} against {len(registry)} registered fingerprints in {registry.location}")
        ranking = registry.rank(ModelRef(args.suspect, backend=args.backend), executor=executor,
                                top_m=args.top_m or TOP_M, n_null=args.n_null, fingerprint_options=options)
    payload = {**ranking.to_dict(), "suspect": args.suspect}
    width = max([4, *(len(name) for name in ranking.names)])
    lines = [f"suspect {args.suspect} vs {len(ranking)} registered fingerprints ({registry.location})",
             f"{'rank':>4}  {'name':<{width}}  {'score':>6}  {'p-value':>7}  verdict"]
    lines += [f"{i:>4}  {name:<{width}}  {c.score:>6.3f}  {c.p_value:>7.4f}  {c.verdict}"
              for i, (name, c) in enumerate(ranking.rows, 1)]
    emit(args, payload, lines)
    return 0


def _victim(args: argparse.Namespace) -> int:
    from contextlib import ExitStack
    from pathlib import Path

    from ..errors import FuncnetError
    from ..fingerprint import (Fingerprint, FingerprintRegistry, compare, fingerprint, fingerprint_models,
                               is_fingerprint_file)
    from ..fingerprint.compare import TOP_M
    from ..fingerprint.core import KIND
    from ..models import load
    from ..models.ref import ModelRef

    log = log_for(args)
    victim_is_file = Path(args.victim).is_file()
    if victim_is_file and not is_fingerprint_file(args.victim):
        raise FuncnetError(f"{args.victim} is a file but not a readable fingerprint (expected a .safetensors "
                           f"written by --save or Fingerprint.save); it may be corrupt")
    if not victim_is_file:
        check_model(args.victim, args.backend)
    if args.suspect is not None:
        check_model(args.suspect, args.backend)
    if args.texts is not None:
        check_texts(args.texts)
    if args.save:
        check_out(args.save, KIND, args.overwrite, folder=False)
    name = None
    if args.register is not None:
        name = _entry_name(args)
        if FingerprintRegistry.exists(args.register):
            FingerprintRegistry(args.register).check_add(name, overwrite=args.overwrite)
        else:
            FingerprintRegistry.check_create(args.register)
    n_networks = args.n_networks or DEFAULT_N_NETWORKS
    with ExitStack() as stack:
        if victim_is_file:
            victim = Fingerprint.load(args.victim)
            log(f"victim: loaded {victim!r}")
        elif args.register is not None and (args.workers is not None or args.scheduler is not None):
            executor = _executor(args, stack)
            models = {str(args.victim): ModelRef(args.victim, backend=args.backend)}
            victim = fingerprint_models(models, args.texts, n_networks=n_networks, executor=executor,
                                        tokenizer=_tokenizer(args))[str(args.victim)]
            log(f"victim: {victim!r}")
        else:
            victim = fingerprint(load(args.victim, backend=args.backend), args.texts, n_networks=n_networks,
                                 name=str(args.victim), tokenizer=_tokenizer(args))
            log(f"victim: {victim!r}")
    payload: dict = {"victim": args.victim}
    lines = []
    if args.save:
        victim.save(args.save, overwrite=args.overwrite)
        payload["saved"] = args.save
        lines.append(f"victim fingerprint saved to {args.save}")
    if args.register is not None:
        registry = FingerprintRegistry.create(args.register, exist_ok=True)
        registry.add(name, victim, overwrite=args.overwrite)
        payload.update({"registered": name, "registry": registry.location, "n_registered": len(registry)})
        lines.append(f"victim fingerprint registered as {name!r} in {registry.location} ({len(registry)} entries)")
    if args.suspect is None:
        emit(args, payload, lines)
        return 0
    suspect = fingerprint(load(args.suspect, backend=args.backend), list(victim.texts), n_networks=victim.n_networks,
                          random_state=victim.params.get("random_state", 0), name=str(args.suspect),
                          tokenizer=_tokenizer(args, victim.params))
    res = compare(victim, suspect, top_m=args.top_m or TOP_M, n_null=args.n_null)
    payload.update({"suspect": args.suspect, **res.to_dict()})
    lines += [f"score   {res.score:.3f}  (mean |rho| of the top {res.settings['top_m']} matched networks)",
              f"p-value {res.p_value:.4f}  (circular-shift null, mean {res.null_mean:.3f}, "
              f"99th pct {res.null_q99:.3f}; margin {res.margin:+.3f})",
              f"verdict {res.verdict}"]
    emit(args, payload, lines)
    return 0
