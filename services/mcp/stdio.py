"""`autotune mcp`: the MCP server over stdio, for an agent on this machine. stdout carries the
protocol; logs go to stderr. NATS is connected on the first tool call (and again if it was lost),
so an agent started before `autotune up` gets a clear message instead of a dead server."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator

import anyio
from nats.aio.client import Client as NATS

from autotune.mcp.registry import UNREACHABLE, Link
from autotune.mcp.server import build_server
from autotune.shared import bus
from autotune.shared.log import get_logger, setup_logging
from autotune.shared.settings import Settings

log = get_logger("mcp")


def without_password(urls: str) -> str:
    """NATS URLs as they may be shown: a secure stack's URL carries the role's password."""
    return ",".join(re.sub(r"//[^@/]*@", "//", u) for u in urls.split(","))


class Connection:
    """One NATS connection, made when first needed and made again once it is closed."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.nc: NATS | None = None
        self.lock = asyncio.Lock()

    async def get(self) -> NATS:
        async with self.lock:
            if self.nc is None or self.nc.is_closed:
                try:
                    self.nc = await bus.connect(self.settings, "mcp", connect_timeout=3, max_reconnect_attempts=3)
                except Exception:
                    raise ConnectionError(UNREACHABLE.format(f"cannot reach NATS at {without_password(self.settings.nats_url)}")) from None
            return self.nc

    async def close(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            await bus.close(self.nc)


def serve(settings: Settings, *, allow_fleet_changes: bool = False) -> int:
    setup_logging()
    conn = Connection(settings)

    @contextlib.asynccontextmanager
    async def link() -> AsyncIterator[Link]:
        try:
            yield Link(conn.get, settings)
        finally:
            await conn.close()

    server = build_server(link, allow_fleet_changes=allow_fleet_changes)
    log.info("mcp server on stdio", nats=without_password(settings.nats_url), fleet_changes=allow_fleet_changes)
    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(server.run_stdio_async)
    return 0
