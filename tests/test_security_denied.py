"""NATS security against a real nats-server: each role is refused everything that is not its job, and a
connection without the right password is refused outright (what each may do: test_security_allowed.py)."""

from __future__ import annotations

import asyncio
import json

import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS

from autotune.schemas import subjects as subj
from autotune.shared import security
from tests.fixtures.secure_nats import counts


async def test_runner_is_refused_what_is_not_its_job(secure):
    runner = await secure.connect("runner-gpu-1")
    before = await counts(secure.admin.js)
    await runner.assert_denied(
        "autotune.task.t.submitted",
        "autotune.task.t.cancel_requested",
        "autotune.task.t.started",
        "autotune.task.t.completed",
        "autotune.task.t.exp.0.planned",
        "autotune.task.t.exp.0.assigned.gpu-1",
        "autotune.task.t.exp.0.cancel_requested.gpu-1",
        "autotune.host.gpu-2.registered",  # another host
        "autotune.host.gpu-2.returned",
        "autotune.host.gpu-2.stopped",
        "autotune.host.gpu-1.lost",
        "autotune.host.gpu-1.drain_requested",
        "autotune.gpu.gpu-2.0",  # another host's GPUs
        "autotune.gpu.gpu-1.0",  # gpumon's job
        "$KV.autotune-hosts.gpu-2",  # another host's liveness
        "$KV.autotune-leases.scheduler",
        "$KV.autotune-names.t",
        "$JS.API.STREAM.DELETE.AUTOTUNE_EVENTS",
        "$JS.API.STREAM.PURGE.AUTOTUNE_EVENTS",
        "$JS.API.STREAM.UPDATE.AUTOTUNE_EVENTS",
        "$JS.API.STREAM.CREATE.EVIL",
        "$JS.API.STREAM.MSG.DELETE.AUTOTUNE_EVENTS",
        "$JS.API.CONSUMER.DELETE.AUTOTUNE_EVENTS.runner-gpu-1",
        "$JS.API.CONSUMER.DURABLE.CREATE.AUTOTUNE_EVENTS.runner-gpu-2",  # another host's consumer
        "$JS.API.CONSUMER.CREATE.AUTOTUNE_EVENTS.runner-gpu-2",
        "$JS.API.CONSUMER.MSG.NEXT.AUTOTUNE_EVENTS.runner-gpu-2",
        "$JS.ACK.AUTOTUNE_EVENTS.runner-gpu-2.1.1.1.1.0",
        "autotune.query.sql",
    )
    # the ephemeral-consumer subject it may use cannot create or rewrite another host's durable consumer
    await secure.admin.js.add_consumer(subj.EVENTS_STREAM, durable_name="runner-gpu-2", filter_subject="autotune.task.*.exp.*.assigned.gpu-2")
    forged = {"stream_name": subj.EVENTS_STREAM, "config": {"durable_name": "runner-gpu-2", "filter_subject": "autotune.>", "ack_policy": "explicit"}}
    reply = await runner.nc.request(f"$JS.API.CONSUMER.CREATE.{subj.EVENTS_STREAM}", json.dumps(forged).encode(), timeout=2)
    assert "error" in json.loads(reply.data), reply.data
    info = await secure.admin.js.consumer_info(subj.EVENTS_STREAM, "runner-gpu-2")
    assert info.config.filter_subject == "autotune.task.*.exp.*.assigned.gpu-2"
    await runner.assert_cannot_subscribe(subj.QUERY_SQL)  # could not pose as the projector
    await runner.assert_cannot_subscribe("autotune.query.snapshot")
    # through the client API too: a JetStream publish gets no ack, the KV write raises, the stream stays
    js = runner.nc.jetstream(timeout=0.5)
    with pytest.raises(nats.errors.TimeoutError):
        await js.publish("autotune.task.t.submitted", b"{}")
    kv = await js.key_value(subj.HOSTS_BUCKET)
    with pytest.raises(nats.errors.TimeoutError):
        await kv.put("gpu-2", b"hijacked")
    with pytest.raises(nats.errors.TimeoutError):
        await js.delete_stream(subj.EVENTS_STREAM)
    assert await counts(secure.admin.js) == before
    assert runner.nc.is_connected


