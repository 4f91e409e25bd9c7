"""Fleet tools: hosts, their GPUs and GPU history, the fleet's GPUs by model; drain, remove, deploy and
undeploy a host (destructive: offered only when fleet changes are allowed)."""

from __future__ import annotations

import asyncio
import contextlib
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult
from pydantic import Field

from autotune import reads
from autotune.mcp.registry import answer, link_of, tool
from autotune.reads import models as m
from autotune.shared import commands

HostId = Annotated[str, Field(description="host id, as list_hosts shows it", max_length=256)]


def _gpus(h: m.Host) -> str:
    names: dict[str, int] = {}
    for g in h.gpus:
        names[g.name or "?"] = names.get(g.name or "?", 0) + 1
    return ", ".join(f"{k}x {n}" for n, k in names.items()) or "no GPUs"


def _host_line(h: m.Host) -> str:
    util = [g.util_gpu for g in h.gpus if g.util_gpu is not None]
    return (f"{h.host} {h.status}{' SIMULATED' if h.simulated else ''} ({_gpus(h)}"
            + (f", {sum(util) / len(util):.0f}% util" if util else "") + (f", running {', '.join(h.running)}" if h.running else "") + ")")  # fmt: skip


@tool("List hosts")
async def list_hosts(
    ctx: Context,
    status: Annotated[Literal["online", "busy", "draining", "offline", "lost", "stopped", "removed"] | None, Field(description="only hosts in this status")] = None,
    include_removed: bool = False,
) -> CallToolResult:
    """The fleet's hosts with their status (online / busy / draining / offline / lost / stopped / removed) and GPUs
    (model, memory, utilization, temperature, node, the experiment holding each)."""
    link = link_of(ctx)
    nc = await link.nc()
    hosts = await reads.list_hosts(nc, nc.jetstream(), status=status, include_removed=include_removed, min_seq=link.min_seq)
    summary = f"{len(hosts)} host(s)" + (": " + "; ".join(_host_line(h) for h in hosts) if hosts else "")
    return await answer(link, summary, hosts, key="hosts")


@tool("Get one host")
async def get_host(ctx: Context, host: HostId) -> CallToolResult:
    """One host: its GPUs with model, memory, utilization and node name, which experiment holds each,
    its running and recent experiments, lifecycle and version."""
    link = link_of(ctx)
    nc = await link.nc()
    d = await reads.host_detail(nc, nc.jetstream(), host, min_seq=link.min_seq)
    held = [f"GPU {g.index} by {g.leased_by}" for g in d.gpus if g.leased_by]
    summary = (f"{_host_line(d)}; version {d.version or '?'}" + (f", node {d.node}" if d.node else "")
               + (f"; {', '.join(held)}" if held else "; no GPU held"))  # fmt: skip
    return await answer(link, summary, d)


DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*")


