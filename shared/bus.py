"""NATS: connect, provision the streams and KV buckets, append events, consume them.

Every append carries `Nats-Msg-Id` (the event's deterministic id), so a retried publish is stored
once. Appends to a task or an experiment also carry the optimistic-concurrency headers, so a writer
whose view is stale (a runner presumed dead, a deposed scheduler) is refused by the server (10071;
10164 from a replicated stream while another write to the subject is in flight) instead of
corrupting history.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as jsapi
from nats.js.errors import APIError, BadRequestError, NoStreamResponseError, NotFoundError, ServiceUnavailableError

from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from autotune.shared.lifecycle import Stopped
from autotune.shared.log import get_logger
from autotune.shared.settings import Settings

log = get_logger("bus")

# the server's "wrong last sequence": 10071 names the subject's last sequence; a replicated stream
# answers 10164 (no sequence) when another append to the subject is still in flight, which the
# writer's view does not include either (found by the cluster chaos run: a scheduler exited on it)
WRONG_LAST_SEQUENCE = (10071, 10164)
MAX_PAYLOAD = 8 * 1024 * 1024


async def connect(settings: Settings, name: str, *, connect_timeout: float = 5.0, stop: asyncio.Event | None = None, **kw: Any) -> NATS:
    """Connect with reconnects forever; the client name shows who is who in `nats server report`.

    A service passes its `stop`: a SIGTERM while NATS has not answered yet (it keeps trying) then
    ends the wait with lifecycle.Stopped instead of leaving the service deaf to it."""
    opts: dict[str, Any] = dict(
        servers=[u.strip() for u in settings.nats_url.split(",")],
        name=f"autotune-{name}@{socket.gethostname()}",
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=connect_timeout,
        allow_reconnect=True,
    )
    if settings.creds:
        opts["user_credentials"] = settings.creds
    if settings.tls_ca:
        import ssl

        opts["tls"] = ssl.create_default_context(cafile=settings.tls_ca)

    async def _err(e: Exception) -> None:
        log.warning("nats error", error=repr(e))

    opts["error_cb"] = _err
    opts.update(kw)
    if stop is None:
        return await nats.connect(**opts)
    connecting = asyncio.ensure_future(nats.connect(**opts))
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not connecting.done():
            connecting.cancel()
            with contextlib.suppress(BaseException):
                await connecting
    if connecting.cancelled():
        from autotune.shared.security import redacted

        raise Stopped(f"stopped before NATS at {redacted(settings.nats_url)} answered")
    return connecting.result()


async def close(nc: NATS) -> None:
    """Drain the connection (what is pending is flushed, then it closes). One that is down or
    reconnecting cannot drain (nats-py raises): it is closed instead. Never raises, so a service
    that stops while NATS is away stops quietly."""
    try:
        await nc.drain()
    except Exception:
        with contextlib.suppress(Exception):
            await nc.close()


# --- provisioning -------------------------------------------------------------------------------------


def stream_configs(settings: Settings) -> list[jsapi.StreamConfig]:
    r = settings.replicas
    return [
        jsapi.StreamConfig(
            name=subj.EVENTS_STREAM,
            subjects=list(subj.EVENTS_SUBJECTS),
            retention=jsapi.RetentionPolicy.LIMITS,
            storage=jsapi.StorageType.FILE,
            num_replicas=r,
            duplicate_window=300,
            max_msg_size=MAX_PAYLOAD,
            description="autotune: the truth (tasks, experiments, hosts)",
        ),
        jsapi.StreamConfig(
            name=subj.TELEMETRY_STREAM,
            subjects=[subj.GPU_ALL],
            storage=jsapi.StorageType.FILE,
            num_replicas=r,
            max_age=settings.telemetry_max_age_s,
            duplicate_window=_dedupe_window(60, settings.telemetry_max_age_s),
            description="autotune: GPU samples",
        ),
        jsapi.StreamConfig(
            name=subj.LOGS_STREAM,
            subjects=[subj.LOG_ALL],
            storage=jsapi.StorageType.FILE,
            num_replicas=r,
            max_age=settings.logs_max_age_s,
            duplicate_window=_dedupe_window(60, settings.logs_max_age_s),
            description="autotune: engine and runner log lines",
        ),
    ]


def _dedupe_window(seconds: float, max_age_s: float) -> float:
    """The server refuses a duplicate window longer than the stream's max age (0: none)."""
    return min(seconds, max_age_s) if max_age_s > 0 else seconds


