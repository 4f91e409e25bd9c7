"""Tools with command lines of their own: bench (the benchmark client alone) and projector maintenance.

Their options are their own modules' (`add_arguments`), parsed by the `autotune` parser itself, so that
`autotune bench --url ...` and `autotune projector --db F rebuild` parse like any other command and
their --help lists them. Those modules are imported only when the subcommand is used."""

from __future__ import annotations

import argparse
import os

from autotune.cli.connection import stack_settings
from autotune.cli.options import add_command


def register(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "bench", "benchmark a running OpenAI-compatible server (an engine or the simulator)",
                "autotune bench --url http://127.0.0.1:30000 --model M --concurrency 1 8\n"
                "autotune bench --url http://127.0.0.1:30000 --model M --scenario 'D(100,100)' 'N(480,240)/(300,150)' --requests 100 --json",
                bench, connects=False, deferred=_bench_options)  # fmt: skip
    add_command(sub, "projector", "projector maintenance (rebuild the read model from the log, snapshot, checksum)",
                "autotune projector rebuild\nautotune projector snapshot /tmp/x.duckdb\nautotune projector --data-dir /srv/autotune checksum",
                projector, connects=False, deferred=_projector_options)  # fmt: skip


def _bench_options(p: argparse.ArgumentParser) -> None:
    from autotune.bench.cli import add_arguments

    add_arguments(p)


def _projector_options(p: argparse.ArgumentParser) -> None:
    from autotune.projector.cli import add_arguments

    add_arguments(p)


def bench(args: argparse.Namespace) -> int:
    from autotune.bench.cli import run

    return run(args)


def projector(args: argparse.Namespace) -> int:
    from autotune.projector.cli import run

    os.environ.setdefault("AUTOTUNE_NATS_URL", stack_settings(args).nats_url)  # the stack `autotune up` started
    return run(args)