def when(text: str | None, field: str) -> datetime | None:
    """`10m`, `2h`, `1d`, `30s` ago, or an ISO 8601 time (UTC unless it says otherwise)."""
    if not text:
        return None
    if match := DURATION.fullmatch(text):
        size = {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
        return datetime.now(UTC) - timedelta(seconds=float(match.group(1)) * size)
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise ToolError(f"`{field}`: `{text}` is neither a duration ago (10m, 2h, 1d) nor an ISO 8601 time") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


@tool("GPU history of a host")
async def gpu_history(
    ctx: Context,
    host: HostId,
    since: Annotated[str | None, Field(description="start: a duration ago (10m, 2h, 1d) or an ISO 8601 time; default 1h ago")] = None,
    until: Annotated[str | None, Field(description="end: a duration ago or an ISO 8601 time; default now")] = None,
    bucket_s: Annotated[int | None, Field(ge=1, le=86_400 * 30, description="bucket width in seconds (default: about 200 points)")] = None,
    gpu: Annotated[int | None, Field(ge=0, le=1024, description="one GPU index (default: every GPU of the host)")] = None,
) -> CallToolResult:
    """A host's GPU telemetry over a time range, downsampled in SQL: per bucket and GPU the mean and
    max utilization, max memory used, max temperature, mean power and the number of samples."""
    link = link_of(ctx)
    h = await reads.gpu_history(await link.nc(), host, since=when(since, "since"), until=when(until, "until"), bucket_s=bucket_s, gpu=gpu,
                                min_seq=link.min_seq)  # fmt: skip
    pts = h.points
    if pts:
        peak = max((p.util_gpu_max or 0) for p in pts)
        mem = max((p.memory_used_mib or 0) for p in pts)
        summary = (f"{host}: {len(pts)} point(s) on {len({p.gpu for p in pts})} GPU(s) from {h.since} to {h.until} in {h.bucket_s} s buckets; "
                   f"peak utilization {peak:.0f}%, peak memory {mem:.0f} MiB, {sum(p.samples for p in pts)} samples")  # fmt: skip
    else:
        summary = f"{host}: no GPU samples between {h.since} and {h.until}"
    return await answer(link, summary, h)


@tool("The fleet's GPUs by model")
async def cluster_gpus(
    ctx: Context,
    kubernetes: Annotated[bool | None, Field(description="also read the Kubernetes cluster's GPU nodes (default: when this process has a cluster config)")] = None,
) -> CallToolResult:
    """The fleet's GPUs by model (total, busy, free, offline, hosts); with Kubernetes, the cluster's
    GPU nodes (allocatable vs requested nvidia.com/gpu)."""
    link = link_of(ctx)
    nc = await link.nc()
    out = await reads.gpu_summary(nc, nc.jetstream(), kubernetes=kubernetes, min_seq=link.min_seq)
    parts = [f"{g.name}: {g.total} live ({g.busy} busy, {g.free} free), {g.offline} offline" for g in out.fleet]
    summary = "; ".join(parts) or "no GPUs in the fleet"
    if out.kubernetes is not None:
        summary += f"; Kubernetes: {len(out.kubernetes)} GPU node(s)"
    if out.kubernetes_error:
        summary += f"; {out.kubernetes_error}"
    return await answer(link, summary, out)


async def _known(nc, host: str) -> None:
    js = nc.jetstream()
    if not await commands.host_known(js, host) and not await reads.live_hosts(js, [host]):
        raise commands.UnknownHost(host)


@tool("Drain a host", reads=False, changes_fleet=True, idempotent=True)
async def drain_host(ctx: Context, host: HostId) -> CallToolResult:
    """Take no new experiments on a host; the ones running there finish."""
    link = link_of(ctx)
    nc = await link.nc()
    await _known(nc, host)
    seq = await commands.drain_host(nc.jetstream(), host, requested_by="mcp")
    link.wrote(seq)
    return await answer(link, f"drain requested for host {host}: it takes no new experiments; running ones finish",
                        {"id": host, "seq": seq, "status": "drain_requested"})  # fmt: skip


@tool("Remove a host", reads=False, changes_fleet=True, idempotent=True)
async def remove_host(
    ctx: Context, host: HostId,
    force: Annotated[bool, Field(description="remove it even while it runs experiments (drain it first instead)")] = False,
) -> CallToolResult:  # fmt: skip
    """Take a host out of the fleet: nothing more is placed on it. Refused while it runs experiments
    unless force."""
    link = link_of(ctx)
    nc = await link.nc()
    await _known(nc, host)
    js = nc.jetstream()
    live = (await reads.live_hosts(js, [host])).get(host)
    if live is not None and live.running and not force:
        raise ToolError(f"host {host} is running {', '.join(live.running)}; drain it first (drain_host) or pass force=true")
    seq = await commands.remove_host(js, host, requested_by="mcp")
    link.wrote(seq)
    note = "; its runner is still alive: stop it there" if live is not None else ""
    return await answer(link, f"host {host} removed from the fleet{note}", {"id": host, "seq": seq, "status": "removed"})


# --- deploying (autotune.deploy: what `autotune deploy` / `undeploy` run) --------------------------------


async def _deploying(ctx: Context, op) -> CallToolResult:
    """Run `op(controller)` to its end, each step reported as progress; the answer is its Outcome
    (the JSON `autotune deploy --json` prints). A refusal (nothing was changed) is a tool error."""
    from autotune import deploy as d

    link = link_of(ctx)
    if link.settings is None:
        raise ToolError("this MCP server was started without the stack's settings, which deploying needs; use `autotune mcp`")
    nc = await link.nc()
    steps: list[str] = []
    notes: set[asyncio.Task] = set()

    def on_step(step) -> None:  # the engine reports synchronously; the progress notification goes out on its own
        steps.append(step.step)
        with contextlib.suppress(RuntimeError):
            note = asyncio.get_running_loop().create_task(ctx.report_progress(len(steps), message=f"{step.step} {step.status} {step.detail}"[:300]))
            notes.add(note)
            note.add_done_callback(notes.discard)

    ctl = d.Controller.of(nc.jetstream(), link.settings, on_step)
    out = await op(ctl)
    summary = (f"plan for {out.host} ({out.action}, dry run: nothing was changed):\n{out.message}" if out.outcome == "planned"
               else f"{out.action} {out.host}: {out.outcome} in {out.seconds:.1f} s: {out.message}")  # fmt: skip
    if not out.ok and out.log_tail:
        summary += "\nthe node's log:\n" + "\n".join(out.log_tail[-20:])
    if out.ok:
        return await answer(link, summary, out)
    result = await answer(link, summary, out)
    result.is_error = True  # failed or rolled back: the agent must not read it as done
    return result


@tool("Deploy a host over SSH", reads=False, changes_fleet=True, idempotent=True, open_world=True)
async def deploy_host(
    ctx: Context,
    target: Annotated[str, Field(description="ssh://user@host[:port] of the machine", max_length=512)],
    host: Annotated[str, Field(description="the host's name in the fleet", max_length=256)],
    simulate: Annotated[str | None, Field(description="e.g. 4xH100: simulated GPUs, for a machine without any", max_length=64)] = None,
    via: Literal["direct", "ssh-tunnel"] = "direct",
    offline: Annotated[bool, Field(description="upload every wheel from here: the machine has no internet")] = False,
    dry_run: Annotated[bool, Field(description="only say what would be done")] = False,
    rollback: Annotated[bool, Field(description="switch back to the previous release")] = False,
    accept_new_host_key: Annotated[bool, Field(description="trust the machine's SSH host key on first contact")] = False,
    timeout_s: Annotated[float, Field(gt=0, le=3600, description="how long to wait for the host to register")] = 120.0,
) -> CallToolResult:  # fmt: skip
    """Install autotune on a machine over SSH, start its node (runner + GPU monitor) and check that it
    registers; deploying again upgrades it (or changes nothing). What `autotune deploy` does; SSH keys
    are the server's (its agent, ~/.ssh, AUTOTUNE_SSH_IDENTITY)."""
    from autotune import deploy as d
    from autotune.deploy.engine import check_request

    req = d.DeployRequest(
        target=target, host=host, simulate=simulate, via=via, offline=offline, dry_run=dry_run, rollback=rollback,
        accept_new_host_key=accept_new_host_key, timeout_s=timeout_s, requested_by=d.who("mcp"),
    )  # fmt: skip
    check_request(req)
    return await _deploying(ctx, lambda ctl: d.deploy(req, ctl))


@tool("Undeploy a host", reads=False, changes_fleet=True, idempotent=True, open_world=True)
async def undeploy_host(
    ctx: Context, host: HostId,
    target: Annotated[str | None, Field(description="ssh://user@host[:port]; default: where the log says it was deployed", max_length=512)] = None,
    force: Annotated[bool, Field(description="the machine is gone: only take it out of the fleet and revoke its NATS users")] = False,
    dry_run: Annotated[bool, Field(description="only say what would be done")] = False,
) -> CallToolResult:  # fmt: skip
    """Remove a deployed host: drain it, stop its node, remove its files and unit, take it out of the
    fleet, revoke its NATS users. What `autotune undeploy` does."""
    from autotune import deploy as d

    req = d.UndeployRequest(host=host, target=target, force=force, dry_run=dry_run, requested_by=d.who("mcp"))
    return await _deploying(ctx, lambda ctl: d.undeploy(req, ctl))
