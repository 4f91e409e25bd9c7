"""Subject builders and parsers. Every subject autotune publishes on is built here and nowhere else.

Tokens match `[A-Za-z0-9_-]+`, so a task or host name can never inject a `.`, `*` or `>`.
"""

from __future__ import annotations

import re

import msgspec

PREFIX = "autotune"
TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")

EVENTS_STREAM = "AUTOTUNE_EVENTS"
TELEMETRY_STREAM = "AUTOTUNE_TELEMETRY"
LOGS_STREAM = "AUTOTUNE_LOGS"

HOSTS_BUCKET = "autotune-hosts"
LEASES_BUCKET = "autotune-leases"
NAMES_BUCKET = "autotune-names"
STATS_BUCKET = "autotune-stats"  # services' own figures for /metrics: one key per service instance (schemas/stats.py)
DATASETS_BUCKET = "autotune-datasets"  # object store: replay prompts by their sha256 (shared/dataset_store.py)

QUERY_SQL = "autotune.query.sql"  # request/reply: read-only SQL on the projection
QUERY_SNAPSHOT = "autotune.query.snapshot"  # request/reply: the projector writes a DuckDB snapshot file
QUERY_REOPEN = "autotune.query.reopen"  # .<key>: a rebuild asks the projector owning a file to swap it in

# wildcards: everything, and what each stream holds
ALL = f"{PREFIX}.>"
EVENTS_SUBJECTS = (f"{PREFIX}.task.>", f"{PREFIX}.host.>")  # AUTOTUNE_EVENTS: the truth
GPU_ALL = f"{PREFIX}.gpu.>"  # AUTOTUNE_TELEMETRY: every GPU sample of every host
LOG_ALL = f"{PREFIX}.log.>"  # AUTOTUNE_LOGS: engine and runner output

TASK_EVENTS = ("submitted", "dataset_fetched", "started", "rejected", "cancel_requested", "completed", "failed", "cancelled")
EXP_EVENTS = ("planned", "waiting", "started", "ready", "progress", "completed", "failed", "cancelled")
EXP_ADDRESSED = ("assigned", "cancel_requested")
HOST_EVENTS = ("registered", "drain_requested", "drained", "removed", "lost", "returned", "stopped", "deploy_started", "deploy_step", "deploy_finished")
DEPLOY_EVENTS = ("deploy_started", "deploy_step", "deploy_finished")


class SubjectError(ValueError):
    pass


def token(value: str | int, what: str) -> str:
    s = str(value)
    if not TOKEN.match(s):
        raise SubjectError(f"{what} `{s}` is not a valid subject token; use letters, digits, `-` and `_` (1-128)")
    return s


def task(task_id: str, event: str) -> str:
    if event not in TASK_EVENTS:
        raise SubjectError(f"unknown task event `{event}`")
    return f"{PREFIX}.task.{token(task_id, 'task')}.{event}"


def task_all(task_id: str) -> str:
    """Every event of one task, its experiments included."""
    return f"{PREFIX}.task.{token(task_id, 'task')}.>"


def task_level(task_id: str) -> str:
    """Only task-level events: the optimistic-concurrency filter for task writers."""
    return f"{PREFIX}.task.{token(task_id, 'task')}.*"


def experiment(task_id: str, n: int, event: str, host: str | None = None) -> str:
    base = f"{PREFIX}.task.{token(task_id, 'task')}.exp.{int(n)}"
    if event in EXP_ADDRESSED:
        if host is None:
            raise SubjectError(f"`{event}` is addressed to a host; pass host=")
        return f"{base}.{event}.{token(host, 'host')}"
    if event not in EXP_EVENTS:
        raise SubjectError(f"unknown experiment event `{event}`")
    return f"{base}.{event}"


def experiment_all(task_id: str, n: int) -> str:
    """The optimistic-concurrency filter of one experiment."""
    return f"{PREFIX}.task.{token(task_id, 'task')}.exp.{int(n)}.>"


def addressed_to(host: str) -> list[str]:
    """What a runner consumes: assignments and cancels addressed to its host, plus its host commands."""
    h = token(host, "host")
    return [
        f"{PREFIX}.task.*.exp.*.assigned.{h}",
        f"{PREFIX}.task.*.exp.*.cancel_requested.{h}",
        f"{PREFIX}.host.{h}.drain_requested",
        f"{PREFIX}.host.{h}.removed",
    ]


def host(host_id: str, event: str) -> str:
    if event not in HOST_EVENTS:
        raise SubjectError(f"unknown host event `{event}`")
    return f"{PREFIX}.host.{token(host_id, 'host')}.{event}"


def gpu(host_id: str, index: int) -> str:
    return f"{PREFIX}.gpu.{token(host_id, 'host')}.{int(index)}"


def host_all(host_id: str) -> str:
    """Every event of one host (its lifecycle): also the optimistic-concurrency filter of `host.lost`."""
    return f"{PREFIX}.host.{token(host_id, 'host')}.>"


def gpu_all(host_id: str | None = None) -> str:
    """GPU samples of one host, or of the whole fleet."""
    return f"{PREFIX}.gpu.{token(host_id, 'host')}.*" if host_id is not None else f"{PREFIX}.gpu.>"


def tasks_all() -> str:
    """Every task's events, their experiments included."""
    return f"{PREFIX}.task.>"


def everything() -> str:
    """The whole event log as a live view asks for it (tasks and hosts; routed by autotune.reads.stream)."""
    return f"{PREFIX}.>"


def log(task_id: str, n: int) -> str:
    return f"{PREFIX}.log.{token(task_id, 'task')}.{int(n)}"


class Parsed(msgspec.Struct, frozen=True):
    kind: str  # "task" | "experiment" | "host" | "gpu" | "log" | "other"
    event: str = ""
    task: str | None = None
    experiment: int | None = None
    host: str | None = None
    gpu: int | None = None


def parse(subject: str) -> Parsed:
    """Split a subject into its parts; never raises (unknown shapes come back as kind `other`)."""
    t = subject.split(".")
    if len(t) < 3 or t[0] != PREFIX:
        return Parsed("other")
    try:
        if t[1] == "task" and len(t) == 4:
            return Parsed("task", t[3], task=t[2])
        if t[1] == "task" and len(t) >= 6 and t[3] == "exp":
            return Parsed("experiment", t[5], task=t[2], experiment=int(t[4]), host=t[6] if len(t) > 6 else None)
        if t[1] == "host" and len(t) == 4:
            return Parsed("host", t[3], host=t[2])
        if t[1] == "gpu" and len(t) == 4:
            return Parsed("gpu", "sample", host=t[2], gpu=int(t[3]))
        if t[1] == "log" and len(t) == 4:
            return Parsed("log", "lines", task=t[2], experiment=int(t[3]))
    except ValueError:
        pass
    return Parsed("other")
