"""A 3-node NATS cluster on loopback (the rendered cluster configs, with a user per role): streams
replicated x3, a task run end to end while the node leading the event stream is SIGKILLed and later
restarted from its store. Nothing is lost or doubled, and the restarted node catches up."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest

from autotune.runner.service import run as runner_run
from autotune.runner.settings import RunnerSettings
from autotune.scheduler.service import run as scheduler_run
from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from autotune.schemas.spec import spec_from_obj
from autotune.shared import bus, commands, security
from autotune.shared.natsserver import NatsServer
from autotune.shared.net import free_port
from autotune.shared.provision import provision
from autotune.shared.settings import Settings
from tests.helpers import Services, events_of, small_spec, task_finished, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.long]

# The runner reaps engine processes labelled with its host id machine-wide: a host id of its own keeps
# this test and others running at the same time on one machine from killing each other's engines.
HOST = f"cluster-{os.getpid()}"
HOSTS = [HOST]


class Cluster:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.peers = [
            security.ClusterPeer(name=f"n{i}", host="127.0.0.1", client_port=free_port(), cluster_port=free_port()) for i in (1, 2, 3)
        ]
        self.passwords = security.generate_credentials(tmp / "data", HOSTS)
        self.servers: dict[str, NatsServer] = {}
        for i, p in enumerate(self.peers, start=1):
            conf = tmp / f"{p.name}.conf"
            conf.write_text(security.render_cluster_config(
                i, self.peers, store_dir=str(tmp / p.name), hosts=HOSTS, passwords=self.passwords, route_password="route-secret",
            ))

    def start(self, name: str) -> None:
        self.servers[name] = NatsServer(self.tmp / name, config=str(self.tmp / f"{name}.conf"), log_file=str(self.tmp / f"{name}.log")).start()

    def url(self, user: str, *only: str) -> str:
        urls = ",".join(f"nats://127.0.0.1:{p.client_port}" for p in self.peers if not only or p.name in only)
        return security.nats_url(urls, user, self.passwords[user])

    def settings(self, user: str) -> Settings:
        # A liveness key must outlive a stream leader election (up to ~10 s after a node dies), or every
        # node failure also declares the hosts lost: 15 s, as infra/nats/README.md recommends for clusters.
        return Settings(nats_url=self.url(user), data_dir=str(self.tmp / "data"), replicas=3, host_ttl_s=15.0)

    def stop(self) -> None:
        for s in self.servers.values():
            s.stop()


async def until(what: str, check, timeout: float = 30.0, every: float = 0.2):
    """Poll `check()` (async) until it returns something truthy without raising."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            if result := await check():
                return result
        except Exception as e:  # the cluster is still electing: keep asking
            last = e
        await asyncio.sleep(every)
    raise AssertionError(f"timed out waiting for {what} (last error: {last!r})")


@contextlib.asynccontextmanager
async def running_cluster(tmp: Path) -> AsyncIterator[tuple[Cluster, nats.NATS]]:
    """The three nodes started, and an admin connection to them; all stopped after."""
    cluster = Cluster(tmp)
    try:
        for p in cluster.peers:
            cluster.start(p.name)
        admin = await bus.connect(cluster.settings("admin"), "admin")
        try:
            yield cluster, admin
        finally:
            await admin.close()
    finally:
        cluster.stop()


async def test_task_survives_a_node_killed_and_restarted(tmp_path):
    async with running_cluster(tmp_path) as (cluster, admin):
        await _run(cluster, admin.jetstream(timeout=2))