TRANSIENT = (TimeoutError, ServiceUnavailableError, nats.errors.NoRespondersError)  # no JetStream leader (yet)


async def retry_transient(call: Callable[[], Awaitable[Any]], *, attempts: int = 40, delay: float = 0.5) -> Any:
    """`call()`, again while it fails the way a cluster electing a leader makes calls fail (a
    node was just killed, a service starts with the cluster): ~20 s by default, then the error."""
    for attempt in range(attempts):
        try:
            return await call()
        except TRANSIENT:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(delay)


async def provision(js: JetStreamContext, settings: Settings) -> None:
    """Create the streams and KV buckets that are missing. Idempotent: every service calls it at start.

    Existing streams are left alone (a role without the right to create or update streams — every
    role but admin in secure mode — only needs to read their info); `apply_stream_settings` (`autotune streams --apply`) is for admins.
    """
    for cfg in stream_configs(settings):
        for attempt in range(10):
            try:
                await js.stream_info(cfg.name)
                break
            except NotFoundError:
                try:
                    await js.add_stream(cfg)
                except BadRequestError as e:
                    if e.err_code != 10058:  # created concurrently with another configuration
                        raise
                except TimeoutError:
                    raise ProvisionError(
                        f"stream {cfg.name} is missing and this connection may not create it; "
                        "provision as admin first (autotune up does), or check the NATS credentials"
                    ) from None
                break
            except (TimeoutError, ServiceUnavailableError, nats.errors.NoRespondersError):
                if attempt == 9:  # a cluster that has no JetStream leader yet
                    raise
                await asyncio.sleep(0.5)
    # direct gets: a fleet's liveness is read in one batched request (reads.live_hosts), not one per host
    await kv_bucket(js, subj.HOSTS_BUCKET, settings, ttl_markers=True, direct=True)
    await kv_bucket(js, subj.LEASES_BUCKET, settings, ttl_markers=True)
    await kv_bucket(js, subj.NAMES_BUCKET, settings)
    await kv_bucket(js, subj.STATS_BUCKET, settings, max_age=STATS_MAX_AGE_S, memory=True)
    await object_bucket(js, subj.DATASETS_BUCKET, settings)


TUNABLE = ("num_replicas", "max_age", "duplicate_window")  # what `autotune streams --apply` changes on a stream


def stream_differences(have: jsapi.StreamConfig, want: jsapi.StreamConfig) -> list[tuple[str, Any, Any]]:
    """(field, have, want) for each TUNABLE field of a stream's configuration that differs."""
    return [(f, getattr(have, f), getattr(want, f)) for f in TUNABLE if float(getattr(have, f) or 0) != float(getattr(want, f) or 0)]


async def apply_stream_settings(js: JetStreamContext, settings: Settings) -> list[tuple[str, str, Any, Any]]:
    """Create what is missing, then give each stream the replicas and max age of `settings` where
    they differ. Returns (stream, field, was, now) per change. Only admin may (secure mode)."""
    await provision(js, settings)
    changes = []
    for want in stream_configs(settings):
        have = (await js.stream_info(want.name)).config
        diff = stream_differences(have, want)
        if not diff:
            continue
        try:
            await js.update_stream(dataclasses.replace(have, **{f: v for f, _, v in diff}))
        except TimeoutError:
            raise ProvisionError(f"stream {want.name} was not changed: this connection may not change streams (only admin may, in secure mode)") from None
        changes += [(want.name, f, was, now) for f, was, now in diff]
    return changes


