"""Hosts (the earlier tool's "workers"): list with live status and GPUs, one host, its GPU history,
drain, remove. Status combines the log (the projector's `hosts` table), the latest GPU samples and
liveness (the `autotune-hosts` KV key: present → online, with running experiments → busy, absent →
offline; a drain request → draining)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from litestar import Controller, Request, delete, get, post
from litestar.exceptions import ClientException
from litestar.params import FromQuery, PathParameter, QueryParameter

from autotune import reads
from autotune.api import models as m
from autotune.api.common import SECURED, min_seq, requires_admin, requires_token, wrote
from autotune.schemas.status import HostStatus
from autotune.shared import commands

HostId = Annotated[str, PathParameter(description="host id", max_length=256)]


async def _known(request: Request, host: str) -> None:
    js = request.app.state.nc.jetstream()
    if not await commands.host_known(js, host) and not await reads.live_hosts(js, [host]):
        raise commands.UnknownHost(host)


class HostController(Controller):
    path = "/api/hosts"
    tags = ["hosts"]

    @get("/", operation_id="listHosts", summary="Hosts with status and GPUs (model, memory, utilization, temperature, node)")
    async def list_hosts(
        self, request: Request, status: FromQuery[HostStatus | None] = None,
        include_removed: FromQuery[bool] = False,
    ) -> list[m.Host]:  # fmt: skip
        nc = request.app.state.nc
        return await reads.list_hosts(nc, nc.jetstream(), status=status, include_removed=include_removed, min_seq=min_seq(request))

    @get("/{host_id:str}", operation_id="getHost", summary="One host: GPUs, running and recent experiments, lifecycle")
    async def get_host(self, request: Request, host_id: HostId) -> m.HostDetail:
        nc = request.app.state.nc
        return await reads.host_detail(nc, nc.jetstream(), host_id, min_seq=min_seq(request))

    @get("/{host_id:str}/gpus/history", operation_id="getGpuHistory", summary="GPU telemetry over a time range, downsampled")
    async def gpu_history(
        self, request: Request, host_id: HostId, since: FromQuery[datetime | None] = None, until: FromQuery[datetime | None] = None,
        bucket_s: Annotated[int | None, QueryParameter(ge=1, le=86_400 * 30, description="bucket width in seconds (default: ~200 points)")] = None,
        gpu: Annotated[int | None, QueryParameter(ge=0, le=1024, description="one GPU index (default: all)")] = None,
    ) -> m.GpuHistory:  # fmt: skip
        """Default range: the last hour. Each point: mean and max utilization, max memory used, max
        temperature, mean power, number of samples."""
        return await reads.gpu_history(request.app.state.nc, host_id, since=since, until=until, bucket_s=bucket_s, gpu=gpu, min_seq=min_seq(request))

    @post("/{host_id:str}/drain", operation_id="drainHost", status_code=202, guards=[requires_token], security=SECURED,
          summary="Take no new experiments on this host; running ones finish")  # fmt: skip
    async def drain(self, request: Request, host_id: HostId) -> m.Accepted:
        await _known(request, host_id)
        seq = await commands.drain_host(request.app.state.nc.jetstream(), host_id, requested_by="api")
        wrote(request, seq)
        return m.Accepted(id=host_id, seq=seq, status="drain_requested", url=f"/api/hosts/{host_id}")

    @delete("/{host_id:str}", operation_id="removeHost", status_code=202, guards=[requires_token], security=SECURED,
            summary="Remove a host from the fleet")  # fmt: skip
    async def remove(
        self, request: Request, host_id: HostId,
        force: Annotated[bool, QueryParameter(description="remove it even while it runs experiments")] = False,
        undeploy: Annotated[bool, QueryParameter(description="also remove autotune from the machine (`autotune undeploy`; admin token)")] = False,
    ) -> m.Accepted:  # fmt: skip
        if undeploy:  # drain, stop, remove files and unit, remove from the fleet, revoke its NATS users
            from autotune.api import deploys

            requires_admin(request, None)  # type: ignore[arg-type]
            got = await deploys.undeploy(request, host_id, force=force)
            return m.Accepted(id=host_id, seq=0, status="undeploying" if got.status == "running" else got.status, url=got.events)
        await _known(request, host_id)
        js = request.app.state.nc.jetstream()
        live = (await reads.live_hosts(js, [host_id])).get(host_id)
        if live is not None and live.running and not force:
            raise ClientException(
                status_code=409, detail=f"host `{host_id}` is running {len(live.running)} experiment(s) ({', '.join(live.running)}); "
                "drain it first and remove it once they finish, or pass force=true",
            )
        seq = await commands.remove_host(js, host_id, requested_by="api")
        wrote(request, seq)
        return m.Accepted(id=host_id, seq=seq, status="removed", url=f"/api/hosts/{host_id}")


class GpuController(Controller):
    path = "/api/gpus"
    tags = ["hosts"]

    @get("/", operation_id="getGpuSummary", summary="The fleet's GPUs by model (total, busy, free, offline); the Kubernetes cluster's GPU nodes")
    async def summary(
        self, request: Request,
        kubernetes: Annotated[bool | None, QueryParameter(description="read the cluster's GPU nodes (default: when the API runs in a cluster or has a kubeconfig)")] = None,
    ) -> m.GpuSummary:  # fmt: skip
        nc = request.app.state.nc
        return await reads.gpu_summary(nc, nc.jetstream(), kubernetes=kubernetes, min_seq=min_seq(request))
