"""Tools with command lines of their own: bench (the benchmark client alone) and projector maintenance."""

from __future__ import annotations

import argparse
import os

from autotune.cli.connection import stack_settings
from autotune.cli.options import add_command


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "bench", "benchmark a running OpenAI-compatible server",
                    "autotune bench --url http://127.0.0.1:30000 --model M --concurrency 1 8", bench, connects=False)  # fmt: skip
    p.add_argument("rest", nargs=argparse.REMAINDER)

    p = add_command(sub, "projector", "projector maintenance (rebuild the read model from the log, snapshot, checksum)",
                    "autotune projector rebuild\nautotune projector snapshot /tmp/x.duckdb", projector, connects=False)  # fmt: skip
    p.add_argument("rest", nargs=argparse.REMAINDER)


def bench(args: argparse.Namespace) -> int:
    from autotune.bench.cli import bench_main

    return bench_main(args.rest)


def projector(args: argparse.Namespace) -> int:
    from autotune.projector.cli import projector_main

    os.environ.setdefault("AUTOTUNE_NATS_URL", stack_settings(args).nats_url)  # the stack `autotune up` started
    return projector_main(args.rest)
