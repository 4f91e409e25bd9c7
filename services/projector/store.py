"""The DuckDB adapter: open the read model, write one batch of Changes per transaction, read it back.

The read model is two files (schema.py): the main file (state) and the log file beside it
(`<db>.log`, attached as `log`). A transaction writes one of them (DuckDB allows no more), so each
lane writes one file; each file has its own checkpoints, and a writer waits only for its own
file's.

Writes are columnar: each table's rows become one Arrow table inserted with a single statement
(executemany is ~100x slower). Upserted rows are replaced by DELETE of the stored version + INSERT.
Each writer (the projector has two lanes, see service.py) has its own connection, used from one
thread at a time; their transactions touch disjoint rows (appends, their own positions), so they
commit side by side. Queries and snapshots use their own cursors (DuckDB MVCC: each sees a
consistent snapshot and never blocks a writer).

The database refuses file and network access (`enable_external_access=false`), Python replacement
scans and configuration changes from the moment it opens, so no query can reach outside it.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import duckdb
import pyarrow as pa

from autotune.projector import payload_sql
from autotune.projector import schema as sc
from autotune.projector.view_state import Changes, Position
from autotune.projector.views import EVENTS as EVENTS_STREAM
from autotune.projector.views import TERMINAL_TYPES
from autotune.schemas.subjects import LOGS_STREAM, TELEMETRY_STREAM

CONFIG = {  # and enable_external_access=false, once the log file is attached
    "python_enable_replacements": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
}


_SOURCES = {name: pa.schema([pa.field(c, sc.ARROW[t]) for c, t in cols]) for name, cols in payload_sql.SOURCES.items()}


def _arrow(schema: pa.Schema, columns: list) -> pa.Table:
    return pa.Table.from_arrays([pa.array(c, type=f.type) for c, f in zip(columns, schema, strict=False)], schema=schema)


def _key_schema(table: sc.Table) -> pa.Schema:
    return pa.schema([table.arrow.field(k) for k in table.key])


def log_path(path: str) -> str:
    """The log file that belongs to the read model at `path`."""
    return path + ".log"


def files(path: str) -> list[str]:
    """Every file of the read model at `path` (its two databases and their write-ahead logs)."""
    return [path, path + ".wal", log_path(path), log_path(path) + ".wal"]


def replace_files(new: str, path: str) -> None:
    """Rename the read model at `new` over the one at `path` (neither open): the log file first,
    then the main file, whose generation the log file's must match (a pair cut apart by a crash
    in between is set aside and rebuilt on open). A stale write-ahead log is never replayed."""
    for f in (path + ".wal", log_path(path) + ".wal"):  # a clean close leaves none
        with contextlib.suppress(FileNotFoundError):
            os.remove(f)
    os.replace(log_path(new), log_path(path))
    os.replace(new, path)


@contextmanager
def _keys_in(conn: duckdb.DuckDBPyConnection, table: sc.Table, keys: list[tuple]) -> Iterator[None]:
    """`keys` (of `table`'s key columns) readable as `_keys` on `conn` meanwhile."""
    conn.register("_keys", _arrow(_key_schema(table), list(zip(*keys, strict=False))))
    try:
        yield
    finally:
        conn.unregister("_keys")


_SAFE = re.compile(r"^[A-Za-z0-9_.:-]{0,200}$")


def _delete_keys(p: Prepared, table: sc.Table, keys: list[tuple]) -> str:
    """DELETE the stored versions of `keys`. Few plain keys go in as literals (DuckDB statements
    have a fixed cost here, registering an Arrow table is another); others through Arrow."""
    cols = ", ".join(f'"{k}"' for k in table.key)
    if len(keys) <= 256 and all(type(v) is int or (type(v) is str and _SAFE.match(v)) for key in keys for v in key):
        lit = ", ".join("(" + ", ".join(f"'{v}'" if type(v) is str else str(v) for v in key) + ")" for key in keys)
        return f"DELETE FROM {table.ref} WHERE ({cols}) IN ({lit})"
    src = f"_del_{table.name}"
    p.add(src, _arrow(_key_schema(table), list(zip(*keys, strict=False))))
    on = " AND ".join(f't."{k}" = {src}."{k}"' for k in table.key)
    return f"DELETE FROM {table.ref} t USING {src} WHERE {on}"


class Prepared:
    """A batch ready to commit: Arrow tables to register and the statements that read them, and
    the file (`db`) they write."""

    def __init__(self, db: str = "main") -> None:
        self.db = db
        self.sources: list[tuple[str, pa.Table]] = []
        self.sql: list[str] = []
        self.apply_ms = 0.0

    def add(self, name: str, table: pa.Table) -> None:
        self.sources.append((name, table))


class SchemaMismatch(RuntimeError):
    pass


class _Gate:
    """Writers' transactions share it; a checkpoint has it alone (DuckDB documents that CHECKPOINT
    fails while other transactions run; the writers' own, at least, are never open then)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._writers = 0
        self._exclusive = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._writers += 1
        try:
            yield
        finally:
            with self._cond:
                self._writers -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._exclusive = True
            while self._writers:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class Store:
    """One open read model (the main file, the log file attached): writer connections, a pool of
    query cursors."""

    def __init__(self, path: str, *, cursors: int = 4, read_only: bool = False, checkpoint_max_mb: int = 0, threads: int = 0) -> None:
        self.path = path
        self.log_path = log_path(path)
        if not read_only:
            os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        config = dict(CONFIG)
        if checkpoint_max_mb:  # the writer checkpoints when it suits it (Projector._checkpoint); DuckDB only past this
            config["checkpoint_threshold"] = f"{checkpoint_max_mb}MB"
        if threads:
            config["threads"] = threads
        self.conn = duckdb.connect(path, read_only=read_only, config=config)
        try:
            if read_only and not os.path.exists(self.log_path):
                raise SchemaMismatch(f"{path} has no log file beside it ({self.log_path}): it was built by another projector version")
            mode = " (READ_ONLY)" if read_only else ""
            self.conn.execute(f"ATTACH '{_quote(self.log_path)}' AS {sc.LOG_DB}{mode}")
            self.conn.execute("SET enable_external_access = false")  # from here on, no file or network access
            self.conn.execute("SET GLOBAL TimeZone = 'UTC'")  # results in UTC whatever the host's zone
            self.conn.execute("SET lock_configuration = true")
            if not read_only:
                self._ensure_schema()
            else:
                self._check_version()
        except BaseException:
            self.conn.close()
            raise
        self._cursors = [self.conn.cursor() for _ in range(cursors)]
        self._writers: list[duckdb.DuckDBPyConnection] = []
        self._free = list(self._cursors)
        self._lock = threading.Lock()
        self._gates = {"main": _Gate(), sc.LOG_DB: _Gate()}

    # --- schema ----------------------------------------------------------------------------------

    def _tables(self, db: str) -> set[str]:
        rows = self.conn.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = ?", [db]).fetchall()
        return {r[0] for r in rows}

    def _ensure_schema(self) -> None:
        main, logs = self._tables(self.conn.execute("SELECT current_database()").fetchall()[0][0]), self._tables(sc.LOG_DB)
        if sc.META.name in main:
            self._check_version()
            return
        if main or logs:
            raise SchemaMismatch(
                f"{self.path} or {self.log_path} holds tables the projector did not create (or a build that was cut short); "
                "point --db at another file"
            )
        generation = uuid.uuid4().hex  # the same in both files: a pair that does not belong together is rebuilt
        for tables, meta in ((sc.LOG_TABLES, sc.LOG_META), ((*sc.MAIN_TABLES, *sc.VIEWS), sc.META)):
            self.conn.begin()  # one transaction per file (DuckDB writes one file per transaction); main last: its meta marks both done
            for t in tables:
                self.conn.execute(t.ddl())
            self.conn.execute(f"INSERT INTO {meta.ref} VALUES ('schema_version', ?), ('generation', ?)", [str(sc.SCHEMA_VERSION), generation])
            # each lane of AUTOTUNE_EVENTS has its position row from the start: `positions` (the lowest) never runs ahead of one that has not committed yet
            positions = sc.STATE_POSITIONS if meta is sc.META else sc.POSITIONS
            self.conn.execute(f"INSERT INTO {positions.ref} VALUES (?, 0, 0, 0, 0)", [EVENTS_STREAM])
            self.conn.commit()

    def _check_version(self) -> None:
        found = {}
        for meta in (sc.META, sc.LOG_META):
            try:
                found[meta.ref] = dict(self.conn.execute(f"SELECT key, value FROM {meta.ref}").fetchall())
            except duckdb.CatalogException:
                found[meta.ref] = {}
        main, logs = found[sc.META.ref], found[sc.LOG_META.ref]
        version = main.get("schema_version", "none")
        if version != str(sc.SCHEMA_VERSION):
            raise SchemaMismatch(
                f"{self.path} was built by projector schema v{version}; this projector writes v{sc.SCHEMA_VERSION}: "
                "run `autotune projector rebuild` (the log is the truth; the file is rebuilt from it)"
            )
        if logs.get("generation") != main.get("generation") or logs.get("schema_version") != version:
            raise SchemaMismatch(
                f"{self.log_path} does not belong to {self.path} (another build's log file): "
                "run `autotune projector rebuild` (the log is the truth; the files are rebuilt from it)"
            )

    # --- reading state -----------------------------------------------------------------------------

    def writer(self) -> duckdb.DuckDBPyConnection:
        """Another connection for a writer (or its loader), closed with the store."""
        cur = self.conn.cursor()
        self._writers.append(cur)
        return cur

    def positions(self, conn: duckdb.DuckDBPyConnection | None = None, table: sc.Table = sc.POSITIONS) -> dict[str, Position]:
        """The positions one lane kept (`table`: sc.POSITIONS for the log lanes, sc.STATE_POSITIONS)."""
        rows = self._fetch(conn or self.conn, f"SELECT * FROM {table.ref}").to_pylist()
        return {r["stream"]: Position(**r) for r in rows}

    def is_empty(self, conn: duckdb.DuckDBPyConnection | None = None, tables: tuple[sc.Table, ...] = sc.UPSERTED) -> bool:
        conn = conn or self.conn
        return all(conn.execute(f"SELECT count(*) FROM {t.ref}").fetchall()[0][0] == 0 for t in tables)

    def load(self, table: sc.Table, keys: list[tuple], conn: duckdb.DuckDBPyConnection) -> list[dict]:
        """The stored rows of `keys` (a ViewState loader). On the lane's own loader connection: it
        runs while the lane's writer may be committing the previous batch in another thread."""
        if not keys:
            return []
        on = " AND ".join(f't."{k}" = k."{k}"' for k in table.key)
        with _keys_in(conn, table, keys):
            return self._fetch(conn, f"SELECT {table.select('t')} FROM {table.ref} t SEMI JOIN _keys k ON {on}").to_pylist()

    def keys(self, conn: duckdb.DuckDBPyConnection, limit: int) -> dict[str, set[tuple]] | None:
        """Every stored key of the upserted tables (ViewState `stored`), or None past `limit` keys."""
        if sum(conn.execute(f"SELECT count(*) FROM {t.ref}").fetchall()[0][0] for t in sc.UPSERTED) > limit:
            return None
        cols = {t.name: ", ".join(f'"{k}"' for k in t.key) for t in sc.UPSERTED}
        return {t.name: set(conn.execute(f"SELECT {cols[t.name]} FROM {t.ref}").fetchall()) for t in sc.UPSERTED}

    def finished(self, conn: duckdb.DuckDBPyConnection, limit: int) -> list[tuple] | None:
        """Every attempt (task, n, attempt) with a terminal event stored, or None past `limit`."""
        sql = f"SELECT DISTINCT task, n, attempt FROM {sc.EVENTS.ref} WHERE known AND type IN ? LIMIT {limit + 1}"
        rows = conn.execute(sql, [list(TERMINAL_TYPES)]).fetchall()
        return rows if len(rows) <= limit else None

    def load_finished(self, keys: list[tuple], conn: duckdb.DuckDBPyConnection) -> list[tuple]:
        """Which of the attempts `keys` (task, n, attempt) have a terminal event stored (the log
        lane's ViewState.finished_loader)."""
        if not keys:
            return []
        with _keys_in(conn, sc.EXPERIMENTS, keys):
            return conn.execute(
                f"SELECT DISTINCT e.task, e.n, e.attempt FROM {sc.EVENTS.ref} e SEMI JOIN _keys k "
                "ON e.task = k.task AND e.n = k.n AND e.attempt = k.attempt WHERE e.known AND e.type IN ?",
                [list(TERMINAL_TYPES)],
            ).fetchall()

    @staticmethod
    def _fetch(conn: duckdb.DuckDBPyConnection, sql: str) -> pa.Table:
        return conn.sql(sql).to_arrow_table()

    # --- writing -----------------------------------------------------------------------------------

    @staticmethod
    def prepare(ch: Changes, db: str = sc.LOG_DB) -> Prepared:
        """Turn a batch's Changes into Arrow tables and the statements that write them (Python
        work, done while the previous batch commits). `db`: the file the lane writes (the state
        lane: "main", its rows; the others: the log file, its appends)."""
        p = Prepared(db)
        positions, dead_letters = (sc.STATE_POSITIONS, sc.STATE_DEAD_LETTERS) if db == "main" else (sc.POSITIONS, sc.DEAD_LETTERS)
        for table in sc.UPSERTED:
            rows = ch.upserts[table.name]
            if not rows:
                continue
            replace = ch.replace[table.name]
            if replace:
                p.sql.append(_delete_keys(p, table, replace))
            src = f"_up_{table.name}"
            p.add(src, _arrow(table.arrow, table.values(list(rows.values()))))
            p.sql.append(f"INSERT INTO {table.ref} SELECT * FROM {src}")
        for table, rows in ((dead_letters, ch.dead_letters), (sc.EXPERIMENT_RUNS, ch.experiment_runs)):
            if rows:
                p.add(f"_new_{table.name}", _arrow(table.arrow, list(zip(*rows, strict=False))))
                p.sql.append(f"INSERT INTO {table.ref} SELECT * FROM _new_{table.name}")
        for source, rows, sql in (
            (payload_sql.EVENTS_SOURCE, ch.events, payload_sql.EVENTS_SQL),
            (payload_sql.GPU_SOURCE, ch.gpu_samples, payload_sql.GPU_SQL),
            (payload_sql.LOG_SOURCE, ch.log_lines, payload_sql.LOGS_SQL),
            (payload_sql.SOURCE, ch.metrics, payload_sql.SAMPLES_SQL),
        ):
            if rows:
                p.add(source, _arrow(_SOURCES[source], list(zip(*rows, strict=False))))
                p.sql.append(sql)
        if ch.positions:
            rows = [x.row() for x in ch.positions.values()]
            p.sql.append(_delete_keys(p, positions, [(r[0],) for r in rows]))
            if all(_SAFE.match(r[0]) for r in rows):  # a handful of rows: literals skip a registration
                p.sql.append(
                    f"INSERT INTO {positions.ref} VALUES " + ", ".join(f"('{r[0]}', {r[1]}, {r[2]}, {r[3]}, {r[4]})" for r in rows)
                )
            else:
                p.add("_positions", _arrow(positions.arrow, list(zip(*rows, strict=False))))
                p.sql.append(f"INSERT INTO {positions.ref} SELECT * FROM _positions")
        return p

    def prune(self, conn: duckdb.DuckDBPyConnection, first_seqs: dict[str, int]) -> dict[str, int]:
        """Delete the gpu_samples and log_lines rows whose messages their stream no longer holds
        (`first_seqs`: each stream's first sequence; its max age drops older ones), in one
        transaction on the telemetry lane's connection. The file then holds what a rebuild would."""
        out: dict[str, int] = {}
        with self._gates[sc.LOG_DB].shared():
            conn.begin()
            try:
                for table, stream in ((sc.GPU_SAMPLES, TELEMETRY_STREAM), (sc.LOG_LINES, LOGS_STREAM)):
                    first = first_seqs.get(stream, 0)
                    out[table.name] = conn.execute(f"DELETE FROM {table.ref} WHERE seq < ?", [first]).fetchall()[0][0] if first > 1 else 0
                conn.commit()
            except BaseException:
                with contextlib.suppress(duckdb.Error):
                    conn.rollback()
                raise
        return out

    def commit(self, p: Prepared, conn: duckdb.DuckDBPyConnection | None = None) -> None:
        """Write a prepared batch in one transaction on `conn` (a writer's connection): its rows
        and its positions land together, or nothing does."""
        conn = conn or self.conn
        for name, table in p.sources:
            conn.register(name, table)
        try:
            with self._gates[p.db].shared():
                # one call for the whole transaction: each call into DuckDB gives up the GIL and
                # takes it back, and live, with the other lanes' Python threads holding it about a
                # fifth of the time, each taking back can wait. A live state batch of 12 events
                # beside a thread busy in Python: commit p50 12.8-13.6 -> 11.3-11.4 ms (alone: equal)
                try:
                    conn.execute("; ".join(["BEGIN", *p.sql, "COMMIT"]))
                except BaseException:
                    with contextlib.suppress(duckdb.Error):  # none open if the COMMIT itself failed
                        conn.rollback()
                    raise
        finally:
            for name, _ in p.sources:
                conn.unregister(name)

    def write(self, ch: Changes, conn: duckdb.DuckDBPyConnection | None = None, db: str = sc.LOG_DB) -> None:
        self.commit(self.prepare(ch, db), conn)

    # --- cursors for queries ---------------------------------------------------------------------------

    @contextmanager
    def cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A query cursor from the pool (the caller bounds concurrency to the pool size)."""
        with self._lock:
            cur = self._free.pop() if self._free else self.conn.cursor()
        try:
            yield cur
        finally:
            with self._lock:
                self._free.append(cur)

    def checkpoint(self, conn: duckdb.DuckDBPyConnection | None = None, *, db: str = "main", above_bytes: int = 0) -> bool:
        """Checkpoint file `db` when none of its writers is in a transaction (and its log is still
        above `above_bytes` by then: another writer may just have done it). True if it did."""
        with self._gates[db].exclusive():
            if self.wal_bytes(db) < above_bytes:
                return False
            (conn or self.conn).execute("CHECKPOINT" if db == "main" else f"CHECKPOINT {db}")
            return True

    def wal_bytes(self, db: str = "main") -> int:
        try:
            return os.path.getsize((self.path if db == "main" else self.log_path) + ".wal")
        except OSError:
            return 0

    def close(self) -> None:
        for c in [*self._cursors, *self._writers]:
            try:
                c.close()
            except duckdb.Error:
                pass
        self.conn.close()


def _quote(path: str) -> str:
    return path.replace("'", "''")


def checksums(conn: duckdb.DuckDBPyConnection) -> dict[str, tuple[int, str]]:
    """Per table and view: row count and an md5 over every row in a canonical order (rebuild ==
    incremental)."""
    out = {}
    for t in sc.CHECKED:
        ref = getattr(t, "ref", t.name)
        n, digest = conn.execute(
            f"SELECT count(*), coalesce(md5(string_agg(r, chr(10) ORDER BY r)), '') FROM (SELECT CAST(x AS VARCHAR) AS r FROM {ref} x)"
        ).fetchall()[0]
        out[ref] = (n, digest)
    return out


SNAPSHOT_VIEWS = (sc.EXPERIMENTS_VIEW, sc.TASKS_VIEW, sc.HOSTS_VIEW)


def write_snapshot(cur: duckdb.DuckDBPyConnection, path: str, *, overwrite: bool = False) -> dict[str, int]:
    """Copy every table, as of one transaction, into a new DuckDB file anyone can open (the views
    too, so `experiments`, `tasks` and `hosts` read the same there).

    The copy goes through Arrow into a separate DuckDB instance: the projection's own database
    never gets file access. Written beside `path` and renamed into place, so a reader never sees a
    half-written file. Returns the row count of each table and view.
    """
    path = os.path.abspath(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; choose another path or pass overwrite")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
    counts: dict[str, int] = {}
    out = duckdb.connect(tmp)
    try:
        for t in (*sc.SNAPSHOT, *SNAPSHOT_VIEWS):
            out.execute(t.ddl())
        cur.begin()
        try:
            for t in sc.SNAPSHOT:
                reader = cur.sql(f"SELECT * FROM {t.name}").to_arrow_reader(65536)
                out.register("_src", reader)
                out.execute(f"INSERT INTO {t.name} SELECT * FROM _src")
                out.unregister("_src")
        finally:
            cur.rollback()
        for t in (*sc.SNAPSHOT, *SNAPSHOT_VIEWS):
            counts[t.name] = out.execute(f"SELECT count(*) FROM {t.name}").fetchall()[0][0]
        out.close()
        os.replace(tmp, path)
    except BaseException:
        out.close()
        for f in (tmp, tmp + ".wal"):
            if os.path.exists(f):
                os.remove(f)
        raise
    return counts
