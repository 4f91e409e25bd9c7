"""The MCP server: autotune's tools and resources on the official MCP SDK's `MCPServer`, whatever
the transport (stdio in stdio.py, streamable HTTP in http.py, in memory in the tests)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

from mcp.server import MCPServer

from autotune import __version__
from autotune.mcp import data, fleet, tasks  # noqa: F401  - importing them registers their tools
from autotune.mcp.registry import TOOLS, Link
from autotune.shared.settings import Settings

INSTRUCTIONS = """autotune finds the best serving configuration of an LLM inference engine (SGLang, vLLM) by running
real experiments on a fleet of GPU hosts. To tune: read the resource autotune://docs/task-file, write a
task file, check it with validate_task, submit it with submit_task, follow it with get_task (wait_s waits
for its end), compare experiments with list_experiments and get_experiment, and take the winner with
best_config. Results measured on simulated engines and GPUs say SIMULATED. Tools that change the fleet or
stop work (drain_host, remove_host, cancel_task, deploy_host, undeploy_host) exist only when the server was
started to allow them."""


def build_server(link: Callable[[], AbstractAsyncContextManager[Link]], *, allow_fleet_changes: bool = False) -> MCPServer:
    """The server. `link` opens how the tools reach autotune for the server's lifetime; the tools that
    change the fleet or stop work are registered only with `allow_fleet_changes`."""

    @contextlib.asynccontextmanager
    async def lifespan(_: MCPServer) -> AsyncIterator[Link]:
        async with link() as opened:
            yield opened

    server = MCPServer("autotune", title="autotune", version=__version__, instructions=INSTRUCTIONS, lifespan=lifespan)
    order = [fleet.__name__, tasks.__name__, data.__name__]  # fleet, then tasks, then data, as the README lists them
    for t in sorted(TOOLS, key=lambda t: order.index(t.fn.__module__)):
        if t.changes_fleet and not allow_fleet_changes:
            continue
        server.add_tool(t.fn, name=t.name, title=t.title, annotations=t.annotations, structured_output=False)
    server.resource(data.TASK_FILE_URI, name="task-file", title="The task file reference", mime_type="text/markdown",
                    description="Every field of an autotune task file (the original autotuner's format), with units and examples")(data.task_file_reference)  # fmt: skip
    server.resource(data.TASK_SCHEMA_URI, name="task-spec-schema", title="The task file's JSON schema", mime_type="application/schema+json",
                    description="The JSON schema task files are validated against")(data.task_spec_schema)  # fmt: skip
    return server


def fixed_link(nc_of: Callable[[], object], settings: Settings | None = None) -> Callable[[], AbstractAsyncContextManager[Link]]:
    """A `link` over a connection someone else owns (the API's, a test's): nothing to open or close.
    `settings`: the stack's, for deploy_host and undeploy_host."""

    async def connect():
        return nc_of()

    @contextlib.asynccontextmanager
    async def opened() -> AsyncIterator[Link]:
        yield Link(connect, settings)

    return opened
