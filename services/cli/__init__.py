"""The `autotune` command line. Every command has --help with examples; --json for scripts.

It talks to NATS directly (the stack `autotune up` started is found through <data dir>/up.json, else
$AUTOTUNE_NATS_URL or --nats) and reads through the read side (`autotune.reads`: the projector's query
service and the liveness KV), so it needs no API server. It shows what the HTTP API shows, in the same
shapes with --json. It writes only through the command side (`autotune.shared.commands`).

Exit codes: 0 ok; 1 the thing asked for failed (task failed, query error); 2 bad input (invalid
task file, unknown task, host or experiment); 3 autotune is not reachable (no NATS / no projector).

Layout: `connection` (which stack, @nats_command, errors to exit codes), `render` (tables, --json),
`options` (how a subcommand is declared), one module per group of commands (GROUPS below), and
`watch` / `demo` (the live task view).
"""

from __future__ import annotations

import argparse
import importlib

from autotune import __version__
from autotune.cli.options import CommandParser

# Each group is a module of this package whose `register(sub)` adds its subcommands; --help lists them
# in this order. A new group of commands is one line here. Command bodies import what they need when
# they run, so building the parser (all of `autotune --help`) stays cheap.
GROUPS = (
    "stack",  # up, run, demo, streams
    "tasks",  # submit, tasks, task, cancel, clone, best
    "experiments",  # experiments, experiment, logs
    "hosts",  # hosts, host, gpus, drain, remove
    "deploy",  # deploy, undeploy, node, tunnel
    "inspect",  # events, sql, snapshot
    "mcp",  # mcp
    "tools",  # bench, projector
)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="autotune", description="Find the best serving configuration of an LLM engine by experiment.",
        epilog="Start with: autotune demo   |   autotune up   then   autotune submit examples/quickstart.yaml --watch\n"
        "Exit codes: 0 ok, 1 failed (task failed, query error), 2 bad input (invalid file, unknown task/host), 3 autotune not reachable.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    ap.add_argument("--version", action="version", version=f"autotune {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=CommandParser)
    for group in GROUPS:
        importlib.import_module(f"{__name__}.{group}").register(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args) or 0
