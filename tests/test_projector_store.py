"""The projector's views through its DuckDB store, without NATS: every table filled, the same
result wherever batches are cut and states reloaded, caches trimmed, positions, schema versions."""

from __future__ import annotations

import random

import msgspec
import pytest

from autotune.projector import schema as sc
from autotune.projector.store import Store, checksums
from autotune.projector.views import apply
from autotune.schemas import events as ev
from tests.fixtures.views_kit import EVENTS, T0, Lanes, history, lifecycle, project, rows


def test_rows_land_in_every_table(tmp_path):
    log = history()
    project(tmp_path / "a.duckdb", log.messages, [])
    db = tmp_path / "a.duckdb"
    counts = {name: rows(db, f"SELECT count(*) AS n FROM {name}")[0]["n"] for name in sc.PUBLIC}
    assert counts["tasks"] == 2 and counts["hosts"] == 2 and counts["experiments"] == 8
    assert counts["gpu_samples"] == 6 and counts["log_lines"] == 18 and counts["dead_letters"] == 2
    completed = rows(db, "SELECT count(*) AS n FROM experiments WHERE status = 'completed'")[0]["n"]
    assert counts["experiment_runs"] == 2 * completed and counts["request_samples"] == 3 * completed
    s = rows(db, "SELECT * FROM request_samples ORDER BY task, n, attempt, i LIMIT 1")[0]
    assert (s["run"], s["ok"], s["e2e"], s["input_tokens"], s["itl"]) == (0, True, 1.0, 100, [0.01, 0.02])
    r = rows(db, "SELECT * FROM experiment_runs ORDER BY task, n, attempt, run DESC LIMIT 1")[0]
    assert (r["concurrency"], r["errors_by_kind"], r["ttft_count"], r["ttft_p50"]) == (2, '{"http_503":1}', 3, 1.04)
    g = rows(db, "SELECT * FROM gpu_samples LIMIT 1")[0]
    assert g["processes"] == '[{"pid":7,"used_memory_mib":1024.0}]' and g["uuid"] is None and g["at"] is not None
    t1 = rows(db, "SELECT * FROM tasks WHERE id = 't1'")[0]
    assert (t1["status"], t1["best_n"], t1["best_parameters"], t1["model"], t1["engine"]) == ("completed", 2, '{"tp":2}', "llama", "vllm")
    assert rows(db, "SELECT status FROM tasks WHERE id = 't2'")[0]["status"] == "cancelled"
    assert rows(db, "SELECT status FROM hosts WHERE host = 'h2'")[0]["status"] == "draining"
    e = rows(db, "SELECT payload FROM events WHERE type = 'experiment.completed' LIMIT 1")[0]
    payload = msgspec.json.decode(e["payload"])
    assert payload["metrics"]["runs"] == payload["metrics"]["samples"] == [] and payload["metrics"]["mean_ttft"] == 0.05  # typed elsewhere
    unknown = rows(db, "SELECT * FROM events WHERE NOT known")[0]
    assert (unknown["type"], unknown["n"], unknown["at"]) == ("task.future_thing", 9, T0)
    pos = {r["stream"]: r for r in rows(db, "SELECT * FROM positions")}
    assert pos[EVENTS]["unknown"] == 1 and pos[EVENTS]["dead_letters"] == 2


def test_batch_boundaries_and_reloads_do_not_change_the_result(tmp_path):
    """The incremental projection, cut anywhere and reopened (rows reloaded from DuckDB), equals
    the projection in one go."""
    log = history(1)
    whole = project(tmp_path / "whole.duckdb", log.messages, [])
    cuts = sorted(random.Random(1).sample(range(1, len(log.messages)), 8))
    assert project(tmp_path / "cut.duckdb", log.messages, cuts) == whole
    assert project(tmp_path / "asking.duckdb", log.messages, cuts, keys=False) == whole  # every miss asks the store
    small = project(tmp_path / "small.duckdb", log.messages, list(range(3, len(log.messages), 3)), reopen=False)
    assert small == whole


@pytest.mark.parametrize("keys", [True, False])
def test_cache_trimming_reloads_rows_from_the_store(tmp_path, keys):
    """Rows are trimmed to one per table after every batch. Without the keys (cache_keys=0) the
    log lane's finished attempts are trimmed too, and it asks the store whether one finished."""
    log = history(3)
    whole = project(tmp_path / "whole.duckdb", log.messages, [])
    store = Store(str(tmp_path / "trim.duckdb"))
    lanes = Lanes(store, keys=keys)
    for i in range(0, len(log.messages), 7):
        lanes.write(log.messages[i : i + 7])
        lanes.trim(1)
    assert checksums(store.conn) == whole
    store.close()


def test_a_state_that_knows_every_stored_key_creates_new_rows_without_asking(tmp_path):
    """Reopened on a full store, the state lane loads the stored keys once: an event of a new
    attempt creates its row with no lookup, one of a stored attempt reads the row back."""
    log = history(2)
    first = len(log.messages)
    lifecycle(log, "t9", 0, 0)  # a new task's attempt: new rows only
    log.add(ev.ExperimentCancelled(id="late", at=log.at(), task="t1", n=0, host="h1"))  # a stored one
    whole = project(tmp_path / "whole.duckdb", log.messages, [])
    for keys, loads in ((True, 0), (False, 1)):
        path = str(tmp_path / f"keys{keys}.duckdb")
        project(path, log.messages[:first], [])
        store = Store(path)
        lanes = Lanes(store, keys=keys)
        lanes.write(log.messages[first:-1])
        assert lanes.loads == loads, keys  # new rows: a lookup only without the keys
        lanes.write(log.messages[-1:])
        assert lanes.loads == loads + 1, keys
        assert checksums(store.conn) == whole
        store.close()


def test_positions_say_what_every_lane_has_applied(tmp_path):
    """`positions` is the lowest position of the lanes of each stream, also before a lane's first
    commit: a reader polling it never sees the state lane's tables behind what it says."""
    events = [m for m in history().messages if m.stream == EVENTS]
    store = Store(str(tmp_path / "p.duckdb"))
    lanes = Lanes(store)
    seq = "SELECT seq FROM positions WHERE stream = 'AUTOTUNE_EVENTS'"
    assert store.conn.sql(seq).fetchall() == [(0,)]
    store.write(apply(lanes.states["log"], events), db=sc.LOG_DB)
    assert store.conn.sql(seq).fetchall() == [(0,)]
    store.write(apply(lanes.states["state"], events[:-1]), db="main")
    assert store.conn.sql(seq).fetchall() == [(events[-2].seq,)]
    store.close()


def test_schema_version_mismatch_is_refused(tmp_path):
    path = str(tmp_path / "old.duckdb")
    Store(path).close()
    import duckdb

    conn = duckdb.connect(path)
    conn.execute("UPDATE projector_meta SET value = '0'")
    conn.close()
    with pytest.raises(Exception, match="rebuild"):
        Store(path)
