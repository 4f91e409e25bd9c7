"""Live views straight from JetStream: any subject filter, from a stream sequence or a point in time,
then live. Replay is free: an ordered consumer (ephemeral, no acks, gaps healed by the client).

`bus.replay` starts only from a sequence; here the consumer may also start at a time
(DeliverPolicy BY_START_TIME). Shared by the API's SSE endpoints and the command line.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.js import api as jsapi

from autotune.reads.common import redact
from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from autotune.shared import bus

TASK_FINISHED = frozenset({"task.completed", "task.failed", "task.cancelled", "task.rejected"})
ROOTS = {"task": subj.EVENTS_STREAM, "host": subj.EVENTS_STREAM, "gpu": subj.TELEMETRY_STREAM, "log": subj.LOGS_STREAM}


class BadSubject(ValueError):
    pass


def route(subject: str) -> tuple[str, list[str]]:
    """(stream, filter subjects) for a subject filter under `autotune.`; raises BadSubject."""
    parts = subject.split(".")
    hint = "use e.g. autotune.task.<task>.>, autotune.host.>, autotune.gpu.<host>.*, autotune.log.<task>.<n> or autotune.>"
    if len(parts) < 2 or parts[0] != subj.PREFIX:
        raise BadSubject(f"`{subject}` is not an autotune subject; {hint}")
    for i, p in enumerate(parts[1:], 1):
        if p == ">" and i != len(parts) - 1:
            raise BadSubject(f"`>` may only be the last token of `{subject}`")
        if p not in ("*", ">") and not subj.TOKEN.match(p):
            raise BadSubject(f"token `{p}` of `{subject}` is not a valid subject token; {hint}")
    root = parts[1]
    if len(parts) == 2 and root not in ("*", ">"):
        raise BadSubject(f"`{subject}` names no event; add the rest, e.g. {subject}.>")
    if root in ROOTS:
        return ROOTS[root], [subject]
    if root in ("*", ">"):  # everything in the event log: tasks and hosts
        rest = ".".join(parts[2:])
        if root == ">":
            return subj.EVENTS_STREAM, [f"{subj.PREFIX}.task.>", f"{subj.PREFIX}.host.>"]
        return subj.EVENTS_STREAM, [f"{subj.PREFIX}.task.{rest}", f"{subj.PREFIX}.host.{rest}"]
    raise BadSubject(f"no stream holds `{subject}`; {hint}")


class Item(msgspec.Struct, frozen=True):
    seq: int
    subject: str
    stored_at: datetime
    data: bytes


async def ordered(
    js,
    stream: str,
    filters: list[str],
    *,
    start_seq: int | None = None,
    start_time: datetime | None = None,
    follow: bool = True,
    idle_s: float = 0.5,
) -> AsyncIterator[Item | None]:
    """Messages of `stream` matching `filters`, in order, from `start_seq` or `start_time` (else the
    first); then live ones with `follow`, else it ends once caught up. Yields None after every
    `idle_s` without a message, so a caller can check a condition or send a keep-alive."""
    if start_time is not None and start_time.tzinfo is None:
        start_time = start_time.replace(tzinfo=UTC)
    if start_seq and start_seq > 1:
        cfg = jsapi.ConsumerConfig(deliver_policy=jsapi.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start_seq)
    elif start_time is not None:
        cfg = jsapi.ConsumerConfig(deliver_policy=jsapi.DeliverPolicy.BY_START_TIME, opt_start_time=start_time)
    else:
        cfg = jsapi.ConsumerConfig(deliver_policy=jsapi.DeliverPolicy.ALL)
    if len(filters) > 1:
        cfg.filter_subjects = filters
    sub = await js.subscribe(filters[0] if len(filters) == 1 else ">", stream=stream, ordered_consumer=True, config=cfg, pending_msgs_limit=-1)
    # The consumer exists now. nats-py re-creates an ordered consumer after a gap from the next
    # sequence (BY_START_SEQUENCE) with this same config object: the start time must not ride along.
    cfg.opt_start_time = None
    try:
        pending: int | None = None
        while True:
            try:
                msg = await sub.next_msg(timeout=idle_s)
            except TimeoutError:
                if not follow:
                    if pending is None:
                        pending = (await sub.consumer_info()).num_pending
                    if pending == 0:
                        return
                yield None
                continue
            meta = msg.metadata
            pending = meta.num_pending
            stored = meta.timestamp or datetime.now(UTC)
            if start_time is not None and stored < start_time:
                continue  # only after a re-creation that happened before the first delivery
            yield Item(meta.sequence.stream, msg.subject, stored, msg.data or b"")
            if not follow and pending == 0:
                return
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


def envelope(item: Item, stream: str) -> dict[str, Any]:
    """What a live view sends per message: its place in the log and the event (secrets redacted)."""
    try:
        event = msgspec.json.decode(item.data)
    except msgspec.MsgspecError:
        event = None
    out: dict[str, Any] = {"seq": item.seq, "stream": stream, "subject": item.subject, "stored_at": item.stored_at.isoformat()}
    if isinstance(event, dict):
        out["type"] = event.get("type") if isinstance(event.get("type"), str) else "unknown"
        out["event"] = redact(event)
    else:
        out["type"] = "undecodable"
        out["event"] = None
    return out


async def events(
    js, subject: str, *, since_seq: int | None = None, since_time: datetime | None = None, follow: bool = False,
    limit: int | None = None, keepalive_s: float | None = None, until: frozenset[str] = frozenset(),
) -> AsyncIterator[dict[str, Any] | None]:  # fmt: skip
    """Envelopes of every message matching `subject`; None now and then as a keep-alive tick. It ends
    after an event whose type is in `until` (a task's stream: once the task finished)."""
    stream, filters = route(subject)
    sent = 0
    idle = 0.0
    async for item in ordered(js, stream, filters, start_seq=since_seq, start_time=since_time, follow=follow):
        if item is None:
            idle += 0.5
            if keepalive_s and idle >= keepalive_s:
                idle = 0.0
                yield None
            continue
        idle = 0.0
        env = envelope(item, stream)
        yield env
        sent += 1
        if (limit and sent >= limit) or env["type"] in until:
            return


# --- experiment logs ---------------------------------------------------------------------------------------


async def experiment_outcome(js, task: str, n: int, attempt: int | None) -> dict[str, Any] | None:
    """The terminal event of the attempt (the latest one when None), or None while it runs.

    A retryable failure of the latest attempt is not an end when following all attempts: the
    scheduler plans the next one."""
    history = await bus.messages_after(js, subj.experiment_all(task, n), 0)
    task_done = await _task_finished(js, task)
    latest = max((e.attempt for _, e in history if e is not None and hasattr(e, "attempt")), default=None)
    target = attempt if attempt is not None else latest
    for _, e in history:
        if isinstance(e, ev.TERMINAL_EXPERIMENT) and e.attempt == target:
            status = {ev.ExperimentCompleted: "completed", ev.ExperimentFailed: "failed", ev.ExperimentCancelled: "cancelled"}[type(e)]
            if attempt is None and isinstance(e, ev.ExperimentFailed) and e.retryable and not task_done:
                return None
            return {"attempt": e.attempt, "status": status}
    if task_done and (target is None or not any(isinstance(e, ev.ExperimentPlanned) and e.attempt == target for _, e in history)):
        return {"attempt": target, "status": "task finished"}
    return None


async def _task_finished(js, task: str) -> bool:
    for what in ("completed", "failed", "cancelled", "rejected"):
        if await bus.last_seq(js, subj.task(task, what)) > 0:
            return True
    return False


async def logs(
    js, task: str, n: int, *, attempt: int | None = None, since_seq: int | None = None, follow: bool = False,
    limit: int | None = None, check_every_s: float = 1.0,
) -> AsyncIterator[tuple[str, dict[str, Any]]]:  # fmt: skip
    """("log", {seq, attempt, host, source, at, lines}) for each batch of the experiment's log lines,
    then ("end", {attempt, status}) once it finished (with follow) or the log is read (without)."""
    subject = subj.log(task, n)
    sent = 0
    waited = 0.0
    async for item in ordered(js, subj.LOGS_STREAM, [subject], start_seq=since_seq, follow=follow):
        if item is None:
            waited += 0.5
            if follow and waited >= check_every_s:
                waited = 0.0
                outcome = await experiment_outcome(js, task, n, attempt)
                if outcome is not None:
                    yield "end", outcome
                    return
            continue
        try:
            e = ev.decode(item.data)
        except msgspec.MsgspecError:
            continue
        if not isinstance(e, ev.LogLines) or (attempt is not None and e.attempt != attempt):
            continue
        yield "log", {"seq": item.seq, "attempt": e.attempt, "host": e.host, "source": e.stream, "at": e.at.isoformat(), "lines": list(e.lines)}
        sent += 1
        if limit and sent >= limit:
            return
    outcome = await experiment_outcome(js, task, n, attempt)
    if outcome is None:
        planned = await bus.last_seq(js, subj.experiment_all(task, n)) > 0
        outcome = {"attempt": attempt, "status": "running" if planned else "not planned"}
    yield "end", outcome



# --- where a live view goes on ------------------------------------------------------------------------------


async def positions(nc, *, min_seq: int | None = None) -> dict[str, int]:
    """The sequences a page rendered from the projection goes on after, per stream: what the
    projection had applied of AUTOTUNE_EVENTS (ask before reading, so nothing falls between the
    page and its live stream), and the current ends of the telemetry and log streams."""
    from autotune.shared import query as q

    js = nc.jetstream()
    out = {subj.EVENTS_STREAM: (await q.sql(nc, "SELECT 1 AS ok", min_seq=min_seq)).applied_seq}
    for stream in (subj.TELEMETRY_STREAM, subj.LOGS_STREAM):
        out[stream] = (await js.stream_info(stream)).state.last_seq
    return out