STATS_MAX_AGE_S = 60.0  # a service that stopped publishing its figures drops out of /metrics after this


async def kv_bucket(js: JetStreamContext, name: str, settings: Settings, *, ttl_markers: bool = False, max_age: float | None = None, memory: bool = False,
                    direct: bool = False):  # fmt: skip
    try:
        return await retry_transient(lambda: js.key_value(name))
    except (NotFoundError, APIError):
        pass
    cfg = jsapi.KeyValueConfig(
        bucket=name,
        history=1,
        replicas=settings.replicas,
        storage=jsapi.StorageType.MEMORY if memory else jsapi.StorageType.FILE,
        ttl=max_age,
        # per-key TTLs with delete markers: an expired liveness key or lease is seen by watchers
        limit_marker_ttl=5.0 if ttl_markers else None,
        direct=direct or None,
    )
    try:
        return await js.create_key_value(cfg)
    except BadRequestError:  # created concurrently by another service
        return await js.key_value(name)


async def object_bucket(js: JetStreamContext, name: str, settings: Settings):
    """An Object Store bucket (replay datasets), created when missing (as admin, in secure mode)."""
    try:
        return await retry_transient(lambda: js.object_store(name))
    except (NotFoundError, APIError):
        pass
    cfg = jsapi.ObjectStoreConfig(bucket=name, replicas=settings.replicas, storage=jsapi.StorageType.FILE,
                                  description="autotune: replay prompts by their sha256")
    try:
        return await js.create_object_store(bucket=name, config=cfg)
    except BadRequestError:  # created concurrently by another service
        return await js.object_store(name)
    except TimeoutError:
        raise ProvisionError(
            f"object store {name} is missing and this connection may not create it; provision as admin first (autotune up does)"
        ) from None


async def kv_claim(kv: Any, key: str, value: bytes, *, ttl: float | None = None) -> int | None:
    """Create `key` only if it does not exist (or has expired). Returns the revision, or None if taken."""
    from nats.js.errors import KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError

    try:
        return await kv.create(key, value, msg_ttl=ttl)
    except KeyWrongLastSequenceError:
        pass
    # An expired key leaves a server-placed marker (no value, kept limit_marker_ttl) that nats-py's
    # create() does not treat as deleted and get() returns as an entry whose value is None.
    try:
        if (await kv.get(key)).value:
            return None  # alive
    except (KeyDeletedError, KeyNotFoundError):
        pass
    try:
        last = await kv._js.get_last_msg(kv._stream, f"{kv._pre}{key}")
    except NotFoundError:
        return None
    try:
        return await kv_renew(kv, key, value, last=last.seq, ttl=ttl)
    except KeyWrongLastSequenceError:
        return None


async def kv_renew(kv: Any, key: str, value: bytes, *, last: int, ttl: float | None) -> int:
    """Update `key` only if its revision is still `last`, with a fresh per-key TTL.

    nats-py's public `update()` takes no TTL; its `_update()` does (raises KeyWrongLastSequenceError)."""
    return await kv._update(key, value, last=last, msg_ttl=ttl)


# --- appending ---------------------------------------------------------------------------------------


class ProvisionError(RuntimeError):
    """The streams are missing and this role may not create them."""


class StaleWrite(Exception):
    """The server refused an append because the writer's view of the subject was stale (10071, 10164)."""


