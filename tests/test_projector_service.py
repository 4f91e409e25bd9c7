"""The projector service against a real nats-server: exactly once across restarts and kills,
dead letters, and a rebuild that equals the incremental projection."""

from __future__ import annotations

import asyncio
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
from autotune.projector.store import SchemaMismatch, Store, log_path
from autotune.schemas import subjects as subj
from autotune.shared import bus, query
from autotune.shared.net import free_port
from autotune.shared.provision import provision
from tests.fixtures.projector_kit import CONFIG, answered, burst, db_checksums, publish, publish_oddities, traffic


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
