"""The ``tl-funcnet`` command line (also ``python -m tl_funcnet``): one module per feature, each registering
its subcommands. Feature packages never import the CLI; the CLI imports them only when a command runs.

Every error ends the command with one line on stderr and a non-zero exit code: 2 for bad arguments or input
(checked before any model is loaded or anything is written), 1 for anything unexpected (set
``TL_FUNCNET_TRACEBACK=1`` to see the traceback).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Sequence

# importing a command module registers its subcommands; this order is the order of --help
from . import info  # noqa: F401,I001
from . import demo  # noqa: F401
from . import funcnet  # noqa: F401
from . import pruning  # noqa: F401
from . import fingerprint  # noqa: F401
from . import patching  # noqa: F401
from . import circuits  # noqa: F401
from . import sae  # noqa: F401
from . import steering  # noqa: F401
from . import dashboards  # noqa: F401
from ._base import COMMANDS, Handler, traceback_wanted

PROG = "tl-funcnet"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``tl-funcnet <cmd>: error: <what>``, exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Handler]]:
    """The parser with every registered subcommand, and each subcommand's handler."""
    parser = _Parser(prog=PROG, description="tl_funcnet: interpretability interventions for TransformerLens models")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    handlers = {name: add_args(sub.add_parser(name, help=help_text, description=help_text))
                for name, (add_args, help_text) in COMMANDS.items()}
    return parser, handlers


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns the exit code."""
    from ..errors import FuncnetError

    parser, handlers = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # reported by the subcommand, like its other argument errors: `tl-funcnet <cmd>: error: ...`
            commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
            commands.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as stop:
        return int(stop.code or 0)
    where = f"{PROG} {args.command}"
    with warnings.catch_warnings():  # only for this command: library deprecation chatter is not for CLI users
        for category in (DeprecationWarning, FutureWarning, PendingDeprecationWarning):
            warnings.simplefilter("ignore", category)
        # what sae-lens says on purpose when train-sae hands it a model and a token dataset
        warnings.filterwarnings("ignore", message=r".*(pretokenized dataset|fewer samples|context_size).*")
        warnings.filterwarnings("ignore", category=UserWarning, module=r"sae_lens\..*")
        try:
            return int(handlers[args.command](args) or 0)
        except FuncnetError as err:
            print(f"{where}: error: {_one_line(err)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"{where}: interrupted", file=sys.stderr)
            return 130
        except Exception as err:  # noqa: BLE001 - one line for users; the traceback on request
            if traceback_wanted():
                raise
            print(f"{where}: error: {type(err).__name__}: {_one_line(err)} (set TL_FUNCNET_TRACEBACK=1 for details)",
                  file=sys.stderr)
            return 1


def _one_line(err: BaseException) -> str:
    """The message on one line, in the command line's words (``--overwrite``, not ``overwrite=True``)."""
    return " ".join(str(err).split()).replace("pass overwrite=True", "pass --overwrite")


__all__ = ["main", "build_parser", "COMMANDS"]
