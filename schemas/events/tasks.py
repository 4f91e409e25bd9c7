"""Task events: a task's life from submission (API/CLI) through planning to its outcome (scheduler)."""

from __future__ import annotations

from typing import Any

import msgspec

from .base import Event, Params


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
