"""The read model: every table the projector writes, its columns and their DuckDB and Arrow types,
and the views derived from them.

One list per table drives the DDL, the columnar writes and the snapshot copy, so they cannot drift.
Bump SCHEMA_VERSION whenever a column or a view changes: a database built by another version is
set aside and rebuilt from the log (the log is the truth; the file is disposable).

`tasks` and `hosts` are views. What an experiment event changes about its task (the counters, the
best experiment so far) and its host (running attempts, busy) is derived from `experiments` when
queried, not written: an experiment event then writes its own row and nothing else (a live
commit: 7 statements instead of 11; README "Performance"). `experiments` is a view too, over
experiment_rows, which keeps the 28 metric columns in one DOUBLE[] (EXPERIMENTS_VIEW: why).

Two files. The main file (`autotune.duckdb`) holds the state: task_rows, experiment_rows, host_rows,
the state lane's position and dead letters. The log file beside it (`autotune.duckdb.log`,
attached as `log`) holds what only grows: events, experiment_runs, request_samples, gpu_samples,
log_lines, dead letters and the log lanes' positions. DuckDB checkpoints each file on its own, and
a checkpoint stalls the commits of its own file only (measured on 2.0: a commit beside an 843 ms
checkpoint of the other file took at most 40 ms; beside one of its own file, 867 ms), so the
log's large checkpoints never hold up the state people poll. Views in the main file give every
table its public name (`events`, `dead_letters`, `positions`, ...).
"""

from __future__ import annotations

import pyarrow as pa

from autotune.schemas.status import EXPERIMENT_ON_HOST, sql_list

SCHEMA_VERSION = 10  # v10: experiment_rows.engine_steps and engine_scrape_failures (the engine's forward passes; failed scrapes)

ARROW = {
    "VARCHAR": pa.string(),
    "JSON": pa.string(),
    "BIGINT": pa.int64(),
    "INTEGER": pa.int32(),
    "DOUBLE": pa.float64(),
    "BOOLEAN": pa.bool_(),
    "TIMESTAMPTZ": pa.timestamp("us", tz="UTC"),
    "BLOB": pa.binary(),
    "BIGINT[]": pa.list_(pa.int64()),
    "VARCHAR[]": pa.list_(pa.string()),
    "DOUBLE[]": pa.list_(pa.float64()),
}


LOG_DB = "log"  # the alias the second file (the log tables) is attached under


class Table:
    """A table: name, (column, DuckDB type) pairs, the key of upserted tables, a one-line purpose,
    and the file it lives in (`db`: "main", the state file, or LOG_DB); `ref` names it from a
    connection to the main file."""

    def __init__(
        self,
        name: str,
        columns: list[tuple[str, str]],
        key: tuple[str, ...] = (),
        doc: str = "",
        db: str = "main",
        packed: tuple[str, tuple[str, ...]] | None = None,
    ) -> None:
        self.name = name
        self.db = db
        self.ref = name if db == "main" else f"{db}.{name}"
        self.columns = columns  # what a row holds (and a view over the table shows)
        self.names = [c for c, _ in columns]
        self.key = key
        self.doc = doc
        self.index = {c: i for i, c in enumerate(self.names)}
        # `packed` (list column, its DOUBLE columns): stored as one DOUBLE[] column, since a
        # commit costs per column (Packed below); a view gives them back their names
        self.packed = packed
        stored = [(c, t) for c, t in columns if not packed or c not in packed[1]]
        if packed:
            assert all(dict(columns)[c] == "DOUBLE" for c in packed[1]), "only DOUBLE columns pack into a DOUBLE[]"
            stored.append((packed[0], "DOUBLE[]"))
        self.stored = stored  # the columns the table has
        self.arrow = pa.schema([pa.field(c, ARROW[t]) for c, t in stored])

    def ddl(self, qualified: bool = True) -> str:
        cols = ",\n  ".join(f'"{c}" {t}' for c, t in self.stored)
        return f"CREATE TABLE IF NOT EXISTS {self.ref if qualified else self.name} (\n  {cols}\n)"

    def empty_row(self) -> dict:
        return dict.fromkeys(self.names)

    def values(self, rows: list[dict]) -> list[list]:
        """Rows (dicts of `columns`) as the stored columns' values, in order. A packed column is
        NULL while all its values are (an attempt that has no results yet)."""
        out = [[r[c] for r in rows] for c, _ in (self.stored[:-1] if self.packed else self.stored)]
        if self.packed:
            names = self.packed[1]
            lists = [[r[c] for c in names] for r in rows]
            out.append([v if any(x is not None for x in v) else None for v in lists])
        return out

    def select(self, alias: str = "") -> str:
        """The SELECT list that reads rows of `columns` back from the stored ones."""
        p = f"{alias}." if alias else ""
        if not self.packed:
            return f"{p}*"
        pos = {c: i for i, c in enumerate(self.packed[1], start=1)}
        return ", ".join(f'{p}"{self.packed[0]}"[{pos[c]}] AS "{c}"' if c in pos else f'{p}"{c}"' for c in self.names)


