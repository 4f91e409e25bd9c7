"""What the CLI, the API and the agent tools pass in and get back, and the log of one operation.

`Recorder` times each step, tells the caller (`on_step`, e.g. the CLI printing a line) and records it
as an event (`host.deploy_started` / `deploy_step` / `deploy_finished`), so the dashboard can show a
deploy as it happens and the log keeps who did what, when, with which release, and how it ended.
A dry run records nothing.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import msgspec

from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from autotune.shared import bus
from autotune.shared.log import get_logger

log = get_logger("deploy")


class DeployRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`autotune deploy` / POST /api/hosts/deploy."""

    target: str  # ssh://user@host[:port]
    host: str  # the host's name in the fleet
    identity: str | None = None  # private key file (default: the SSH agent and ~/.ssh keys)
    known_hosts: str | None = None  # default ~/.ssh/known_hosts
    accept_new_host_key: bool = False
    simulate: str | None = None  # e.g. 4xH100: simulated GPUs (hosts without GPUs)
    time_scale: float | None = None  # simulated engines' time compression
    via: str = "direct"  # direct | ssh-tunnel
    offline: bool = False  # the controller uploads every wheel; the host needs no internet
    dry_run: bool = False
    rollback: bool = False  # switch back to the previous release
    prefix: str | None = None  # default /opt/autotune (root) or ~/.local/share/autotune-node
    node_nats: str | None = None  # the NATS URL(s) the host connects to (default: the controller's, as the host reaches it)
    tunnel_port: int = 14222  # --via ssh-tunnel: the port on the host's loopback that leads to NATS
    wheel: str | None = None  # deploy this wheel instead of building one of the running autotune
    lock: str | None = None  # its uv.lock (default: the checkout's)
    timeout_s: float = 120.0  # for the registration
    drain_timeout_s: float = 600.0  # an upgrade waits this long for running experiments to finish
    env: dict[str, str] = {}  # extra AUTOTUNE_* settings for the node's services
    requested_by: str = ""


class UndeployRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`autotune undeploy` / DELETE /api/hosts/{host}?undeploy=true."""

    host: str
    target: str | None = None  # default: where the log says it was deployed
    identity: str | None = None
    known_hosts: str | None = None
    force: bool = False  # the machine is gone: only remove the host from the fleet and revoke its users
    drain_timeout_s: float = 600.0
    dry_run: bool = False
    requested_by: str = ""


class StepReport(msgspec.Struct, kw_only=True):
    step: str
    status: str  # done | skipped | failed | planned
    seconds: float = 0.0
    detail: str = ""


class Outcome(msgspec.Struct, kw_only=True):
    """How a deploy, upgrade, rollback or undeploy ended (also what --json prints)."""

    deploy: str
    host: str
    action: str
    outcome: str  # succeeded | unchanged | failed | rolled_back | planned (dry run)
    target: str = ""
    machine: str = ""
    version: str = ""
    release: str = ""
    previous_release: str = ""
    via: str = "direct"
    prefix: str = ""
    mode: str = ""  # systemd | daemon
    message: str = ""
    seconds: float = 0.0
    steps: list[StepReport] = []
    log_tail: list[str] = []
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return self.outcome in ("succeeded", "unchanged", "planned")


class Refused(ValueError):
    """Refused before the machine was changed (bad input, preflight); nothing was done."""


def with_ssh_defaults(req):
    """The controller's SSH key and known_hosts from its environment when the request names none
    (AUTOTUNE_SSH_IDENTITY, AUTOTUNE_SSH_KNOWN_HOSTS): how the API process is told which key to use."""
    return msgspec.structs.replace(
        req, identity=req.identity or os.environ.get("AUTOTUNE_SSH_IDENTITY") or None,
        known_hosts=req.known_hosts or os.environ.get("AUTOTUNE_SSH_KNOWN_HOSTS") or None,
    )


def who(surface: str) -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()} ({surface})"


def new_id(host: str) -> str:
    return f"{host}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{os.urandom(2).hex()}"


OnStep = Callable[[StepReport], Awaitable[None] | None]


class Recorder:
    def __init__(self, js, host: str, deploy: str, *, on_step: OnStep | None = None, dry_run: bool = False, requested_by: str = "") -> None:
        self.js = js
        self.requested_by = requested_by
        self.host = host
        self.deploy = deploy
        self.on_step = on_step
        self.dry_run = dry_run
        self.steps: list[StepReport] = []
        self.t0 = time.monotonic()
        self._n = 0
        self.started = False

    async def _publish(self, what: str, e: ev.Event) -> None:
        if self.dry_run or self.js is None:
            return
        try:
            await bus.append(self.js, subj.host(self.host, what), e)
        except Exception as err:  # the operation goes on; the log misses one record, and says so here
            log.warning("could not record a deploy event", host=self.host, deploy=self.deploy, event=what, error=repr(err))

    def _id(self, what: str) -> str:
        self._n += 1
        return f"host.{self.host}.deploy.{self.deploy}.{self._n}.{what}"

    async def start(self, **fields) -> None:
        self.started = True
        e = ev.HostDeployStarted(id=self._id("started"), host=self.host, deploy=self.deploy, requested_by=self.requested_by, **fields)
        await self._publish("deploy_started", e)
        for r in self.steps:  # what was done before anything changed (the preflight) is recorded now
            await self._publish_step(r)

    async def step(self, step: str, status: str, seconds: float = 0.0, detail: str = "") -> None:
        r = StepReport(step=step, status=status, seconds=round(seconds, 2), detail=detail)
        self.steps.append(r)
        if self.on_step is not None:
            got = self.on_step(r)
            if got is not None:
                await got
        if self.started:
            await self._publish_step(r)

    async def _publish_step(self, r: StepReport) -> None:
        e = ev.HostDeployStep(id=self._id(r.step), host=self.host, deploy=self.deploy, step=r.step, status=r.status, seconds=r.seconds, detail=r.detail[:2000])
        await self._publish("deploy_step", e)

    @contextlib.asynccontextmanager
    async def timed(self, step: str) -> AsyncIterator[list[str]]:
        """Time a step; the body may append a detail line. An exception marks it failed and propagates."""
        t0 = time.monotonic()
        detail: list[str] = []
        try:
            yield detail
        except BaseException as e:
            await self.step(step, "failed", time.monotonic() - t0, "; ".join([*detail, str(e).splitlines()[0] if str(e) else type(e).__name__]))
            raise
        await self.step(step, "done", time.monotonic() - t0, "; ".join(detail))

    async def finish(self, out: Outcome) -> Outcome:
        out.seconds = round(time.monotonic() - self.t0, 2)
        out.steps = list(self.steps)
        if self.started:
            await self._publish(
                "deploy_finished",
                ev.HostDeployFinished(
                    id=self._id("finished"), host=self.host, deploy=self.deploy, action=out.action, outcome=out.outcome, target=out.target,
                    machine=out.machine, version=out.version, release=out.release, previous_release=out.previous_release, via=out.via,
                    prefix=out.prefix, message=out.message[:4000], seconds=out.seconds, steps={s.step: s.seconds for s in self.steps if s.status == "done"},
                    requested_by=self.requested_by,
                ),
            )
        return out
