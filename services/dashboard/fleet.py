"""The overview (the fleet grouped by Kubernetes node, running tasks, the experiment timeline) and one
host's page (its GPUs' history, running and recent experiments, drain and remove)."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from litestar import Controller, Request, get
from litestar.params import PathParameter, QueryParameter
from litestar.response import Template

from autotune import reads
from autotune.dashboard.common import Live, events_url, fragment, nc, page, positions, written
from autotune.reads import timeline as tl
from autotune.schemas import subjects as subj
from autotune.schemas.status import TASK_ACTIVE

Hours = Annotated[float, QueryParameter(gt=0, le=24 * 30, description="the timeline's window")]
Part = Annotated[str | None, QueryParameter(description="one section of the page (a live refresh)", max_length=32)]
STATUSES = ("online", "busy", "draining", "offline")


def by_node(hosts: list[Any]) -> list[tuple[str | None, list[Any]]]:
    """Hosts grouped by their Kubernetes node (hosts without one last, as one group)."""
    groups: dict[str | None, list[Any]] = {}
    for h in hosts:
        groups.setdefault(h.node, []).append(h)
    return sorted(groups.items(), key=lambda kv: (kv[0] is None, kv[0] or ""))


async def _fleet(request: Request) -> dict[str, Any]:
    conn = nc(request)
    hosts, sparks = await asyncio.gather(reads.list_hosts(conn, conn.jetstream(), min_seq=written(request)), tl.sparklines(conn))
    counts = Counter(h.status for h in hosts)
    return {"groups": by_node(hosts), "counts": {s: counts.get(s, 0) for s in STATUSES}, "sparks": sparks,
            "hosts_simulated": any(h.simulated for h in hosts), "host_count": len(hosts)}  # fmt: skip


async def _running(request: Request) -> dict[str, Any]:
    pages = await asyncio.gather(*(reads.list_tasks(nc(request), status=s, limit=100, min_seq=written(request)) for s in sorted(TASK_ACTIVE)))
    tasks = sorted((t for p in pages for t in p.items), key=lambda t: t.submitted_at or "", reverse=True)
    return {"active": tasks, "active_total": sum(p.total for p in pages)}


async def _timeline(request: Request, hours: float) -> dict[str, Any]:
    return {"timeline": await tl.timeline(nc(request), hours=hours, min_seq=written(request)), "hours": hours}


class FleetPages(Controller):
    tags = ["dashboard"]
    include_in_schema = False

    @get("/", name="overview")
    async def overview(self, request: Request, hours: Hours = 3.0, part: Part = None) -> Template:
        if part == "fleet":
            return fragment("fleet", request, **await _fleet(request))
        if part == "running":
            return fragment("running", request, **await _running(request))
        if part == "timeline":
            return fragment("timeline", request, **await _timeline(request, hours))
        pos = await positions(request)
        fleet, running, timeline = await asyncio.gather(_fleet(request), _running(request), _timeline(request, hours))
        live = [
            Live(id="events", url=events_url(subj.everything()), since_seq=pos[subj.EVENTS_STREAM] + 1),
            Live(id="telemetry", url=events_url(subj.gpu_all()), since_seq=pos[subj.TELEMETRY_STREAM] + 1, stream=subj.TELEMETRY_STREAM),
        ]
        simulated = fleet["hosts_simulated"] or any(t.simulate for t in running["active"])
        return page("overview.html", request, title="overview", live=live, simulated=simulated, **fleet, **running, **timeline)

    @get("/hosts/{host_id:str}", name="host")
    async def host(self, request: Request, host_id: Annotated[str, PathParameter(max_length=256)], hours: Annotated[float, QueryParameter(gt=0, le=24 * 30)] = 1.0,
                   part: Part = None) -> Template:  # fmt: skip
        conn = nc(request)
        if part == "head":
            return fragment("host_head", request, h=await reads.host_detail(conn, conn.jetstream(), host_id, min_seq=written(request)))
        pos = await positions(request)
        now = datetime.now(UTC)
        detail, history = await asyncio.gather(
            reads.host_detail(conn, conn.jetstream(), host_id, experiments=50, min_seq=written(request)),
            reads.gpu_history(conn, host_id, since=now - timedelta(hours=hours), until=now + timedelta(seconds=1)),
        )
        live = [
            Live(id="events", url=events_url(subj.everything()), since_seq=pos[subj.EVENTS_STREAM] + 1),
            Live(id="telemetry", url=events_url(subj.gpu_all(host_id)), since_seq=pos[subj.TELEMETRY_STREAM] + 1, stream=subj.TELEMETRY_STREAM),
        ]
        return page("host.html", request, title=f"host {host_id}", live=live, simulated=detail.simulated, h=detail, history=history, hours=hours)