def _stats(prefix: str) -> list[tuple[str, str]]:
    return [(f"{prefix}_{s}", "BIGINT" if s == "count" else "DOUBLE") for s in STATS_FIELDS]


STATS_FIELDS = ("count", "min", "max", "mean", "stddev", "p25", "p50", "p75", "p90", "p95", "p99")
RUN_STATS = ("ttft", "tpot", "e2e_latency", "output_latency", "output_speed", "input_tokens", "output_tokens")

# ExperimentMetrics fields copied onto the experiment row under the same names
HEADLINE = (
    "mean_e2e_latency", "p50_e2e_latency", "p90_e2e_latency", "p99_e2e_latency",
    "mean_ttft", "p50_ttft", "p90_ttft", "p99_ttft",
    "mean_tpot", "p50_tpot", "p90_tpot", "p99_tpot",
    "mean_output_tps", "max_output_tps", "mean_total_tps", "max_total_tps",
    "mean_output_tps_per_gpu", "max_output_tps_per_gpu", "mean_total_tps_per_gpu", "max_total_tps_per_gpu",
    "requests_per_s", "success_rate", "error_rate",
)  # fmt: skip
TELEMETRY = ("mean_util_gpu", "max_util_gpu", "max_memory_used_mib", "mean_power_w", "max_temperature_c")
# the engine's own /metrics during the benchmark (events.EngineMetricsSummary, under an engine_ prefix)
ENGINE = (
    "engine_mean_running", "engine_max_running", "engine_mean_waiting", "engine_max_waiting", "engine_mean_kv_cache_usage",
    "engine_max_kv_cache_usage", "engine_preemptions", "engine_prompt_tokens", "engine_generation_tokens", "engine_steps",
)  # fmt: skip

EVENTS = Table(
    "events",
    [
        ("stream", "VARCHAR"), ("seq", "BIGINT"), ("stored_at", "TIMESTAMPTZ"), ("subject", "VARCHAR"),
        ("id", "VARCHAR"), ("type", "VARCHAR"), ("known", "BOOLEAN"),
        ("task", "VARCHAR"), ("n", "BIGINT"), ("attempt", "BIGINT"), ("host", "VARCHAR"),
        ("at", "TIMESTAMPTZ"), ("payload", "JSON"),
    ],
    doc="every AUTOTUNE_EVENTS message, and messages of unknown type from any stream",
    db=LOG_DB,
)  # fmt: skip

TASKS = Table(
    "task_rows",
    [
        ("id", "VARCHAR"), ("name", "VARCHAR"), ("status", "VARCHAR"),
        ("strategy", "VARCHAR"), ("objective", "VARCHAR"), ("engine", "VARCHAR"), ("model", "VARCHAR"),
        ("deployment_mode", "VARCHAR"), ("gpu_type", "VARCHAR"), ("simulate", "BOOLEAN"),
        ("submitted_by", "VARCHAR"), ("cloned_from", "VARCHAR"),
        ("submitted_at", "TIMESTAMPTZ"), ("started_at", "TIMESTAMPTZ"), ("cancel_requested_at", "TIMESTAMPTZ"),
        ("finished_at", "TIMESTAMPTZ"),
        ("space_size", "BIGINT"), ("budget", "BIGINT"),
        ("verdict_n", "BIGINT"), ("verdict_attempt", "BIGINT"), ("verdict_score", "DOUBLE"), ("verdict_parameters", "JSON"),
        ("pareto", "JSON"), ("reason", "VARCHAR"), ("reason_path", "VARCHAR"), ("spec", "JSON"),
        ("dataset", "JSON"),
        ("last_seq", "BIGINT"), ("last_event_at", "TIMESTAMPTZ"),
    ],
    key=("id",),
    doc="one row per task as its own events leave it (verdict_*: the best experiment TaskCompleted names); the `tasks` view adds counts and the best so far",
)  # fmt: skip

