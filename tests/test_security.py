"""NATS security against a real nats-server: a user per role, each allowed what it needs and refused
everything else (TLS and the committed configurations: test_security_config.py).

A refused publish is detected without timeouts: the server answers it with `-ERR 'Permissions
Violation for Publish to "<subject>"'`, which nats-py hands to the error callback (lowercased); the
checks publish, flush, and poll the callback's errors briefly. Stream message counts prove nothing
was stored.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError

from autotune.runner.service import run as runner_run
from autotune.runner.settings import RunnerSettings
from autotune.scheduler.service import run as scheduler_run
from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from autotune.schemas.spec import spec_from_obj
from autotune.shared import bus, commands, security
from autotune.shared.kv import kv_claim, kv_renew
from autotune.shared.natsserver import NatsServer
from autotune.shared.provision import provision
from autotune.shared.settings import Settings
from tests.helpers import Services, events_of, golden, small_spec, task_finished

HOSTS = ["gpu-1", "gpu-2"]


class Secure:
    """A nats-server with a user per role; `connect(user)` returns a client recording its errors."""

    def __init__(self, server: NatsServer, passwords: dict[str, str], data_dir: Path) -> None:
        self.server, self.passwords, self.data_dir = server, passwords, data_dir
        self.clients: list[NATS] = []

    def settings(self, user: str) -> Settings:
        return Settings(nats_url=security.nats_url(self.server.url, user, self.passwords[user]), data_dir=str(self.data_dir), host_ttl_s=5.0)

    async def connect(self, user: str) -> Client:
        errors: list[Exception] = []

        async def on_error(e: Exception) -> None:
            errors.append(e)

        nc = await bus.connect(self.settings(user), user, error_cb=on_error)
        self.clients.append(nc)
        return Client(user, nc, errors)


class Client:
    def __init__(self, user: str, nc: NATS, errors: list[Exception]) -> None:
        self.user, self.nc, self.errors = user, nc, errors
        self.js = nc.jetstream()

    def refused(self) -> set[str]:
        """Subjects the server refused so far (nats-py lowercases the server's error text)."""
        out = set()
        for e in self.errors:
            text = str(e)
            if "permissions violation for publish to" in text:
                out.add(text.rsplit(" ", 1)[-1].strip('"'))
        return out

    async def assert_denied(self, *subjects: str) -> None:
        """Publish to each subject; every one must be refused and the connection must survive."""
        for s in subjects:
            await self.nc.publish(s, b"{}")
        for _ in range(20):  # the refusals usually arrive with the flush's PONG, at worst a moment later
            await self.nc.flush(timeout=2)
            allowed = [s for s in subjects if s.lower() not in self.refused()]
            if not allowed:
                break
            await asyncio.sleep(0.05)
        assert not allowed, f"{self.user} was allowed to publish to {allowed}"
        assert self.nc.is_connected  # a refused publish does not cost the connection

    async def assert_cannot_subscribe(self, subject: str) -> None:
        before = len(self.errors)
        await self.nc.subscribe(subject)
        for _ in range(20):
            await self.nc.flush(timeout=2)
            if any(f'permissions violation for subscription to "{subject}"' in str(e) for e in self.errors[before:]):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{self.user} could subscribe to {subject}")


@pytest.fixture
async def secure(tmp_path):
    passwords = security.generate_credentials(tmp_path / "data", HOSTS)
    conf = tmp_path / "nats.conf"
    conf.write_text(security.render_config(port=-1, store_dir=str(tmp_path / "nats"), hosts=HOSTS, passwords=passwords))
    with NatsServer(tmp_path / "nats", config=str(conf)) as server:
        s = Secure(server, passwords, tmp_path / "data")
        admin = await s.connect("admin")
        await provision(admin.js, s.settings("admin"))
        s.admin = admin  # type: ignore[attr-defined]
        try:
            yield s
        finally:
            for nc in s.clients:
                await nc.close()


async def counts(js) -> dict[str, int]:
    return {name: (await js.stream_info(name)).state.messages for name in security.STREAMS + security.KV_STREAMS}


# --- allowed ------------------------------------------------------------------------------------------


async def test_runner_does_its_job(secure):
    admin = secure.admin
    runner = await secure.connect("runner-gpu-1")
    js = runner.js
    await provision(js, secure.settings("runner-gpu-1"))  # every service calls it: stream info only

    # its liveness key: claim, renew, delete
    kv = await js.key_value(subj.HOSTS_BUCKET)
    rev = await kv_claim(kv, "gpu-1", b"alive", ttl=5)
    assert rev is not None
    rev = await kv_renew(kv, "gpu-1", b"alive", last=rev, ttl=5)
    assert (await kv.get("gpu-1")).value == b"alive"

    # registers its host, consumes what is addressed to it from its durable consumer, acks
    await bus.append(js, subj.host("gpu-1", "registered"), golden("host.registered", host="gpu-1", id="reg-1"))
    for what in ("returned", "stopped"):  # back after fencing; a clean stop
        await bus.append(js, subj.host("gpu-1", what), golden(f"host.{what}", host="gpu-1", id=f"{what}-1"))
    a = golden("experiment.assigned", task="t", n=0, attempt=0, host="gpu-1", id="t.0.0.assigned")
    await bus.append(admin.js, subj.experiment("t", 0, "assigned", "gpu-1"), a)
    await bus.append(admin.js, subj.experiment("t", 1, "assigned", "gpu-2"), golden("experiment.assigned", task="t", n=1, host="gpu-2", id="t.1.0.assigned"))
    got: list[str] = []

    async def handle(d: bus.Delivery) -> None:
        got.append(d.subject)

    await asyncio.wait_for(
        bus.durable_consume(js, stream=subj.EVENTS_STREAM, durable="runner-gpu-1", subjects=subj.addressed_to("gpu-1"),
                            handler=handle, stop=asyncio.Event(), burst=True),
        10,
    )
    assert got == [subj.experiment("t", 0, "assigned", "gpu-1")]
    info = await js.consumer_info(subj.EVENTS_STREAM, "runner-gpu-1")
    assert info.num_ack_pending == 0 and info.num_pending == 0

    # the attempt's events, with the single-writer headers, and its log lines
    f = subj.experiment_all("t", 0)
    last = await bus.last_seq(js, f)
    for what in ("started", "ready", "progress", "completed"):
        ack = await bus.append(js, subj.experiment("t", 0, what), golden(f"experiment.{what}", task="t", n=0, attempt=0, host="gpu-1", id=f"t.0.0.{what}"),
                               expect_seq=last, expect_filter=f)
        last = ack.seq
    assert [e.id for _, e in await bus.messages_after(js, f, 0)][-1] == "t.0.0.completed"
    await js.publish(subj.log("t", 0), ev.encode(golden("log.lines", task="t", n=0)))
    # replays the log (ordered consumer) like the scheduler and live views do
    assert len([d async for d in bus.replay(js, "autotune.task.t.>", follow=False)]) == 6
    await kv.delete("gpu-1")
    assert runner.errors == []


async def test_api_submits_cancels_and_commands_hosts(secure):
    api = await secure.connect("api")
    js = api.js
    task, seq, _, _ = await commands.submit_task(js, spec_from_obj(small_spec("secure")), submitted_by="test")
    assert seq > 0
    with pytest.raises(commands.DuplicateTask):  # the name claim in KV works under its permissions too
        await commands.submit_task(js, spec_from_obj(small_spec("secure")))
    await commands.cancel_task(js, task, reason="test")
    await commands.drain_host(js, "gpu-1")
    await commands.remove_host(js, "gpu-2")
    kinds = [type(e).__name__ for _, e in await events_of(js, "autotune.>")]
    assert kinds == ["TaskSubmitted", "TaskCancelRequested", "HostDrainRequested", "HostRemoved"]
    assert api.errors == []


async def test_scheduler_decides_and_holds_its_lease(secure):
    sched = await secure.connect("scheduler")
    js = sched.js
    leases = await js.key_value(subj.LEASES_BUCKET)
    assert await kv_claim(leases, "scheduler", b"me", ttl=5) is not None
    watcher = await (await js.key_value(subj.HOSTS_BUCKET)).watchall()  # the fleet, from liveness keys
    assert await asyncio.wait_for(watcher.updates(timeout=2), 3) is None  # initial state delivered: empty
    await watcher.stop()
    await bus.append(js, subj.task("t", "started"), golden("task.started", task="t", id="t.started"))
    await bus.append(js, subj.experiment("t", 0, "planned"), golden("experiment.planned", task="t", n=0, id="t.0.0.planned"))
    await bus.append(js, subj.experiment("t", 0, "assigned", "gpu-1"), golden("experiment.assigned", task="t", n=0, host="gpu-1", id="t.0.0.assigned"))
    await bus.append(js, subj.experiment("t", 0, "cancel_requested", "gpu-1"), golden("experiment.cancel_requested", task="t", n=0, host="gpu-1", id="t.0.0.cr"))
    await bus.append(js, subj.host("gpu-2", "lost"), golden("host.lost", host="gpu-2", id="lost"))
    await bus.append(js, subj.task("t", "completed"), golden("task.completed", task="t", id="t.completed"))
    assert len(await events_of(js, "autotune.>")) == 6
    assert sched.errors == []


async def test_gpumon_publishes_its_own_samples(secure):
    gm = await secure.connect("gpumon-gpu-1")
    await provision(gm.js, secure.settings("gpumon-gpu-1"))
    sample = golden("gpu.sample", host="gpu-1", index=0)
    ack = await gm.js.publish(subj.gpu("gpu-1", 0), ev.encode(sample), headers={"Nats-Msg-Id": sample.id})
    assert ack.stream == subj.TELEMETRY_STREAM
    assert gm.errors == []


async def test_projector_reads_every_stream_and_answers_queries(secure):
    admin, proj, api = secure.admin, await secure.connect("projector"), await secure.connect("api")
    await bus.append(admin.js, subj.task("t", "submitted"), golden("task.submitted", task="t", id="t.submitted"))
    await admin.js.publish(subj.gpu("gpu-1", 0), ev.encode(golden("gpu.sample", host="gpu-1")))
    await admin.js.publish(subj.log("t", 0), ev.encode(golden("log.lines", task="t", n=0)))
    for stream, subject in [(subj.EVENTS_STREAM, "autotune.>"), (subj.TELEMETRY_STREAM, "autotune.gpu.>"), (subj.LOGS_STREAM, "autotune.log.>")]:
        assert len([d async for d in bus.replay(proj.js, subject, stream=stream, follow=False)]) == 1, stream

    async def answer(msg) -> None:
        await msg.respond(b'{"rows": [[1]]}')

    await proj.nc.subscribe(subj.QUERY_SQL, queue="projector", cb=answer)
    await proj.nc.flush()
    reply = None
    for _ in range(20):  # seen once in CI: "no responders" right after the flush; the interest arrives shortly
        try:
            reply = await api.nc.request(subj.QUERY_SQL, b'{"sql": "SELECT 1"}', timeout=2)
            break
        except NoRespondersError:
            await asyncio.sleep(0.1)
    assert reply is not None and reply.data == b'{"rows": [[1]]}'
    assert proj.errors == [] and api.errors == []


@pytest.mark.slow
async def test_services_run_a_task_with_their_own_credentials(secure, tmp_path):
    """The real scheduler, runner, gpumon and projector, each connected as its role, run a task the api
    submitted; the api reads the result through the projector. The server refused none of them anything."""
    from autotune.gpumon.service import run as gpumon_run
    from autotune.projector.service import run as projector_run
    from autotune.shared import query
    from tests.fixtures.api_kit import answering

    svc = Services()
    svc.start(lambda stop: scheduler_run(secure.settings("scheduler"), stop=stop), "scheduler")
    svc.start(lambda stop: projector_run(secure.settings("projector"), stop=stop, db_path=str(tmp_path / "view.duckdb")), "projector")
    rs = RunnerSettings(host="gpu-1", simulate="2xH100", time_scale=50)
    svc.start(lambda stop: runner_run(secure.settings("runner-gpu-1"), stop=stop, runner=rs), "runner")
    svc.start(lambda stop: gpumon_run(secure.settings("gpumon-gpu-1"), stop=stop, host="gpu-1", simulate="2xH100", interval_s=0.5), "gpumon")
    try:
        api = await secure.connect("api")
        # the projector answers once its store is open and its telemetry sidecar (a forkserver child)
        # has started: seconds on a loaded machine, longer than this task takes
        await answering(api.nc)
        spec = small_spec("secure-e2e", optimization={"max_iterations": 2})
        task = (await commands.submit_task(api.js, spec_from_obj(spec))).task
        final = await task_finished(api.js, task, timeout=60)
        assert isinstance(final, ev.TaskCompleted), final
        done_seq = await bus.last_seq(api.js, subj.task_all(task))
        res = await query.sql(api.nc, "SELECT status FROM tasks WHERE id = ?", [task], min_seq=done_seq, timeout=20)
        assert [tuple(r) for r in res.rows] == [("completed",)]
        assert (await api.js.stream_info(subj.TELEMETRY_STREAM)).state.messages > 0
    finally:
        await svc.stop_all()
    # nothing the services did (start, run, drain, stop) was refused
    assert [line for line in secure.server.lines if "Violation" in line] == []


async def test_replay_datasets_in_secure_mode_the_scheduler_stores_the_prompts_and_runners_read_them(secure, tmp_path):
    """A task with a dataset, run by the scheduler and a runner with their own credentials: the scheduler
    fetches it and writes the prompts to the autotune-datasets Object Store, the runner reads them there.
    Only the scheduler may write that bucket; the server refused none of them anything."""
    from autotune.shared.dataset_store import get_prompts, put_prompts

    data = tmp_path / "prompts.csv"
    data.write_text("prompt\nsecure one\nsecure two\nsecure one\n")
    svc = Services()
    svc.start(lambda stop: scheduler_run(secure.settings("scheduler"), stop=stop), "scheduler")
    rs = RunnerSettings(host="gpu-1", simulate="2xH100", time_scale=50)
    svc.start(lambda stop: runner_run(secure.settings("runner-gpu-1"), stop=stop, runner=rs), "runner")
    try:
        api = await secure.connect("api")
        spec = small_spec("secure-ds", optimization={"max_iterations": 1}, benchmark={"dataset_url": f"file://{data}", "warmup_requests": 0})
        task = (await commands.submit_task(api.js, spec_from_obj(spec))).task
        final = await task_finished(api.js, task, timeout=60)
    finally:
        await svc.stop_all()
    assert isinstance(final, ev.TaskCompleted), final
    (fetched,) = [e for _, e in await events_of(secure.admin.js, subj.task_all(task)) if isinstance(e, ev.TaskDatasetFetched)]
    runner = await secure.connect("runner-gpu-2")
    assert await get_prompts(runner.js, fetched.object) == ["secure one", "secure two"]
    assert [line for line in secure.server.lines if "Violation" in line] == []
    for role in ("runner-gpu-1", "api", "projector", "gpumon-gpu-1"):
        client = await secure.connect(role)
        await client.assert_denied(f"$O.{subj.DATASETS_BUCKET}.C.forged", f"$O.{subj.DATASETS_BUCKET}.M.Zm9yZ2Vk")
    sched = await secure.connect("scheduler")
    name, _ = await put_prompts(sched.js, ["written by the scheduler"])
    assert await get_prompts(runner.js, name) == ["written by the scheduler"]


# --- denied -------------------------------------------------------------------------------------------


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


async def test_api_cannot_write_results_or_scheduler_decisions(secure):
    api = await secure.connect("api")
    before = await counts(secure.admin.js)
    await api.assert_denied(
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
    )
    assert await counts(secure.admin.js) == before


async def test_gpumon_publishes_only_its_own_host(secure):
    gm = await secure.connect("gpumon-gpu-1")
    before = await counts(secure.admin.js)
    await gm.assert_denied(
        "autotune.gpu.gpu-2.0",
        "autotune.gpu.gpu-1",  # not a sample subject
        "autotune.task.t.exp.0.completed",
        "autotune.host.gpu-1.registered",
        "autotune.log.t.0",
        "$KV.autotune-hosts.gpu-1",
        "$JS.API.STREAM.DELETE.AUTOTUNE_TELEMETRY",
        "$JS.API.CONSUMER.CREATE.AUTOTUNE_EVENTS",
    )
    assert await counts(secure.admin.js) == before


async def test_projector_publishes_no_event(secure):
    proj = await secure.connect("projector")
    before = await counts(secure.admin.js)
    await proj.assert_denied(
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
    )
    assert await counts(secure.admin.js) == before


async def test_scheduler_cannot_submit_or_report_results(secure):
    sched = await secure.connect("scheduler")
    before = await counts(secure.admin.js)
    await sched.assert_denied(
        "autotune.task.t.submitted",
        "autotune.task.t.cancel_requested",
        "autotune.task.t.exp.0.completed",
        "autotune.task.t.exp.0.started",
        "autotune.host.gpu-1.registered",
        "autotune.gpu.gpu-1.0",
        "$KV.autotune-hosts.gpu-1",
        "$KV.autotune-names.t",
        "$JS.API.STREAM.DELETE.AUTOTUNE_EVENTS",
    )
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


async def test_the_api_reads_the_fleets_liveness_in_batched_gets(secure):
    """/metrics and the host list read the liveness bucket with batched direct gets: allowed to the
    api role, refused nothing."""
    from autotune.reads.hosts import live_hosts
    from autotune.schemas.liveness import LiveHost

    runner = await secure.connect("runner-gpu-1")
    kv = await runner.js.key_value(subj.HOSTS_BUCKET)
    await kv.put("gpu-1", msgspec.json.encode(LiveHost(host="gpu-1", instance="gpu-1-1", hostname="box")))
    api = await secure.connect("api")
    assert set(await live_hosts(api.js, ["gpu-1", "gpu-2"])) == {"gpu-1"}
    assert api.errors == [] and runner.errors == []
    assert [line for line in secure.server.lines if "Violation" in line] == []
