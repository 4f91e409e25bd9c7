"""Projector knobs (defaults suit one machine; AUTOTUNE_PROJECTOR_* overrides a few)."""

from __future__ import annotations

import os

import msgspec

from autotune.shared.settings import Settings


class ProjectorConfig(msgspec.Struct, kw_only=True):
    batch_max: int = 20_000  # messages per transaction at most
    buffer_max: int = 40_000  # a lane stops pulling from its streams above this many unapplied messages
    pull_batch: int = 5_000  # messages per pull request
    pipeline_min: int = 2_000  # a lane applies its next batch while one commits only when this many wait
    state_delay_s: float = 0.05  # the state lane (tasks, experiments, hosts) gathers a batch at most this long, unless a query's min_seq waits for it
    state_batch: int = 500  # ... or until this many are waiting
    slow_delay_s: float = 0.25  # the telemetry lane (GPU samples, log lines) gathers a batch at most this long
    slow_batch: int = 2_000  # ... or until this many are waiting
    log_delay_s: float = 0.25  # the log lane (events, results) too, unless a query's min_seq waits for it
    log_batch: int = 2_000  # ... or until this many are waiting
    lean_wire: bool = True  # feeds read through wire.LeanWire (else nats-py)
    sidecar: bool = True  # the telemetry lane reads, decodes and prepares in a child process (sidecar.py); it commits here
    prune_every_s: float = 300.0  # this often, gpu_samples and log_lines drop what their streams no longer hold (max age); 0: keep it all
    cache_rows: int = 50_000  # task/experiment/host rows kept in memory per table
    cache_keys: int = 2_000_000  # ... and their keys (and finished attempts), all up to this many: new ones need no lookup
    checkpoint_wal_mb: int = 64  # checkpoint when the write-ahead log is this big and little is waiting
    state_checkpoint_wal_mb: int = 64  # ... of the main file (the state lane's)
    checkpoint_max_mb: int = 1024  # ... or this big whatever waits (DuckDB's own threshold: 16 MB)
    duckdb_threads: int = 1  # DuckDB worker threads of the running projector (0: one per core); README "Performance"
    rebuild_duckdb_threads: int = 0  # ... of `rebuild`, a batch job with no live reads to keep fresh
    cursors: int = 4  # concurrent queries
    row_limit: int = 10_000  # default rows per answer
    row_limit_max: int = 1_000_000
    query_timeout_s: float = 10.0  # default per query
    query_timeout_max_s: float = 300.0
    min_seq_wait_s: float = 5.0  # read-your-writes: how long to wait for a sequence to be applied
    max_event_bytes: int = 8 * 1024 * 1024  # larger messages become dead letters
    dead_letter_bytes: int = 256 * 1024  # raw bytes kept per dead letter

    @classmethod
    def from_env(cls, **overrides: object) -> ProjectorConfig:
        cfg = cls()
        for field in cls.__struct_fields__:
            raw = os.environ.get(f"AUTOTUNE_PROJECTOR_{field.upper()}")
            if raw:
                kind = type(getattr(cfg, field))
                setattr(cfg, field, raw.lower() in ("1", "true", "yes") if kind is bool else kind(raw))
        for k, v in overrides.items():
            if v is not None:
                setattr(cfg, k, v)
        return cfg


def default_db_path(settings: Settings) -> str:
    return os.environ.get("AUTOTUNE_PROJECTOR_DB") or os.path.join(settings.data_dir or ".", "autotune.duckdb")