# what each other role is refused; beyond publishing, the runner's test above also tries consumers and the client API
REFUSED = {
    "api": (  # cannot write results or scheduler decisions
        "autotune.task.t.exp.0.completed",
        "autotune.task.t.exp.0.failed",
        "autotune.task.t.exp.0.started",
        "autotune.task.t.exp.0.planned",
        "autotune.task.t.exp.0.assigned.gpu-1",
        "autotune.task.t.exp.0.cancel_requested.gpu-1",
        "autotune.task.t.started",
        "autotune.task.t.completed",
        "autotune.task.t.cancelled",
        "autotune.host.gpu-1.registered",
        "autotune.host.gpu-1.lost",
        "autotune.gpu.gpu-1.0",
        "autotune.log.t.0",
        "$KV.autotune-hosts.gpu-1",
        "$KV.autotune-leases.scheduler",
        "$JS.API.STREAM.DELETE.AUTOTUNE_EVENTS",
        "$JS.API.CONSUMER.DURABLE.CREATE.AUTOTUNE_EVENTS.runner-gpu-1",
    ),
    "gpumon-gpu-1": (  # publishes only its own host's samples
        "autotune.gpu.gpu-2.0",
        "autotune.gpu.gpu-1",  # not a sample subject
        "autotune.task.t.exp.0.completed",
        "autotune.host.gpu-1.registered",
        "autotune.log.t.0",
        "$KV.autotune-hosts.gpu-1",
        "$JS.API.STREAM.DELETE.AUTOTUNE_TELEMETRY",
        "$JS.API.CONSUMER.CREATE.AUTOTUNE_EVENTS",
    ),
    "projector": (  # publishes no event
        "autotune.task.t.submitted",
        "autotune.task.t.exp.0.completed",
        "autotune.task.t.exp.0.assigned.gpu-1",
        "autotune.host.gpu-1.registered",
        "autotune.gpu.gpu-1.0",
        "autotune.log.t.0",
        "autotune.query.sql",
        "$KV.autotune-hosts.gpu-1",
        "$KV.autotune-names.t",
        "$JS.API.STREAM.DELETE.AUTOTUNE_EVENTS",
        "$JS.API.CONSUMER.DURABLE.CREATE.AUTOTUNE_EVENTS.runner-gpu-1",
        # it pulls from its own ephemeral consumers (random names), never from a runner's durable one
        "$JS.API.CONSUMER.MSG.NEXT.AUTOTUNE_EVENTS.runner-gpu-2",
        "$JS.API.CONSUMER.DELETE.AUTOTUNE_EVENTS.runner-gpu-1",
        "$JS.ACK.AUTOTUNE_EVENTS.runner-gpu-1.1.1.1.1.0",
        "_INBOX.not-a-reply",  # it may answer requests it received, nothing else
    ),
    "scheduler": (  # cannot submit or report results
        "autotune.task.t.submitted",
        "autotune.task.t.cancel_requested",
        "autotune.task.t.exp.0.completed",
        "autotune.task.t.exp.0.started",
        "autotune.host.gpu-1.registered",
        "autotune.gpu.gpu-1.0",
        "$KV.autotune-hosts.gpu-1",
        "$KV.autotune-names.t",
        "$JS.API.STREAM.DELETE.AUTOTUNE_EVENTS",
    ),
}


@pytest.mark.parametrize("role", REFUSED)
async def test_each_role_is_refused_what_is_not_its_job(secure, role):
    client = await secure.connect(role)
    before = await counts(secure.admin.js)
    await client.assert_denied(*REFUSED[role])
    assert await counts(secure.admin.js) == before


async def refused_connection(url: str, **kw) -> Exception:
    """Connect, expecting a refusal; closes what nats-py leaves open when a connect fails."""
    nc = NATS()
    try:
        await nc.connect(url, connect_timeout=1, allow_reconnect=False, max_reconnect_attempts=0, **kw)
    except Exception as e:
        return e
    finally:
        await nc.close()
    raise AssertionError(f"connecting to {url} succeeded")


async def test_wrong_or_missing_password_is_refused(secure):
    e = await refused_connection(security.nats_url(secure.server.url, "runner-gpu-1", "wrong"))
    assert "authorization violation" in str(e).lower()
    e = await refused_connection(secure.server.url)
    assert "authorization violation" in str(e).lower()


async def test_only_admin_may_change_the_streams_retention(secure):
    from tests.test_cli import autotune

    day = {"AUTOTUNE_TELEMETRY_MAX_AGE_S": "86400"}
    as_api, as_admin = [
        await asyncio.to_thread(autotune, "streams", "--apply", "--nats", secure.settings(user).nats_url, env=day) for user in ("api", "admin")
    ]
    assert as_api.returncode == 1 and "Traceback" not in as_api.stderr, as_api.stderr
    assert "stream AUTOTUNE_TELEMETRY was not changed: this connection may not change streams (only admin may" in as_api.stderr
    assert as_admin.returncode == 0, as_admin.stderr
    assert "changed AUTOTUNE_TELEMETRY: max_age 604800.0 -> 86400.0" in as_admin.stdout
    assert (await secure.admin.js.stream_info(subj.TELEMETRY_STREAM)).config.max_age == 86400


async def test_each_service_publishes_only_its_own_figures_and_the_api_reads_them_all(secure):
    """/metrics: the scheduler and the projector each write their own keys of `autotune-stats`, never
    another's (nor another bucket through it); the api role lists and reads them."""
    from autotune.metrics.collect import service_stats
    from autotune.shared.stats import Histogram, StatsPublisher

    for role, other in (("scheduler", "projector"), ("projector", "scheduler")):
        c = await secure.connect(role)
        h = Histogram()
        h.observe(0.002)
        kv = await c.js.key_value(subj.STATS_BUCKET)
        await kv.put(f"{role}.i1", msgspec.json.encode(StatsPublisher(role, "i1", seconds=h).record()))  # allowed: acked
        await c.assert_denied(f"$KV.{subj.STATS_BUCKET}.{other}.i1", "$KV.autotune-hosts.gpu-1")
    api = await secure.connect("api")
    got = sorted((s.service, s.instance, s.histograms["seconds"].counts[-1]) for s in await service_stats(api.js))
    assert got == [("projector", "i1", 1), ("scheduler", "i1", 1)]
    await api.assert_denied(f"$KV.{subj.STATS_BUCKET}.scheduler.i1")
