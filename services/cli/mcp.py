"""mcp: autotune's tools served to an LLM agent over MCP (stdio), from the MCP server's package."""

from __future__ import annotations

import argparse

from autotune.cli.connection import stack_settings
from autotune.cli.options import add_command


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "mcp", "serve autotune's tools to an LLM agent over MCP (stdio): hosts, tasks, experiments, SQL",
                    "autotune mcp\nautotune mcp --allow-fleet-changes   # also drain_host, remove_host, cancel_task\n"
                    'claude mcp add autotune -- uv run --directory /path/to/autotune autotune mcp', mcp)  # fmt: skip
    p.add_argument("--allow-fleet-changes", action="store_true", help="offer the tools that change the fleet or stop work (drain_host, remove_host, cancel_task)")


def mcp(args: argparse.Namespace) -> int:
    from autotune.mcp.stdio import serve

    return serve(stack_settings(args), allow_fleet_changes=args.allow_fleet_changes)
