"""shared.bus against a real nats-server: provisioning, idempotent appends, optimistic concurrency, consumers."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from nats.js.errors import KeyDeletedError

from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from autotune.shared import bus
from autotune.shared.kv import kv_claim
from autotune.shared.provision import apply_stream_settings, provision
from autotune.shared.settings import Settings


def planned(task: str, n: int, attempt: int = 0) -> ev.ExperimentPlanned:
    return ev.ExperimentPlanned(id=ev.exp_id(task, n, attempt, "planned"), task=task, n=n, attempt=attempt, parameters={"x": n})


async def test_provision_is_idempotent(js, settings):
    await provision(js, settings)
    await provision(js, settings)
    names = {s.config.name for s in await js.streams_info()}
    assert {subj.EVENTS_STREAM, subj.TELEMETRY_STREAM, subj.LOGS_STREAM} <= names


async def test_settings_from_the_environment_and_short_max_ages_are_applied_to_the_streams(js, settings, monkeypatch):
    for name in ("AUTOTUNE_NATS_URL", "AUTOTUNE_TELEMETRY_MAX_AGE_S", "AUTOTUNE_LOGS_MAX_AGE_S"):
        monkeypatch.delenv(name, raising=False)
    assert Settings.from_env().nats_url == "nats://127.0.0.1:4222" and Settings.from_env().logs_max_age_s == 7 * 24 * 3600
    monkeypatch.setenv("AUTOTUNE_TELEMETRY_MAX_AGE_S", "30")
    monkeypatch.setenv("AUTOTUNE_LOGS_MAX_AGE_S", "86400")
    short = msgspec.structs.replace(Settings.from_env(), nats_url=settings.nats_url)
    assert (short.telemetry_max_age_s, short.logs_max_age_s) == (30.0, 86400.0)
    await apply_stream_settings(js, short)  # the server refuses a duplicate window longer than the max age
    telemetry, logs = [(await js.stream_info(s)).config for s in (subj.TELEMETRY_STREAM, subj.LOGS_STREAM)]
    assert (telemetry.max_age, telemetry.duplicate_window) == (30, 30) and (logs.max_age, logs.duplicate_window) == (86400, 60)


async def test_retried_append_is_stored_once(js):
    e = planned("t1", 0)
    a = await bus.append(js, subj.experiment("t1", 0, "planned"), e)
    b = await bus.append(js, subj.experiment("t1", 0, "planned"), e)
    assert a.seq == b.seq and b.duplicate
    info = await js.stream_info(subj.EVENTS_STREAM)
    assert info.state.messages == 1


async def test_stale_writer_is_refused(js):
    f = subj.experiment_all("t1", 0)
    a = await bus.append(js, subj.experiment("t1", 0, "planned"), planned("t1", 0), expect_seq=0, expect_filter=f)
    await bus.append(js, subj.experiment("t1", 0, "planned"), planned("t1", 0, 1), expect_seq=a.seq, expect_filter=f)
    with pytest.raises(bus.StaleWrite):
        await bus.append(js, subj.experiment("t1", 0, "planned"), planned("t1", 0, 2), expect_seq=a.seq, expect_filter=f)
    assert await bus.last_seq(js, f) == a.seq + 1
    # another experiment's filter is independent
    await bus.append(js, subj.experiment("t1", 1, "planned"), planned("t1", 1), expect_seq=0, expect_filter=subj.experiment_all("t1", 1))


async def test_replay_and_messages_after(js):
    for n in range(5):
        await bus.append(js, subj.experiment("t1", n, "planned"), planned("t1", n))
    await js.publish("autotune.task.t1.exp.9.planned", b"{not json")
    seen = [d.event.n async for d in bus.replay(js, "autotune.task.t1.>", follow=False)]
    assert seen == [0, 1, 2, 3, 4]
    after = await bus.messages_after(js, "autotune.task.t1.exp.>", 3)
    assert [e.n if e else None for _, e in after] == [3, 4, None]


async def test_durable_consume_dead_letters_and_retries(js):
    await js.publish("autotune.task.t1.exp.0.planned", b"garbage")
    await bus.append(js, subj.experiment("t1", 1, "planned"), planned("t1", 1))
    bad: list[str] = []
    calls: list[int] = []

    async def on_bad(msg, err):
        bad.append(msg.subject)

    async def handler(d: bus.Delivery) -> None:
        calls.append(d.event.n)
        if len(calls) == 1:
            raise RuntimeError("transient")

    stop = asyncio.Event()
    await asyncio.wait_for(
        bus.durable_consume(js, stream=subj.EVENTS_STREAM, durable="t", subjects=["autotune.task.>"], handler=handler, stop=stop, burst=True, on_bad=on_bad),
        30,
    )
    assert bad == ["autotune.task.t1.exp.0.planned"]
    assert calls == [1, 1]


async def test_kv_claim_refuses_live_key_and_reclaims_expired(js, settings):
    kv = await js.key_value(subj.HOSTS_BUCKET)
    assert await kv_claim(kv, "h1", b"a", ttl=1) is not None
    assert await kv_claim(kv, "h1", b"b", ttl=1) is None
    for _ in range(100):  # until the server expired it: it leaves a marker entry with no value
        await asyncio.sleep(0.1)
        try:
            if (await kv.get("h1")).value is None:
                break
        except KeyDeletedError:
            break
    else:
        pytest.fail("the key never expired")
    assert await kv_claim(kv, "h1", b"c", ttl=1) is not None  # the marker must not read as alive
    assert (await kv.get("h1")).value == b"c"
