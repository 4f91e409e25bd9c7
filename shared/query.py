"""The query client: read-only SQL on the projection over NATS (`autotune.query.sql`).

    from autotune.shared import query
    res = await query.sql(nc, "SELECT id, status FROM tasks WHERE status = ?", ["running"])
    for row in res.rows_as_dicts(): ...

Read-your-writes: pass the stream sequence of your own publish (the PubAck's `seq`) as `min_seq`;
the projector answers once it has applied it (or says it is behind). Every projector replica
answers in the queue group `projector`; `applied_seq` says how far the one that answered was.
"""

from __future__ import annotations

from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client as NATS

from autotune.schemas import subjects as subj

QUERY_SQL = subj.QUERY_SQL
QUERY_SNAPSHOT = subj.QUERY_SNAPSHOT  # request/reply: {path, overwrite?} -> the projector writes a file
QUEUE_GROUP = "projector"

NO_PROJECTOR = f"no projector is answering on {QUERY_SQL}; is `autotune up` running?"


class QueryError(Exception):
    """The projector refused or failed the query, or nobody answered. `message` says what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class QueryResult(msgspec.Struct, kw_only=True):
    columns: list[str]
    types: list[str]  # DuckDB type names, e.g. VARCHAR, BIGINT, TIMESTAMP WITH TIME ZONE, JSON
    rows: list[list[Any]]  # JSON columns arrive decoded; timestamps as RFC 3339 strings
    row_count: int
    truncated: bool = False  # more rows existed than `limit` (or than fit in one NATS message)
    applied_seq: int = 0  # AUTOTUNE_EVENTS sequence the answering projector had applied
    elapsed_ms: float = 0.0
    notice: str | None = None

    def rows_as_dicts(self) -> list[dict[str, Any]]:
        return rows_as_dicts(self)


def rows_as_dicts(result: QueryResult) -> list[dict[str, Any]]:
    cols = result.columns
    return [dict(zip(cols, row, strict=False)) for row in result.rows]


class _Reply(msgspec.Struct, kw_only=True):
    error: str | None = None
    columns: list[str] = []
    types: list[str] = []
    rows: list[list[Any]] = []
    row_count: int = 0
    truncated: bool = False
    applied_seq: int = 0
    elapsed_ms: float = 0.0
    notice: str | None = None


_reply = msgspec.json.Decoder(_Reply)


def server_budget(timeout: float) -> float:
    """The part of the caller's timeout the projector may spend, so its error arrives in time."""
    return max(timeout - min(1.0, timeout * 0.2), 0.05)


async def sql(
    nc: NATS,
    query: str,
    params: list[Any] | None = None,
    *,
    min_seq: int | None = None,
    limit: int | None = None,
    timeout: float = 10.0,
) -> QueryResult:
    """Run one read-only statement on the projection. Raises QueryError with the projector's reason."""
    req: dict[str, Any] = {"sql": query, "timeout": server_budget(timeout)}
    if params:
        req["params"] = params
    if min_seq:
        req["min_seq"] = min_seq
    if limit is not None:
        req["limit"] = limit
    try:
        msg = await nc.request(QUERY_SQL, msgspec.json.encode(req), timeout=timeout)
    except nats.errors.NoRespondersError:
        raise QueryError(NO_PROJECTOR) from None
    except nats.errors.TimeoutError:
        raise QueryError(f"the projector did not answer within {timeout:g} s; it may be overloaded or restarting") from None
    r = _reply.decode(msg.data)
    if r.error is not None:
        raise QueryError(r.error)
    return QueryResult(
        columns=r.columns, types=r.types, rows=r.rows, row_count=r.row_count, truncated=r.truncated,
        applied_seq=r.applied_seq, elapsed_ms=r.elapsed_ms, notice=r.notice,
    )  # fmt: skip


async def snapshot(nc: NATS, path: str, *, overwrite: bool = False, timeout: float = 600.0) -> dict[str, Any]:
    """Ask a running projector to write a consistent DuckDB file at `path` (on the projector's
    machine). Returns {path, host, bytes, applied_seq, tables}."""
    try:
        msg = await nc.request(QUERY_SNAPSHOT, msgspec.json.encode({"path": path, "overwrite": overwrite}), timeout=timeout)
    except nats.errors.NoRespondersError:
        raise QueryError(f"no projector is answering on {QUERY_SNAPSHOT}; is `autotune up` running?") from None
    except nats.errors.TimeoutError:
        raise QueryError(f"the projector did not finish the snapshot within {timeout:g} s") from None
    out = msgspec.json.decode(msg.data)
    if out.get("error"):
        raise QueryError(out["error"])
    return out
