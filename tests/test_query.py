"""The query service and its client: read-only guard, no file access, limits, read-your-writes,
snapshots."""

from __future__ import annotations

import asyncio
import time

import duckdb
import pytest

from autotune.projector import answer, guard, reader, service
from autotune.projector.settings import ProjectorConfig
from autotune.projector.store import Store
from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from autotune.shared import bus, query

REFUSED = [
    ("ATTACH '/tmp/x.duckdb' AS x", "ATTACH"),
    ("DETACH x", "DETACH"),
    ("COPY tasks TO '/tmp/x.csv'", "COPY"),
    ("INSTALL httpfs", "LOAD"),
    ("LOAD httpfs", "LOAD"),
    ("PRAGMA show_tables", "PRAGMA"),
    ("SET threads = 1", "SET"),
    ("RESET threads", "SET"),
    ("SET VARIABLE x = 1", "SET"),
    ("USE memory", "SET"),
    ("CREATE TABLE t (a INT)", "CREATE"),
    ("CREATE MACRO m() AS 1", "CREATE"),
    ("INSERT INTO tasks (id) VALUES ('x')", "INSERT"),
    ("UPDATE tasks SET status = 'x'", "UPDATE"),
    ("DELETE FROM tasks", "DELETE"),
    ("DROP TABLE tasks", "DROP"),
    ("ALTER TABLE tasks ADD COLUMN x INT", "ALTER"),
    ("EXPORT DATABASE '/tmp/x'", "EXPORT"),
    ("IMPORT DATABASE '/tmp/x'", "PRAGMA"),  # DuckDB parses it as one
    ("CALL pragma_version()", "CALL"),
    ("CHECKPOINT", "CALL"),
    ("VACUUM", "VACUUM"),
    ("BEGIN", "TRANSACTION"),
    ("SELECT 1; DELETE FROM tasks", "exactly one statement"),
    ("EXPLAIN ANALYZE DELETE FROM tasks", "EXPLAIN of a DELETE"),
    ("SELECT * FROM read_csv('/etc/passwd')", "read_csv"),
    ("SELECT * FROM read_parquet('x.parquet')", "read_parquet"),
    ("SELECT * FROM read_json('x.json')", "read_json"),
    ("SELECT * FROM read_text('/etc/passwd')", "read_text"),
    ("SELECT * FROM read_blob('/etc/passwd')", "read_blob"),
    ("SELECT * FROM glob('/*')", "glob"),
    ("SELECT (SELECT count(*) FROM glob('/*'))", "glob"),
    ("WITH x AS (SELECT * FROM read_csv('/etc/passwd')) SELECT * FROM x", "read_csv"),
    ("SELECT * FROM query('DELETE FROM tasks')", "query"),
    ("SELECT * FROM 'https://example.com/x.csv'", "looks like a file"),
    ("FROM '/etc/passwd'", "looks like a file"),
    ("SELECT * FROM duckdb_secrets()", "duckdb_secrets"),
    ("", "empty"),
]
ACCEPTED = [
    "SELECT 1",
    "SELECT id, status FROM tasks WHERE status = ?",
    "WITH t AS (SELECT * FROM tasks) SELECT count(*) FROM t",
    "FROM experiments SELECT count(*)",
    "DESCRIBE experiments",
    "SHOW TABLES",
    "SUMMARIZE gpu_samples",
    "EXPLAIN SELECT * FROM events",
    "EXPLAIN ANALYZE SELECT count(*) FROM events",
    "SELECT * FROM range(3) r, generate_series(1, 2) g",
    "SELECT * FROM duckdb_columns() WHERE table_name = 'tasks'",
    "SELECT unnest([1, 2]) AS x",
    "SELECT * FROM events e JOIN tasks t ON e.task = t.id QUALIFY row_number() OVER (PARTITION BY t.id) = 1",
]


@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path / "q.duckdb"))
    yield s
    s.close()


def test_guard_remembers_only_what_it_accepted_and_only_so_much(store):
    with store.cursor() as cur:
        for _ in range(2):  # a refused text is checked again, and refused again
            with pytest.raises(guard.Refused):
                guard.check(cur, "COPY tasks TO '/tmp/x.csv'")
        for i in range(guard._ACCEPTED_MAX + 10):
            guard.check(cur, f"SELECT {i} FROM tasks")
        assert len(guard._ACCEPTED) == guard._ACCEPTED_MAX and "SELECT 0 FROM tasks" not in guard._ACCEPTED
        assert "COPY tasks TO '/tmp/x.csv'" not in guard._ACCEPTED


@pytest.mark.parametrize("sql,why", REFUSED)
def test_guard_refuses(store, sql, why):
    with store.cursor() as cur, pytest.raises(guard.Refused, match=why):
        guard.check(cur, sql)


