"""The event catalog: every fact autotune records, as frozen msgspec Structs in one tagged union.

Rules (ARCHITECTURE.md, "Rules that keep it correct"): each event has a deterministic `id` derived from what it records (sent as
`Nats-Msg-Id`, so a retried publish is stored once) and a tz-aware UTC `at`. Adding a field with a
default is compatible; anything else is a new event type. Unknown fields are ignored when decoding,
so older services read newer events. The wire tag is explicit: renaming a class changes nothing.

The types live by subject (tasks, experiments, hosts, telemetry, on the `base` Event); this module holds
the union, its codec and the deterministic ids, and is the one place callers import events from.
"""

from __future__ import annotations

import msgspec

from .base import Event, Params, now
from .experiments import (
    FAILURE_KINDS,
    RETRYABLE,
    EngineMetricsSummary,
    ExperimentAssigned,
    ExperimentCancelled,
    ExperimentCancelRequested,
    ExperimentCompleted,
    ExperimentFailed,
    ExperimentPlanned,
    ExperimentProgress,
    ExperimentReady,
    ExperimentStarted,
    ExperimentWaiting,
    TelemetrySummary,
)
from .hosts import (
    GpuInfo,
    HostDeployFinished,
    HostDeployStarted,
    HostDeployStep,
    HostDrained,
    HostDrainRequested,
    HostLost,
    HostRegistered,
    HostRemoved,
    HostReturned,
    HostStopped,
)
from .tasks import (
    DatasetRef,
    TaskCancelled,
    TaskCancelRequested,
    TaskCompleted,
    TaskDatasetFetched,
    TaskFailed,
    TaskRejected,
    TaskStarted,
    TaskSubmitted,
)
from .telemetry import GpuProcess, GpuSample, LogLines

__all__ = [
    "ALL_EVENT_TYPES", "FAILURE_KINDS", "RETRYABLE", "TERMINAL_EXPERIMENT", "TERMINAL_TASK",
    "AnyEvent", "DatasetRef", "EngineMetricsSummary", "Event", "GpuInfo", "GpuProcess", "Params", "TelemetrySummary",
    "TaskSubmitted", "TaskDatasetFetched", "TaskStarted", "TaskRejected", "TaskCancelRequested", "TaskCompleted", "TaskFailed",
    "TaskCancelled", "ExperimentPlanned", "ExperimentAssigned", "ExperimentWaiting", "ExperimentCancelRequested",
    "ExperimentStarted", "ExperimentReady", "ExperimentProgress", "ExperimentCompleted", "ExperimentFailed", "ExperimentCancelled",
    "HostRegistered", "HostDrainRequested", "HostDrained", "HostRemoved", "HostLost", "HostDeployStarted", "HostDeployStep",
    "HostDeployFinished", "HostReturned", "HostStopped", "GpuSample", "LogLines",
    "decode", "decoder", "encode", "encoder", "exp_id", "now", "tag_of", "task_event_id",
]  # fmt: skip

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