EXPERIMENTS = Table(
    "experiment_rows",
    [
        ("task", "VARCHAR"), ("n", "BIGINT"), ("attempt", "BIGINT"), ("status", "VARCHAR"),
        ("host", "VARCHAR"), ("instance", "VARCHAR"), ("runtime", "VARCHAR"), ("handle", "VARCHAR"),
        ("gpu_indices", "BIGINT[]"), ("gpu_uuids", "VARCHAR[]"), ("gpus", "BIGINT"), ("gpu_type", "VARCHAR"),
        ("parameters", "JSON"), ("deployment_mode", "VARCHAR"), ("simulated", "BOOLEAN"), ("timeout_s", "DOUBLE"),
        ("retry_of", "VARCHAR"), ("device", "VARCHAR"), ("engine_env", "JSON"),
        ("score", "DOUBLE"), ("objective_value", "DOUBLE"), ("objectives", "DOUBLE[]"), ("slo_met", "BOOLEAN"),
        ("slo_violations", "JSON"), ("hard_fail", "BOOLEAN"),
        ("failure_kind", "VARCHAR"), ("failure_stage", "VARCHAR"), ("failure_message", "VARCHAR"),
        ("retryable", "BOOLEAN"), ("log_tail", "VARCHAR[]"), ("cancel_reason", "VARCHAR"),
        ("startup_s", "DOUBLE"), ("duration_s", "DOUBLE"), ("runs_done", "BIGINT"), ("runs_total", "BIGINT"),
        ("planned_at", "TIMESTAMPTZ"), ("assigned_at", "TIMESTAMPTZ"), ("started_at", "TIMESTAMPTZ"),
        ("ready_at", "TIMESTAMPTZ"), ("cancel_requested_at", "TIMESTAMPTZ"), ("finished_at", "TIMESTAMPTZ"),
        ("requests", "BIGINT"), ("requests_completed", "BIGINT"),
        ("waiting_reason", "VARCHAR"), ("waiting_fits", "BOOLEAN"), ("waiting_since", "TIMESTAMPTZ"),
        *[(h, "DOUBLE") for h in HEADLINE],
        ("telemetry_samples", "BIGINT"), *[(t, "DOUBLE") for t in TELEMETRY],
        ("engine_source", "VARCHAR"), ("engine_samples", "BIGINT"), ("engine_scrape_failures", "BIGINT"), *[(t, "DOUBLE") for t in ENGINE],
        ("last_seq", "BIGINT"), ("last_event_at", "TIMESTAMPTZ"),
    ],
    key=("task", "n", "attempt"),
    doc="one row per experiment attempt: lifecycle, placement, score, failure, headline metrics",
    packed=("metrics", (*HEADLINE, *TELEMETRY, *ENGINE)),
)  # fmt: skip

EXPERIMENT_RUNS = Table(
    "experiment_runs",
    [
        ("task", "VARCHAR"), ("n", "BIGINT"), ("attempt", "BIGINT"), ("run", "BIGINT"),
        ("scenario", "VARCHAR"), ("concurrency", "BIGINT"),
        ("requests", "BIGINT"), ("completed", "BIGINT"), ("errors", "BIGINT"), ("errors_by_kind", "JSON"),
        ("duration_s", "DOUBLE"), ("requests_per_s", "DOUBLE"), ("input_tps", "DOUBLE"), ("output_tps", "DOUBLE"),
        ("total_tps", "DOUBLE"), ("goodput_rps", "DOUBLE"),
        *[c for s in RUN_STATS for c in _stats(s)],
    ],
    doc="one row per scenario x concurrency run of a finished attempt (Stats flattened: ttft_p50, ...)",
    db=LOG_DB,
)  # fmt: skip

REQUEST_SAMPLES = Table(
    "request_samples",
    [
        ("task", "VARCHAR"), ("n", "BIGINT"), ("attempt", "BIGINT"), ("run", "BIGINT"), ("i", "BIGINT"),
        ("ok", "BOOLEAN"), ("start", "DOUBLE"), ("e2e", "DOUBLE"), ("ttft", "DOUBLE"), ("tpot", "DOUBLE"),
        ("input_tokens", "BIGINT"), ("output_tokens", "BIGINT"), ("error", "VARCHAR"), ("itl", "DOUBLE[]"),
    ],
    doc="raw per-request samples of finished attempts (i: position in the attempt's sample list)",
    db=LOG_DB,
)  # fmt: skip

