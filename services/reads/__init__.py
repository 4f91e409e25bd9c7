"""The read side: how every surface reads autotune, shaped for people.

SQL on the projection (through the projector's `autotune.query.sql`) plus host liveness from the
`autotune-hosts` KV bucket, shaped into the Structs of `models.py`. The HTTP API, the command line,
the dashboard, the MCP server and the metrics endpoint are adapters over this package; none of them
reads another. No Litestar here, so the CLI imports it cheaply.

Every function takes `min_seq`: the sequence of the caller's own last write, so what it reads
includes it (read-your-writes).
"""

from __future__ import annotations

from autotune.reads.common import BadRequest, NotFound, redact, rows, simulated
from autotune.reads.experiments import experiment_detail, list_experiments
from autotune.reads.fleet import fleet_fit, fleet_fit_or_none
from autotune.reads.hosts import gpu_history, gpu_summary, host_detail, list_hosts, live_hosts
from autotune.reads.tasks import export, list_tasks, task_detail, task_row

__all__ = [
    "BadRequest", "NotFound", "experiment_detail", "export", "fleet_fit", "fleet_fit_or_none", "gpu_history", "gpu_summary", "host_detail", "list_experiments",
    "list_hosts", "list_tasks", "live_hosts", "redact", "rows", "simulated", "task_detail", "task_row",
]  # fmt: skip
