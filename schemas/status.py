"""The status vocabulary: what a task, an experiment attempt and a host can be, in one place.

The projector writes these into the read model, the scheduler keeps them in its state, and every
surface (CLI, API, dashboard, MCP, metrics) filters and shows them. They are StrEnums, so a member
is also the plain string that lands in DuckDB and JSON (`TaskStatus.RUNNING == "running"`).
"""

from __future__ import annotations

from enum import StrEnum


class TaskStatus(StrEnum):
    SUBMITTED = "submitted"  # accepted by the API or CLI, not yet started by the scheduler
    RUNNING = "running"
    CANCELLING = "cancelling"  # a cancel was asked for; engines are being stopped
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REJECTED = "rejected"  # the scheduler could not plan the spec


TASK_TERMINAL = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.REJECTED})
TASK_ACTIVE = frozenset(TaskStatus) - TASK_TERMINAL


class ExperimentStatus(StrEnum):
    """One attempt of an experiment. The scheduler's state uses planned/assigned/running and the
    terminal ones; the read model also shows `ready` (engine healthy, benchmarking) and `cancelling`."""

    PLANNED = "planned"
    ASSIGNED = "assigned"
    RUNNING = "running"
    READY = "ready"
    CANCELLING = "cancelling"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


EXPERIMENT_TERMINAL = frozenset({ExperimentStatus.COMPLETED, ExperimentStatus.FAILED, ExperimentStatus.CANCELLED})
# placed on a host: the attempt holds that host's GPUs until it ends
EXPERIMENT_ON_HOST = frozenset({ExperimentStatus.ASSIGNED, ExperimentStatus.RUNNING, ExperimentStatus.READY, ExperimentStatus.CANCELLING})
EXPERIMENT_ACTIVE = EXPERIMENT_ON_HOST | {ExperimentStatus.PLANNED}
# the order in which a row may move: a late or replayed event never moves it back
EXPERIMENT_RANK = {
    ExperimentStatus.PLANNED: 0, ExperimentStatus.ASSIGNED: 1, ExperimentStatus.RUNNING: 2, ExperimentStatus.READY: 3,
    ExperimentStatus.CANCELLING: 4, ExperimentStatus.COMPLETED: 5, ExperimentStatus.FAILED: 5, ExperimentStatus.CANCELLED: 5,
}  # fmt: skip


class HostLifecycle(StrEnum):
    """What the log says about a host (the `hosts` table's `status`, the scheduler's view of it)."""

    ONLINE = "online"  # its runner registered, or came back after a loss (`host.returned`)
    DRAINING = "draining"
    DRAINED = "drained"
    REMOVED = "removed"
    LOST = "lost"  # its liveness key expired while it was online (the scheduler's `host.lost`)
    STOPPED = "stopped"  # its runner stopped cleanly after accounting for its attempts (`host.stopped`)


# a host the scheduler expects to hear from: its key vanishing means it was lost
HOST_EXPECTED = frozenset({HostLifecycle.ONLINE, HostLifecycle.DRAINING, HostLifecycle.DRAINED})
# a host the scheduler places no new work on, even while its key is live
HOST_CLOSED = frozenset({HostLifecycle.DRAINING, HostLifecycle.DRAINED, HostLifecycle.REMOVED})


class HostStatus(StrEnum):
    """What people see: the log's lifecycle overlaid with the live liveness key."""

    ONLINE = "online"
    BUSY = "busy"
    DRAINING = "draining"
    OFFLINE = "offline"  # no liveness key, and the log says nothing of why (yet)
    LOST = "lost"  # no liveness key: it stopped answering (the log says `lost`)
    STOPPED = "stopped"  # no liveness key: its runner stopped cleanly
    REMOVED = "removed"


def sql_list(values: frozenset[StrEnum] | tuple[StrEnum, ...]) -> str:
    """`('a', 'b')` for an SQL `IN`, in a stable order (the values are this module's, never input)."""
    return "(" + ", ".join(f"'{v.value}'" for v in sorted(values)) + ")"
