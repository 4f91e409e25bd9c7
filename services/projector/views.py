"""The projector's pure core: a batch of stream messages in, row changes out. No NATS, no DuckDB.

`apply(state, batch)` decodes each message, skips what the state has already applied (seq <= its
stream position: redeliveries and duplicates change nothing), and, by the state's role (its lane,
see service.py), either evolves the rows of the upserted tables (`state`: tasks, experiments,
hosts; evolve.py) or collects what the append-only tables get (`log`: events, experiment_runs,
request_samples, dead letters; `telemetry`: GPU samples and log lines), as whole rows or as the
raw payloads that payload_sql.py turns into rows in SQL. The state (view_state.py) carries the
row caches and the stream positions; the adapter (store.py) writes the Changes and the new positions in one
transaction, each role in its own file.

Every update is a function of (rows, event) only, applied in log order, so the result does not
depend on where batches begin and end: an incremental projection restarted anywhere equals a
rebuild from the first event.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from autotune.projector import schema as sc
from autotune.projector.evolve import HOST_EVENTS, TASK_EVENTS, evolve
from autotune.projector.view_state import Changes, Message, Position, ViewState, jsonstr
from autotune.schemas import events as ev
from autotune.schemas import subjects as subj

EVENTS = subj.EVENTS_STREAM
KNOWN_TYPES = frozenset(ev.tag_of(t) for t in ev.ALL_EVENT_TYPES)

_json = msgspec.json.Encoder()


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
                    evolve(state, ch, m, event)
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
        if kind in TASK_EVENTS:
            keys_of[sc.TASKS.name].add((e.task,))
        elif kind in HOST_EVENTS:
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


_TERMINAL = (ev.ExperimentCompleted, ev.ExperimentFailed, ev.ExperimentCancelled)
TERMINAL_TYPES = tuple(t.__struct_config__.tag for t in _TERMINAL)


def _results(state: ViewState, ch: Changes, e: Any) -> None:
    """The log lane: one experiment_runs row per run of the terminal event that wins its attempt
    (the first, as in `evolve._advance`); its raw samples are expanded from the payload by the store, in
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
