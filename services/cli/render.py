"""How the CLI shows things: tables, --json, cells, times. Rich is imported only when something is drawn."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from autotune.cli.connection import EXIT_OK

SIMULATED = "[SIMULATED engines and GPUs]"
REAL_CPU = "[REAL engine on CPU: speeds say nothing about GPUs]"


def console():
    from rich.console import Console

    return Console(width=max(120, os.get_terminal_size().columns if sys.stdout.isatty() else 200), highlight=False)


def dump(value: Any) -> None:
    """--json: the value in the HTTP API's shape, on one line."""
    import msgspec

    print(json.dumps(msgspec.to_builtins(value), default=str))


def shown(args: argparse.Namespace, value: Any, show: Callable[[], None]) -> int:
    """How a command that reads something ends: --json prints `value`, otherwise `show()` draws it."""
    if args.json:
        dump(value)
    else:
        show()
    return EXIT_OK


def cell(v: Any, digits: int = 4) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 10_000 else f"{v:.{digits}g}"
    if isinstance(v, dict):
        return " ".join(f"{k}={x}" for k, x in v.items() if not str(k).startswith("__"))
    if isinstance(v, list):
        return ",".join(str(x) for x in v)
    return str(v)


def table(title: str | None, columns: list[str], rows: list[list[Any]]):
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*[cell(v) for v in r])
    return t


def print_rows(res, as_json: bool, title: str | None = None) -> None:
    """A query result as a table, or as a JSON list of objects."""
    rows = res.rows_as_dicts()
    if as_json:
        print(json.dumps(rows, default=str))
        return
    console().print(table(title, res.columns, res.rows))


def ago(ts: str | None) -> str:
    if not ts:
        return ""
    try:
        t = datetime.fromisoformat(ts)
    except ValueError:
        return ts
    s = (datetime.now(UTC) - t).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s / size:.0f}{unit} ago"
    return f"{max(s, 0):.0f}s ago"


def when(text: str) -> datetime:
    """`10m`, `2h`, `1d`, `30s` ago, or an ISO 8601 time (an argparse type)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if m:
        size = {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return datetime.now(UTC) - timedelta(seconds=float(m.group(1)) * size)
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"`{text}` is neither a duration (10m, 2h, 1d) nor an ISO 8601 time") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def span(seconds: float | None) -> str:
    """A duration as the largest whole unit: 30d, 2h, 90s; `none` for 0 or None."""
    if not seconds:
        return "none"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:g}s"
