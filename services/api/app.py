"""The HTTP API (Litestar). It never owns state: it validates, publishes events, and reads through the
projector's query service (`autotune.query.sql`), passing the sequence of its own last publish as
`min_seq` so a GET right after a POST sees the change. Live views stream from JetStream (SSE).

    app = create_app(nc=await bus.connect(settings, "api"), settings=settings)

One controller per resource: tasks.py, experiments.py, hosts.py, system.py (events, SQL, health).
Every error is JSON (`models.ApiError`); mutating calls need the bearer token when one is set.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import msgspec
from litestar import Litestar, asgi
from litestar.config.cors import CORSConfig
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.types import Receive, Scope, Send
from nats.aio.client import Client as NATS

from autotune import __version__, dashboard
from autotune.api.common import BEARER, EXCEPTION_HANDLERS, requires_token
from autotune.api.deploys import DeployController
from autotune.api.experiments import ExperimentController
from autotune.api.hosts import GpuController, HostController
from autotune.api.metrics import metrics
from autotune.api.system import EventController, SystemController
from autotune.api.tasks import TaskController
from autotune.mcp import build_server, fixed_link
from autotune.mcp.http import McpEndpoint
from autotune.metrics import Metrics
from autotune.schemas.spec import TaskSpec
from autotune.shared import bus
from autotune.shared.provision import provision
from autotune.shared.settings import Settings

DESCRIPTION = """Tune LLM inference engines (SGLang, vLLM) by experiment.

Submit a task file (the original autotuner's format, JSON or YAML), follow its experiments, export
the best configuration. Everything is read from the event log's projection; live views are SSE
streams from the log itself. Mutating calls need `Authorization: Bearer <token>` when a token is set.
"""


def _spec_components() -> dict:
    """The task spec's JSON schema (from the msgspec Structs users' files are decoded into)."""
    _, components = msgspec.json.schema_components([TaskSpec], ref_template="#/components/schemas/Spec{name}")
    return {f"Spec{name}": schema for name, schema in components.items()}


def create_app(*, nc: NATS | None, settings: Settings, debug: bool = False, metrics_max_age_s: float = 5.0) -> Litestar:
    """The API over `nc`; with `nc=None` it connects (and provisions) in its own lifespan and drains
    the connection at shutdown — what a test client that runs the app in its own event loop needs."""

    @contextlib.asynccontextmanager
    async def nats_connection(app: Litestar) -> AsyncIterator[None]:
        if app.state.nc is not None:
            yield
            return
        conn = await bus.connect(settings, "api")
        try:
            await provision(conn.jetstream(), settings)
            app.state.nc = conn
            yield
        finally:
            app.state.nc = None
            await bus.close(conn)

    # the MCP tools over streamable HTTP, on the API's own connection, behind its token
    mcp = McpEndpoint(
        build_server(fixed_link(lambda: app.state.nc, settings), allow_fleet_changes=settings.mcp_allow_fleet_changes), token=settings.api_token
    )

    @asgi("/mcp", is_mount=True, copy_scope=True, guards=[requires_token], include_in_schema=False)
    async def mcp_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        await mcp(scope, receive, send)

    @contextlib.asynccontextmanager
    async def mcp_sessions(_: Litestar) -> AsyncIterator[None]:
        async with mcp.running():
            yield

    app = Litestar(
        lifespan=[nats_connection, mcp_sessions],
        route_handlers=[TaskController, ExperimentController, DeployController, HostController, GpuController, EventController, SystemController, metrics, mcp_endpoint,
                        *dashboard.route_handlers()],
        template_config=dashboard.template_config(),
        openapi_config=OpenAPIConfig(
            title="autotune",
            version=__version__,
            description=DESCRIPTION,
            path="/schema",
            components=Components(
                security_schemes={BEARER: SecurityScheme(type="http", scheme="bearer", description="the token `autotune up` prints")},
            ),
            render_plugins=[SwaggerRenderPlugin()],
        ),
        cors_config=CORSConfig(allow_origins=["*"], allow_headers=["Authorization", "Content-Type", "Last-Event-ID"]),
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=4 * 1024 * 1024,
        debug=debug,
        logging_config=None,  # its default re-formats the root logger; autotune's own setup stays (errors: common.py logs them)
    )
    # Litestar builds the components from the handlers' types; the submit body is read raw (JSON or
    # YAML), so the task spec's schema is added to the document here.
    app.openapi_schema.components.schemas.update(_spec_components())  # type: ignore[arg-type]
    app.state.nc = nc
    app.state.settings = settings
    app.state.last_seq = 0
    app.state.metrics = Metrics(max_age_s=metrics_max_age_s)
    app.state.deploys = {}  # host → the deploy running in this process (api/deploys.py)
    return app
