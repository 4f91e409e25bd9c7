"""The read side's shapes: tasks, experiments, hosts and GPUs as people see them, as msgspec Structs.
Separate from the events on purpose: the wire format of the log and the shape of a view evolve
independently. The HTTP API answers with them, the command line prints them with --json, and the
dashboard and the MCP server render them, so a script sees one shape whichever door it uses."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from autotune.schemas.status import HostStatus

# --- tasks ---------------------------------------------------------------------------------------------


class Progress(msgspec.Struct, kw_only=True):
    budget: int | None = None  # experiments at most (known once the scheduler started the task)
    space_size: int | None = None  # configurations in the search space (None: continuous)
    planned: int = 0
    running: int = 0
    completed: int = 0
    failed: int = 0
    retried: int = 0  # attempts that failed for infrastructure reasons and were re-planned
    cancelled: int = 0
    done: int = 0  # completed + failed: experiments that count against the budget
    percent: float | None = None
    time_budget_s: float | None = None
    elapsed_s: float | None = None


class BestExperiment(msgspec.Struct, kw_only=True):
    n: int
    attempt: int
    score: float | None
    parameters: dict[str, Any]
    command: str
    metrics: dict[str, Any] = {}


class ParetoPoint(msgspec.Struct, kw_only=True):
    n: int
    attempt: int
    score: float | None
    objectives: list[float]
    parameters: dict[str, Any]


class Task(msgspec.Struct, kw_only=True):
    id: str
    name: str | None = None
    status: str | None = None
    simulate: bool = False  # rehearsed on simulated engines and GPUs: figures are not real hardware
    real_cpu: bool = False  # a real engine serving on CPU (gpu_type: cpu): real, but its speeds say nothing about GPUs
    strategy: str | None = None
    objective: str | None = None
    engine: str | None = None
    model: str | None = None
    deployment_mode: str | None = None
    gpu_type: str | None = None
    submitted_by: str | None = None
    cloned_from: str | None = None
    submitted_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    reason: str | None = None
    experiments_completed: int = 0
    experiments_failed: int = 0
    budget: int | None = None
    best_n: int | None = None
    best_score: float | None = None


class TaskPage(msgspec.Struct, kw_only=True):
    items: list[Task]
    total: int
    limit: int
    offset: int


class Waiting(msgspec.Struct, kw_only=True):
    """A planned experiment that found no room, and why (the scheduler's last `experiment.waiting`)."""

    n: int
    attempt: int
    gpus: int | None = None
    reason: str
    fits: bool = True  # some live host could run it once it has room; False: none can (it fails as unplaceable after the grace)
    since: str | None = None  # when this reason was recorded


class TaskDetail(Task, kw_only=True):
    reason_path: str | None = None
    cancel_requested_at: str | None = None
    objectives: list[str] = []
    progress: Progress = msgspec.field(default_factory=Progress)
    best: BestExperiment | None = None
    pareto: list[ParetoPoint] = []
    spec: dict[str, Any] = {}  # the recorded task spec (secrets redacted)
    links: dict[str, str] = {}
    waiting: list[Waiting] = []  # planned experiments that found no room, and why
    dataset: dict[str, Any] | None = None  # the replay dataset as fetched: url, sha256, prompts, rows, skipped, duplicates, ...


class Export(msgspec.Struct, kw_only=True):
    """A configuration as something to run: an engine command line, a `docker run` line, or a
    Kubernetes manifest (Deployment + Service)."""

    task: str
    n: int
    attempt: int
    score: float | None
    format: Literal["cmd", "docker", "k8s"]
    content: str
    parameters: dict[str, Any]
    simulate: bool = False
    real_cpu: bool = False
    note: str | None = None


# --- experiments ----------------------------------------------------------------------------------------


class ExperimentPage(msgspec.Struct, kw_only=True):
    task: str
    simulate: bool
    items: list[dict[str, Any]]  # rows of the `experiments` table (GET /api/sql describes every column)
    total: int
    limit: int
    offset: int
    real_cpu: bool = False


class TelemetryPoint(msgspec.Struct, kw_only=True):
    gpu: int
    t: str
    samples: int
    util_gpu: float | None = None
    util_gpu_max: float | None = None
    memory_used_mib: float | None = None
    temperature_c: float | None = None
    power_w: float | None = None


class ExperimentDetail(msgspec.Struct, kw_only=True):
    task: str
    n: int
    attempt: int
    status: str | None
    simulate: bool
    parameters: dict[str, Any]
    command: str | None
    experiment: dict[str, Any]  # the whole `experiments` row: placement, lifecycle, score, headline metrics
    runs: list[dict[str, Any]]  # one row of `experiment_runs` per scenario x concurrency
    attempts: list[dict[str, Any]]  # every attempt of this experiment: status, host, failure
    telemetry: list[TelemetryPoint]  # its GPUs while it ran, downsampled
    telemetry_bucket_s: int
    failure: dict[str, Any] | None
    log_excerpt: list[str]
    real_cpu: bool = False  # a real engine serving on CPU: real, but its speeds say nothing about GPUs
    device: str | None = None  # "cpu" for a real engine on CPU
    engine_env: dict[str, str] = {}  # what autotune set in the engine's environment at start
    # the engine's own /metrics during the benchmark (source, samples, running, waiting, KV cache, preemptions, tokens)
    engine_telemetry: dict[str, Any] | None = None


# --- hosts -----------------------------------------------------------------------------------------------


class HostGpu(msgspec.Struct, kw_only=True):
    index: int
    uuid: str | None = None
    name: str | None = None  # the GPU model
    memory_total_mib: float | None = None
    memory_used_mib: float | None = None
    util_gpu: float | None = None
    util_memory: float | None = None
    temperature_c: float | None = None
    power_w: float | None = None
    sampled_at: str | None = None
    leased_by: str | None = None  # the experiment attempt running on it, "<task>/<n>/<attempt>"


class Host(msgspec.Struct, kw_only=True):
    host: str
    status: HostStatus  # online, busy, draining; without a live key: lost, stopped, removed, else offline
    lifecycle: str | None = None  # the log's view: online, busy, draining, drained, lost, stopped, removed
    alive: bool = False  # its liveness key exists (the runner heartbeats)
    instance: str | None = None
    hostname: str | None = None
    node: str | None = None
    simulated: bool = False
    version: str | None = None  # what its runner registered with
    release: str | None = None  # what `autotune deploy` installed (<version>-<digest>); None: not deployed with it
    deploy_outcome: str | None = None  # the last deploy's: deploying | succeeded | unchanged | failed | rolled_back | undeployed
    gpu_count: int = 0
    gpus: list[HostGpu] = []
    runtimes: list[str] = []
    engines: list[str] = []
    running: list[str] = []
    registered_at: str | None = None
    last_heartbeat: str | None = None
    cpu_slots: int = 0  # real engines it serves on its CPU at once (no GPU needed)
    cpu_engines: list[str] = []
    engine_paths: dict[str, str] = {}  # engine → its executable on this host


class HostDetail(Host, kw_only=True):
    drain_requested_at: str | None = None
    drained_at: str | None = None
    removed_at: str | None = None
    lost_at: str | None = None
    returned_at: str | None = None  # back after a loss (host.returned)
    stopped_at: str | None = None  # its runner stopped cleanly (host.stopped)
    deployed_at: str | None = None
    deployed_by: str | None = None
    experiments: list[dict[str, Any]] = []  # the latest attempts placed on this host


class GpuHistory(msgspec.Struct, kw_only=True):
    host: str
    since: str
    until: str
    bucket_s: int
    points: list[TelemetryPoint]


class GpuModelSummary(msgspec.Struct, kw_only=True):
    name: str  # the GPU model
    total: int  # on live hosts
    busy: int  # leased to a running experiment
    free: int
    offline: int  # on hosts whose liveness key is gone
    hosts: list[str]


class GpuSummary(msgspec.Struct, kw_only=True):
    """The fleet's GPUs by model; with access to a Kubernetes API also the cluster's GPU nodes
    (allocatable vs requested `nvidia.com/gpu`)."""

    fleet: list[GpuModelSummary]
    kubernetes: list[dict[str, Any]] | None = None
    kubernetes_error: str | None = None


# --- the fleet against a task --------------------------------------------------------------------------


class UnfitGroup(msgspec.Struct, kw_only=True):
    gpus: int  # what these configurations need on one host
    configurations: int | None  # how many there are (None: a continuous range is involved)
    examples: list[str]  # a few of their GPU-relevant settings, e.g. "tp=4,dp=2"
    reason: str  # what the fleet lacks


class FleetFit(msgspec.Struct, kw_only=True):
    """Which configurations of a task's search space the live fleet could never run (autotune submit warns)."""

    hosts: int  # live hosts that take work
    space_size: int | None
    unfit: list[UnfitGroup] = []
