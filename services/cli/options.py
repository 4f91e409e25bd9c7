"""How a command group declares its subcommands: a help line, examples, the connection options, --json."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable


class CommandParser(argparse.ArgumentParser):
    """The parser of one subcommand. Its `deferred` options are added only once this subcommand is parsed
    or its help shown: another tool's own command line (bench, projector), whose imports every
    `autotune --help` would otherwise pay for."""

    def __init__(self, *args, deferred: Callable[[argparse.ArgumentParser], None] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._deferred = deferred

    def _complete(self) -> None:
        if self._deferred is not None:
            add, self._deferred = self._deferred, None
            add(self)

    def parse_known_args(self, args=None, namespace=None):  # the subparsers action parses a subcommand with this
        self._complete()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self._complete()
        return super().format_usage()

    def format_help(self) -> str:
        self._complete()
        return super().format_help()


def add_command(
    sub: argparse._SubParsersAction, name: str, help_: str, examples: str, func: Callable[[argparse.Namespace], int], *, connects: bool = True,
    deferred: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.ArgumentParser:
    """`autotune NAME`: `func(args)` runs it and returns the exit code; its --help ends with `examples`."""
    p = sub.add_parser(
        name, help=help_, description=help_, epilog="examples:\n" + textwrap.indent(examples.strip(), "  "),
        formatter_class=argparse.RawDescriptionHelpFormatter, deferred=deferred,
    )  # fmt: skip
    p.set_defaults(func=func)
    if connects:
        p.add_argument("--nats", help="NATS URL (default: the stack `autotune up` started, else $AUTOTUNE_NATS_URL)")
        p.add_argument("--data-dir", help="data directory (default: ~/.local/share/autotune)")
    return p


def json_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON (the HTTP API's shapes) instead of tables")
