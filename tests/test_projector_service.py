"""The projector service against a real nats-server: exactly once across restarts and kills,
dead letters, and a rebuild that equals the incremental projection."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import random
import signal
import subprocess
import sys

import msgspec
import pytest

from autotune.projector import service
from autotune.projector.rebuild import rebuild
from autotune.projector.settings import ProjectorConfig
from autotune.projector.store import SchemaMismatch, Store, checksums, log_path
from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from autotune.schemas.metrics import ExperimentMetrics, RequestSample, RunMetrics, Stats
from autotune.shared import bus, query
from autotune.shared.net import free_port
from autotune.shared.provision import apply_stream_settings, provision


def traffic(seed: int, tasks: int = 3, experiments: int = 6):
    """(subject, event) in the order the services would publish them."""
    r = random.Random(seed)
    for h in ("h1", "h2"):
        yield (
            subj.host(h, "registered"),
            ev.HostRegistered(id=f"{h}.{seed}.reg", host=h, instance=f"i{seed}", gpus=[ev.GpuInfo(index=0, uuid=f"G-{h}", name="H100")]),
        )
    for k in range(tasks):
        task = f"s{seed}t{k}"
        yield (
            subj.task(task, "submitted"),
            ev.TaskSubmitted(id=f"{task}.submitted", task=task, name=task, spec={"model": "m", "optimization": {"strategy": "random"}}),
        )
        yield subj.task(task, "started"), ev.TaskStarted(id=f"{task}.started", task=task, strategy="random", budget=experiments)
        for n in range(experiments):
            host = r.choice(["h1", "h2"])
            x = ev.exp_id
            yield (
                subj.experiment(task, n, "planned"),
                ev.ExperimentPlanned(id=x(task, n, 0, "planned"), task=task, n=n, parameters={"x": r.random()}),
            )
            yield (
                subj.experiment(task, n, "assigned", host),
                ev.ExperimentAssigned(id=x(task, n, 0, "assigned"), task=task, n=n, host=host, parameters={}, spec={}),
            )
            yield (
                subj.experiment(task, n, "started"),
                ev.ExperimentStarted(id=x(task, n, 0, "started"), task=task, n=n, host=host, instance="i", runtime="local"),
            )
            yield subj.gpu(host, 0), ev.GpuSample(id=f"{task}.{n}.gpu", host=host, index=0, util_gpu=r.uniform(0, 100))
            yield subj.log(task, n), ev.LogLines(id=f"{task}.{n}.log", task=task, n=n, host=host, lines=["starting", "ready"])
            samples = [RequestSample(run=0, ok=True, start=i * 0.1, e2e=r.uniform(0.5, 2), ttft=0.1, tpot=0.01) for i in range(5)]
            m = ExperimentMetrics(
                runs=[RunMetrics(scenario="D(100,100)", concurrency=4, ttft=Stats(count=5, p50=0.1))],
                samples=samples,
                requests=5,
                completed=5,
            )
            if r.random() < 0.8:
                yield (
                    subj.experiment(task, n, "completed"),
                    ev.ExperimentCompleted(id=x(task, n, 0, "completed"), task=task, n=n, host=host, metrics=m, score=r.uniform(0, 10)),
                )
            else:
                yield (
                    subj.experiment(task, n, "failed"),
                    ev.ExperimentFailed(id=x(task, n, 0, "failed"), task=task, n=n, host=host, kind="oom"),
                )
        yield subj.task(task, "completed"), ev.TaskCompleted(id=f"{task}.completed", task=task, reason="budget")


async def publish(js, items) -> int:
    last = 0
    for subject, event in items:
        stream = (
            subj.TELEMETRY_STREAM
            if subject.startswith("autotune.gpu.")
            else subj.LOGS_STREAM
            if subject.startswith("autotune.log.")
            else subj.EVENTS_STREAM
        )
        ack = await bus.append(js, subject, event)
        if stream == subj.EVENTS_STREAM:
            last = ack.seq
    return last


async def publish_oddities(js) -> None:
    await js.publish("autotune.task.odd.submitted", b"{not json")
    await js.publish("autotune.task.odd.started", b'{"type": "task.started", "id": "w", "task": 7}')
    await js.publish("autotune.task.odd.exp.0.cloned", b'{"type": "experiment.cloned", "id": "u", "task": "odd", "n": 0}')
    await js.publish("autotune.gpu.h9.0", b'{"type": "gpu.sample", "id": "big", "host": "h9", "index": 0, "pad": "' + b"x" * 10000 + b'"}')
    # valid, but not telemetry: the telemetry lane (committing beside the events lane) refuses it
    await js.publish("autotune.gpu.h9.1", ev.encode(ev.TaskSubmitted(id="lost", task="lost", name="lost", spec={})))
    # decodes, but no BIGINT holds the pid: the telemetry lane's commit fails, bisecting finds this message
    await js.publish(
        "autotune.gpu.h9.2", b'{"type": "gpu.sample", "id": "pid", "host": "h9", "index": 2, "processes": [[18446744073709551615, 1.0]]}'
    )
    # decodes, but no BIGINT holds n: the store refuses the batch, bisecting finds this message
    await js.publish(
        "autotune.task.odd.exp.0.planned",
        b'{"type": "experiment.planned", "id": "p", "task": "odd", "n": 18446744073709551615, "parameters": {}}',
    )
    # the same event stored twice under two sequences (a retry after the dedup window)
    dup = ev.TaskCancelRequested(id="dup", task="s1t0", reason="twice")
    await js.publish(subj.task("s1t0", "cancel_requested"), ev.encode(dup))
    await js.publish(subj.task("s1t0", "cancel_requested"), ev.encode(dup))


async def answered(nc, sql: str) -> query.QueryResult:
    """The first answer, once a projector that just started subscribes."""
    for _ in range(100):
        try:
            return await query.sql(nc, sql)
        except query.QueryError as e:
            if "no projector" not in e.message:
                raise
        await asyncio.sleep(0.05)
    raise AssertionError("no projector answered")


async def caught_up(nc, js, tries: int = 200) -> None:
    """Until the projector's positions are the streams' last sequences, across reopens."""
    last = {s: (await js.stream_info(s)).state.last_seq for s in service.STREAMS}
    positions = None
    for _ in range(tries):
        try:
            positions = await answered(nc, "SELECT stream, seq FROM positions")
        except query.QueryError as e:  # a query that ran while the store was closed for a reopen
            assert "retry shortly" in e.message, e.message
            continue
        if dict(map(tuple, positions.rows)) == last:
            return
        await asyncio.sleep(0.05)
    assert positions is not None and dict(map(tuple, positions.rows)) == last


CONFIG = ProjectorConfig(max_event_bytes=8192, slow_delay_s=0.05)


def db_checksums(path: str) -> dict:
    store = Store(path, read_only=True)
    try:
        return checksums(store.conn)
    finally:
        store.close()


async def burst(settings, path: str) -> None:
    await asyncio.wait_for(service.run(settings, stop=asyncio.Event(), db_path=path, burst=True, config=CONFIG), 60)


@pytest.mark.parametrize("sidecar", [True, False], ids=["telemetry-in-a-sidecar", "telemetry-in-process"])
async def test_burst_projects_every_stream_with_dead_letters(js, settings, tmp_path, sidecar):
    last = await publish(js, traffic(1, tasks=2, experiments=3))
    await publish_oddities(js)
    path = str(tmp_path / "p.duckdb")
    cfg = msgspec.structs.replace(CONFIG, sidecar=sidecar)
    await asyncio.wait_for(service.run(settings, stop=asyncio.Event(), db_path=path, burst=True, config=cfg), 60)
    store = Store(path, read_only=True)
    try:
        q = lambda sql: store.conn.sql(sql).to_arrow_table().to_pylist()  # noqa: E731
        pos = {r["stream"]: r for r in q("SELECT * FROM positions")}
        info = {s: (await js.stream_info(s)).state.last_seq for s in service.STREAMS}
        assert {s: p["seq"] for s, p in pos.items()} == info and pos[subj.EVENTS_STREAM]["seq"] > last
        # the planned event with an n no BIGINT holds: neither the log lane (events.n) nor the state lane (experiments.n) can write it
        assert pos[subj.EVENTS_STREAM]["unknown"] == 1 and pos[subj.EVENTS_STREAM]["dead_letters"] == 4
        assert pos[subj.TELEMETRY_STREAM]["dead_letters"] == 3
        dead = q("SELECT stream, subject, size, raw, error, lane FROM dead_letters ORDER BY stream, seq, lane")
        assert [(d["subject"], d["lane"]) for d in dead] == [
            ("autotune.task.odd.submitted", "log"),
            ("autotune.task.odd.started", "log"),
            ("autotune.task.odd.exp.0.planned", "log"),
            ("autotune.task.odd.exp.0.planned", "state"),
            ("autotune.gpu.h9.0", "log"),
            ("autotune.gpu.h9.1", "log"),
            ("autotune.gpu.h9.2", "log"),
        ]
        assert dead[0]["raw"] == b"{not json" and dead[2]["error"].startswith("cannot write") and dead[3]["error"].startswith("cannot write")
        assert "oversized" in dead[4]["error"] and dead[4]["size"] > 10000
        assert "does not belong on AUTOTUNE_TELEMETRY" in dead[5]["error"]
        assert dead[6]["error"].startswith("cannot write: ConversionException")
        assert q("SELECT count(*) AS n FROM tasks")[0]["n"] == 2
        assert q("SELECT count(*) AS n FROM experiments")[0]["n"] == 6
        assert q("SELECT count(*) AS n FROM gpu_samples")[0]["n"] == 6
        assert q("SELECT count(*) AS n FROM log_lines")[0]["n"] == 12
        assert q("SELECT count(*) AS n FROM events WHERE id = 'dup'")[0]["n"] == 2  # both are in the log
        assert q("SELECT reason FROM tasks WHERE id = 's1t0'")[0]["reason"] == "budget"  # a finished task stays finished
    finally:
        store.close()


async def test_restarts_and_cancels_mid_stream_equal_a_rebuild(js, settings, tmp_path):
    """The projector is stopped abruptly (its task cancelled) several times while events arrive;
    redeliveries after each restart change nothing; the result equals a rebuild from scratch."""
    path = str(tmp_path / "incremental.duckdb")
    r = random.Random(7)
    for seed in range(2, 6):
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(settings, stop=stop, db_path=path, config=CONFIG))
        await publish(js, traffic(seed, tasks=2, experiments=4))
        if seed == 3:
            await publish_oddities(js)
        await asyncio.sleep(r.uniform(0.0, 0.3))
        task.cancel()  # abrupt: no stop event, mid-batch or not
        with pytest.raises(asyncio.CancelledError):
            await task
    await burst(settings, path)
    incremental = db_checksums(path)
    assert incremental["tasks"][0] == 9 and incremental["dead_letters"][0] == 7  # 8 + the stub of s1t0; 6 messages, one dead in both lanes

    built = await rebuild(settings, str(tmp_path / "rebuilt.duckdb"), config=CONFIG)
    assert built["swapped_by"] == "rebuild" and built["dead_letters"] == 7
    assert db_checksums(str(tmp_path / "rebuilt.duckdb")) == incremental


async def test_a_rebuild_swapped_into_a_running_projector_changes_nothing(js, settings, tmp_path):
    path = str(tmp_path / "incremental.duckdb")
    await publish(js, traffic(2, tasks=2, experiments=4))
    await burst(settings, path)
    incremental = db_checksums(path)
    stop = asyncio.Event()
    running = asyncio.create_task(service.run(settings, stop=stop, db_path=path, config=CONFIG))
    nc = await bus.connect(settings, "test-query")
    try:
        before = await answered(nc, "SELECT count(*) FROM events")
        built = await rebuild(settings, path, config=CONFIG)
        assert built["swapped_by"] == "projector"
        after = await query.sql(nc, "SELECT count(*) FROM events", min_seq=before.applied_seq)
        assert after.rows == before.rows and after.applied_seq == before.applied_seq
    finally:
        await nc.close()
        stop.set()
        await asyncio.wait_for(running, 30)
    assert db_checksums(path) == incremental
    assert not os.path.exists(path + ".rebuild")


async def test_sigkilled_subprocess_resumes_exactly_once(js, settings, tmp_path):
    """A real projector process killed with SIGKILL while events arrive (no cleanup, its WAL left
    behind) resumes from its stored positions; the CLI's burst run catches up; the result equals a
    rebuild."""
    path = str(tmp_path / "killed.duckdb")
    base = [sys.executable, "-m", "autotune.projector", "--nats-url", settings.nats_url]
    env = {**os.environ, "AUTOTUNE_LOG_LEVEL": "WARNING", "AUTOTUNE_PROJECTOR_MAX_EVENT_BYTES": "8192"}
    for seed in range(10, 13):
        proc = subprocess.Popen([*base, "run", "--db", path], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            publishing = asyncio.create_task(publish(js, traffic(seed, tasks=3, experiments=6)))
            await asyncio.sleep(0.7 + 0.4 * (seed - 10))
            await publishing
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
    out = subprocess.run([*base, "run", "--db", path, "--burst"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    out = subprocess.run([*base, "checksum", "--db", path], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    incremental = {t: tuple(v) for t, v in json.loads(out.stdout).items()}
    assert incremental["tasks"][0] == 9
    await rebuild(settings, str(tmp_path / "rebuilt.duckdb"), config=CONFIG)
    assert db_checksums(str(tmp_path / "rebuilt.duckdb")) == incremental


async def test_a_database_of_another_schema_is_set_aside_and_rebuilt(js, settings, tmp_path):
    import duckdb

    await publish(js, traffic(30, tasks=1, experiments=1))
    path = str(tmp_path / "old.duckdb")
    await burst(settings, path)
    conn = duckdb.connect(path)
    conn.execute("UPDATE projector_meta SET value = '0'")
    conn.close()
    await burst(settings, path)
    assert db_checksums(path)["tasks"][0] == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("old.duckdb.old-")]


async def test_a_log_file_of_another_build_is_refused_read_only_and_rebuilt_by_the_projector(js, settings, tmp_path):
    """The two files of a read model carry one generation: a pair cut apart (a copy, a crash in
    the middle of a swap) is never read as one; the projector sets both aside and rebuilds."""
    import shutil

    await publish(js, traffic(31, tasks=1, experiments=2))
    a, b = str(tmp_path / "a.duckdb"), str(tmp_path / "b.duckdb")
    await burst(settings, a)
    await burst(settings, b)
    whole = db_checksums(a)
    shutil.copy(log_path(b), log_path(a))
    with pytest.raises(SchemaMismatch, match="does not belong to"):
        Store(a, read_only=True)
    await burst(settings, a)
    assert db_checksums(a) == whole
    aside = sorted(p.name.split(".old-")[0] for p in tmp_path.iterdir() if ".old-" in p.name)
    assert aside == ["a.duckdb", "a.duckdb.log"]


async def test_survives_a_nats_server_restart(tmp_path):
    """The server goes away mid-stream and comes back on the same port: the feeds' lean connection
    reconnects, the consumers (memory storage, gone with the server) are re-created where delivery
    stopped, and nothing is lost or applied twice."""
    from autotune.shared.natsserver import NatsServer
    from autotune.shared.settings import Settings

    port = free_port()
    server = NatsServer(tmp_path / "nats", port=port).start()
    settings = Settings(nats_url=server.url, data_dir=str(tmp_path / "data"))
    path = str(tmp_path / "restart.duckdb")
    stop = asyncio.Event()
    running = None
    try:
        nc = await bus.connect(settings, "test")
        js = nc.jetstream()
        await provision(js, settings)
        await publish(js, traffic(40, tasks=1, experiments=3))
        running = asyncio.create_task(service.run(settings, stop=stop, db_path=path, config=CONFIG))
        await asyncio.sleep(1.0)
        server.stop()
        await asyncio.sleep(1.0)
        server = NatsServer(tmp_path / "nats", port=port).start()
        await publish(js, traffic(41, tasks=1, experiments=3))
        answer = None
        last = {s: (await js.stream_info(s)).state.last_seq for s in service.STREAMS}
        for _ in range(200):  # until the projector has everything, telemetry and logs included
            try:
                answer = await query.sql(nc, "SELECT count(*) FROM tasks", timeout=2)
                positions = await query.sql(nc, "SELECT stream, seq FROM positions", timeout=2)
                if answer.rows == [[2]] and dict(map(tuple, positions.rows)) == last:
                    break
            except query.QueryError:
                pass
            await asyncio.sleep(0.1)
        assert answer is not None and answer.rows == [[2]]
        assert dict(map(tuple, positions.rows)) == last
        await nc.close()
    finally:
        stop.set()
        if running is not None:
            await asyncio.wait_for(running, 30)
        server.stop()
    incremental = db_checksums(path)
    server = NatsServer(tmp_path / "nats", port=port).start()
    try:
        await rebuild(settings, str(tmp_path / "rebuilt.duckdb"), config=CONFIG)
    finally:
        server.stop()
    assert db_checksums(str(tmp_path / "rebuilt.duckdb")) == incremental


async def test_the_nats_py_wire_projects_the_same(js, settings, tmp_path):
    """With a credentials file or TLS the feeds read through nats-py: same rows."""
    await publish(js, traffic(50, tasks=1, experiments=4))
    await publish_oddities(js)
    lean, natspy = str(tmp_path / "lean.duckdb"), str(tmp_path / "natspy.duckdb")
    await burst(settings, lean)
    cfg = msgspec.structs.replace(CONFIG, lean_wire=False)
    await asyncio.wait_for(service.run(settings, stop=asyncio.Event(), db_path=natspy, burst=True, config=cfg), 60)
    assert db_checksums(natspy) == db_checksums(lean)


async def test_a_lane_whose_connection_breaks_gets_the_store_reopened_and_loses_nothing(js, settings, tmp_path):
    """The telemetry lane's DuckDB connection is closed under it (as a failing connection would be),
    twice: the lane cannot even reload its state, so both lanes park, the store is closed and
    reopened, and projection resumes from the stored positions. The result equals a rebuild."""
    path = str(tmp_path / "broken.duckdb")
    nc = await bus.connect(settings, "test")
    projector = service.Projector(nc, js, path, CONFIG, settings)
    stop = asyncio.Event()
    running = asyncio.create_task(projector.run(stop))
    try:
        for seed in (60, 61, 62):
            await publish(js, traffic(seed, tasks=1, experiments=3))
            await caught_up(nc, js)
            if seed < 62:
                projector.telemetry.conn.close()  # its next commit fails, and so does reloading its state
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)
        await nc.close()
    assert projector.progress.totals["dead_letters"] == 0  # a broken connection is not the messages' fault
    del projector, running
    gc.collect()  # the failures' tracebacks hold the old connections in cycles (the projector collects every few minutes)
    incremental = db_checksums(path)
    await rebuild(settings, str(tmp_path / "rebuilt.duckdb"), config=CONFIG)
    assert db_checksums(str(tmp_path / "rebuilt.duckdb")) == incremental


async def test_a_killed_telemetry_sidecar_is_restarted_and_loses_nothing(js, settings, tmp_path):
    """The telemetry lane reads, decodes and prepares in a child process (sidecar.py). It is
    SIGKILLed twice while telemetry arrives: the projector reopens, starts another from the
    committed positions, and whatever the dead one had sent but not yet committed is read again,
    not lost and not applied twice. The result equals a rebuild."""
    path = str(tmp_path / "sidecar.duckdb")
    nc = await bus.connect(settings, "test")
    projector = service.Projector(nc, js, path, CONFIG, settings)
    stop = asyncio.Event()
    running = asyncio.create_task(projector.run(stop))
    pids = []
    try:
        for seed in (70, 71, 72):
            publishing = asyncio.create_task(publish(js, traffic(seed, tasks=1, experiments=4)))
            await asyncio.sleep(0.2)
            sidecar = projector.telemetry.sidecar
            for _ in range(100):
                if sidecar.alive:
                    break
                await asyncio.sleep(0.05)
            assert sidecar.alive and sidecar.proc.pid != os.getpid()
            pids.append(sidecar.proc.pid)
            if seed < 72:
                os.kill(sidecar.proc.pid, signal.SIGKILL)
            await publishing
        await caught_up(nc, js, tries=300)
        assert len(set(pids)) == 3  # a new process after each kill
        samples = await query.sql(nc, "SELECT count(*), count(DISTINCT seq) FROM gpu_samples")
        assert samples.rows == [[12, 12]]
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)
        await nc.close()
    assert projector.progress.totals["dead_letters"] == 0
    assert not os.path.exists(f"/proc/{pids[-1]}")  # stopped with the projector
    del projector, running
    gc.collect()
    incremental = db_checksums(path)
    await rebuild(settings, str(tmp_path / "rebuilt.duckdb"), config=CONFIG)
    assert db_checksums(str(tmp_path / "rebuilt.duckdb")) == incremental



async def test_a_failed_telemetry_batch_restarts_the_sidecar_and_nothing_it_sent_before_is_committed(js, settings, tmp_path):
    """The sidecar sends small batches ahead (up to its credit). One of them cannot be written:
    the lane bisects it (the bad sample becomes a dead letter) and starts the sidecar again from
    the committed positions, in a new epoch. Batches of the old epoch still on their way are
    dropped, or their samples would land twice (gpu_samples has no key to refuse them)."""
    sent, bad = 2000, 700
    for i in range(sent):
        if i == bad:  # decodes, but no BIGINT holds the pid
            await js.publish(subj.gpu("hs", 0), b'{"type": "gpu.sample", "id": "bad", "host": "hs", "index": 0, "processes": [[18446744073709551615, 1.0]]}')
        else:
            await bus.append(js, subj.gpu("hs", 0), ev.GpuSample(id=f"s.{i}", host="hs", index=0, util_gpu=i % 100))
    cfg = msgspec.structs.replace(CONFIG, slow_batch=50, slow_delay_s=0.01, batch_max=100)
    path = str(tmp_path / "epochs.duckdb")
    await asyncio.wait_for(service.run(settings, stop=asyncio.Event(), db_path=path, burst=True, config=cfg), 60)
    store = Store(path, read_only=True)
    try:
        got = store.conn.sql("SELECT count(*), count(DISTINCT seq) FROM gpu_samples").fetchall()
        dead = store.conn.sql("SELECT seq FROM dead_letters").fetchall()
        position = store.conn.sql(f"SELECT seq, messages, dead_letters FROM positions WHERE stream = '{subj.TELEMETRY_STREAM}'").fetchall()
    finally:
        store.close()
    assert got == [(sent - 1, sent - 1)] and dead == [(bad + 1,)]
    assert position == [(sent, sent, 1)]  # the lane's own count of its dead letters, not the sidecar's (it saw none)
    await rebuild(settings, str(tmp_path / "rebuilt.duckdb"), config=cfg)
    assert db_checksums(str(tmp_path / "rebuilt.duckdb")) == db_checksums(path)


def test_the_lane_takes_only_the_current_epochs_batches_from_its_sidecar():
    """What a sidecar sent before its last (re)start is dropped on arrival: a batch read from the
    old positions, or an idle report that says it caught up with them. (No process here: this is
    the projector's end of the pipe alone.)"""
    from autotune.projector.lane import Lane
    from autotune.projector.sidecar import Sidecar
    from autotune.shared.settings import Settings

    lane = Lane("telemetry", (subj.TELEMETRY_STREAM,), role="telemetry", db="log", delay_s=0, min_batch=1)
    sidecar = Sidecar(Settings(), CONFIG, lane, on_exit=lambda: None)
    sidecar.epoch = 2
    sidecar._received(("batch", 1, "read before the restart"))
    sidecar._received(("idle", 1, True, "caught up before the restart"))
    assert lane.buffer == [] and not sidecar.caught_up
    sidecar._received(("batch", 2, "read after it"))
    sidecar._received(("idle", 2, True, "caught up"))
    assert lane.buffer == ["read after it"] and sidecar.caught_up


async def test_gpu_samples_and_log_lines_keep_what_their_streams_keep_and_equal_a_rebuild(js, settings, tmp_path):
    """AUTOTUNE_TELEMETRY and AUTOTUNE_LOGS drop messages older than their max age; the projector
    drops their rows too, so the file stays bounded and its tables equal a rebuild's. (The counters
    of `positions` count what the file ever applied, so only their sequences are compared.)"""
    streams = (subj.TELEMETRY_STREAM, subj.LOGS_STREAM)
    path = str(tmp_path / "pruned.duckdb")
    stop = asyncio.Event()
    running = asyncio.create_task(service.run(settings, stop=stop, db_path=path, config=msgspec.structs.replace(CONFIG, prune_every_s=0.2)))
    nc = await bus.connect(settings, "test-query")
    counts = "SELECT (SELECT count(*) FROM gpu_samples), (SELECT count(*) FROM log_lines), (SELECT min(seq) FROM gpu_samples)"
    try:
        await publish(js, traffic(2, tasks=1, experiments=4))  # 4 GPU samples, 4 log messages of 2 lines
        await caught_up(nc, js)
        assert (await answered(nc, counts)).rows == [[4, 8, 1]]
        await apply_stream_settings(js, msgspec.structs.replace(settings, telemetry_max_age_s=0.5, logs_max_age_s=0.5))
        for _ in range(100):  # the server expires them
            if [(await js.stream_info(s)).state.messages for s in streams] == [0, 0]:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the streams kept their messages past their max age")
        await apply_stream_settings(js, settings)  # 7 days again: what comes now stays
        await publish(js, traffic(3, tasks=1, experiments=2))
        await caught_up(nc, js)
        for _ in range(100):
            got = (await answered(nc, counts)).rows
            if got == [[2, 4, 5]]:
                break
            await asyncio.sleep(0.1)
        assert got == [[2, 4, 5]], got  # the first four samples (seq 1-4) are gone from the file too
    finally:
        await nc.close()
        stop.set()
        await asyncio.wait_for(running, 30)
    await rebuild(settings, str(tmp_path / "rebuilt.duckdb"), config=CONFIG)
    incremental, rebuilt = db_checksums(path), db_checksums(str(tmp_path / "rebuilt.duckdb"))
    assert {k: v for k, v in incremental.items() if "positions" not in k} == {k: v for k, v in rebuilt.items() if "positions" not in k}
    for p in (path, str(tmp_path / "rebuilt.duckdb")):
        store = Store(p, read_only=True)
        try:
            assert {s: pos.seq for s, pos in store.positions().items() if s in streams} == {subj.TELEMETRY_STREAM: 6, subj.LOGS_STREAM: 6}
        finally:
            store.close()


async def test_with_pruning_off_the_file_keeps_the_samples_its_stream_dropped(js, settings, tmp_path):
    path = str(tmp_path / "kept.duckdb")
    stop = asyncio.Event()
    running = asyncio.create_task(service.run(settings, stop=stop, db_path=path, config=msgspec.structs.replace(CONFIG, prune_every_s=0)))
    nc = await bus.connect(settings, "test-query")
    try:
        await publish(js, traffic(2, tasks=1, experiments=2))
        await caught_up(nc, js)
        await js.purge_stream(subj.TELEMETRY_STREAM)  # as a max age would: the stream no longer holds them
        await publish(js, traffic(3, tasks=1, experiments=1))
        await caught_up(nc, js)
        await asyncio.sleep(1.0)  # five rounds of the pruning test's interval
        assert (await answered(nc, "SELECT count(*), min(seq) FROM gpu_samples")).rows == [[3, 1]]
    finally:
        await nc.close()
        stop.set()
        await asyncio.wait_for(running, 30)
