"""What views.apply takes (Message), carries between batches (ViewState: stream positions, row
caches) and returns (Changes).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from autotune.projector import schema as sc

MAX_EVENT_BYTES = 8 * 1024 * 1024  # the stream's own max_msg_size
DEAD_LETTER_BYTES = 256 * 1024  # raw bytes kept per dead letter; the stream keeps the whole message

_json = msgspec.json.Encoder()


def jsonstr(value: Any) -> str:
    return _json.encode(value).decode()


class Message(msgspec.Struct, frozen=True, array_like=True):
    """One stream message as the projector sees it: where it sits in the log, and its raw bytes."""

    stream: str
    seq: int
    subject: str
    data: bytes
    stored_us: int = 0  # JetStream store time, microseconds since the epoch (deterministic on replay)


class Position(msgspec.Struct, kw_only=True):
    """How far one stream is applied."""

    stream: str
    seq: int = 0
    messages: int = 0
    unknown: int = 0
    dead_letters: int = 0

    def row(self) -> tuple:
        return (self.stream, self.seq, self.messages, self.unknown, self.dead_letters)


Loader = Callable[[sc.Table, list[tuple]], list[dict]]

ROLES = ("state", "log", "telemetry")


class ViewState:
    """What apply() needs between batches: stream positions and the rows of the upserted tables.

    `complete` says the cache holds every row that exists (a fresh database); otherwise a miss asks
    `loader` (the store). `stored` remembers which keys already exist in the store, so the adapter
    deletes the old version of exactly those rows before inserting the new one.

    `role` is the lane it serves. `state` evolves the rows and nothing else: what it cannot decode
    or does not know it passes over (the log lane records those). `log` keeps every event, its
    dead letters and unknown types, and the results (runs, raw samples) of the terminal event that
    wins each attempt, which `finished` tracks (cached like the rows; `finished_loader` reads the
    stored ones). `telemetry` keeps GPU samples and log lines: any other event is a dead letter
    there, as it does not belong on those streams.
    """

    def __init__(
        self,
        positions: dict[str, Position] | None = None,
        *,
        loader: Loader | None = None,
        complete: bool = True,
        max_event_bytes: int = MAX_EVENT_BYTES,
        dead_letter_bytes: int = DEAD_LETTER_BYTES,
        role: str = "state",
        finished_loader: Callable[[list[tuple]], list[tuple]] | None = None,
        shared: dict | None = None,
        stored: dict[str, set[tuple]] | None = None,
        max_keys: int = 2_000_000,
        finished: Iterable[tuple] | None = None,
    ) -> None:
        if role not in ROLES:
            raise ValueError(f"role {role!r}: one of {', '.join(ROLES)}")
        self.positions: dict[str, Position] = positions or {}
        self.role = role
        # attempts whose terminal event is applied (log role), oldest first; given whole (`finished`
        # keys) on a restart, so a new attempt's result needs no lookup
        self.finished: dict[tuple, None] = dict.fromkeys(finished or ())
        self.finished_loader = finished_loader
        self.shared = shared  # decoded events handed between the lanes that read one stream (_decode)
        self.rows: dict[str, dict[tuple, dict]] = {t.name: {} for t in sc.UPSERTED}
        self.stored: dict[str, set[tuple]] = stored or {t.name: set() for t in sc.UPSERTED}
        self._absent: list[tuple[str, tuple]] = []
        self.loader = loader
        # nothing to ask, or given whole: what it has is all there is
        self.complete = complete or (loader is None and finished_loader is None) or finished is not None
        # `stored` holds every key in the store (a fresh file, or `stored` given): a key not in it
        # is a new row, created without asking the store. Live, most misses are new attempts, so
        # this saves a loader query per batch (~10 ms); kept while there are at most `max_keys`
        self.keys_known = self.complete or stored is not None
        self.max_keys = max_keys
        self.max_event_bytes = max_event_bytes
        self.dead_letter_bytes = dead_letter_bytes

    def position(self, stream: str) -> Position:
        p = self.positions.get(stream)
        if p is None:
            p = self.positions[stream] = Position(stream=stream)
        return p

    def prefetch(self, table: sc.Table, keys: Iterable[tuple]) -> None:
        """Load the stored rows of `keys` that are not cached, in one round trip."""
        if self.complete or self.loader is None:
            return
        cache = self.rows[table.name]
        missing = [k for k in set(keys) if k not in cache]
        if self.keys_known:
            stored = self.stored[table.name]
            for k in [k for k in missing if k not in stored]:  # new rows
                cache[k] = _ABSENT
                self._absent.append((table.name, k))
            missing = [k for k in missing if k in stored]
        if not missing:
            return
        for row in self.loader(table, missing):
            key = tuple(row[c] for c in table.key)
            cache[key] = row
            self.stored[table.name].add(key)
        for k in missing:  # remember misses for this batch: created rows replace the marker
            if k not in cache:
                cache[k] = _ABSENT
                self._absent.append((table.name, k))

    def get(self, table: sc.Table, key: tuple) -> dict | None:
        row = self.rows[table.name].get(key)
        if row is None and not self.complete and self.loader is not None:
            self.prefetch(table, [key])
            row = self.rows[table.name].get(key)
        return None if row is _ABSENT else row

    def forget_absent(self) -> None:
        for name, k in self._absent:
            if self.rows[name].get(k) is _ABSENT:
                del self.rows[name][k]
        self._absent.clear()

    def trim(self, max_rows: int, pinned: Changes | None = None) -> None:
        """Keep memory bounded: drop finished rows first (rarely touched again), then the rest, but
        never the rows of `pinned` (a batch still being committed: the store has not got them).
        `finished` holds keys, like `stored`: all of them up to `max_keys` (or `max_rows`, if
        more); past that it drops its older half, the newest (a batch in flight: fewer than half)
        stay."""
        most = max(self.max_keys, max_rows)
        if len(self.finished) > most:
            self.complete = False
            for k in list(itertools.islice(self.finished, len(self.finished) - most // 2)):
                del self.finished[k]
        if self.keys_known and sum(map(len, self.stored.values())) > self.max_keys:
            self.keys_known = False  # from now on `stored` holds the cached keys only
            for table in sc.UPSERTED:
                self.stored[table.name] = {k for k in self.stored[table.name] if k in self.rows[table.name]}
        for table in sc.UPSERTED:
            cache, stored = self.rows[table.name], self.stored[table.name]
            if len(cache) <= max_rows:
                continue
            self.complete = False
            keep = pinned.upserts[table.name] if pinned is not None else {}
            done = [k for k, r in cache.items() if k not in keep and r.get("status") in _FINISHED]
            for k in done:
                del cache[k]
                if not self.keys_known:
                    stored.discard(k)
            if len(cache) > max_rows:
                for k in [k for k in cache if k not in keep]:
                    del cache[k]
                    if not self.keys_known:
                        stored.discard(k)


_FINISHED = frozenset({"completed", "failed", "cancelled", "rejected", "removed"})
_ABSENT: dict = {}


class Changes:
    """The row changes of one batch.

    Upserted rows travel whole, by key (`replace`: the keys whose stored version is deleted
    first). Append-only rows travel as the raw payloads they are made of, and the store expands
    them in SQL (payload_sql.py): DuckDB parses JSON in C++, off the GIL, far faster than Python
    builds tuples. `gpu_samples` and `log_lines`: (seq, payload); `metrics`: (task, n, attempt,
    samples) of the results whose raw samples become request_samples (their JSON array); `events` (its payload still
    raw bytes), `experiment_runs` and `dead_letters`: whole rows in column order.
    """

    def __init__(self) -> None:
        self.upserts: dict[str, dict[tuple, dict]] = {t.name: {} for t in sc.UPSERTED}
        self.replace: dict[str, list[tuple]] = {t.name: [] for t in sc.UPSERTED}
        self.events: list[tuple] = []
        self.gpu_samples: list[tuple[int, bytes]] = []
        self.log_lines: list[tuple[int, bytes]] = []
        self.metrics: list[tuple[str, int, int, bytes]] = []
        self.experiment_runs: list[tuple] = []
        self.dead_letters: list[tuple] = []
        self.positions: dict[str, Position] = {}
        self.applied = 0
        self.skipped = 0
        self.unknown = 0
        self.dead = 0

    @property
    def empty(self) -> bool:
        return not self.positions

    def summary(self) -> dict[str, int]:
        return {"applied": self.applied, "skipped": self.skipped, "unknown": self.unknown, "dead_letters": self.dead}
