"""The projector recovering against a real nats-server: a lane whose connection breaks, a telemetry
sidecar killed or fed a batch it cannot write; each time nothing is lost or applied twice."""

from __future__ import annotations

import asyncio
import gc
import os
import signal

import msgspec

from autotune.projector import service
from autotune.projector.rebuild import rebuild
from autotune.projector.store import Store
from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from autotune.shared import bus, query
from tests.fixtures.projector_kit import CONFIG, caught_up, db_checksums, publish, traffic


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
