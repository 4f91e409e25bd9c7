"""The fleet over time: which experiment held which GPU when (a timeline with no cap on the count),
and every GPU's recent utilization, memory and temperature (sparklines)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec

from autotune.reads.common import all_columns, rows


class Timeline(msgspec.Struct, kw_only=True):
    """Bars of experiment attempts on GPU lanes ("host/gpu"), columnar and compact (a fleet's hours
    may hold tens of thousands): `task` and `status` index `tasks` and `statuses`; `start` and `end`
    are seconds after `since` (Unix seconds), `end` None while the attempt runs."""

    since: float
    until: float
    lanes: list[str]
    tasks: list[str]
    statuses: list[str]
    lane: list[int]
    task: list[int]
    n: list[int]
    attempt: list[int]
    status: list[int]
    start: list[float]
    end: list[float | None]


async def timeline(nc, *, hours: float = 3.0, host: str | None = None, min_seq: int | None = None) -> Timeline:
    """Every attempt placed on a GPU that overlapped the last `hours` (of `host`, or of the fleet)."""
    until = datetime.now(UTC)
    since = until - timedelta(hours=hours)
    where, params = ["host IS NOT NULL", "coalesce(started_at, assigned_at) IS NOT NULL", "coalesce(finished_at, now()) >= ?::TIMESTAMPTZ"], [since.isoformat()]
    if host is not None:
        where.append("host = ?")
        params.append(host)
    got = await all_columns(
        nc,
        "SELECT host || '/' || gpu AS lane, task, n, attempt, status, round(t0 - ?, 1) AS t0, round(t1 - ?, 1) AS t1 FROM ("
        "SELECT host, unnest(gpu_indices) AS gpu, task, n, attempt, status, epoch(coalesce(started_at, assigned_at)) AS t0, epoch(finished_at) AS t1 "
        f"FROM experiments WHERE {' AND '.join(where)}) ORDER BY host, gpu, t0, task, n, attempt",
        [since.timestamp(), since.timestamp(), *params],
        min_seq=min_seq,
    )
    lanes, lane = _indexed(got["lane"])
    tasks, task = _indexed(got["task"])
    statuses, status = _indexed(got["status"])
    return Timeline(since=since.timestamp(), until=until.timestamp(), lanes=lanes, tasks=tasks, statuses=statuses, lane=lane, task=task,
                    n=got["n"], attempt=got["attempt"], status=status, start=got["t0"], end=got["t1"])  # fmt: skip


def _indexed(values: list[str]) -> tuple[list[str], list[int]]:
    """The distinct values in order of appearance, and each value's index among them."""
    distinct = list(dict.fromkeys(values))
    at = {v: i for i, v in enumerate(distinct)}
    return distinct, [at[v] for v in values]


class Spark(msgspec.Struct, kw_only=True):
    """One GPU's recent readings, oldest first, one value per bucket (rounded: they are drawn)."""

    util: list[float | None]
    mem_pct: list[float | None]
    temp: list[float | None]


async def sparklines(nc, *, minutes: float = 10.0, points: int = 20, hosts: list[str] | None = None,
                     min_seq: int | None = None) -> dict[tuple[str, int], Spark]:  # fmt: skip
    """(host, GPU index) -> its last `minutes` of samples in about `points` buckets; of `hosts`' GPUs
    only when given (a page draws the sparklines of the GPUs it shows, not of the whole fleet)."""
    if hosts is not None and not hosts:
        return {}
    bucket = max(1, int(minutes * 60 / points))
    where, params = '"at" >= now() - to_seconds(?)', [minutes * 60]
    if hosts is not None:
        where += f" AND host IN ({', '.join('?' for _ in hosts)})"
        params += hosts
    got = await rows(
        nc,
        'SELECT host, "index", list(u ORDER BY b) AS util, list(m ORDER BY b) AS mem_pct, list(t ORDER BY b) AS temp FROM ('
        'SELECT host, "index", time_bucket(to_seconds(?), "at") AS b, round(avg(util_gpu)) AS u, '
        "round(100 * max(memory_used_mib) / nullif(max(memory_total_mib), 0)) AS m, round(max(temperature_c)) AS t "
        f"FROM gpu_samples WHERE {where} GROUP BY ALL) GROUP BY ALL",
        [bucket, *params],
        min_seq=min_seq,
        limit=1_000_000,
    )
    return {(r["host"], r["index"]): Spark(util=r["util"] or [], mem_pct=r["mem_pct"] or [], temp=r["temp"] or []) for r in got}
