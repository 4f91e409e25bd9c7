"""Run one guarded read-only query on a pooled cursor: row limit, a timeout that interrupts, JSON out.

Called in a worker thread. Results stream out of DuckDB as Arrow record batches, so a query that
would return billions of rows stops after `limit + 1` of them; a query that would run forever is
interrupted by a timer (`cursor.interrupt()`), which DuckDB honours between vectors.
"""

from __future__ import annotations

import heapq
import re
import threading
import time
import warnings
from typing import Any

import duckdb
import msgspec
import pyarrow as pa

from autotune.projector import guard


class QueryRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The JSON body of a request on autotune.query.sql (user input: unknown fields are refused)."""

    sql: str
    params: list[Any] | dict[str, Any] | None = None
    min_seq: int | None = None
    limit: int | None = None
    timeout: float | None = None


class QueryTimeout(Exception):
    pass


class _Deadline:
    """Interrupt the cursor's running query when the time is up, and only that query. One timer
    thread serves every deadline (a thread per query cost more than a short query)."""

    _heap: list[tuple[float, int, _Deadline]] = []
    _cond = threading.Condition()
    _thread: threading.Thread | None = None
    _count = 0

    def __init__(self, cur: duckdb.DuckDBPyConnection, seconds: float) -> None:
        self._cur: duckdb.DuckDBPyConnection | None = cur
        self._active = True
        self.fired = False
        cls = _Deadline
        with cls._cond:
            cls._count += 1
            heapq.heappush(cls._heap, (time.monotonic() + max(seconds, 0.001), cls._count, self))
            if cls._thread is None:
                cls._thread = threading.Thread(target=cls._run, name="query-deadlines", daemon=True)
                cls._thread.start()
            cls._cond.notify()

    def cancel(self) -> None:
        with _Deadline._cond:
            self._active = False
            self._cur = None  # the heap may keep this entry until it is due: not the cursor

    @classmethod
    def _run(cls) -> None:
        with cls._cond:
            while True:
                while cls._heap and not cls._heap[0][2]._active:
                    heapq.heappop(cls._heap)  # cancelled: most deadlines end here
                if not cls._heap:
                    cls._cond.wait()
                    continue
                due, _, d = cls._heap[0]
                wait = due - time.monotonic()
                if wait > 0:
                    cls._cond.wait(min(wait, 1.0))  # woken early by a new deadline; cancels are lazily dropped
                    continue
                heapq.heappop(cls._heap)
                d.fired = True
                d._cur.interrupt()  # type: ignore[union-attr]  # active, so it has its cursor; `cancel` waits for the lock


def execute(cur: duckdb.DuckDBPyConnection, sql: str, params: Any, limit: int, timeout: float) -> dict[str, Any]:
    """Check and run `sql`; returns columns, types, rows, row_count, truncated. Raises guard.Refused,
    QueryTimeout or duckdb.Error."""
    guard.check(cur, sql)
    deadline = _Deadline(cur, timeout)
    cur.begin()
    try:
        got = _limited(cur, sql, params, limit)
        if got is None:
            rel = cur.sql(sql, params=params) if params else cur.sql(sql)
            if rel is None:
                raise guard.Refused(f"the statement returned no rows; {guard.READ_ONLY_HINT}")
            got = list(rel.columns), [str(t) for t in rel.types], rel.to_arrow_reader(min(max(limit + 1, 1), 8192))
        columns, types, reader = got
        batches: list[pa.RecordBatch] = []
        n = 0
        try:
            for b in reader:
                batches.append(b)
                n += b.num_rows
                if n > limit:
                    break
        finally:
            reader.close()
    except duckdb.InterruptException:
        if deadline.fired:
            raise QueryTimeout(
                f"the query ran longer than its {timeout:.3g} s timeout and was interrupted; "
                "filter more, add a LIMIT, or pass a larger timeout"
            ) from None
        raise
    finally:
        deadline.cancel()
        try:
            cur.rollback()
        except duckdb.Error:
            pass
    table = pa.Table.from_batches(batches, schema=reader.schema) if batches else None
    truncated = n > limit
    rows: list[tuple] = []
    if table is not None:
        table = table.slice(0, limit)
        cols = []
        for col, t in zip(table.columns, types, strict=False):
            values = col.to_pylist()
            if t == "JSON":  # already JSON text: embed it as JSON, not as a string
                values = [None if v is None else msgspec.Raw(v.encode()) for v in values]
            cols.append(values)
        rows = list(zip(*cols, strict=False))
    return {"columns": columns, "types": types, "rows": rows, "row_count": len(rows), "truncated": truncated}


_SUFFIXED = re.compile(r"^(?P<base>.+)_\d+$")
# execute() + to_arrow_reader() makes DuckDB collect the whole result first; under a LIMIT that is
# at most limit + 1 rows, and it binds the query once, where sql() + to_arrow_reader() binds it twice
warnings.filterwarnings("ignore", message="Arrow output on a DB-API result", category=UserWarning)


def _limited(cur: duckdb.DuckDBPyConnection, sql: str, params: Any, limit: int) -> tuple[list[str], list[str], Any] | None:
    """A SELECT run as `SELECT * FROM (sql) LIMIT limit + 1`, bound once (a point query of `tasks`:
    5.2 -> 3.6 ms alone); None when that form does not apply (EXPLAIN, a text that does not nest,
    or columns the wrapper renamed: `a, a` comes back as `a, a_1`), for the caller's plain path.
    The guard checked `sql` alone, and a text that parses as one statement nests as one subquery."""
    if guard.is_explain(sql):
        return None
    try:
        cur.execute(f"SELECT * FROM (\n{sql}\n) LIMIT {limit + 1}", params)
    except (duckdb.ParserException, duckdb.BinderException):  # the plain path reports the user's own error
        cur.rollback()
        cur.begin()
        return None
    names = [d[0] for d in cur.description]
    seen = set(names)
    if any((m := _SUFFIXED.match(n)) and m.group("base") in seen for n in names):
        cur.rollback()  # drops the pending result too
        cur.begin()
        return None
    return names, [str(d[1]) for d in cur.description], cur.to_arrow_reader(min(max(limit + 1, 1), 8192))


_encoder = msgspec.json.Encoder(enc_hook=str, decimal_format="number")


def encode_reply(reply: dict[str, Any], max_bytes: int) -> bytes:
    """JSON for the reply; when it would not fit in one NATS message, drop rows until it does."""
    data = _encoder.encode(reply)
    if len(data) <= max_bytes or not reply.get("rows"):
        return data
    rows = reply["rows"]
    keep = len(rows)
    while keep > 0 and len(data) > max_bytes:
        keep = int(keep * max_bytes / len(data) * 0.9)
        short = dict(reply, rows=rows[:keep], row_count=keep, truncated=True)
        short["notice"] = (
            f"only {keep} of {len(rows)} rows fit in one NATS message ({max_bytes} bytes); select fewer columns or page with LIMIT/OFFSET"
        )
        data = _encoder.encode(short)
    return data
