"""`GET /metrics`: autotune in Prometheus text format (autotune.metrics, mounted here)."""

from __future__ import annotations

from litestar import Request, get
from litestar.response import Response

from autotune.api.common import min_seq
from autotune.metrics import CONTENT_TYPE


@get("/metrics", operation_id="metrics", tags=["system"], media_type=CONTENT_TYPE, summary="Prometheus metrics: GPUs, hosts, tasks, the pipeline")
async def metrics(request: Request) -> Response:
    """Per host and GPU (labels host, gpu, model, node): latest samples, online, the experiment
    holding each GPU; tasks and experiments by status, experiment durations, queue depth, best score
    of each running task; projector lag and dead letters, query and scheduler decision latency,
    messages appended per stream. Gathered at most every few seconds (cached between scrapes)."""
    nc = request.app.state.nc
    body = await request.app.state.metrics.scrape(nc, nc.jetstream(), min_seq=min_seq(request))
    return Response(content=body, media_type=CONTENT_TYPE)
