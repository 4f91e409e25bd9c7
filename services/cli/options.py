"""How a command group declares its subcommands: a help line, examples, the connection options, --json."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable


def add_command(
    sub: argparse._SubParsersAction, name: str, help_: str, examples: str, func: Callable[[argparse.Namespace], int], *, connects: bool = True,
) -> argparse.ArgumentParser:
    """`autotune NAME`: `func(args)` runs it and returns the exit code; its --help ends with `examples`."""
    p = sub.add_parser(
        name, help=help_, description=help_, epilog="examples:\n" + textwrap.indent(examples.strip(), "  "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=func)
    if connects:
        p.add_argument("--nats", help="NATS URL (default: the stack `autotune up` started, else $AUTOTUNE_NATS_URL)")
        p.add_argument("--data-dir", help="data directory (default: ~/.local/share/autotune)")
    return p


def json_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON (the HTTP API's shapes) instead of tables")
