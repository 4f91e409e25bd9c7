"""The projector's pure core: a batch of stream messages in, row changes out. No NATS, no DuckDB.

`apply(state, batch)` decodes each message, skips what the state has already applied (seq <= its
stream position: redeliveries and duplicates change nothing), and, by the state's role (its lane,
see service.py), either evolves the rows of the upserted tables (`state`: tasks, experiments,
hosts) or collects what the append-only tables get (`log`: events, experiment_runs,
request_samples, dead letters; `telemetry`: GPU samples and log lines), as whole rows or as the
raw payloads that payload_sql.py turns into rows in SQL. The state carries the row caches and the
stream positions; the adapter (store.py) writes the Changes and the new positions in one
transaction, each role in its own file.

Every update is a function of (rows, event) only, applied in log order, so the result does not
depend on where batches begin and end: an incremental projection restarted anywhere equals a
rebuild from the first event.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from autotune.projector import schema as sc
from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from autotune.schemas.metrics import ExperimentMetrics
from autotune.schemas.runtime import engine_of_recorded
from autotune.schemas.status import EXPERIMENT_RANK, EXPERIMENT_TERMINAL, TASK_TERMINAL, HostLifecycle

EVENTS = subj.EVENTS_STREAM
KNOWN_TYPES = frozenset(ev.tag_of(t) for t in ev.ALL_EVENT_TYPES)
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


# --- apply ---------------------------------------------------------------------------------------------


class _Unknown:
    """A well-formed event of a type newer than this projector: kept in `events` and counted."""

    __slots__ = ("tag", "fields")

    def __init__(self, tag: str, fields: dict[str, Any]) -> None:
        self.tag, self.fields = tag, fields


def apply(state: ViewState, batch: Sequence[Message]) -> Changes:
    """Apply one batch in order; returns the row changes and the new positions."""
    ch = Changes()
    decoded: list[tuple[Message, Any]] = []
    for m in batch:
        pos = state.position(m.stream)
        if m.seq <= pos.seq:
            ch.skipped += 1
            continue
        pos.seq = m.seq
        pos.messages += 1
        ch.positions[m.stream] = pos
        decoded.append((m, _decode(state, m)))
    _prefetch(state, decoded)
    role = state.role
    for m, event in decoded:
        pos = state.positions[m.stream]
        if isinstance(event, str):
            if role != "state":  # the log lane records it
                _dead(state, ch, pos, m, event)
            continue
        if type(event) is _Unknown:
            if role != "state":
                pos.unknown += 1
                ch.unknown += 1
                ch.events.append(_unknown_row(m, event))
            continue
        kind = type(event)
        if kind is ev.GpuSample:  # rows built from the payload, in SQL
            if role == "state":
                continue
            ch.gpu_samples.append((m.seq, m.data))
        elif kind is ev.LogLines:
            if role == "state":
                continue
            ch.log_lines.append((m.seq, m.data))
        elif role == "telemetry":
            tag = event.__struct_config__.tag
            _dead(state, ch, pos, m, f"`{tag}` does not belong on {m.stream} (only gpu.sample and log.lines do): publish it on its own subject")
            continue
        else:
            if b'"at"' not in m.data:  # left out by its producer: msgspec's default is "now", which no replay repeats
                event = msgspec.structs.replace(event, at=utc_from_us(m.stored_us))
            try:
                if role == "state":
                    _evolve(state, ch, m, event)
                else:
                    _results(state, ch, event)
            except Exception as e:  # a bug in a view update must not stop the projection
                _dead(state, ch, pos, m, f"cannot apply {kind.__name__}: {type(e).__name__}: {e}")
                continue
        ch.applied += 1
        if m.stream == EVENTS and role != "state":
            ch.events.append(_event_row(m, event))
    for table in sc.UPSERTED:
        stored = state.stored[table.name]
        ch.replace[table.name] = [k for k in ch.upserts[table.name] if k in stored]
        stored.update(ch.upserts[table.name])
    ch.positions = {s: msgspec.structs.replace(p) for s, p in ch.positions.items()}
    state.forget_absent()
    return ch


def dead_letter(state: ViewState, m: Message, error: str) -> Changes:
    """The changes that record `m` as a dead letter and nothing else (used when a batch with `m`
    could not be written at all: the adapter isolates the message and records why)."""
    ch = Changes()
    pos = state.position(m.stream)
    if m.seq <= pos.seq:
        ch.skipped += 1
        return ch
    pos.seq = m.seq
    pos.messages += 1
    _dead(state, ch, pos, m, error)
    ch.positions = {m.stream: msgspec.structs.replace(pos)}
    return ch


def _dead(state: ViewState, ch: Changes, pos: Position, m: Message, error: str) -> None:
    pos.dead_letters += 1
    ch.dead += 1
    ch.positions[m.stream] = pos
    raw = m.data[: state.dead_letter_bytes]
    ch.dead_letters.append((m.stream, m.seq, m.subject, m.stored_us, len(m.data), raw, error))


SHARED_MAX = 40_000  # decoded events waiting for the other lane at most (the oldest go first)
_MISS = object()


def _decode(state: ViewState, m: Message) -> Any:
    """The typed event, an _Unknown (newer type: kept, counted) or an error string (dead letter).

    Two lanes read AUTOTUNE_EVENTS (state, log); whichever decodes a message first leaves the
    result in `state.shared` for the other (decoded events are immutable), so each is decoded
    once: decoding is the largest Python cost of a catch-up after building Arrow tables. A lane far
    behind the other finds its entries evicted and decodes them itself."""
    shared = state.shared
    if shared is None:
        return _decode_one(state, m)
    key = (m.stream, m.seq)
    event = shared.pop(key, _MISS)
    if event is not _MISS:
        return event
    event = shared[key] = _decode_one(state, m)
    if len(shared) > SHARED_MAX:
        with contextlib.suppress(StopIteration, RuntimeError, KeyError):  # the other lane may change it meanwhile
            del shared[next(iter(shared))]
    return event


def _decode_one(state: ViewState, m: Message) -> Any:
    if len(m.data) > state.max_event_bytes:
        return f"oversized: {len(m.data)} bytes is more than the projector's limit of {state.max_event_bytes}"
    try:
        return ev.decode(m.data)
    except msgspec.MsgspecError as strict:
        try:
            obj = msgspec.json.decode(m.data)
        except msgspec.MsgspecError as e:
            return f"not JSON: {e}"
        if not isinstance(obj, dict):
            return f"not an event: expected a JSON object, got {type(obj).__name__}"
        tag = obj.get("type")
        if not isinstance(tag, str) or not tag:
            return "not an event: no `type` tag"
        if tag in KNOWN_TYPES:
            return f"invalid `{tag}`: {strict}"
        return _Unknown(tag, obj)


def _prefetch(state: ViewState, decoded: list[tuple[Message, Any]]) -> None:
    """Load the stored rows this batch's events evolve (each event changes its own row only), or
    (log role) whether the attempts this batch finishes were finished before."""
    if state.complete:
        return
    if state.role == "log":
        keys = {(e.task, e.n, e.attempt) for _, e in decoded if type(e) in _TERMINAL}
        missing = [k for k in keys if k not in state.finished]
        if missing and state.finished_loader is not None:
            state.finished.update(dict.fromkeys(state.finished_loader(missing)))
        return
    if state.loader is None:
        return
    keys_of: dict[str, set[tuple]] = {t.name: set() for t in sc.UPSERTED}
    for _, e in decoded:
        kind = type(e)
        if kind in _TASK_EVENTS:
            keys_of[sc.TASKS.name].add((e.task,))
        elif kind in _HOST_EVENTS:
            keys_of[sc.HOSTS.name].add((e.host,))
        elif kind is not ev.LogLines and isinstance(getattr(e, "n", None), int) and isinstance(getattr(e, "task", None), str):
            keys_of[sc.EXPERIMENTS.name].add((e.task, e.n, e.attempt))
    for table in sc.UPSERTED:
        state.prefetch(table, keys_of[table.name])


# --- rows of the events table --------------------------------------------------------------------------


def _event_row(m: Message, e: Any) -> tuple:
    n = getattr(e, "n", None)
    return (
        m.stream, m.seq, m.stored_us, m.subject, e.id, e.__struct_config__.tag, True,
        getattr(e, "task", None), n, e.attempt if n is not None else None,
        getattr(e, "host", None) or None, e.at, _payload(m, e),
    )  # fmt: skip


def _payload(m: Message, e: Any) -> bytes:
    """The payload kept in `events`. A result's per-run statistics and raw samples have their own
    tables (experiment_runs, request_samples); keeping them here too would double the database, so
    they are emptied (the headline metrics stay)."""
    x = getattr(e, "metrics", None)
    if x is None or not (x.runs or x.samples) or type(e) not in _WITH_METRICS:
        return m.data
    return _json.encode(msgspec.structs.replace(e, metrics=msgspec.structs.replace(x, runs=[], samples=[])))


_WITH_METRICS = (ev.ExperimentCompleted, ev.ExperimentFailed)


def _unknown_row(m: Message, u: _Unknown) -> tuple:
    f = u.fields
    n = _int(f.get("n"))
    attempt = _int(f.get("attempt", 0)) if n is not None else None
    return (
        m.stream, m.seq, m.stored_us, m.subject, _str(f.get("id")), u.tag, False,
        _str(f.get("task")), n, attempt, _str(f.get("host")) or None, _time(f.get("at")), m.data,
    )  # fmt: skip


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _int(v: Any) -> int | None:
    return v if type(v) is int and -(2**63) <= v < 2**63 else None


def _time(v: Any) -> datetime | None:
    try:
        return msgspec.convert(v, datetime) if isinstance(v, str) else None
    except msgspec.MsgspecError:
        return None


# --- evolving the upserted rows ------------------------------------------------------------------------


_TASK_EVENTS = frozenset(
    {ev.TaskSubmitted, ev.TaskDatasetFetched, ev.TaskStarted, ev.TaskRejected, ev.TaskCancelRequested, ev.TaskCompleted, ev.TaskFailed, ev.TaskCancelled}
)
_HOST_EVENTS = frozenset({ev.HostRegistered, ev.HostDrainRequested, ev.HostDrained, ev.HostRemoved, ev.HostLost, ev.HostReturned, ev.HostStopped, ev.HostDeployStarted, ev.HostDeployStep, ev.HostDeployFinished})
_DEPLOY_EVENTS = frozenset({ev.HostDeployStarted, ev.HostDeployStep, ev.HostDeployFinished})


def _evolve(state: ViewState, ch: Changes, m: Message, e: Any) -> None:
    kind = type(e)
    if kind in _TASK_EVENTS:
        _task_event(state, ch, m, e)
    elif kind in _HOST_EVENTS:
        _host_event(state, ch, m, e)
    elif hasattr(e, "n"):
        _experiment_event(state, ch, m, e)
    else:
        raise TypeError(f"no view handles `{e.__struct_config__.tag}`")


def _touch(ch: Changes, table: sc.Table, key: tuple, row: dict, m: Message, at: datetime) -> None:
    row["last_seq"] = m.seq
    row["last_event_at"] = at
    ch.upserts[table.name][key] = row


def _task_event(state: ViewState, ch: Changes, m: Message, e: Any) -> None:
    key = (e.task,)
    row = state.get(sc.TASKS, key)
    if row is None:
        row = sc.TASKS.empty_row()
        row["id"] = e.task
        state.rows[sc.TASKS.name][key] = row
    terminal = row["status"] in TASK_TERMINAL
    match e:
        case ev.TaskSubmitted():
            spec = e.spec
            opt = spec.get("optimization") if isinstance(spec.get("optimization"), dict) else {}
            model = spec.get("model")
            row.update(
                name=e.name,
                spec=jsonstr(spec),
                simulate=e.simulate,
                submitted_by=e.submitted_by or None,
                cloned_from=e.cloned_from,
                submitted_at=e.at,
                strategy=row["strategy"] or opt.get("strategy") or "grid_search",
                objective=opt.get("objective") or "minimize_latency",
                engine=engine_of_recorded(spec),  # in OME mode base_runtime names a ClusterServingRuntime
                model=model.get("id_or_path") if isinstance(model, dict) else model,
                deployment_mode=spec.get("deployment_mode"),
                gpu_type=spec.get("gpu_type"),
            )
            if row["status"] is None:
                row["status"] = "submitted"
        case ev.TaskDatasetFetched():
            row["dataset"] = jsonstr({f: getattr(e, f) for f in e.__struct_fields__ if f not in ("type", "id", "at", "task")})
        case ev.TaskStarted():
            row.update(strategy=e.strategy, space_size=e.space_size, budget=e.budget)
            row["started_at"] = row["started_at"] or e.at
            if row["status"] in (None, "submitted"):
                row["status"] = "running"
        case ev.TaskRejected():
            if not terminal:
                row.update(status="rejected", reason=e.reason, reason_path=e.path or None, finished_at=e.at)
        case ev.TaskCancelRequested():
            row["cancel_requested_at"] = row["cancel_requested_at"] or e.at
            if not terminal:
                row.update(status="cancelling", reason=e.reason or row["reason"])
        case ev.TaskCompleted():
            if not terminal:
                row.update(status="completed", reason=e.reason, finished_at=e.at, pareto=jsonstr(e.pareto))
                if e.best_experiment is not None:  # the scheduler's verdict (the `tasks` view prefers it)
                    row.update(verdict_n=e.best_experiment, verdict_attempt=e.best_attempt, verdict_score=e.best_score)
                    if e.best_parameters is not None:
                        row["verdict_parameters"] = jsonstr(e.best_parameters)
        case ev.TaskFailed():
            if not terminal:
                row.update(status="failed", reason=e.reason, finished_at=e.at)
        case ev.TaskCancelled():
            if not terminal:
                row.update(status="cancelled", finished_at=e.at)
    _touch(ch, sc.TASKS, key, row, m, e.at)


def _host_event(state: ViewState, ch: Changes, m: Message, e: Any) -> None:
    key = (e.host,)
    row = state.get(sc.HOSTS, key)
    if row is None and type(e) in _DEPLOY_EVENTS:  # a host exists once it registered; a failed first deploy leaves no row
        return
    if row is None:
        row = sc.HOSTS.empty_row()
        row["host"] = e.host
        state.rows[sc.HOSTS.name][key] = row
    match e:
        case ev.HostRegistered():  # `online`; the `hosts` view says `busy` while it runs attempts
            row.update(
                status=HostLifecycle.ONLINE.value,
                instance=e.instance,
                hostname=e.hostname or None,
                node=e.node,
                version=e.version or None,
                gpus=jsonstr(e.gpus),
                gpu_count=len(e.gpus),
                runtimes=list(e.runtimes),
                engines=list(e.engines),
                simulated=e.simulated,
                cpu_slots=e.cpu_slots,
                cpu_engines=list(e.cpu_engines),
                engine_paths=jsonstr(e.engine_paths),
                registered_at=e.at,
            )
        case ev.HostDrainRequested():
            row.update(status=HostLifecycle.DRAINING.value, drain_requested_at=e.at)
        case ev.HostDrained():
            row.update(status=HostLifecycle.DRAINED.value, drained_at=e.at)
        case ev.HostRemoved():
            row.update(status=HostLifecycle.REMOVED.value, removed_at=e.at)
        # the runner instance's own lifecycle: a late event of an instance replaced since changes nothing
        case ev.HostLost() if _same_instance(row, e):
            row.update(status=HostLifecycle.LOST.value, lost_at=e.at)
        case ev.HostStopped() if _same_instance(row, e):
            if row["status"] != HostLifecycle.REMOVED:
                row["status"] = HostLifecycle.STOPPED.value
            row["stopped_at"] = e.at
        case ev.HostReturned() if _same_instance(row, e):
            if row["status"] in (HostLifecycle.LOST, HostLifecycle.STOPPED, HostLifecycle.ONLINE):
                row["status"] = (HostLifecycle.DRAINING if e.draining else HostLifecycle.ONLINE).value
            row["returned_at"] = e.at
        case ev.HostDeployStarted():
            row.update(deploy_outcome="deploying")
        case ev.HostDeployStep():
            pass
        case ev.HostDeployFinished():
            row.update(release=e.release or None, deploy_outcome=e.outcome if e.action != "undeploy" else "undeployed", deployed_at=e.at,
                       deployed_by=e.requested_by or None)  # fmt: skip
    _touch(ch, sc.HOSTS, key, row, m, e.at)


def _same_instance(row: dict, e: Any) -> bool:
    """Whether a lifecycle event speaks of the runner instance the row knows (or of any, when either is unknown)."""
    return not e.instance or not row["instance"] or e.instance == row["instance"]


def _experiment_event(state: ViewState, ch: Changes, m: Message, e: Any) -> None:
    key = (e.task, e.n, e.attempt)
    row = state.get(sc.EXPERIMENTS, key)
    if row is None:
        row = sc.EXPERIMENTS.empty_row()
        row.update(task=e.task, n=e.n, attempt=e.attempt)
        state.rows[sc.EXPERIMENTS.name][key] = row
    host = getattr(e, "host", "") or None
    match e:
        case ev.ExperimentPlanned():
            row["planned_at"] = row["planned_at"] or e.at
            row.update(parameters=jsonstr(e.parameters), gpus=e.gpus, retry_of=e.retry_of)
            _advance(row, "planned", None)
        case ev.ExperimentWaiting():  # why it is not placed (shown while it is planned)
            if row["status"] in (None, "planned"):
                row.update(waiting_reason=e.reason, waiting_fits=e.fits, waiting_since=e.at)
        case ev.ExperimentAssigned():
            if _advance(row, "assigned", host):
                row.update(
                    gpu_indices=list(e.gpu_indices),
                    gpu_uuids=list(e.gpu_uuids),
                    parameters=jsonstr(e.parameters),
                    deployment_mode=e.deployment_mode,
                    simulated=e.simulated,
                    timeout_s=e.timeout_s,
                    gpu_type=e.gpu_type or None,
                    assigned_at=e.at,
                )
                row["gpus"] = row["gpus"] or len(e.gpu_indices) or None
        case ev.ExperimentCancelRequested():
            row["cancel_requested_at"] = row["cancel_requested_at"] or e.at
            row["cancel_reason"] = e.reason or row["cancel_reason"]
            _advance(row, "cancelling", host)
        case ev.ExperimentStarted():
            if _advance(row, "running", host):
                row.update(instance=e.instance, runtime=e.runtime, handle=e.handle or None, started_at=e.at, device=e.device or None,
                           engine_env=jsonstr(e.env) if e.env else None)
        case ev.ExperimentReady():
            if _advance(row, "ready", host):
                row.update(startup_s=e.startup_s, ready_at=e.at)
        case ev.ExperimentProgress():
            if row["status"] not in EXPERIMENT_TERMINAL:
                row["runs_done"] = max(row["runs_done"] or 0, e.run_index + 1)
                row["runs_total"] = e.runs_total
        case ev.ExperimentCompleted():
            if _advance(row, "completed", host, finished_at=e.at):
                t = e.telemetry
                row.update(
                    score=e.score,
                    objective_value=e.objective_value,
                    objectives=list(e.objectives),
                    slo_met=e.slo_met,
                    slo_violations=jsonstr(e.slo_violations),
                    hard_fail=e.hard_fail,
                    startup_s=e.startup_s or row["startup_s"],
                    duration_s=e.duration_s,
                    telemetry_samples=t.samples,
                    mean_util_gpu=t.mean_util_gpu,
                    max_util_gpu=t.max_util_gpu,
                    max_memory_used_mib=t.max_memory_used_mib,
                    mean_power_w=t.mean_power_w,
                    max_temperature_c=t.max_temperature_c,
                )
                _engine(row, e.engine)
                _metrics(row, e.metrics)
        case ev.ExperimentFailed():
            if _advance(row, "failed", host, finished_at=e.at):
                row.update(
                    retryable=e.retryable,  # the `tasks` view counts it as retried, not failed
                    failure_kind=e.kind,
                    failure_stage=e.stage,
                    failure_message=e.message or None,
                    log_tail=list(e.log_tail) or None,
                    startup_s=e.startup_s if e.startup_s is not None else row["startup_s"],
                    duration_s=e.duration_s,
                )
                _engine(row, e.engine)
                if e.metrics is not None:
                    _metrics(row, e.metrics)
        case ev.ExperimentCancelled():
            if _advance(row, "cancelled", host, finished_at=e.at):
                row["cancel_reason"] = e.reason or row["cancel_reason"]
        case _:
            raise TypeError(f"no view handles `{e.__struct_config__.tag}`")
    _touch(ch, sc.EXPERIMENTS, key, row, m, e.at)


def _advance(row: dict, status: str, host: str | None, finished_at: datetime | None = None) -> bool:
    """Move an attempt forward in its lifecycle (never back; the first terminal event wins). False
    when the event is stale. Its task's counters and its host's running count are not written:
    the `tasks` and `hosts` views derive them from `experiments`."""
    old = row["status"]
    if old is not None and EXPERIMENT_RANK[status] <= EXPERIMENT_RANK[old]:
        return False
    row["status"] = status
    row["host"] = host or row["host"]
    if finished_at is not None:
        row["finished_at"] = finished_at
    return True


def _engine(row: dict, x: ev.EngineMetricsSummary) -> None:
    """The engine's own telemetry (its /metrics during the benchmark) onto the attempt's row."""
    if not x.source:  # no engine metrics scraped (a gauge summary may rest on no sample while the counters have a window)
        return
    row.update(engine_source=x.source or None, engine_samples=x.samples)
    for c in sc.ENGINE:
        row[c] = getattr(x, c.removeprefix("engine_"))


def _metrics(row: dict, x: ExperimentMetrics) -> None:
    """Headline figures onto the attempt's row (its runs and raw samples: the log lane, _results)."""
    for h in sc.HEADLINE:
        row[h] = getattr(x, h)
    row.update(gpus=x.gpus, requests=x.requests, requests_completed=x.completed)


