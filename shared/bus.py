"""NATS: connect, append events, consume them (provisioning is in provision.py, KV claims in kv.py).

Every append carries `Nats-Msg-Id` (the event's deterministic id), so a retried publish is stored
once. Appends to a task or an experiment also carry the optimistic-concurrency headers, so a writer
whose view is stale (a runner presumed dead, a deposed scheduler) is refused by the server (10071;
10164 from a replicated stream while another write to the subject is in flight) instead of
corrupting history.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as jsapi
from nats.js.errors import APIError, NoStreamResponseError, NotFoundError, ServiceUnavailableError

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


def _no_tls_eof_note(record) -> bool:
    return not record.getMessage().startswith("returning true from eof_received() has no effect when using ssl")


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
        import logging
        import ssl

        opts["tls"] = ssl.create_default_context(cafile=settings.tls_ca)
        # nats-py's protocol returns True from eof_received, which asyncio notes on every TLS connection
        logging.getLogger("asyncio").addFilter(_no_tls_eof_note)

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


# --- appending ---------------------------------------------------------------------------------------


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
            event = await _decoded(msg, on_bad, "undecodable event skipped")
            if event is None:
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


async def _decoded(msg: Msg, on_bad: Callable[[Msg, Exception], Awaitable[None]] | None, logged_as: str) -> ev.AnyEvent | None:
    """The event `msg` carries, or None when it cannot be decoded: then `on_bad` has it, else it is logged."""
    try:
        return ev.decode(msg.data)
    except msgspec.MsgspecError as e:
        if on_bad is not None:
            await on_bad(msg, e)
        else:
            log.warning(logged_as, subject=msg.subject, seq=msg.metadata.sequence.stream, error=str(e))
        return None


async def _handle_one(
    msg: Msg,
    handler: Callable[[Delivery], Awaitable[None]],
    ack_wait: float,
    on_bad: Callable[[Msg, Exception], Awaitable[None]] | None,
) -> None:
    meta = msg.metadata
    event = await _decoded(msg, on_bad, "undecodable message terminated")
    if event is None:
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
