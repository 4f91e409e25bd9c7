"""What users ask for, as events: submit a task, cancel it, drain or remove a host.

Used by the API and the command line alike, so both enforce the same rules: a task name is claimed
atomically in the `autotune-names` bucket before `submitted` is published, so two clients can never
both get it; the `submitted` append also expects an empty task history.
"""

from __future__ import annotations

import contextlib
from typing import Any

import msgspec

from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from autotune.schemas.spec import TaskSpec
from autotune.shared import bus


class DuplicateTask(Exception):
    def __init__(self, task: str) -> None:
        super().__init__(f"a task named `{task}` already exists; choose another task_name (or clone it)")
        self.task = task


class UnknownTask(Exception):
    def __init__(self, task: str) -> None:
        super().__init__(f"no task `{task}`")
        self.task = task


def spec_to_dict(spec: TaskSpec) -> dict[str, Any]:
    return msgspec.to_builtins(spec)


async def submit_task(js, spec: TaskSpec, *, simulate: bool = False, submitted_by: str = "", cloned_from: str | None = None) -> tuple[str, int]:
    """Claim the name, publish `task.submitted`. Returns (task id, stream sequence)."""
    task = spec.task_id
    names = await js.key_value(subj.NAMES_BUCKET)
    if await bus.kv_claim(names, task, spec.task_name.encode()) is None:
        raise DuplicateTask(task)
    e = ev.TaskSubmitted(
        id=ev.task_event_id(task, "submitted"), task=task, name=spec.task_name, spec=spec_to_dict(spec), simulate=simulate,
        submitted_by=submitted_by, cloned_from=cloned_from,
    )
    try:
        ack = await bus.append(js, subj.task(task, "submitted"), e, expect_seq=0, expect_filter=subj.task_level(task))
    except bus.StaleWrite:
        raise DuplicateTask(task) from None
    except BaseException:
        with contextlib.suppress(Exception):
            await names.delete(task)  # nothing was published: free the name again
        raise
    return task, ack.seq


async def cancel_task(js, task: str, *, reason: str = "", requested_by: str = "") -> int:
    """Publish `task.cancel_requested` (a command: no expected sequence; the scheduler acts on it)."""
    if await bus.last_seq(js, subj.task(task, "submitted")) == 0:
        raise UnknownTask(task)
    e = ev.TaskCancelRequested(id=ev.task_event_id(task, "cancel_requested"), task=task, reason=reason, requested_by=requested_by)
    ack = await bus.append(js, subj.task(task, "cancel_requested"), e)
    return ack.seq


async def drain_host(js, host: str, *, requested_by: str = "") -> int:
    import time

    e = ev.HostDrainRequested(id=f"host.{host}.drain.{int(time.time())}", host=host, requested_by=requested_by)
    return (await bus.append(js, subj.host(host, "drain_requested"), e)).seq


async def remove_host(js, host: str, *, requested_by: str = "") -> int:
    import time

    e = ev.HostRemoved(id=f"host.{host}.removed.{int(time.time())}", host=host, requested_by=requested_by)
    return (await bus.append(js, subj.host(host, "removed"), e)).seq