@pytest.mark.parametrize("sql", ACCEPTED)
def test_guard_accepts_and_runs(store, sql):
    with store.cursor() as cur:
        out = reader.execute(cur, sql, ["running"] if "?" in sql else None, 100, 5.0)
    assert out["columns"] and out["row_count"] == len(out["rows"])


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('/etc/passwd')",
        "COPY (SELECT 1) TO '/tmp/autotune-escape.csv'",
        "ATTACH '/tmp/autotune-escape.duckdb' AS x",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "SET lock_configuration = false",
    ],
)
def test_database_itself_refuses_files_and_settings(store, sql):
    """Belt and braces: even a statement that got past the guard cannot reach a file."""
    with store.cursor() as cur, pytest.raises(duckdb.Error):
        cur.execute(sql)


def test_queries_cannot_change_rows_even_past_the_guard(store):
    with store.cursor() as cur:
        before = cur.sql("SELECT count(*) FROM projector_meta").fetchall()
        cur.begin()
        cur.execute("INSERT INTO projector_meta VALUES ('x', 'y')")
        cur.rollback()  # what reader.execute always does
        assert cur.sql("SELECT count(*) FROM projector_meta").fetchall() == before == [(2,)]  # schema version, generation


def test_timeout_interrupts_a_query_that_would_run_forever(store):
    with store.cursor() as cur:
        t0 = time.monotonic()
        with pytest.raises(reader.QueryTimeout, match="timeout"):
            reader.execute(cur, "SELECT count(*) FROM range(1000000000000) a, range(1000000000000) b", None, 10, 0.5)
        assert time.monotonic() - t0 < 5
        assert reader.execute(cur, "SELECT 42 AS x", None, 10, 5.0)["rows"] == [(42,)]  # the cursor still works


def test_row_limit_truncates_without_reading_everything(store):
    with store.cursor() as cur:
        t0 = time.monotonic()
        out = reader.execute(cur, "SELECT * FROM range(100000000000)", None, 1000, 30.0)
        assert out["row_count"] == 1000 and out["truncated"] and time.monotonic() - t0 < 5
        out = reader.execute(cur, "SELECT * FROM range(5)", None, 5, 5.0)
        assert out["row_count"] == 5 and not out["truncated"]


@pytest.mark.parametrize(
    ("sql", "params", "columns", "rows"),
    [
        ("SELECT 1 AS a, 2 AS a", None, ["a", "a"], [(1, 2)]),  # names the LIMIT wrapper would rename: the plain path
        ("SELECT 1 AS a, 2 AS a_1", None, ["a", "a_1"], [(1, 2)]),
        ("SELECT * FROM range(10) t(i) ORDER BY i DESC", None, ["i"], [(9,), (8,), (7,)]),  # the order survives the wrapper
        ("SELECT $x AS v -- a comment at the end", {"x": 5}, ["v"], [(5,)]),
        ("SELECT 7 AS v;", None, ["v"], [(7,)]),
        ("EXPLAIN SELECT 1", None, ["explain_key", "explain_value"], None),
    ],
)
def test_select_runs_under_a_limit_bound_once_with_its_own_names_and_order(store, sql, params, columns, rows):
    with store.cursor() as cur:
        out = reader.execute(cur, sql, params, 3, 5.0)
    assert out["columns"] == columns
    assert rows is None or out["rows"] == rows


def test_a_query_the_wrapper_cannot_bind_gets_its_own_error_from_the_plain_path(store):
    with store.cursor() as cur, pytest.raises(duckdb.BinderException, match="nope"):  # not "transaction aborted"
        reader.execute(cur, "SELECT nope FROM tasks", None, 3, 5.0)
    with store.cursor() as cur:
        assert reader.execute(cur, "SELECT 1 AS ok", None, 3, 5.0)["rows"] == [(1,)]  # the cursor still works


def test_oversized_reply_is_cut_to_fit_one_message():
    reply = {"columns": ["x"], "types": ["VARCHAR"], "rows": [("y" * 1000,)] * 5000, "row_count": 5000, "truncated": False}
    data = reader.encode_reply(reply, 100_000)
    assert len(data) <= 100_000 and b'"truncated":true' in data and b"notice" in data


# --- over NATS ----------------------------------------------------------------------------------------


@pytest.fixture
async def projector(settings, tmp_path):
    stop = asyncio.Event()
    cfg = ProjectorConfig(min_seq_wait_s=0.5, query_timeout_s=5.0, row_limit=100)
    task = asyncio.create_task(service.run(settings, stop=stop, db_path=str(tmp_path / "live.duckdb"), config=cfg))
    yield task
    stop.set()
    await asyncio.wait_for(task, 30)


