"""The API service: a NATS connection and a Litestar app under uvicorn, stopped by the stop event."""

from __future__ import annotations

import asyncio
import gc

import uvicorn

from autotune.api.app import create_app
from autotune.shared import bus
from autotune.shared.log import get_logger
from autotune.shared.provision import provision
from autotune.shared.settings import Settings

log = get_logger("api")


async def run(settings: Settings, *, stop: asyncio.Event, host: str = "127.0.0.1", port: int = 8080) -> None:
    nc = await bus.connect(settings, "api", stop=stop)
    try:
        await provision(nc.jetstream(), settings)
        app = create_app(nc=nc, settings=settings)
        # What is alive now (modules, the app, its routes: ~140,000 objects) lives as long as the
        # process: out of the collector's reach, a full collection no longer walks it (~100 ms a time
        # on a busy machine, the slowest dashboard answers).
        gc.freeze()
        server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # we own the signals
        serving = asyncio.create_task(server.serve())
        log.info("api listening", url=f"http://{host}:{port}", openapi=f"http://{host}:{port}/schema")
        await asyncio.wait([serving, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = True
        await serving
    finally:
        await bus.close(nc)
