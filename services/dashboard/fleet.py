"""The overview (the fleet grouped by Kubernetes node, running tasks, the experiment timeline) and one
host's page (its GPUs' history, running and recent experiments, drain and remove)."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get
from litestar.params import PathParameter, QueryParameter
from litestar.response import Template

from autotune import reads
from autotune.dashboard.common import Live, events_url, fragment, nc, page, positions, written
from autotune.reads import timeline as tl
from autotune.schemas import subjects as subj
from autotune.schemas.status import TASK_ACTIVE

Hours = Annotated[float, QueryParameter(gt=0, le=24 * 30, description="the timeline's window")]
Part = Annotated[str | None, QueryParameter(description="one section of the page (a live refresh)", max_length=32)]
Expand = Annotated[list[str] | None, QueryParameter(max_items=64, description="hosts whose GPUs are shown one per row")]
FleetStatus = Annotated[str | None, QueryParameter(name="fleet", max_length=16, description="show only hosts with this status")]
FleetPage = Annotated[int, QueryParameter(name="fleet_page", ge=1, le=1_000_000)]
FleetView = Annotated[str | None, QueryParameter(name="fleet_view", max_length=8, description="hosts: a row per host; gpus: a row per GPU")]
STATUSES = ("online", "busy", "draining", "offline", "lost", "stopped")
# A fleet with more GPUs than this is shown a page of HOSTS_PER_PAGE hosts at a time, one row per host
# (its GPUs as a strip of cells), and a host's GPU rows (with sparklines) when the user expands it:
# 1,600 GPU rows were 1.5 MB of HTML and most of the page's server time, and nobody reads them at
# once. `fleet_view` in the URL chooses either layout whatever the size.
COMPACT_GPUS = 64
HOSTS_PER_PAGE = 50


def by_node(hosts: list[Any]) -> list[tuple[str | None, list[Any]]]:
    """Hosts grouped by their Kubernetes node (hosts without one last, as one group)."""
    groups: dict[str | None, list[Any]] = {}
    for h in hosts:
        groups.setdefault(h.node, []).append(h)
    return sorted(groups.items(), key=lambda kv: (kv[0] is None, kv[0] or ""))


def node_summary(hosts: list[Any]) -> dict[str, Any]:
    """A node's hosts, GPUs, GPUs held by an experiment, and mean utilization of the GPUs reporting it."""
    gpus = [g for h in hosts for g in h.gpus]
    utils = [g.util_gpu for g in gpus if g.util_gpu is not None]
    return {"hosts": len(hosts), "gpus": len(gpus), "held": sum(1 for g in gpus if g.leased_by),
            "util": sum(utils) / len(utils) if utils else None}  # fmt: skip


async def _fleet(request: Request, expand: list[str] | None, status: str | None, page_no: int, view: str | None) -> dict[str, Any]:
    if status and status not in STATUSES:
        raise reads.BadRequest(f"fleet status `{status}` is not one of {', '.join(STATUSES)}")
    if view and view not in ("hosts", "gpus"):
        raise reads.BadRequest(f"fleet view `{view}` is not hosts (a row per host) or gpus (a row per GPU)")
    conn = nc(request)
    hosts = await reads.list_hosts(conn, conn.jetstream(), min_seq=written(request))
    counts = Counter(h.status for h in hosts)
    large = sum(h.gpu_count for h in hosts) > COMPACT_GPUS
    compact = view == "hosts" or (not view and large)
    groups = by_node(hosts)
    nodes = {node: node_summary(members) for node, members in groups}
    shown = [h for _, members in groups for h in members if not status or h.status == status]  # node by node, so a page splits few
    pages = max(1, -(-len(shown) // HOSTS_PER_PAGE)) if large else 1
    page_no = min(page_no, pages)
    if large:
        shown = shown[(page_no - 1) * HOSTS_PER_PAGE : page_no * HOSTS_PER_PAGE]
    expanded = [h.host for h in shown if not compact or h.host in set(expand or ())]
    sparks = await tl.sparklines(conn, hosts=expanded) if expanded else {}
    return {"groups": by_node(shown), "nodes": nodes, "counts": {s: counts.get(s, 0) for s in STATUSES}, "sparks": sparks,
            "hosts_simulated": any(h.simulated for h in hosts), "host_count": len(hosts), "compact": compact, "expanded": set(expanded),
            "expand": [h for h in expand or () if h], "fleet_status": status or "", "fleet_page": page_no, "fleet_pages": pages,
            "shown_count": len(shown), "fleet_view": "hosts" if compact else "gpus"}  # fmt: skip


async def _running(request: Request) -> dict[str, Any]:
    got = await reads.list_tasks(nc(request), status=TASK_ACTIVE, limit=100, min_seq=written(request))
    return {"active": got.items, "active_total": got.total}


class FleetPages(Controller):
    tags = ["dashboard"]
    include_in_schema = False

    @get("/", name="overview")
    async def overview(self, request: Request, hours: Hours = 3.0, expand: Expand = None, fleet: FleetStatus = None, fleet_page: FleetPage = 1,
                       fleet_view: FleetView = None, part: Part = None) -> Template:  # fmt: skip
        if part == "fleet":
            return fragment("fleet", request, **await _fleet(request, expand, fleet, fleet_page, fleet_view))
        if part == "running":
            return fragment("running", request, **await _running(request))
        if part == "timeline":
            return fragment("timeline", request, hours=hours)
        pos = await positions(request)
        # the timeline's bars (every attempt of the window) are timeline.json, fetched by the page
        fleet_ctx, running = await asyncio.gather(_fleet(request, expand, fleet, fleet_page, fleet_view), _running(request))
        live = [
            Live(id="events", url=events_url(subj.everything()), since_seq=pos[subj.EVENTS_STREAM] + 1),
            Live(id="telemetry", url=events_url(subj.gpu_all()), since_seq=pos[subj.TELEMETRY_STREAM] + 1, stream=subj.TELEMETRY_STREAM),
        ]
        simulated = fleet_ctx["hosts_simulated"] or any(t.simulate for t in running["active"])
        return page("overview.html", request, title="overview", live=live, simulated=simulated, hours=hours, **fleet_ctx, **running)

    @get("/timeline.json", name="timeline")
    async def timeline(self, request: Request, hours: Hours = 3.0, host: Annotated[str | None, QueryParameter(max_length=256)] = None) -> Response:
        """The timeline's bars: every attempt on a GPU in the last `hours` (of `host`), columnar."""
        got = await tl.timeline(nc(request), hours=hours, host=host or None, min_seq=written(request))
        return Response(content=msgspec.json.encode(got), media_type="application/json")

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