async def append(
    js: JetStreamContext,
    subject: str,
    event: ev.Event,
    *,
    expect_seq: int | None = None,
    expect_filter: str | None = None,
    timeout: float = 5.0,
    retries: int = 20,
) -> jsapi.PubAck:
    """Publish one event. With `expect_seq`, the server refuses it unless the last message on
    `expect_filter` has that sequence (0: none yet); that refusal raises StaleWrite.

    Transient failures (no responders while a cluster elects a leader, timeouts) are retried; the
    msg id makes the retry safe.
    """
    headers = {"Nats-Msg-Id": event.id}
    if expect_seq is not None:
        headers["Nats-Expected-Last-Subject-Sequence"] = str(expect_seq)
        headers["Nats-Expected-Last-Subject-Sequence-Subject"] = expect_filter or subject
    data = ev.encode(event)
    delay = 0.1
    for attempt in range(retries + 1):
        try:
            ack = await js.publish(subject, data, headers=headers, timeout=timeout)
        except APIError as e:
            if e.err_code in WRONG_LAST_SEQUENCE:
                raise StaleWrite(f"{subject}: {e.description}") from None
            transient = isinstance(e, ServiceUnavailableError) or e.code in (None, 503) or (e.code or 0) >= 500
            if attempt == retries or not transient:
                raise
        except (TimeoutError, nats.errors.NoRespondersError, nats.errors.ConnectionClosedError, NoStreamResponseError):
            # a stream leader election, a reconnect: the msg id makes the retry safe
            if attempt == retries:
                raise
        else:
            return ack
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)
    raise AssertionError("unreachable")


async def last_seq(js: JetStreamContext, filter_subject: str, stream: str = subj.EVENTS_STREAM) -> int:
    """The stream sequence of the last message matching `filter_subject` (wildcards allowed), 0 if none."""
    try:
        msg = await js.get_last_msg(stream, filter_subject)
    except NotFoundError:
        return 0
    return msg.seq or 0


async def messages_after(
    js: JetStreamContext, filter_subject: str, after_seq: int, stream: str = subj.EVENTS_STREAM
) -> list[tuple[int, ev.AnyEvent | None]]:
    """Every message on `filter_subject` after `after_seq`, decoded (None when undecodable)."""
    out: list[tuple[int, ev.AnyEvent | None]] = []
    end = await last_seq(js, filter_subject, stream)
    seq = after_seq
    while seq < end:
        try:
            raw = await js._jsm.get_msg(stream, seq=seq + 1, next=True, subject=filter_subject)
        except NotFoundError:
            break
        seq = raw.seq
        try:
            out.append((seq, ev.decode(raw.data or b"")))
        except msgspec.MsgspecError:
            out.append((seq, None))
    return out


# --- consuming ---------------------------------------------------------------------------------------


class Delivery(msgspec.Struct):
    """One decoded message with its stream position."""

    seq: int
    subject: str
    event: Any  # ev.AnyEvent
    msg: Msg | None = None