HOSTS = Table(
    "host_rows",
    [
        ("host", "VARCHAR"), ("status", "VARCHAR"), ("instance", "VARCHAR"), ("hostname", "VARCHAR"),
        ("node", "VARCHAR"), ("version", "VARCHAR"), ("gpus", "JSON"), ("gpu_count", "BIGINT"),
        ("runtimes", "VARCHAR[]"), ("engines", "VARCHAR[]"), ("simulated", "BOOLEAN"),
        ("cpu_slots", "BIGINT"), ("cpu_engines", "VARCHAR[]"), ("engine_paths", "JSON"),
        ("registered_at", "TIMESTAMPTZ"), ("drain_requested_at", "TIMESTAMPTZ"), ("drained_at", "TIMESTAMPTZ"),
        ("removed_at", "TIMESTAMPTZ"), ("lost_at", "TIMESTAMPTZ"), ("returned_at", "TIMESTAMPTZ"), ("stopped_at", "TIMESTAMPTZ"),
        ("release", "VARCHAR"), ("deploy_outcome", "VARCHAR"), ("deployed_at", "TIMESTAMPTZ"), ("deployed_by", "VARCHAR"),
        ("last_seq", "BIGINT"), ("last_event_at", "TIMESTAMPTZ"),
    ],
    key=("host",),
    doc="one row per host as its own events leave it; the `hosts` view adds running attempts and busy",
)  # fmt: skip

GPU_SAMPLES = Table(
    "gpu_samples",
    [
        ("seq", "BIGINT"), ("host", "VARCHAR"), ("index", "BIGINT"), ("uuid", "VARCHAR"), ("name", "VARCHAR"),
        ("at", "TIMESTAMPTZ"),
        ("util_gpu", "DOUBLE"), ("util_memory", "DOUBLE"),
        ("memory_total_mib", "DOUBLE"), ("memory_used_mib", "DOUBLE"), ("memory_free_mib", "DOUBLE"),
        ("temperature_c", "DOUBLE"), ("power_w", "DOUBLE"), ("power_limit_w", "DOUBLE"),
        ("sm_clock_mhz", "DOUBLE"), ("mem_clock_mhz", "DOUBLE"),
        ("processes", "JSON"), ("node", "VARCHAR"), ("simulated", "BOOLEAN"),
    ],
    doc="GPU telemetry from AUTOTUNE_TELEMETRY (seq: its stream sequence)",
    db=LOG_DB,
)  # fmt: skip

LOG_LINES = Table(
    "log_lines",
    [
        ("seq", "BIGINT"), ("line_no", "BIGINT"), ("task", "VARCHAR"), ("n", "BIGINT"), ("attempt", "BIGINT"),
        ("host", "VARCHAR"), ("source", "VARCHAR"), ("chunk", "BIGINT"), ("at", "TIMESTAMPTZ"), ("line", "VARCHAR"),
    ],
    doc="engine and runner output from AUTOTUNE_LOGS, one row per line (source: engine | runner)",
    db=LOG_DB,
)  # fmt: skip

DEAD_LETTERS = Table(
    "dead_letters",
    [
        ("stream", "VARCHAR"), ("seq", "BIGINT"), ("subject", "VARCHAR"), ("at", "TIMESTAMPTZ"),
        ("size", "BIGINT"), ("raw", "BLOB"), ("error", "VARCHAR"),
    ],
    doc="messages that could not be decoded or applied: raw bytes (capped), what was wrong",
    db=LOG_DB,
)  # fmt: skip

_POSITION_COLUMNS = [("stream", "VARCHAR"), ("seq", "BIGINT"), ("messages", "BIGINT"), ("unknown", "BIGINT"), ("dead_letters", "BIGINT")]

POSITIONS = Table(
    "positions",
    _POSITION_COLUMNS,
    key=("stream",),
    doc="per stream: the last sequence the log lanes applied, how many messages, unknown types and dead letters",
    db=LOG_DB,
)
STATE_POSITIONS = Table(
    "state_positions",
    _POSITION_COLUMNS,
    key=("stream",),
    doc="the state lane's position in AUTOTUNE_EVENTS (and its own dead letters: events it could not apply)",
)
STATE_DEAD_LETTERS = Table("state_dead_letters", DEAD_LETTERS.columns, doc="events the state lane could not apply (the `dead_letters` view)")

