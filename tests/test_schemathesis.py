"""Property-based tests of the HTTP API from its own OpenAPI document (schemathesis): whatever a client
sends that the document allows — and much that it does not — the answer is never a 5xx.

The API runs for real (uvicorn, a real nats-server, a real projector, a fleet and a task in the log).
A few hundred generated requests by default; AUTOTUNE_FUZZ_EXAMPLES=5000 for a longer run."""

from __future__ import annotations

import asyncio
import os
import time

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed (uv sync installs the dev group)")

from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from autotune.api.app import create_app  # noqa: E402
from autotune.shared import bus  # noqa: E402
from autotune.shared.natsserver import NatsServer  # noqa: E402
from autotune.shared.net import free_port  # noqa: E402
from autotune.shared.provision import provision  # noqa: E402
from autotune.shared.settings import Settings  # noqa: E402
from tests.fixtures.api_kit import TOKEN, Background, alive, applied, seed_fleet  # noqa: E402

OPENAPI = create_app(nc=None, settings=Settings()).openapi_schema.to_schema()  # the document the server serves
OPERATIONS = sum(len(methods) for methods in OPENAPI["paths"].values())
EXAMPLES = max(2, int(os.environ.get("AUTOTUNE_FUZZ_EXAMPLES", "240")) // OPERATIONS)

schema = schemathesis.openapi.from_dict(OPENAPI)


@pytest.fixture(scope="module")
def api_url(tmp_path_factory):
    """nats-server, a projector and the API under uvicorn, each service on its own thread and loop."""
    import uvicorn

    from autotune.projector.service import run as projector_run
    from autotune.schemas.spec import spec_from_obj
    from autotune.shared import commands
    from tests.helpers import small_spec

    tmp = tmp_path_factory.mktemp("fuzz")
    with NatsServer(tmp / "nats") as server:
        s = Settings(nats_url=server.url, data_dir=str(tmp), api_token=TOKEN, host_ttl_s=3600)

        async def seed() -> None:  # something to find: a task with experiments, two hosts, samples, logs
            nc = await bus.connect(s, "seed")
            js = nc.jetstream()
            await provision(js, s)
            await commands.submit_task(js, spec_from_obj(small_spec("fuzz")), submitted_by="test")
            last = await seed_fleet(js, "fuzz")
            await alive(js, "h1", running=["fuzz/1/0"])
            await applied(nc, last)
            await nc.close()

        projector = Background(lambda stop: projector_run(s, stop=stop, db_path=str(tmp / "view.duckdb")))
        port = free_port()

        async def serve(stop: asyncio.Event) -> None:
            srv = uvicorn.Server(uvicorn.Config(create_app(nc=None, settings=s), host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
            srv.install_signal_handlers = lambda: None  # type: ignore[method-assign]
            task = asyncio.create_task(srv.serve())
            await stop.wait()
            srv.should_exit = True
            await task

        api = Background(serve)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "the API did not come up"
                time.sleep(0.1)
            asyncio.run(seed())
            yield url
        finally:
            api.close()
            projector.close()


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_no_request_gets_a_server_error(case, api_url):
    if case.query and str(case.query.get("follow", "")).lower() in ("true", "1"):
        case.query["follow"] = "false"  # a live stream never ends by itself; the API tests cover following
    case.call_and_validate(base_url=api_url, headers={"Authorization": f"Bearer {TOKEN}"}, checks=[not_a_server_error], timeout=30)
