"""Deploying hosts through the API: the same operations as `autotune deploy` / `undeploy` (autotune.deploy),
behind the admin token. A request is answered once the preflight has passed (202, the operation's id),
or refused with what was wrong (400); the rest runs in this process, and its progress is in the log
as `host.deploy_*` events (GET /api/events?subject=autotune.host.<host>.>)."""

from __future__ import annotations

import asyncio
import contextlib

import msgspec
from litestar import Controller, Request, post
from litestar.exceptions import ClientException
from litestar.params import JSONBody

from autotune.api.common import SECURED, requires_admin
from autotune.shared.log import get_logger

log = get_logger("api")


class DeployBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /api/hosts/deploy: what `autotune deploy` takes (paths are on the API's machine)."""

    target: str
    host: str
    identity: str | None = None
    known_hosts: str | None = None
    accept_new_host_key: bool = False
    simulate: str | None = None
    time_scale: float | None = None
    via: str = "direct"
    offline: bool = False
    dry_run: bool = False
    rollback: bool = False
    prefix: str | None = None
    node_nats: str | None = None
    tunnel_port: int = 14222
    timeout_s: float = 120.0
    drain_timeout_s: float = 600.0


class DeployStarted(msgspec.Struct, kw_only=True):
    """The operation passed its preflight and runs; follow `events`. A dry run answers with its plan instead."""

    id: str
    host: str
    action: str
    status: str  # running | planned
    events: str
    plan: list[str] = []


async def start(request: Request, host: str, run) -> DeployStarted:
    """Run `run(controller)` in the background; answer once its preflight is done (or it ended)."""
    from autotune import deploy as d

    ops: dict[str, asyncio.Task] = request.app.state.deploys
    if (busy := ops.get(host)) is not None and not busy.done():
        raise ClientException(status_code=409, detail=f"a deploy of host `{host}` is already running; follow /api/events?subject=autotune.host.{host}.>")
    settings = request.app.state.settings
    preflight = asyncio.Event()

    def on_step(step) -> None:
        if step.step == "preflight":
            preflight.set()

    ctl = d.Controller.of(request.app.state.nc.jetstream(), settings, on_step)
    task = asyncio.create_task(run(ctl), name=f"deploy-{host}")
    ops[host] = task
    waiter = asyncio.create_task(preflight.wait())
    await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    events = f"/api/events?subject=autotune.host.{host}.>"
    if task.done():
        try:
            out = task.result()
        except (d.Refused, d.BadInput) as e:
            raise ClientException(status_code=400, detail=str(e)) from None
        return DeployStarted(id=out.deploy, host=host, action=out.action, status=out.outcome, events=events, plan=out.message.splitlines() if out.dry_run else [])
    task.add_done_callback(lambda t: _logged(host, t))
    return DeployStarted(id="", host=host, action="", status="running", events=events)


def _logged(host: str, t: asyncio.Task) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        if (e := t.exception()) is not None:
            log.error("deploy failed", host=host, error=str(e)[:500])
        else:
            out = t.result()
            log.info("deploy finished", host=host, action=out.action, outcome=out.outcome)


class DeployController(Controller):
    path = "/api/hosts"
    tags = ["hosts"]

    @post("/deploy", operation_id="deployHost", status_code=202, guards=[requires_admin], security=SECURED,
          summary="Install autotune on a host over SSH, start its node, verify it registers (upgrade, roll back)")  # fmt: skip
    async def deploy(self, request: Request, data: JSONBody[DeployBody]) -> DeployStarted:
        from autotune import deploy as d

        req = d.DeployRequest(**msgspec.structs.asdict(data), requested_by=d.who("api"))
        try:
            from autotune.deploy.engine import check_request

            check_request(req)
        except d.BadInput as e:
            raise ClientException(status_code=400, detail=str(e)) from None
        return await start(request, req.host, lambda ctl: d.deploy(req, ctl))


async def undeploy(request: Request, host: str, *, force: bool) -> DeployStarted:
    from autotune import deploy as d

    req = d.UndeployRequest(host=host, force=force, requested_by=d.who("api"))
    return await start(request, host, lambda ctl: d.undeploy(req, ctl))