META = Table("projector_meta", [("key", "VARCHAR"), ("value", "VARCHAR")], key=("key",), doc="schema version, generation")
LOG_META = Table("projector_meta", META.columns, key=("key",), doc="schema version, generation (equal to the main file's)", db=LOG_DB)

class View:
    """A view: name, the SELECT that defines it, a one-line purpose."""

    def __init__(self, name: str, select: str, doc: str = "") -> None:
        self.name, self.select, self.doc = name, select, doc

    def ddl(self) -> str:
        return f"CREATE OR REPLACE VIEW {self.name} AS {self.select}"


# Packed: a state commit's cost grows with the columns it writes, not its rows (DuckDB 2.0 here:
# DELETE + INSERT of 10 experiment rows + the position + COMMIT, on a copy of the benchmark's
# 27,000 attempts: 72 columns p50 11.8-13.3 ms, with the 28 metric columns in one DOUBLE[]
# 7.6-9.6 ms; packing the other columns too by type gained nothing more). The metrics change once
# per attempt, every lifecycle event rewrites the row, so they travel as one list.
EXPERIMENTS_VIEW = View(
    "experiments",
    f"SELECT {EXPERIMENTS.select()} FROM {EXPERIMENTS.name}",
    doc=f"{EXPERIMENTS.doc} (a view over experiment_rows, which keeps the metric columns in one list)",
)

_TASK_HEAD = TASKS.names[: TASKS.index["budget"] + 1]

# The best experiment so far: the lowest finite score of a completed attempt that did not hard-fail
# (ties: the earliest finished); once TaskCompleted names one, that verdict (its parameters as the
# event states them; the scheduler always does). A view costs its readers ~3 ms of planning per
# query here; each join or ordering key more adds ~1 ms (measured), so it stays this plain.
TASKS_VIEW = View(
    "tasks",
    f"""
WITH per_task AS (
  SELECT task,
    count(*) FILTER (attempt = 0 AND planned_at IS NOT NULL) AS experiments_planned,
    count(*) FILTER (status = 'completed') AS experiments_completed,
    count(*) FILTER (status = 'failed' AND NOT coalesce(retryable, false)) AS experiments_failed,
    count(*) FILTER (status = 'failed' AND coalesce(retryable, false)) AS experiments_retried,
    count(*) FILTER (status = 'cancelled') AS experiments_cancelled,
    arg_min({{'n': n, 'attempt': attempt, 'score': score, 'parameters': parameters}}, (score, finished_at, n, attempt))
      FILTER (status = 'completed' AND NOT coalesce(hard_fail, false) AND isfinite(score)) AS best,
    max(last_seq) AS last_seq, max(last_event_at) AS last_event_at
  FROM {EXPERIMENTS.name} GROUP BY task
)
SELECT {", ".join(f't."{c}"' for c in _TASK_HEAD)},
  coalesce(c.experiments_planned, 0) AS experiments_planned,
  coalesce(c.experiments_completed, 0) AS experiments_completed,
  coalesce(c.experiments_failed, 0) AS experiments_failed,
  coalesce(c.experiments_retried, 0) AS experiments_retried,
  coalesce(c.experiments_cancelled, 0) AS experiments_cancelled,
  CASE WHEN t.verdict_n IS NULL THEN c.best.n ELSE t.verdict_n END AS best_n,
  CASE WHEN t.verdict_n IS NULL THEN c.best.attempt ELSE t.verdict_attempt END AS best_attempt,
  CASE WHEN t.verdict_n IS NULL THEN c.best.score ELSE t.verdict_score END AS best_score,
  CASE WHEN t.verdict_n IS NULL THEN c.best.parameters
    WHEN t.verdict_parameters IS NULL AND c.best.n = t.verdict_n AND c.best.attempt = t.verdict_attempt THEN c.best.parameters
    ELSE t.verdict_parameters END AS best_parameters,
  t.pareto, t.reason, t.reason_path, t.spec, t.dataset,
  greatest(t.last_seq, c.last_seq) AS last_seq, greatest(t.last_event_at, c.last_event_at) AS last_event_at
FROM {TASKS.name} t
LEFT JOIN per_task c ON c.task = t.id""",
    doc="one row per task: status, what it tunes, counts, the best experiment so far (a view over task_rows and experiments)",
)

