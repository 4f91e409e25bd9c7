"""The projector's telemetry tables keep what AUTOTUNE_TELEMETRY and AUTOTUNE_LOGS keep (pruned as
the streams drop messages), against a real nats-server; with pruning off they keep everything."""

from __future__ import annotations

import asyncio

import msgspec

from autotune.projector import service
from autotune.projector.rebuild import rebuild
from autotune.projector.store import Store
from autotune.schemas import subjects as subj
from autotune.shared import bus
from autotune.shared.provision import apply_stream_settings
from tests.fixtures.projector_kit import CONFIG, answered, caught_up, db_checksums, publish, traffic


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