async def replay(
    js: JetStreamContext,
    subjects: str | list[str],
    *,
    stream: str = subj.EVENTS_STREAM,
    start_seq: int = 1,
    stop: asyncio.Event | None = None,
    follow: bool = True,
    on_bad: Callable[[Msg, Exception], Awaitable[None]] | None = None,
) -> AsyncIterator[Delivery]:
    """Every message on `subjects` from `start_seq` in order, then (with follow) live ones.

    An ordered consumer: no acks, no server-side state, gaps healed by the client. This is how the
    scheduler rebuilds its state and how live views replay history.
    """
    filters = [subjects] if isinstance(subjects, str) else list(subjects)
    cfg = jsapi.ConsumerConfig(
        deliver_policy=jsapi.DeliverPolicy.BY_START_SEQUENCE if start_seq > 1 else jsapi.DeliverPolicy.ALL,
        opt_start_seq=start_seq if start_seq > 1 else None,
        filter_subjects=filters if len(filters) > 1 else None,
    )
    sub = await js.subscribe(
        filters[0] if len(filters) == 1 else ">",
        stream=stream,
        ordered_consumer=True,
        config=cfg,
        pending_msgs_limit=-1,
        cb=None,
    )
    try:
        pending = None
        while True:
            if stop is not None and stop.is_set():
                return
            try:
                msg = await sub.next_msg(timeout=0.25)
            except TimeoutError:
                if not follow:
                    if pending is None:
                        info = await sub.consumer_info()
                        pending = info.num_pending
                    if pending == 0:
                        return
                continue
            meta = msg.metadata
            if not follow:
                pending = meta.num_pending
            try:
                event = ev.decode(msg.data)
            except msgspec.MsgspecError as e:
                if on_bad is not None:
                    await on_bad(msg, e)
                else:
                    log.warning("undecodable event skipped", subject=msg.subject, seq=meta.sequence.stream, error=str(e))
                if not follow and pending == 0:
                    return
                continue
            yield Delivery(meta.sequence.stream, msg.subject, event, msg)
            if not follow and pending == 0:
                return
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def durable_consume(
    js: JetStreamContext,
    *,
    stream: str,
    durable: str,
    subjects: list[str],
    handler: Callable[[Delivery], Awaitable[None]],
    stop: asyncio.Event,
    batch: int = 64,
    ack_wait: float = 30.0,
    burst: bool = False,
    on_bad: Callable[[Msg, Exception], Awaitable[None]] | None = None,
) -> None:
    """A pull-consumer loop on a durable consumer.

    Each message is acked after `handler` returns; a handler error naks it with a backoff that grows
    with the delivery count; a long handler keeps its message alive with in-progress acks; an
    undecodable message is handed to `on_bad` (default: logged) and terminated, so it never blocks
    the loop. `burst` returns once nothing is pending (for deterministic tests).
    """
    cfg = jsapi.ConsumerConfig(
        durable_name=durable,
        ack_policy=jsapi.AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_deliver=-1,
        filter_subjects=subjects if len(subjects) > 1 else None,
        filter_subject=subjects[0] if len(subjects) == 1 else None,
        max_ack_pending=1000,
    )
    await retry_transient(lambda: js.add_consumer(stream, cfg))
    psub = await js.pull_subscribe_bind(durable, stream)
    try:
        while not stop.is_set():
            try:
                msgs = await psub.fetch(batch, timeout=1.0)
            except (ServiceUnavailableError, nats.errors.NoRespondersError, NoStreamResponseError):
                await asyncio.sleep(0.5)  # a stream leader election: the consumer comes back
                continue
            except TimeoutError:  # nats-py raises both its own and asyncio's
                if burst:
                    info = await psub.consumer_info()
                    if info.num_pending == 0 and info.num_ack_pending == 0:
                        return
                continue
            for msg in msgs:
                await _handle_one(msg, handler, ack_wait, on_bad)
    finally:
        with contextlib.suppress(Exception):
            await psub.unsubscribe()


async def _handle_one(
    msg: Msg,
    handler: Callable[[Delivery], Awaitable[None]],
    ack_wait: float,
    on_bad: Callable[[Msg, Exception], Awaitable[None]] | None,
) -> None:
    meta = msg.metadata
    try:
        event = ev.decode(msg.data)
    except msgspec.MsgspecError as e:
        if on_bad is not None:
            await on_bad(msg, e)
        else:
            log.warning("undecodable message terminated", subject=msg.subject, seq=meta.sequence.stream, error=str(e))
        await msg.term()
        return

    async def keepalive() -> None:
        while True:
            await asyncio.sleep(ack_wait / 3)
            await msg.in_progress()

    ka = asyncio.create_task(keepalive())
    try:
        await handler(Delivery(meta.sequence.stream, msg.subject, event, msg))
    except asyncio.CancelledError:
        raise
    except Exception as e:
        delay = min(0.5 * 2 ** min(meta.num_delivered - 1, 6), 30.0)
        log.error("handler failed; will redeliver", exc=True, subject=msg.subject, delay=delay, error=repr(e))
        await msg.nak(delay=delay)
        return
    finally:
        ka.cancel()
    await msg.ack()
