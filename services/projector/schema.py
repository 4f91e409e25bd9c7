"""The read model: every table the projector writes, its columns and their DuckDB and Arrow types.

One list per table drives the DDL, the columnar writes and the snapshot copy, so they cannot drift.
Bump SCHEMA_VERSION whenever a column changes: a database built by another version is refused with
a hint to rebuild (the log is the truth; the file is disposable).
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 2

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
    "tasks",
    [
        ("id", "VARCHAR"), ("name", "VARCHAR"), ("status", "VARCHAR"),
        ("strategy", "VARCHAR"), ("objective", "VARCHAR"), ("engine", "VARCHAR"), ("model", "VARCHAR"),
        ("deployment_mode", "VARCHAR"), ("gpu_type", "VARCHAR"), ("simulate", "BOOLEAN"),
        ("submitted_by", "VARCHAR"), ("cloned_from", "VARCHAR"),
        ("submitted_at", "TIMESTAMPTZ"), ("started_at", "TIMESTAMPTZ"), ("cancel_requested_at", "TIMESTAMPTZ"),
        ("finished_at", "TIMESTAMPTZ"),
        ("space_size", "BIGINT"), ("budget", "BIGINT"),
        ("experiments_planned", "BIGINT"), ("experiments_completed", "BIGINT"), ("experiments_failed", "BIGINT"),
        ("experiments_retried", "BIGINT"), ("experiments_cancelled", "BIGINT"),
        ("best_n", "BIGINT"), ("best_attempt", "BIGINT"), ("best_score", "DOUBLE"), ("best_parameters", "JSON"),
        ("pareto", "JSON"), ("reason", "VARCHAR"), ("reason_path", "VARCHAR"), ("spec", "JSON"),
        ("last_seq", "BIGINT"), ("last_event_at", "TIMESTAMPTZ"),
    ],
    key=("id",),
    doc="one row per task: status, what it tunes, counts, the best experiment so far",
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
    "hosts",
    [
        ("host", "VARCHAR"), ("status", "VARCHAR"), ("instance", "VARCHAR"), ("hostname", "VARCHAR"),
        ("node", "VARCHAR"), ("version", "VARCHAR"), ("gpus", "JSON"), ("gpu_count", "BIGINT"),
        ("runtimes", "VARCHAR[]"), ("engines", "VARCHAR[]"), ("simulated", "BOOLEAN"),
        ("running_experiments", "BIGINT"),
        ("registered_at", "TIMESTAMPTZ"), ("drain_requested_at", "TIMESTAMPTZ"), ("drained_at", "TIMESTAMPTZ"),
        ("removed_at", "TIMESTAMPTZ"), ("lost_at", "TIMESTAMPTZ"),
        ("last_seq", "BIGINT"), ("last_event_at", "TIMESTAMPTZ"),
    ],
    key=("host",),
    doc="one row per host: what it offers and its lifecycle (liveness itself is in the autotune-hosts KV)",
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

UPSERTED = (TASKS, EXPERIMENTS, HOSTS)
APPENDED = (EVENTS, EXPERIMENT_RUNS, REQUEST_SAMPLES, GPU_SAMPLES, LOG_LINES, DEAD_LETTERS)
ALL = (EVENTS, TASKS, EXPERIMENTS, EXPERIMENT_RUNS, REQUEST_SAMPLES, HOSTS, GPU_SAMPLES, LOG_LINES, DEAD_LETTERS, POSITIONS, META)
BY_NAME = {t.name: t for t in ALL}