_TERMINAL = (ev.ExperimentCompleted, ev.ExperimentFailed, ev.ExperimentCancelled)
TERMINAL_TYPES = tuple(t.__struct_config__.tag for t in _TERMINAL)


def _results(state: ViewState, ch: Changes, e: Any) -> None:
    """The log lane: one experiment_runs row per run of the terminal event that wins its attempt
    (the first, as in `_advance`); its raw samples are expanded from the payload by the store, in
    SQL (far faster than Python tuples). A later terminal event of the same attempt adds nothing."""
    if type(e) not in _TERMINAL:
        return
    key = (e.task, e.n, e.attempt)
    if key in state.finished:
        return
    state.finished[key] = None
    x = getattr(e, "metrics", None)
    if x is None:
        return
    task, n, attempt = key
    for i, r in enumerate(x.runs):
        stats: list = []
        for name in sc.RUN_STATS:
            s = getattr(r, name)
            stats += (s.count, s.min, s.max, s.mean, s.stddev, s.p25, s.p50, s.p75, s.p90, s.p95, s.p99)
        ch.experiment_runs.append(
            (
                task, n, attempt, i, r.scenario, r.concurrency, r.requests, r.completed, r.errors,
                jsonstr(r.errors_by_kind), r.duration_s, r.requests_per_s, r.input_tps, r.output_tps,
                r.total_tps, r.goodput_rps, *stats,
            )
        )  # fmt: skip
    if x.samples:  # the store expands them in SQL from their JSON (array_like rows)
        ch.metrics.append((task, n, attempt, _json.encode(x.samples)))


def utc_from_us(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1e6, UTC)