async def ready(nc) -> None:
    for _ in range(100):
        try:
            await query.sql(nc, "SELECT 1", timeout=2)
            return
        except query.QueryError as e:
            if "no projector" not in e.message:
                raise
        await asyncio.sleep(0.05)
    raise AssertionError("the projector never answered")


async def test_no_projector_says_what_to_do(nc):
    with pytest.raises(query.QueryError, match="no projector is answering on autotune.query.sql; is `autotune up` running"):
        await query.sql(nc, "SELECT 1")


async def test_read_your_writes_params_types_and_limits(nc, js, projector):
    await ready(nc)
    ack = await bus.append(js, subj.task("q1", "submitted"), ev.TaskSubmitted(id="q1.s", task="q1", name="Q", spec={"model": "m"}))
    res = await query.sql(nc, "SELECT id, name, submitted_at, spec FROM tasks WHERE id = ?", ["q1"], min_seq=ack.seq)
    assert res.applied_seq >= ack.seq and res.row_count == 1
    row = res.rows_as_dicts()[0]
    assert row["name"] == "Q" and row["spec"] == {"model": "m"} and row["submitted_at"].endswith("Z")
    assert res.types == ["VARCHAR", "VARCHAR", "TIMESTAMP WITH TIME ZONE", "JSON"]
    res = await query.sql(nc, "SELECT count(*) FROM events WHERE id = ?", ["q1.s"], min_seq=ack.seq)  # the log lane's table
    assert res.rows == [[1]] and res.applied_seq >= ack.seq

    with pytest.raises(query.QueryError, match="behind.*not yet"):
        await query.sql(nc, "SELECT 1", min_seq=ack.seq + 1000)

    res = await query.sql(nc, "SELECT * FROM range(1000)")
    assert res.row_count == 100 and res.truncated  # the projector's default limit
    res = await query.sql(nc, "SELECT * FROM range(1000)", limit=3)
    assert res.rows == [[0], [1], [2]] and res.truncated

    with pytest.raises(query.QueryError, match="refused: DELETE"):
        await query.sql(nc, "DELETE FROM tasks")
    with pytest.raises(query.QueryError, match="Table with name nope does not exist"):
        await query.sql(nc, "SELECT * FROM nope")
    t0 = time.monotonic()
    with pytest.raises(query.QueryError, match="interrupted"):
        await query.sql(nc, "SELECT count(*) FROM range(1000000000000) a, range(1000000000000) b", timeout=1.5)
    assert time.monotonic() - t0 < 4
    msg = await nc.request(query.QUERY_SQL, b'{"sql": "SELECT 1", "sqll": 2}', timeout=5)
    assert b"bad query request" in msg.data


async def test_queries_run_concurrently_with_ingestion(nc, js, projector):
    await ready(nc)
    slow = asyncio.create_task(query.sql(nc, "SELECT count(DISTINCT hash(range) % 1000) FROM range(100000000)", timeout=30))
    await asyncio.sleep(0.1)
    acks = [
        await bus.append(js, subj.task(f"c{i}", "submitted"), ev.TaskSubmitted(id=f"c{i}", task=f"c{i}", name="c", spec={}))
        for i in range(20)
    ]
    res = await query.sql(nc, "SELECT count(*) FROM tasks WHERE id LIKE 'c%'", min_seq=acks[-1].seq, timeout=5)
    assert res.rows == [[20]] and not slow.done()  # ingestion and other queries went on meanwhile
    assert (await slow).rows == [[1000]]


