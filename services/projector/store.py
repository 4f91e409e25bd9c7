"""The DuckDB adapter: open the read model, write one batch of Changes per transaction, read it back.

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

import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import duckdb
import pyarrow as pa

from autotune.projector import expand
from autotune.projector import schema as sc
from autotune.projector.views import Changes, Position

CONFIG = {
    "enable_external_access": False,
    "python_enable_replacements": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
}


_SOURCES = {name: pa.schema([pa.field(c, sc.ARROW[t]) for c, t in cols]) for name, cols in expand.SOURCES.items()}


def _arrow(schema: pa.Schema, columns: list) -> pa.Table:
    return pa.Table.from_arrays([pa.array(c, type=f.type) for c, f in zip(columns, schema, strict=False)], schema=schema)


def _key_schema(table: sc.Table) -> pa.Schema:
    return pa.schema([table.arrow.field(k) for k in table.key])


_SAFE = re.compile(r"^[A-Za-z0-9_.:-]{0,200}$")


def _delete_keys(p: Prepared, table: sc.Table, keys: list[tuple]) -> str:
    """DELETE the stored versions of `keys`. Few plain keys go in as literals (DuckDB statements
    have a fixed cost here, registering an Arrow table is another); others through Arrow."""
    cols = ", ".join(f'"{k}"' for k in table.key)
    if len(keys) <= 256 and all(type(v) is int or (type(v) is str and _SAFE.match(v)) for key in keys for v in key):
        lit = ", ".join("(" + ", ".join(f"'{v}'" if type(v) is str else str(v) for v in key) + ")" for key in keys)
        return f"DELETE FROM {table.name} WHERE ({cols}) IN ({lit})"
    src = f"_del_{table.name}"
    p.add(src, _arrow(_key_schema(table), list(zip(*keys, strict=False))))
    on = " AND ".join(f'{table.name}."{k}" = {src}."{k}"' for k in table.key)
    return f"DELETE FROM {table.name} USING {src} WHERE {on}"


class Prepared:
    """A batch ready to commit: Arrow tables to register and the statements that read them."""

    def __init__(self) -> None:
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
    """One open read-model file: the writer connection and a pool of query cursors."""

    def __init__(self, path: str, *, cursors: int = 4, read_only: bool = False, checkpoint_max_mb: int = 0, threads: int = 0) -> None:
        self.path = path
        if not read_only:
            os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        config = dict(CONFIG)
        if checkpoint_max_mb:  # the writer checkpoints when it suits it (Projector._checkpoint); DuckDB only past this
            config["checkpoint_threshold"] = f"{checkpoint_max_mb}MB"
        if threads:
            config["threads"] = threads
        self.conn = duckdb.connect(path, read_only=read_only, config=config)
        self.conn.execute("SET GLOBAL TimeZone = 'UTC'")  # results in UTC whatever the host's zone
        self.conn.execute("SET lock_configuration = true")
        try:
            if not read_only:
                self._ensure_schema()
            else:
                self._check_version()
        except BaseException:
            self.conn.close()
            raise
        self._loader = self.conn.cursor()
        self._cursors = [self.conn.cursor() for _ in range(cursors)]
        self._writers: list[duckdb.DuckDBPyConnection] = []
        self._free = list(self._cursors)
        self._lock = threading.Lock()
        self._gate = _Gate()

    # --- schema ----------------------------------------------------------------------------------

    def _ensure_schema(self) -> None:
        existing = {r[0] for r in self.conn.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        if sc.META.name in existing:
            self._check_version()
            return
        if existing:
            raise SchemaMismatch(f"{self.path} holds tables the projector did not create; point --db at another file")
        self.conn.begin()
        for t in sc.SCHEMA:
            self.conn.execute(t.ddl())
        self.conn.execute(f"INSERT INTO {sc.META.name} VALUES ('schema_version', ?)", [str(sc.SCHEMA_VERSION)])
        self.conn.commit()

    def _check_version(self) -> None:
        try:
            rows = self.conn.execute(f"SELECT value FROM {sc.META.name} WHERE key = 'schema_version'").fetchall()
            row = rows[0] if rows else None
        except duckdb.CatalogException:
            row = None
        if row is None or row[0] != str(sc.SCHEMA_VERSION):
            found = row[0] if row else "none"
            raise SchemaMismatch(
                f"{self.path} was built by projector schema v{found}; this projector writes v{sc.SCHEMA_VERSION}: "
                "run `autotune projector rebuild` (the log is the truth; the file is rebuilt from it)"
            )

    # --- reading state -----------------------------------------------------------------------------

    def writer(self) -> duckdb.DuckDBPyConnection:
        """Another writer connection (the main one is `conn`), closed with the store."""
        cur = self.conn.cursor()
        self._writers.append(cur)
        return cur

    def positions(self, conn: duckdb.DuckDBPyConnection | None = None) -> dict[str, Position]:
        rows = self._fetch(conn or self.conn, f"SELECT * FROM {sc.POSITIONS.name}").to_pylist()
        return {r["stream"]: Position(**r) for r in rows}

    def is_empty(self, conn: duckdb.DuckDBPyConnection | None = None) -> bool:
        conn = conn or self.conn
        return all(conn.execute(f"SELECT count(*) FROM {t.name}").fetchall()[0][0] == 0 for t in sc.UPSERTED)

    def load(self, table: sc.Table, keys: list[tuple]) -> list[dict]:
        """The stored rows of `keys` (the ViewState loader). Uses its own cursor: it runs while the
        writer connection may be committing the previous batch in another thread."""
        if not keys:
            return []
        cur = self._loader
        cur.register("_keys", _arrow(_key_schema(table), list(zip(*keys, strict=False))))
        try:
            on = " AND ".join(f't."{k}" = k."{k}"' for k in table.key)
            return self._fetch(cur, f"SELECT t.* FROM {table.name} t SEMI JOIN _keys k ON {on}").to_pylist()
        finally:
            cur.unregister("_keys")

    @staticmethod
    def _fetch(conn: duckdb.DuckDBPyConnection, sql: str) -> pa.Table:
        return conn.sql(sql).to_arrow_table()

    # --- writing -----------------------------------------------------------------------------------

    @staticmethod
    def prepare(ch: Changes) -> Prepared:
        """Turn a batch's Changes into Arrow tables and the statements that write them (Python
        work, done while the previous batch commits)."""
        p = Prepared()
        for table in sc.UPSERTED:
            rows = ch.upserts[table.name]
            if not rows:
                continue
            replace = ch.replace[table.name]
            if replace:
                p.sql.append(_delete_keys(p, table, replace))
            src = f"_up_{table.name}"
            p.add(src, _arrow(table.arrow, [[r[c] for r in rows.values()] for c in table.names]))
            p.sql.append(f"INSERT INTO {table.name} SELECT * FROM {src}")
        for table, rows in ((sc.DEAD_LETTERS, ch.dead_letters), (sc.EXPERIMENT_RUNS, ch.experiment_runs)):
            if rows:
                p.add(f"_new_{table.name}", _arrow(table.arrow, list(zip(*rows, strict=False))))
                p.sql.append(f"INSERT INTO {table.name} SELECT * FROM _new_{table.name}")
        for source, rows, sql in (
            (expand.EVENTS_SOURCE, ch.events, expand.EVENTS_SQL),
            (expand.GPU_SOURCE, ch.gpu_samples, expand.GPU_SQL),
            (expand.LOG_SOURCE, ch.log_lines, expand.LOGS_SQL),
            (expand.SOURCE, ch.metrics, expand.SAMPLES_SQL),
        ):
            if rows:
                p.add(source, _arrow(_SOURCES[source], list(zip(*rows, strict=False))))
                p.sql.append(sql)
        if ch.positions:
            rows = [x.row() for x in ch.positions.values()]
            p.sql.append(_delete_keys(p, sc.POSITIONS, [(r[0],) for r in rows]))
            if all(_SAFE.match(r[0]) for r in rows):  # a handful of rows: literals skip a registration
                p.sql.append(
                    f"INSERT INTO {sc.POSITIONS.name} VALUES " + ", ".join(f"('{r[0]}', {r[1]}, {r[2]}, {r[3]}, {r[4]})" for r in rows)
                )
            else:
                p.add("_positions", _arrow(sc.POSITIONS.arrow, list(zip(*rows, strict=False))))
                p.sql.append(f"INSERT INTO {sc.POSITIONS.name} SELECT * FROM _positions")
        return p

    def commit(self, p: Prepared, conn: duckdb.DuckDBPyConnection | None = None) -> None:
        """Write a prepared batch in one transaction on `conn` (a writer's connection): its rows
        and its positions land together, or nothing does."""
        conn = conn or self.conn
        for name, table in p.sources:
            conn.register(name, table)
        try:
            with self._gate.shared():
                conn.begin()
                try:
                    for sql in p.sql:
                        conn.execute(sql)
                    conn.commit()
                except BaseException:
                    conn.rollback()
                    raise
        finally:
            for name, _ in p.sources:
                conn.unregister(name)

    def write(self, ch: Changes, conn: duckdb.DuckDBPyConnection | None = None) -> None:
        self.commit(self.prepare(ch), conn)

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

    def checkpoint(self, conn: duckdb.DuckDBPyConnection | None = None, *, above_bytes: int = 0) -> bool:
        """Checkpoint when no writer is in a transaction (and the log is still above
        `above_bytes` by then: another writer may just have done it). True if it did."""
        with self._gate.exclusive():
            if self.wal_bytes() < above_bytes:
                return False
            (conn or self.conn).execute("CHECKPOINT")
            return True

    def wal_bytes(self) -> int:
        try:
            return os.path.getsize(self.path + ".wal")
        except OSError:
            return 0

    def close(self) -> None:
        for c in [self._loader, *self._cursors, *self._writers]:
            try:
                c.close()
            except duckdb.Error:
                pass
        self.conn.close()


def checksums(conn: duckdb.DuckDBPyConnection) -> dict[str, tuple[int, str]]:
    """Per table and view: row count and an md5 over every row in a canonical order (rebuild ==
    incremental)."""
    out = {}
    for t in sc.SCHEMA:
        n, digest = conn.execute(
            f"SELECT count(*), coalesce(md5(string_agg(r, chr(10) ORDER BY r)), '') FROM (SELECT CAST(x AS VARCHAR) AS r FROM {t.name} x)"
        ).fetchall()[0]
        out[t.name] = (n, digest)
    return out


def write_snapshot(cur: duckdb.DuckDBPyConnection, path: str, *, overwrite: bool = False) -> dict[str, int]:
    """Copy every table, as of one transaction, into a new DuckDB file anyone can open (the views
    too, so `tasks` and `hosts` read the same there).

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
        for t in sc.SCHEMA:
            out.execute(t.ddl())
        cur.begin()
        try:
            for t in sc.ALL:
                reader = cur.sql(f"SELECT * FROM {t.name}").to_arrow_reader(65536)
                out.register("_src", reader)
                out.execute(f"INSERT INTO {t.name} SELECT * FROM _src")
                out.unregister("_src")
        finally:
            cur.rollback()
        for t in sc.SCHEMA:
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
