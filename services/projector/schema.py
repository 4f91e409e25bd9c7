"""The read model: every table the projector writes, its columns and their DuckDB and Arrow types,
and the views derived from them.

One list per table drives the DDL, the columnar writes and the snapshot copy, so they cannot drift.
Bump SCHEMA_VERSION whenever a column or a view changes: a database built by another version is
set aside and rebuilt from the log (the log is the truth; the file is disposable).

`tasks` and `hosts` are views. What an experiment event changes about its task (the counters, the
best experiment so far) and its host (running attempts, busy) is derived from `experiments` when
queried, not written: an experiment event then writes its own row and nothing else (a live
commit: 7 statements instead of 11; README "Performance").
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 3

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


class Table:
    """A table: name, (column, DuckDB type) pairs, the key of upserted tables, a one-line purpose."""

    def __init__(self, name: str, columns: list[tuple[str, str]], key: tuple[str, ...] = (), doc: str = "") -> None:
        self.name = name
        self.columns = columns
        self.names = [c for c, _ in columns]
        self.key = key
        self.doc = doc
        self.arrow = pa.schema([pa.field(c, ARROW[t]) for c, t in columns])
        self.index = {c: i for i, c in enumerate(self.names)}

    def ddl(self) -> str:
        cols = ",\n  ".join(f'"{c}" {t}' for c, t in self.columns)
        return f"CREATE TABLE IF NOT EXISTS {self.name} (\n  {cols}\n)"

    def empty_row(self) -> dict:
        return dict.fromkeys(self.names)


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

EVENTS = Table(
    "events",
    [
        ("stream", "VARCHAR"), ("seq", "BIGINT"), ("stored_at", "TIMESTAMPTZ"), ("subject", "VARCHAR"),
        ("id", "VARCHAR"), ("type", "VARCHAR"), ("known", "BOOLEAN"),
        ("task", "VARCHAR"), ("n", "BIGINT"), ("attempt", "BIGINT"), ("host", "VARCHAR"),
        ("at", "TIMESTAMPTZ"), ("payload", "JSON"),
    ],
    doc="every AUTOTUNE_EVENTS message, and messages of unknown type from any stream",
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
        ("last_seq", "BIGINT"), ("last_event_at", "TIMESTAMPTZ"),
    ],
    key=("id",),
    doc="one row per task as its own events leave it (verdict_*: the best experiment TaskCompleted names); the `tasks` view adds counts and the best so far",
)  # fmt: skip

EXPERIMENTS = Table(
    "experiments",
    [
        ("task", "VARCHAR"), ("n", "BIGINT"), ("attempt", "BIGINT"), ("status", "VARCHAR"),
        ("host", "VARCHAR"), ("instance", "VARCHAR"), ("runtime", "VARCHAR"), ("handle", "VARCHAR"),
        ("gpu_indices", "BIGINT[]"), ("gpu_uuids", "VARCHAR[]"), ("gpus", "BIGINT"), ("gpu_type", "VARCHAR"),
        ("parameters", "JSON"), ("deployment_mode", "VARCHAR"), ("simulated", "BOOLEAN"), ("timeout_s", "DOUBLE"),
        ("retry_of", "VARCHAR"),
        ("score", "DOUBLE"), ("objective_value", "DOUBLE"), ("objectives", "DOUBLE[]"), ("slo_met", "BOOLEAN"),
        ("slo_violations", "JSON"), ("hard_fail", "BOOLEAN"),
        ("failure_kind", "VARCHAR"), ("failure_stage", "VARCHAR"), ("failure_message", "VARCHAR"),
        ("retryable", "BOOLEAN"), ("log_tail", "VARCHAR[]"), ("cancel_reason", "VARCHAR"),
        ("startup_s", "DOUBLE"), ("duration_s", "DOUBLE"), ("runs_done", "BIGINT"), ("runs_total", "BIGINT"),
        ("planned_at", "TIMESTAMPTZ"), ("assigned_at", "TIMESTAMPTZ"), ("started_at", "TIMESTAMPTZ"),
        ("ready_at", "TIMESTAMPTZ"), ("cancel_requested_at", "TIMESTAMPTZ"), ("finished_at", "TIMESTAMPTZ"),
        ("requests", "BIGINT"), ("requests_completed", "BIGINT"),
        *[(h, "DOUBLE") for h in HEADLINE],
        ("telemetry_samples", "BIGINT"), *[(t, "DOUBLE") for t in TELEMETRY],
        ("last_seq", "BIGINT"), ("last_event_at", "TIMESTAMPTZ"),
    ],
    key=("task", "n", "attempt"),
    doc="one row per experiment attempt: lifecycle, placement, score, failure, headline metrics",
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
)  # fmt: skip

REQUEST_SAMPLES = Table(
    "request_samples",
    [
        ("task", "VARCHAR"), ("n", "BIGINT"), ("attempt", "BIGINT"), ("run", "BIGINT"), ("i", "BIGINT"),
        ("ok", "BOOLEAN"), ("start", "DOUBLE"), ("e2e", "DOUBLE"), ("ttft", "DOUBLE"), ("tpot", "DOUBLE"),
        ("input_tokens", "BIGINT"), ("output_tokens", "BIGINT"), ("error", "VARCHAR"), ("itl", "DOUBLE[]"),
    ],
    doc="raw per-request samples of finished attempts (i: position in the attempt's sample list)",
)  # fmt: skip

HOSTS = Table(
    "host_rows",
    [
        ("host", "VARCHAR"), ("status", "VARCHAR"), ("instance", "VARCHAR"), ("hostname", "VARCHAR"),
        ("node", "VARCHAR"), ("version", "VARCHAR"), ("gpus", "JSON"), ("gpu_count", "BIGINT"),
        ("runtimes", "VARCHAR[]"), ("engines", "VARCHAR[]"), ("simulated", "BOOLEAN"),
        ("registered_at", "TIMESTAMPTZ"), ("drain_requested_at", "TIMESTAMPTZ"), ("drained_at", "TIMESTAMPTZ"),
        ("removed_at", "TIMESTAMPTZ"), ("lost_at", "TIMESTAMPTZ"),
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
)  # fmt: skip

LOG_LINES = Table(
    "log_lines",
    [
        ("seq", "BIGINT"), ("line_no", "BIGINT"), ("task", "VARCHAR"), ("n", "BIGINT"), ("attempt", "BIGINT"),
        ("host", "VARCHAR"), ("source", "VARCHAR"), ("chunk", "BIGINT"), ("at", "TIMESTAMPTZ"), ("line", "VARCHAR"),
    ],
    doc="engine and runner output from AUTOTUNE_LOGS, one row per line (source: engine | runner)",
)  # fmt: skip

DEAD_LETTERS = Table(
    "dead_letters",
    [
        ("stream", "VARCHAR"), ("seq", "BIGINT"), ("subject", "VARCHAR"), ("at", "TIMESTAMPTZ"),
        ("size", "BIGINT"), ("raw", "BLOB"), ("error", "VARCHAR"),
    ],
    doc="messages that could not be decoded or applied: raw bytes (capped), what was wrong",
)  # fmt: skip

POSITIONS = Table(
    "positions",
    [("stream", "VARCHAR"), ("seq", "BIGINT"), ("messages", "BIGINT"), ("unknown", "BIGINT"), ("dead_letters", "BIGINT")],
    key=("stream",),
    doc="per stream: the last applied sequence and how many messages, unknown types and dead letters",
)  # fmt: skip

META = Table("projector_meta", [("key", "VARCHAR"), ("value", "VARCHAR")], key=("key",), doc="schema version")


class View:
    """A view: name, the SELECT that defines it, a one-line purpose."""

    def __init__(self, name: str, select: str, doc: str = "") -> None:
        self.name, self.select, self.doc = name, select, doc

    def ddl(self) -> str:
        return f"CREATE OR REPLACE VIEW {self.name} AS {self.select}"


ACTIVE = ("assigned", "running", "ready", "cancelling")  # an attempt in these holds its host's GPUs
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
  t.pareto, t.reason, t.reason_path, t.spec,
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
LEFT JOIN (SELECT host, count(*) AS running FROM {EXPERIMENTS.name} WHERE status IN {ACTIVE!r} GROUP BY host) r ON r.host = h.host""",
    doc="one row per host: what it offers, its lifecycle, running attempts (liveness itself is in the autotune-hosts KV)",
)

UPSERTED = (TASKS, EXPERIMENTS, HOSTS)
APPENDED = (EVENTS, EXPERIMENT_RUNS, REQUEST_SAMPLES, GPU_SAMPLES, LOG_LINES, DEAD_LETTERS)
ALL = (EVENTS, TASKS, EXPERIMENTS, EXPERIMENT_RUNS, REQUEST_SAMPLES, HOSTS, GPU_SAMPLES, LOG_LINES, DEAD_LETTERS, POSITIONS, META)
VIEWS = (TASKS_VIEW, HOSTS_VIEW)
SCHEMA = (*ALL, *VIEWS)  # everything with DDL, views after the tables they read
BY_NAME = {t.name: t for t in ALL}
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
