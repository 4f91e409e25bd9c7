"""The projector's answers: read-only SQL, snapshots, and swapping in a rebuilt file on request.

Each request runs in its own task, so a slow query never holds up the next one; DuckDB work runs
on pooled cursors in worker threads while the store is open (a swap closes it for a moment).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import duckdb
import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from autotune.projector import reader
from autotune.projector import schema as sc
from autotune.projector.guard import Refused
from autotune.projector.lane import Progress
from autotune.projector.settings import ProjectorConfig
from autotune.projector.store import Store, write_snapshot
from autotune.schemas import subjects as subj
from autotune.shared.log import get_logger
from autotune.shared.query import QUERY_SNAPSHOT, QUERY_SQL, QUEUE_GROUP
from autotune.shared.stats import Histogram, StatsPublisher

log = get_logger("projector")
REOPEN_PREFIX = subj.QUERY_REOPEN


def reopen_subject(db_path: str) -> str:
    """Where the projector that owns `db_path` on this machine takes swap requests."""
    import hashlib

    key = hashlib.sha256(f"{socket.gethostname()}:{os.path.realpath(db_path)}".encode()).hexdigest()[:16]
    return f"{REOPEN_PREFIX}.{key}"


class _Snapshot(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    path: str
    overwrite: bool = False


class _Reopen(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    path: str
    new_path: str


class SwapInProgress(Exception):
    """A swap was asked for while another one is under way."""


class Answerer:
    """Answers on NATS: read-only SQL and snapshots from `store` on a pool of cursors, while the
    projector has it open (`open`, `close`), and the swap requests it passes on to `swap`. What it
    answers is as of `progress` (how far the lanes have applied AUTOTUNE_EVENTS)."""

    def __init__(self, nc: NATS, cfg: ProjectorConfig, db_path: str, progress: Progress, swap: Callable[[str], Awaitable[dict]]) -> None:
        self.nc, self.cfg, self.db_path, self.progress, self.swap = nc, cfg, db_path, progress, swap
        self.store: Store | None = None
        self.query_seconds = Histogram()  # the SQL answers' latency, for /metrics
        self._readers = ThreadPoolExecutor(cfg.cursors, thread_name_prefix="projector-query")
        self._slots = asyncio.Semaphore(cfg.cursors)
        self._open = asyncio.Event()  # set while the store may be queried
        self._busy_readers = 0
        self._readers_idle = asyncio.Event()
        self._readers_idle.set()
        self._running_cursors: set[duckdb.DuckDBPyConnection] = set()
        self._subs: list[Any] = []
        self._tasks: set[asyncio.Task] = set()

    def open(self, store: Store) -> None:
        """Answer from `store` (just opened)."""
        self.store = store
        self._open.set()

    async def close(self) -> None:
        """Stop reading the store (it is about to close): interrupt the queries that run, and
        wait until none does. Requests wait meanwhile, up to their timeouts."""
        self._open.clear()
        for cur in list(self._running_cursors):
            with contextlib.suppress(Exception):
                cur.interrupt()
        await self._readers_idle.wait()
        self.store = None

    async def stop(self) -> None:
        """Take no more requests; give those under way 5 s to finish."""
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs = []
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)

    def shutdown(self) -> None:
        self._readers.shutdown(wait=False, cancel_futures=True)

    async def publish_stats(self, stop: asyncio.Event) -> None:
        instance = f"{socket.gethostname()}-{os.getpid()}"
        await StatsPublisher("projector", instance, query_seconds=self.query_seconds).run(self.nc.jetstream(), stop)

    async def serve(self) -> None:
        self._subs.append(await self.nc.subscribe(QUERY_SQL, queue=QUEUE_GROUP, cb=self._spawn(self._answer_query)))
        self._subs.append(await self.nc.subscribe(QUERY_SNAPSHOT, queue=QUEUE_GROUP, cb=self._spawn(self._answer_snapshot)))
        self._subs.append(await self.nc.subscribe(reopen_subject(self.db_path), cb=self._spawn(self._answer_reopen)))

    def _spawn(self, handler: Callable[[Msg], Awaitable[bytes]]) -> Callable[[Msg], Awaitable[None]]:
        """Each request in its own task: a slow query must not hold up the next one."""

        async def respond(msg: Msg) -> None:
            try:
                data = await handler(msg)
            except Exception as e:
                log.error("request failed", exc=True, subject=msg.subject)
                data = msgspec.json.encode({"error": f"the projector failed: {type(e).__name__}: {e}"})
            if msg.reply:
                with contextlib.suppress(Exception):
                    await msg.respond(data)

        async def cb(msg: Msg) -> None:
            task = asyncio.create_task(respond(msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        return cb

    def _max_reply(self) -> int:
        return max(self.nc.max_payload - 4096, 4096)

    async def _answer_query(self, msg: Msg) -> bytes:
        t0 = time.perf_counter()
        try:
            req = msgspec.json.decode(msg.data, type=reader.QueryRequest)
        except msgspec.MsgspecError as e:
            return _error(f'bad query request: {e}; send {{"sql": "SELECT ...", "params": [...]}}')
        budget = min(req.timeout or self.cfg.query_timeout_s, self.cfg.query_timeout_max_s)
        if budget <= 0:
            return _error("timeout must be positive (seconds)")
        limit = self.cfg.row_limit if req.limit is None else req.limit
        if limit < 0:
            return _error("limit must be 0 or more (rows)")
        limit = min(limit, self.cfg.row_limit_max)
        lanes = lanes_for(req.sql)
        if req.min_seq and not await self.progress.wait(req.min_seq, min(self.cfg.min_seq_wait_s, budget), lanes):
            return _error(
                f"the projector is behind: it has applied {subj.EVENTS_STREAM} up to seq {self.progress.of(lanes)}, "
                f"not yet {req.min_seq}; retry shortly"
            )
        try:
            result = await self._read(reader.execute, req.sql, req.params, limit, t0 + budget, lanes=lanes)
        except Refused as e:
            return _error(f"refused: {e}")
        except reader.QueryTimeout as e:
            return _error(str(e))
        except duckdb.InterruptException as e:
            if not self._open.is_set():  # interrupted by a swap or a reopen, not by its own timeout
                return _error("the projector closed its database to swap or reopen it while this query ran; retry shortly")
            return _error(str(e))
        except duckdb.Error as e:
            return _error(str(e))
        except TimeoutError:
            return _error(f"no query slot became free within the {budget:.3g} s timeout; retry shortly")
        result["applied_seq"] = result.pop("_applied_seq")
        elapsed = time.perf_counter() - t0
        self.query_seconds.observe(elapsed)
        result["elapsed_ms"] = round(elapsed * 1000, 3)
        return reader.encode_reply(result, self._max_reply())

    async def _read(self, fn: Callable[..., dict], *a: Any, lanes: tuple[str, ...] = ("state", "log")) -> dict:
        """Run fn(cursor, *args, remaining_seconds) on a pooled cursor while the store is open.
        `_applied_seq` in the result: AUTOTUNE_EVENTS applied in `lanes` when it started."""
        *args, deadline = a
        async with asyncio.timeout_at(asyncio.get_running_loop().time() + max(deadline - time.perf_counter(), 0)):
            await self._slots.acquire()
            try:
                await self._open.wait()
            except BaseException:
                self._slots.release()
                raise
        try:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise reader.QueryTimeout("the query's timeout passed before it could start; retry or pass a larger timeout")
            applied = self.progress.of(lanes)
            self._busy_readers += 1
            self._readers_idle.clear()
            try:
                out = await asyncio.get_running_loop().run_in_executor(self._readers, self._with_cursor, fn, *args, remaining)
            finally:
                self._busy_readers -= 1
                if self._busy_readers == 0:
                    self._readers_idle.set()
            out["_applied_seq"] = applied
            return out
        finally:
            self._slots.release()

    def _with_cursor(self, fn: Callable[..., dict], *a: Any) -> dict:
        with self.store.cursor() as cur:
            self._running_cursors.add(cur)
            try:
                return fn(cur, *a)
            finally:
                self._running_cursors.discard(cur)

    async def _answer_snapshot(self, msg: Msg) -> bytes:
        try:
            req = msgspec.json.decode(msg.data, type=_Snapshot)
        except msgspec.MsgspecError as e:
            return _error(f'bad snapshot request: {e}; send {{"path": "/abs/path/file.duckdb"}}')
        if not os.path.isabs(req.path):
            return _error(f"snapshot path `{req.path}` must be absolute (it is written on the projector's machine)")

        def snap(cur: duckdb.DuckDBPyConnection, path: str, overwrite: bool, _remaining: float) -> dict:
            return {"tables": write_snapshot(cur, path, overwrite=overwrite)}

        try:
            out = await self._read(snap, req.path, req.overwrite, time.perf_counter() + 3600)
        except (OSError, duckdb.Error) as e:
            return _error(f"cannot write the snapshot: {e}")
        out.update(path=req.path, host=socket.gethostname(), bytes=os.path.getsize(req.path), applied_seq=out.pop("_applied_seq"))
        log.info("snapshot written", path=req.path, applied_seq=out["applied_seq"])
        return msgspec.json.encode(out)

    async def _answer_reopen(self, msg: Msg) -> bytes:
        try:
            req = msgspec.json.decode(msg.data, type=_Reopen)
        except msgspec.MsgspecError as e:
            return _error(f"bad reopen request: {e}")
        if os.path.realpath(req.path) != os.path.realpath(self.db_path):
            return _error(f"this projector serves {self.db_path}, not {req.path}")
        if not os.path.isfile(req.new_path):
            return _error(f"no rebuilt database at {req.new_path}")
        try:
            return msgspec.json.encode(await self.swap(req.new_path))
        except SwapInProgress:
            return _error("a swap is already in progress; retry when it is done")
        except Exception as e:
            return _error(f"the swap failed: {e}")


# what the log lanes write (lane.py), and the log file's alias: a query that names none of them
# reads the state lane's tables only, and min_seq waits for that lane alone (a word in a string
# literal or an alias only makes it wait for both, never too little)
_LOG_WORDS = re.compile(
    r"\b(" + "|".join(sorted({t.name for t in sc.LOG_TABLES if t is not sc.LOG_META} | {sc.LOG_DB})) + r")\b", re.IGNORECASE
)


def lanes_for(sql: str) -> tuple[str, ...]:
    """The lanes whose AUTOTUNE_EVENTS position a query's `min_seq` waits for."""
    return ("state", "log") if _LOG_WORDS.search(sql) else ("state",)


def _error(message: str) -> bytes:
    return msgspec.json.encode({"error": message})