async def _run(cluster: Cluster, js) -> None:
    await until("a JetStream meta leader", js.account_info)
    await until("the streams, replicated x3", lambda: _provision(js, cluster.settings("admin")))
    info = await js.stream_info(subj.EVENTS_STREAM)
    assert info.config.num_replicas == 3 and len(info.cluster.replicas or []) == 2
    await until("every stream and bucket to have a leader", lambda: _all_led(js))

    svc = Services()
    api = await bus.connect(cluster.settings("api"), "api")
    try:
        svc.start(lambda stop: scheduler_run(cluster.settings("scheduler"), stop=stop), "scheduler")
        rs = RunnerSettings(host=HOST, simulate="2xH100", time_scale=40)
        svc.start(lambda stop: runner_run(cluster.settings(f"runner-{HOST}"), stop=stop, runner=rs), "runner")
        task = (await commands.submit_task(api.jetstream(), spec_from_obj(small_spec("cluster")))).task

        await wait_for(js, subj.task_all(task), lambda e: isinstance(e, ev.ExperimentCompleted), timeout=60)
        victim = (await js.stream_info(subj.EVENTS_STREAM)).cluster.leader
        cluster.servers[victim].stop(kill=True)  # SIGKILL the event stream's leader mid-task
        await until("a new leader of the event stream", lambda: _leader_other_than(js, victim), timeout=20)
        await asyncio.sleep(1.0)  # the task goes on with two nodes for a while
        cluster.start(victim)  # same config, same store

        try:
            final = await _finished(js, task, timeout=60)
        except TimeoutError:
            seen = [f"{s.removeprefix(f'autotune.task.{task}.')} {getattr(e, 'attempt', '')}" for s, e in await events_of(js, "autotune.>")]
            raise AssertionError(f"the task did not finish after {victim} was killed; its history:\n" + "\n".join(seen)) from None
        assert isinstance(final, ev.TaskCompleted), final
    finally:
        await api.close()
        await svc.stop_all()

    stored = await js.stream_info(subj.EVENTS_STREAM)
    subjects_and_events = await events_of(js, "autotune.>")
    history = [e for _, e in subjects_and_events]
    assert len(history) == stored.state.messages, ([s for s, _ in subjects_and_events], stored.state, stored.cluster)
    ids = Counter(e.id for e in history)
    assert [i for i, c in ids.items() if c > 1] == []  # no event stored twice
    terminal = Counter((e.task, e.n, e.attempt) for e in history if isinstance(e, ev.TERMINAL_EXPERIMENT))
    assigned = {(e.task, e.n, e.attempt) for e in history if isinstance(e, ev.ExperimentAssigned)}
    assert assigned and all(terminal[a] == 1 for a in assigned), (assigned, terminal)  # exactly one end each
    assert all(c == 1 for c in terminal.values()), terminal
    ended = {(e.n, type(e).__name__) for e in history if isinstance(e, ev.TERMINAL_EXPERIMENT)}
    assert {n for n, _ in ended} == {0, 1, 2, 3}, ended

    # The restarted node caught up: its replica is current, and once it leads, it serves every message.
    await until(f"{victim} to be a current replica", lambda: _current(js, victim), timeout=20)
    await until(f"{victim} to lead the event stream", lambda: _lead(js, victim), timeout=20)
    alone = await nats.connect(cluster.url("admin", victim), connect_timeout=2)  # that node only
    try:
        mine = await alone.jetstream().stream_info(subj.EVENTS_STREAM)
        assert mine.cluster.leader == victim
        assert (mine.state.messages, mine.state.last_seq) == (stored.state.messages, stored.state.last_seq)
    finally:
        await alone.close()
    assert "sync_interval: always" in (cluster.tmp / f"{victim}.conf").read_text()


async def _finished(js, task: str, timeout: float) -> ev.Event:
    """tests.helpers.task_finished, asked again when this client's own replay fails during an election
    (creating its ordered consumer needs a meta leader)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await task_finished(js, task, timeout=max(0.1, deadline - time.monotonic()))
        except (nats.errors.Error, TimeoutError):
            if time.monotonic() >= deadline:
                raise TimeoutError from None
            await asyncio.sleep(0.5)


async def _all_led(js) -> bool:
    for name in security.STREAMS + security.KV_STREAMS:
        c = (await js.stream_info(name)).cluster
        if not (c and c.leader and len(c.replicas or []) == 2):
            return False
    return True


async def _provision(js, settings: Settings) -> bool:
    await provision(js, settings)
    return True


async def _leader_other_than(js, victim: str) -> bool:
    leader = (await js.stream_info(subj.EVENTS_STREAM)).cluster.leader
    return bool(leader) and leader != victim


async def _current(js, name: str) -> bool:
    c = (await js.stream_info(subj.EVENTS_STREAM)).cluster
    if c.leader == name:
        return True
    return any(r.name == name and r.current and not r.offline and not r.lag for r in c.replicas or [])


async def _lead(js, name: str) -> bool:
    """Ask the current leader to step down in favour of `name` (placement preference, nats-server 2.11+)."""
    if (await js.stream_info(subj.EVENTS_STREAM)).cluster.leader == name:
        return True
    req = json.dumps({"placement": {"preferred": name}}).encode()
    await js._nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{subj.EVENTS_STREAM}", req, timeout=2)
    await asyncio.sleep(0.5)
    return (await js.stream_info(subj.EVENTS_STREAM)).cluster.leader == name


async def test_concurrent_writers_racing_for_one_subject_on_a_replicated_stream_get_stale_write(tmp_path):
    """Several writers append to one experiment with the same view of it at once. A replicated
    stream refuses all but one, either as 10071 (the subject's last sequence moved) or as 10164
    (another write to it is still in flight); both are a stale view to the writer, so each loser
    gets bus.StaleWrite, which the scheduler and runners handle by reading again. (A scheduler
    exited on an unmapped 10164 in a cluster chaos run.)"""
    async with running_cluster(tmp_path) as (cluster, admin):
        js = admin.jetstream(timeout=5)
        await until("a JetStream meta leader", js.account_info)
        await until("the streams, replicated x3", lambda: _provision(js, cluster.settings("admin")))
        await until("every stream and bucket to have a leader", lambda: _all_led(js))
        refused: Counter[str] = Counter()
        for n in range(10):
            f = subj.experiment_all("race", n)

            async def write(k: int, n: int = n, f: str = f) -> None:
                e = ev.ExperimentPlanned(id=ev.exp_id("race", n, k, "planned"), task="race", n=n, attempt=k, parameters={})
                try:
                    await bus.append(js, subj.experiment("race", n, "planned"), e, expect_seq=0, expect_filter=f)
                except bus.StaleWrite:
                    refused["stale"] += 1

            await asyncio.gather(*(write(k) for k in range(8)))
        assert refused["stale"] == 10 * 7, refused  # one winner per experiment; no other error escaped
        stored = await events_of(js, "autotune.task.race.>")
        assert sorted(e.n for _, e in stored) == list(range(10))