HOSTS_VIEW = View(
    "hosts",
    f"""
SELECT h.host,
  CASE WHEN h.status = 'online' AND coalesce(r.running, 0) > 0 THEN 'busy' ELSE h.status END AS status,
  {", ".join(f'h."{c}"' for c in HOSTS.names[2 : HOSTS.index["simulated"] + 1])},
  coalesce(r.running, 0) AS running_experiments,
  {", ".join(f'h."{c}"' for c in HOSTS.names[HOSTS.index["simulated"] + 1 :])}
FROM {HOSTS.name} h
LEFT JOIN (SELECT host, count(*) AS running FROM {EXPERIMENTS.name} WHERE status IN {sql_list(EXPERIMENT_ON_HOST)} GROUP BY host) r ON r.host = h.host""",
    doc="one row per host: what it offers, its lifecycle, running attempts (liveness itself is in the autotune-hosts KV)",
)

DEAD_LETTERS_VIEW = View(
    "dead_letters",
    f"SELECT *, 'log' AS lane FROM {DEAD_LETTERS.ref} UNION ALL SELECT *, 'state' AS lane FROM {STATE_DEAD_LETTERS.name}",
    doc="messages that could not be decoded or applied: raw bytes (capped), what was wrong, which lane (log: decoding, "
    "the log tables; state: tasks, experiments, hosts)",
)
# Read-your-writes needs "applied in every lane": the lowest position of the lanes per stream
POSITIONS_VIEW = View(
    "positions",
    f"""
SELECT stream, min(seq) AS seq, min(messages) AS messages, CAST(sum(unknown) AS BIGINT) AS unknown,
  CAST(sum(dead_letters) AS BIGINT) AS dead_letters
FROM (SELECT * FROM {POSITIONS.ref} UNION ALL SELECT * FROM {STATE_POSITIONS.name}) GROUP BY stream""",
    doc="per stream: the last sequence every lane has applied; messages, unknown types and dead letters",
)

UPSERTED = (TASKS, EXPERIMENTS, HOSTS)
# per lane role (view_state.ROLES): the tables that, empty, say the lane starts from the first event
# with nothing to read back (its ViewState is complete)
STARTS_EMPTY = {"state": UPSERTED, "log": (EVENTS,), "telemetry": ()}
# the log file's tables, seen from the main file under their own names
PASS_THROUGH = tuple(View(t.name, f"SELECT * FROM {t.ref}", t.doc) for t in (EVENTS, EXPERIMENT_RUNS, REQUEST_SAMPLES, GPU_SAMPLES, LOG_LINES))
MAIN_TABLES = (TASKS, EXPERIMENTS, HOSTS, STATE_POSITIONS, STATE_DEAD_LETTERS, META)
LOG_TABLES = (EVENTS, EXPERIMENT_RUNS, REQUEST_SAMPLES, GPU_SAMPLES, LOG_LINES, DEAD_LETTERS, POSITIONS, LOG_META)
ALL = (*LOG_TABLES, *MAIN_TABLES)
VIEWS = (*PASS_THROUGH, EXPERIMENTS_VIEW, TASKS_VIEW, HOSTS_VIEW, DEAD_LETTERS_VIEW, POSITIONS_VIEW)
SCHEMA = (*ALL, *VIEWS)  # everything with DDL, views after the tables they read
CHECKED = tuple(x for x in SCHEMA if x not in (META, LOG_META))  # rebuild == incremental (meta: a generation each)
# the single file `autotune snapshot` writes: the public names as tables (tasks, hosts, experiments stay views)
SNAPSHOT = (
    *[Table(t.name, t.columns, t.key, t.doc) for t in (EVENTS, EXPERIMENT_RUNS, REQUEST_SAMPLES, GPU_SAMPLES, LOG_LINES)],
    Table("dead_letters", [*DEAD_LETTERS.columns, ("lane", "VARCHAR")], doc=DEAD_LETTERS_VIEW.doc),
    Table("positions", _POSITION_COLUMNS, ("stream",), POSITIONS_VIEW.doc),
    TASKS, EXPERIMENTS, HOSTS, META,
)
# what users query, in the order the README lists it
PUBLIC = (
    "events",
    "tasks",
    "experiments",
    "experiment_runs",
    "request_samples",
    "hosts",
    "gpu_samples",
    "log_lines",
    "dead_letters",
    "positions",
)
