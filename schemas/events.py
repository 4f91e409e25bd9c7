"""The event catalog: every fact autotune records, as frozen msgspec Structs in one tagged union.

Rules (ARCHITECTURE.md, "Rules that keep it correct"): each event has a deterministic `id` derived from what it records (sent as
`Nats-Msg-Id`, so a retried publish is stored once) and a tz-aware UTC `at`. Adding a field with a
default is compatible; anything else is a new event type. Unknown fields are ignored when decoding,
so older services read newer events. The wire tag is explicit: renaming a class changes nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from autotune.schemas.metrics import ExperimentMetrics, RunMetrics

Params = dict[str, str | int | float | bool | None]


def now() -> datetime:
    return datetime.now(UTC)


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    id: str
    at: datetime = msgspec.field(default_factory=now)


# --- tasks -------------------------------------------------------------------------------------------


class TaskSubmitted(Event, frozen=True, kw_only=True, tag="task.submitted"):
    """The API (or CLI) accepted a task spec. `spec` is the validated spec as plain JSON."""

    task: str
    name: str
    spec: dict[str, Any]
    simulate: bool = False  # rehearse on simulated engines and GPUs, whatever deployment_mode says
    submitted_by: str = ""
    cloned_from: str | None = None


class DatasetRef(msgspec.Struct, frozen=True, kw_only=True):
    """Which prompts a task replays: fetched from `url` (its bytes' sha256), `prompts` of them, stored
    as object `object` (their sha256) in the autotune-datasets bucket."""

    url: str
    sha256: str
    prompts: int
    object: str


class TaskDatasetFetched(Event, frozen=True, kw_only=True, tag="task.dataset_fetched"):
    """The scheduler service fetched the task's replay dataset (benchmark.dataset_url) and stored its
    prompts for the hosts, before the task started; every host replays exactly these."""

    task: str
    url: str
    sha256: str  # of the file as fetched
    prompts: int
    object: str  # the prompt list's name in the autotune-datasets bucket (its sha256)
    size: int = 0  # bytes fetched
    member: str = ""  # the file the prompts came from (inside an archive: its path there)
    format: str = ""  # csv | jsonl | json
    rows: int = 0
    skipped: int = 0  # rows that could not be read
    duplicates: int = 0  # exact repeats dropped (dataset_deduplicate)
    deduplicate: bool = True
    cached: bool = False  # read from the scheduler's cache of this URL

    def ref(self) -> DatasetRef:
        return DatasetRef(url=self.url, sha256=self.sha256, prompts=self.prompts, object=self.object)


class TaskStarted(Event, frozen=True, kw_only=True, tag="task.started"):
    """The scheduler accepted the task and began planning."""

    task: str
    strategy: str
    space_size: int | None = None  # None for continuous spaces
    budget: int = 0  # experiments at most


class TaskRejected(Event, frozen=True, kw_only=True, tag="task.rejected"):
    """The scheduler refused a submitted task (e.g. a spec it cannot expand)."""

    task: str
    reason: str
    path: str = ""


class TaskCancelRequested(Event, frozen=True, kw_only=True, tag="task.cancel_requested"):
    """A user asked to cancel a task (API/CLI)."""

    task: str
    reason: str = ""
    requested_by: str = ""


class TaskCompleted(Event, frozen=True, kw_only=True, tag="task.completed"):
    """The scheduler finished a task: budget spent, grid exhausted, time budget or convergence."""

    task: str
    reason: str
    experiments: int = 0
    best_experiment: int | None = None
    best_attempt: int | None = None
    best_score: float | None = None
    best_parameters: Params | None = None
    pareto: list[int] = []


class TaskFailed(Event, frozen=True, kw_only=True, tag="task.failed"):
    """The scheduler gave up on a task (e.g. no experiment could succeed)."""

    task: str
    reason: str


class TaskCancelled(Event, frozen=True, kw_only=True, tag="task.cancelled"):
    """The scheduler stopped a cancelled task once none of its experiments was running."""

    task: str
    experiments: int = 0


# --- experiments -------------------------------------------------------------------------------------


class ExperimentPlanned(Event, frozen=True, kw_only=True, tag="experiment.planned"):
    """The scheduler chose a configuration (experiment n) or re-planned a retry (attempt > 0)."""

    task: str
    n: int
    attempt: int = 0
    parameters: Params
    gpus: int = 1
    retry_of: str | None = None  # the failure that caused this attempt


class ExperimentAssigned(Event, frozen=True, kw_only=True, tag="experiment.assigned"):
    """The scheduler placed an experiment attempt on a host's GPUs. Addressed to that host."""

    task: str
    n: int
    attempt: int = 0
    host: str
    instance: str = ""  # the runner instance it was placed with; another instance must not run it
    gpu_indices: list[int] = []
    gpu_uuids: list[str] = []
    parameters: Params
    spec: dict[str, Any]  # the task spec, so the runner needs nothing else
    deployment_mode: str = "simulated"  # effective runtime on that host
    timeout_s: float = 1800.0
    simulated: bool = False
    gpu_type: str = ""  # what the host's GPUs are (the simulator imitates it)
    dataset: DatasetRef | None = None  # the prompts to replay (the task's `dataset_fetched`)


class ExperimentWaiting(Event, frozen=True, kw_only=True, tag="experiment.waiting"):
    """The scheduler could not place a planned attempt, and says why. Recorded when the reason
    changes (a changed count at most every 30 s), not every round."""

    task: str
    n: int
    attempt: int = 0
    reason: str
    fits: bool = True  # some live host could run it once it has room; False: none can (unplaceable after a grace)
    gpus: int = 1


class ExperimentCancelRequested(Event, frozen=True, kw_only=True, tag="experiment.cancel_requested"):
    """The scheduler asked the host running an experiment attempt to stop it."""

    task: str
    n: int
    attempt: int = 0
    host: str
    reason: str = ""


class ExperimentStarted(Event, frozen=True, kw_only=True, tag="experiment.started"):
    """The runner launched the engine."""

    task: str
    n: int
    attempt: int = 0
    host: str
    instance: str
    runtime: str
    command: list[str] = []
    handle: str = ""  # pid, container id or deployment name
    device: str = ""  # "cpu": a real engine serving on the host's CPU (no GPU); "" for GPUs (or simulated ones)
    env: dict[str, str] = {}  # what autotune set in the engine's environment (task and host configuration; never secrets)


class ExperimentReady(Event, frozen=True, kw_only=True, tag="experiment.ready"):
    """The runner saw the engine answer its health check."""

    task: str
    n: int
    attempt: int = 0
    host: str
    startup_s: float


class ExperimentProgress(Event, frozen=True, kw_only=True, tag="experiment.progress"):
    """The runner finished one benchmark run (scenario x concurrency)."""

    task: str
    n: int
    attempt: int = 0
    host: str
    run_index: int
    runs_total: int
    run: RunMetrics


class TelemetrySummary(msgspec.Struct, frozen=True, kw_only=True):
    """The leased GPUs during the benchmark window."""

    samples: int = 0
    mean_util_gpu: float | None = None
    max_util_gpu: float | None = None
    max_memory_used_mib: float | None = None
    mean_power_w: float | None = None
    max_temperature_c: float | None = None


class EngineMetricsSummary(msgspec.Struct, frozen=True, kw_only=True):
    """The engine's own Prometheus /metrics, scraped about once a second during the benchmark window:
    the queue and the KV cache explain a slow configuration (full cache, preempting, requests waiting).
    Gauges as mean and max over the samples; counters as their increase over the window."""

    source: str = ""  # the metric family scraped: "vllm" | "sglang"; "" when none answered
    samples: int = 0
    mean_running: float | None = None  # requests being decoded or prefilled
    max_running: float | None = None
    mean_waiting: float | None = None  # requests queued for a slot or for KV cache
    max_waiting: float | None = None
    mean_kv_cache_usage: float | None = None  # fraction of the KV cache in use, 0..1
    max_kv_cache_usage: float | None = None
    preemptions: float | None = None  # requests evicted for lack of KV cache (recomputed later)
    prompt_tokens: float | None = None  # prefilled tokens, as the engine counts them
    generation_tokens: float | None = None  # generated tokens, as the engine counts them


class ExperimentCompleted(Event, frozen=True, kw_only=True, tag="experiment.completed"):
    """The runner benchmarked the engine and scored the result (lower score is better)."""

    task: str
    n: int
    attempt: int = 0
    host: str
    metrics: ExperimentMetrics
    score: float
    objective_value: float = 0.0
    objectives: list[float] = []
    slo_met: bool = True
    slo_violations: dict[str, float] = {}
    hard_fail: bool = False
    startup_s: float = 0.0
    duration_s: float = 0.0
    telemetry: TelemetrySummary = TelemetrySummary()
    engine: EngineMetricsSummary = EngineMetricsSummary()


FAILURE_KINDS = (
    "oom",
    "startup_timeout",
    "crashed",
    "unhealthy",
    "benchmark_error",
    "timeout",
    "gpus_busy",
    "cancelled",
    "runner_restarted",
    "host_lost",
    "slo_hard_fail",
    "launch_error",
    "unplaceable",  # no live host could ever fit it (the scheduler, after a grace period)
)
RETRYABLE = frozenset({"gpus_busy", "runner_restarted", "host_lost", "launch_error"})


class ExperimentFailed(Event, frozen=True, kw_only=True, tag="experiment.failed"):
    """The runner (or the scheduler, for a lost host) recorded that an attempt failed."""

    task: str
    n: int
    attempt: int = 0
    host: str = ""
    kind: str
    stage: str = "benchmark"  # placement | launch | startup | benchmark
    retryable: bool = False  # an infrastructure failure: the scheduler re-plans it
    message: str = ""
    log_tail: list[str] = []
    startup_s: float | None = None
    duration_s: float = 0.0
    metrics: ExperimentMetrics | None = None
    engine: EngineMetricsSummary = EngineMetricsSummary()  # what the engine reported until it failed


class ExperimentCancelled(Event, frozen=True, kw_only=True, tag="experiment.cancelled"):
    """The runner stopped an attempt on request and freed its GPUs."""

    task: str
    n: int
    attempt: int = 0
    host: str = ""
    reason: str = ""


# --- hosts -------------------------------------------------------------------------------------------


class GpuInfo(msgspec.Struct, frozen=True, kw_only=True):
    index: int
    uuid: str
    name: str
    memory_total_mib: float = 0.0


class HostRegistered(Event, frozen=True, kw_only=True, tag="host.registered"):
    """A runner instance started and announced its host's GPUs, runtimes and engines."""

    host: str
    instance: str
    hostname: str = ""
    gpus: list[GpuInfo] = []
    runtimes: list[str] = []
    engines: list[str] = []
    simulated: bool = False
    node: str | None = None
    version: str = ""
    engine_paths: dict[str, str] = {}  # engine → the executable this host runs it with (`--engine vllm=/opt/vllm/bin/vllm`)
    cpu_slots: int = 0  # real engines this host serves on its CPU at once (no GPU needed); 0: none
    cpu_engines: list[str] = []  # the engines it serves on CPU


class HostDrainRequested(Event, frozen=True, kw_only=True, tag="host.drain_requested"):
    """A user asked a host to take no new experiments (API/CLI)."""

    host: str
    requested_by: str = ""


class HostDrained(Event, frozen=True, kw_only=True, tag="host.drained"):
    """The runner finished its running experiments after a drain request."""

    host: str
    instance: str = ""


class HostRemoved(Event, frozen=True, kw_only=True, tag="host.removed"):
    """A user removed a host from the fleet (API/CLI)."""

    host: str
    requested_by: str = ""


class HostLost(Event, frozen=True, kw_only=True, tag="host.lost"):
    """The scheduler saw a host's liveness key expire."""

    host: str
    instance: str = ""


class HostDeployStarted(Event, frozen=True, kw_only=True, tag="host.deploy_started"):
    """`autotune deploy` / `undeploy` (CLI or API) began changing a machine: who, where, which release."""

    host: str
    deploy: str  # this operation's id; every step and the outcome carry it
    action: str  # deploy | upgrade | reconfigure (same release, new settings) | rollback | undeploy
    target: str = ""  # user@address:port (no secrets)
    machine: str = ""  # the machine's SSH host key fingerprint: what makes it the same machine
    version: str = ""
    release: str = ""  # <version>-<digest of the wheel's contents>
    previous_release: str = ""
    via: str = "direct"  # direct | ssh-tunnel
    requested_by: str = ""


class HostDeployStep(Event, frozen=True, kw_only=True, tag="host.deploy_step"):
    """One step of a deploy finished, was skipped (nothing to do) or failed, and how long it took."""

    host: str
    deploy: str
    step: str  # preflight | upload | install | credentials | drain | stop | switch | start | registered | rollback | remove | revoke
    status: str = "done"  # done | skipped | failed
    seconds: float = 0.0
    detail: str = ""


class HostDeployFinished(Event, frozen=True, kw_only=True, tag="host.deploy_finished"):
    """The outcome of a deploy, upgrade, rollback or undeploy (recorded whatever happened)."""

    host: str
    deploy: str
    action: str
    outcome: str  # succeeded | unchanged | failed | rolled_back
    target: str = ""
    machine: str = ""
    version: str = ""
    release: str = ""  # what runs on the host now ("" after an undeploy, or a first deploy that failed)
    previous_release: str = ""
    via: str = "direct"
    prefix: str = ""  # where it is installed on the host
    message: str = ""
    seconds: float = 0.0
    steps: dict[str, float] = {}  # step → seconds
    requested_by: str = ""


class HostReturned(Event, frozen=True, kw_only=True, tag="host.returned"):
    """A runner instance whose liveness key had expired (it was paused, partitioned, or declared lost)
    holds its host again, after fencing: `kept` are the attempts still its own, `fenced` those it
    found taken from it, whose engines it stopped before it took any new work. Online again (or still
    draining)."""

    host: str
    instance: str
    kept: list[str] = []  # "<task>/<n>/<attempt>"
    fenced: list[str] = []
    unaccounted: list[str] = []  # engines labelled for this host that it could not stop (their GPUs stay busy)
    draining: bool = False
    away_s: float = 0.0  # from its last confirmed renewal to the moment it held the key again


class HostStopped(Event, frozen=True, kw_only=True, tag="host.stopped"):
    """The runner stopped cleanly (asked to), after its own attempts were accounted for (each ended, or
    reported failed as `runner_restarted`); its liveness key is removed next. A stop, not a loss."""

    host: str
    instance: str
    reason: str = ""


# --- telemetry and logs ------------------------------------------------------------------------------


class GpuProcess(msgspec.Struct, frozen=True, array_like=True):
    pid: int
    used_memory_mib: float


class GpuSample(Event, frozen=True, kw_only=True, tag="gpu.sample"):
    """gpumon's once-a-second reading of one GPU."""

    host: str
    index: int
    uuid: str = ""
    name: str = ""
    memory_total_mib: float = 0.0
    memory_used_mib: float = 0.0
    memory_free_mib: float = 0.0
    util_gpu: float = 0.0
    util_memory: float = 0.0
    temperature_c: float = 0.0
    power_w: float = 0.0
    power_limit_w: float = 0.0
    sm_clock_mhz: float = 0.0
    mem_clock_mhz: float = 0.0
    processes: list[GpuProcess] = []
    node: str | None = None
    simulated: bool = False


class LogLines(Event, frozen=True, kw_only=True, tag="log.lines"):
    """The runner's batch of engine (and runner) output lines for one experiment attempt."""

    task: str
    n: int
    attempt: int = 0
    host: str = ""
    stream: str = "engine"  # engine | runner
    seq: int = 0
    lines: list[str] = []


AnyEvent = (
    TaskSubmitted
    | TaskDatasetFetched
    | TaskStarted
    | TaskRejected
    | TaskCancelRequested
    | TaskCompleted
    | TaskFailed
    | TaskCancelled
    | ExperimentPlanned
    | ExperimentAssigned
    | ExperimentWaiting
    | ExperimentCancelRequested
    | ExperimentStarted
    | ExperimentReady
    | ExperimentProgress
    | ExperimentCompleted
    | ExperimentFailed
    | ExperimentCancelled
    | HostRegistered
    | HostDrainRequested
    | HostDrained
    | HostRemoved
    | HostLost
    | HostDeployStarted
    | HostDeployStep
    | HostDeployFinished
    | HostReturned
    | HostStopped
    | GpuSample
    | LogLines
)

ALL_EVENT_TYPES: tuple[type[Event], ...] = AnyEvent.__args__  # type: ignore[attr-defined]

encoder = msgspec.json.Encoder()
decoder = msgspec.json.Decoder(AnyEvent)

# experiment-scoped events that a runner writes while it owns the attempt
TERMINAL_EXPERIMENT = (ExperimentCompleted, ExperimentFailed, ExperimentCancelled)
TERMINAL_TASK = (TaskCompleted, TaskFailed, TaskCancelled, TaskRejected)


def encode(event: Event) -> bytes:
    return encoder.encode(event)


def decode(data: bytes) -> AnyEvent:
    """Decode one event; raises msgspec.DecodeError/ValidationError for bad or unknown payloads."""
    return decoder.decode(data)


def tag_of(event_type: type[Event]) -> str:
    return event_type.__struct_config__.tag  # type: ignore[return-value]


# --- deterministic ids ----------------------------------------------------------------------------------


def exp_id(task: str, n: int, attempt: int, what: str) -> str:
    return f"{task}.{n}.{attempt}.{what}"


def task_event_id(task: str, what: str) -> str:
    return f"{task}.{what}"