async def test_a_lane_that_gathers_its_batches_commits_at_once_for_a_waiting_query(nc, js, settings, tmp_path):
    """The log lane gathers up to `log_delay_s` per batch; a query whose min_seq waits for it has
    it commit what it has at once. Here the delay (60 s) is far beyond min_seq's wait (5 s)."""
    stop = asyncio.Event()
    cfg = ProjectorConfig(log_delay_s=60.0, log_batch=10**6)
    task = asyncio.create_task(service.run(settings, stop=stop, db_path=str(tmp_path / "lazy.duckdb"), config=cfg))
    try:
        await ready(nc)
        acks = [await bus.append(js, subj.task("g1", "submitted"), ev.TaskSubmitted(id=f"g1.{i}", task="g1", name="G", spec={})) for i in range(3)]
        res = await query.sql(nc, "SELECT count(*) FROM events WHERE task = 'g1'", min_seq=acks[-1].seq, timeout=10)
        assert res.rows == [[3]] and res.applied_seq >= acks[-1].seq
        ack = await bus.append(js, subj.task("g1", "cancel_requested"), ev.TaskCancelRequested(id="g1.c", task="g1"))
        await query.sql(nc, "SELECT 1", min_seq=ack.seq)  # the state lane alone: the log lane is not asked
        res = await query.sql(nc, "SELECT count(*) FROM events WHERE task = 'g1'")
        assert res.rows == [[3]]  # still gathering (60 s) ...
        res = await query.sql(nc, "SELECT count(*) FROM events WHERE task = 'g1'", min_seq=ack.seq, timeout=10)
        assert res.rows == [[4]]  # ... until a query waits for it
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_the_state_lane_gathers_too_and_commits_at_once_for_a_waiting_query(nc, js, settings, tmp_path):
    """The state lane gathers up to `state_delay_s` (here 60 s): a plain query sees the state as it
    was, one whose min_seq waits for the event has the lane commit at once."""
    stop = asyncio.Event()
    cfg = ProjectorConfig(state_delay_s=60.0, state_batch=10**6)
    task = asyncio.create_task(service.run(settings, stop=stop, db_path=str(tmp_path / "lazy.duckdb"), config=cfg))
    try:
        await ready(nc)
        ack = await bus.append(js, subj.task("g2", "submitted"), ev.TaskSubmitted(id="g2.s", task="g2", name="G", spec={}))
        res = await query.sql(nc, "SELECT status FROM tasks WHERE id = 'g2'", min_seq=ack.seq, timeout=10)
        assert res.rows == [["submitted"]]
        ack = await bus.append(js, subj.task("g2", "cancel_requested"), ev.TaskCancelRequested(id="g2.c", task="g2"))
        await asyncio.sleep(1.0)
        assert (await query.sql(nc, "SELECT status FROM tasks WHERE id = 'g2'")).rows == [["submitted"]]  # still gathering ...
        res = await query.sql(nc, "SELECT status FROM tasks WHERE id = 'g2'", min_seq=ack.seq, timeout=10)
        assert res.rows == [["cancelling"]]  # ... until a query waits for it
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_snapshot_is_a_consistent_file_anyone_can_open(nc, js, projector, tmp_path):
    await ready(nc)
    ack = await bus.append(js, subj.task("s1", "submitted"), ev.TaskSubmitted(id="s1.s", task="s1", name="S", spec={}))
    await query.sql(nc, "SELECT count(*) FROM events", min_seq=ack.seq)  # naming a log table: applied in every lane
    path = str(tmp_path / "snap" / "copy.duckdb")
    out = await query.snapshot(nc, path)
    assert out["tables"]["tasks"] == 1 and out["applied_seq"] >= ack.seq and out["bytes"] > 0
    conn = duckdb.connect(path, read_only=True)
    try:
        assert conn.sql("SELECT id, status FROM tasks").fetchall() == [("s1", "submitted")]
        assert conn.sql("SELECT seq FROM positions WHERE stream = 'AUTOTUNE_EVENTS'").fetchall() == [(out["applied_seq"],)]
    finally:
        conn.close()
    with pytest.raises(query.QueryError, match="exists"):
        await query.snapshot(nc, path)
    with pytest.raises(query.QueryError, match="absolute"):
        await query.snapshot(nc, "relative.duckdb")


async def test_snapshot_from_the_file_when_no_projector_runs(js, settings, tmp_path):
    from autotune.projector.cli import snapshot

    await bus.append(js, subj.task("f1", "submitted"), ev.TaskSubmitted(id="f1.s", task="f1", name="F", spec={}))
    db = str(tmp_path / "offline.duckdb")
    await service.run(settings, stop=asyncio.Event(), db_path=db, burst=True)
    out = await snapshot(settings, str(tmp_path / "copy.duckdb"), db_path=db)
    assert out["via"] == "file" and out["tables"]["tasks"] == 1


@pytest.mark.parametrize(
    ("sql", "lanes"),
    [
        ("SELECT * FROM tasks WHERE id = ?", ("state",)),
        ("SELECT e.status, h.status FROM experiments e JOIN hosts h USING (host)", ("state",)),
        ("SELECT count(*) FROM Events", ("state", "log")),
        ("SELECT * FROM experiments JOIN experiment_runs USING (task, n, attempt)", ("state", "log")),
        ("SELECT * FROM log.gpu_samples", ("state", "log")),
        ("SELECT seq FROM positions", ("state", "log")),
        ("SELECT 'dead_letters' AS label FROM tasks", ("state", "log")),  # a word anywhere: waits for both, never too little
    ],
)
def test_min_seq_waits_for_the_lanes_whose_tables_a_query_names(sql, lanes):
    assert answer.lanes_for(sql) == lanes
