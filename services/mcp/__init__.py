"""autotune's tools for LLM agents over the Model Context Protocol (the official `mcp` SDK).

`autotune mcp` serves them over stdio; the API mounts them over streamable HTTP at `/mcp`, behind its
token. The tools are thin adapters over the read side (`autotune.reads`) and the command side
(`autotune.shared.commands`); their results are the shapes of the CLI's `--json` output with a short
summary an agent can quote. Tools that change the fleet or stop work are annotated destructive and
registered only when the server is started to allow them.

Modules: registry.py (Link, the @tool registry, answers and errors), fleet.py, tasks.py, data.py
(the tools and resources), server.py (build_server), stdio.py (`autotune mcp`), http.py (the ASGI
endpoint the API mounts). The SDK's own package is also called `mcp`; this one is `autotune.mcp`, so
the two never meet in an import.
"""

from __future__ import annotations

from autotune.mcp.registry import Link
from autotune.mcp.server import build_server, fixed_link

__all__ = ["Link", "build_server", "fixed_link"]
