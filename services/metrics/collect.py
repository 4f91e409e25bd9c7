"""What a scrape reads: the fleet through the read side (hosts, GPUs, leases, liveness), counts and
a duration histogram from the projection in a few aggregate queries, the streams' positions from
JetStream, and the services' own figures from the `autotune-stats` KV bucket. All of it at once
(one round of concurrent requests), with the caller's `min_seq` (read-your-writes)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.js.errors import BucketNotFoundError, NotFoundError

from autotune import reads
from autotune.reads import models as m
from autotune.schemas import subjects as subj
from autotune.schemas.stats import ServiceStats
from autotune.schemas.status import TaskStatus
from autotune.shared.log import get_logger

log = get_logger("metrics")

# seconds an experiment attempt takes end to end: simulated ones take seconds, real ones minutes
DURATION_BUCKETS = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0)
SAMPLE_WINDOW_S = 60.0  # a GPU whose latest sample is older says nothing about now (gpumon samples every second)
STREAMS = (subj.EVENTS_STREAM, subj.TELEMETRY_STREAM, subj.LOGS_STREAM)


class StreamPosition(msgspec.Struct, kw_only=True):
    stream: str
    last_seq: int  # messages ever appended (the stream's last sequence)
    applied_seq: int | None  # what every projector lane reading it has applied (None: no projection of it yet)
    lag_messages: int | None
    lag_seconds: float | None  # how long ago the first message not yet applied was stored (0: caught up)
    dead_letters: int = 0


class Snapshot(msgspec.Struct, kw_only=True):
    hosts: list[m.Host]
    tasks: dict[str, int]  # status -> tasks
    experiments: list[tuple[str, str, int]]  # (status, failure kind or "", attempts)
    durations: dict[str, tuple[list[int], float, int]]  # status -> (cumulative counts per DURATION_BUCKETS, sum, count)
    best: list[tuple[str, float, bool]]  # running tasks: (task, best score, simulated)
    streams: list[StreamPosition]
    stats: list[ServiceStats]
    collected_at: float
    collect_seconds: float = 0.0


def _duration_sql() -> str:
    cols = ", ".join(f"count(*) FILTER (duration_s <= {b}) AS le_{i}" for i, b in enumerate(DURATION_BUCKETS))
    return f"SELECT status, {cols}, sum(duration_s) AS total_s, count(*) AS n FROM experiments WHERE duration_s IS NOT NULL GROUP BY status"


async def _stream(js, name: str, applied: dict[str, dict[str, Any]]) -> StreamPosition:
    try:
        info = await js.stream_info(name)
    except NotFoundError:
        return StreamPosition(stream=name, last_seq=0, applied_seq=None, lag_messages=None, lag_seconds=None)
    last = info.state.last_seq
    pos = applied.get(name)
    if pos is None:
        return StreamPosition(stream=name, last_seq=last, applied_seq=None, lag_messages=None, lag_seconds=None)
    seq = int(pos.get("seq") or 0)
    lag = max(0, last - seq)
    seconds = 0.0
    if lag:
        try:  # the first message not yet applied (or the first still stored after it)
            msg = await js.get_msg(name, seq=seq + 1, subject=">", next=True)
            seconds = max(0.0, (datetime.now(UTC) - msg.time).total_seconds()) if msg.time else None
        except NotFoundError:
            seconds = None
    return StreamPosition(stream=name, last_seq=last, applied_seq=seq, lag_messages=lag, lag_seconds=seconds, dead_letters=int(pos.get("dead_letters") or 0))


async def service_stats(js) -> list[ServiceStats]:
    """Every service instance's latest figures (the bucket's max age has dropped those that stopped):
    one watch that replays the current keys with their values, then stops."""
    try:
        kv = await js.key_value(subj.STATS_BUCKET)
        watcher = await kv.watchall(ignore_deletes=True)
    except (BucketNotFoundError, NotFoundError):
        return []
    decoder = msgspec.json.Decoder(ServiceStats)
    out = []
    try:
        async for entry in watcher:
            if entry is None:  # the current keys are all in
                break
            try:
                out.append(decoder.decode(entry.value))
            except msgspec.MsgspecError as e:
                log.warning("unreadable service figures skipped", key=entry.key, error=str(e))
    finally:
        await watcher.stop()
    return out


async def collect(nc, js, *, min_seq: int | None = None) -> Snapshot:
    t0 = time.perf_counter()
    hosts, tasks, experiments, durations, best, positions, stats = await asyncio.gather(
        reads.list_hosts(nc, js, min_seq=min_seq, sample_window_s=SAMPLE_WINDOW_S),
        reads.rows(nc, "SELECT status, count(*) AS n FROM tasks GROUP BY status", min_seq=min_seq),
        reads.rows(nc, "SELECT status, coalesce(failure_kind, '') AS kind, count(*) AS n FROM experiments GROUP BY ALL", min_seq=min_seq, limit=100_000),
        reads.rows(nc, _duration_sql(), min_seq=min_seq),
        reads.rows(nc, "SELECT id, best_score, coalesce(simulate, false) OR coalesce(deployment_mode = 'simulated', false) AS sim FROM tasks "
                       "WHERE status = ? AND best_score IS NOT NULL AND isfinite(best_score)", [TaskStatus.RUNNING.value], min_seq=min_seq, limit=100_000),
        reads.rows(nc, "SELECT stream, seq, dead_letters FROM positions", min_seq=min_seq),
        service_stats(js),
    )  # fmt: skip
    applied = {r["stream"]: r for r in positions}
    streams = await asyncio.gather(*(_stream(js, s, applied) for s in STREAMS))
    return Snapshot(
        hosts=hosts,
        tasks={r["status"]: r["n"] for r in tasks if r["status"]},
        experiments=[(r["status"], r["kind"], r["n"]) for r in experiments if r["status"]],
        durations={r["status"]: ([r[f"le_{i}"] for i in range(len(DURATION_BUCKETS))], r["total_s"] or 0.0, r["n"]) for r in durations},
        best=[(r["id"], r["best_score"], bool(r["sim"])) for r in best],
        streams=list(streams), stats=stats, collected_at=time.time(), collect_seconds=time.perf_counter() - t0,
    )  # fmt: skip
