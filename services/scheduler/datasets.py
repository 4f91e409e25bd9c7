"""The scheduler service's one effect besides appending: fetching a task's replay dataset.

Why here, and why outside `decide`: the dataset must be fetched once per task, before its first
experiment, so that a bad URL fails the task before any engine starts and every host replays the
same prompts. The scheduler is the one service that sees every task at that moment and already
writes task-level events, so it owns the step; but a download can take minutes (300 s, three
tries), so it is an effect the service runs beside its decision loop, never inside the pure
`decide` (which only holds a task with a `benchmark.dataset_url` back until its
`task.dataset_fetched` is in the log). Only the leader fetches; a leader elected mid-fetch fetches
again (the download is cached per URL, the object is content-addressed, the event's id is
deterministic), and an append refused because the task moved on is simply tried again next round.

Outcome, as events: `task.dataset_fetched` (URL, file sha256, prompt count, object name), after
which `decide` starts the task; or `task.failed` whose reason names the URL and the problem.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from autotune.scheduler.state import State, Task
from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from autotune.shared import bus
from autotune.shared.dataset import DatasetError
from autotune.shared.log import get_logger

log = get_logger("scheduler")


def needs_dataset(task: Task) -> bool:
    """A valid submitted task that replays a dataset not fetched yet (so not startable yet)."""
    return (
        task.status == "submitted" and task.spec_error is None and task.spec is not None
        and task.spec.benchmark.dataset_url is not None and task.dataset is None
    )  # fmt: skip


class DatasetFetcher:
    """Runs the fetches the state asks for, a few at a time, and appends their outcome."""

    def __init__(self, cache_dir: str | Path, *, parallel: int = 2, tries: int = 3, timeout_s: float = 300.0) -> None:
        self.cache_dir = Path(cache_dir)
        self.limit = asyncio.Semaphore(parallel)
        self.tries, self.timeout_s = tries, timeout_s
        self.running: dict[str, asyncio.Task] = {}

    def poll(self, js, state: State) -> None:
        """Start a fetch for every task that needs one and has none running."""
        for task in state.tasks.values():
            if needs_dataset(task) and not task.cancel_requested and task.id not in self.running:
                self.running[task.id] = asyncio.create_task(self._fetch(js, state, task.id), name=f"dataset-{task.id}")

    async def close(self) -> None:
        for t in self.running.values():
            t.cancel()
        await asyncio.gather(*self.running.values(), return_exceptions=True)
        self.running.clear()

    async def _fetch(self, js, state: State, task_id: str) -> None:
        from autotune.shared.dataset_store import prepare, put_prompts

        try:
            task = state.tasks[task_id]
            spec = task.spec
            assert spec is not None and spec.benchmark.dataset_url is not None
            url, dedupe = spec.benchmark.dataset_url, spec.benchmark.dataset_deduplicate
            async with self.limit:
                log.info("fetching the task's dataset", task=task_id, url=url)
                try:
                    fetched, prompts = await prepare(url, self.cache_dir, deduplicate=dedupe, tries=self.tries, timeout_s=self.timeout_s)
                    name, _ = await put_prompts(js, prompts.prompts)
                except DatasetError as e:
                    await self._append(js, state, task_id, ev.TaskFailed(
                        id=ev.task_event_id(task_id, "failed"), task=task_id, reason=f"benchmark.dataset_url {url}: {e}",
                    ))  # fmt: skip
                    log.warning("the task's dataset cannot be used; task failed", task=task_id, url=url, error=str(e))
                    return
            await self._append(js, state, task_id, ev.TaskDatasetFetched(
                id=ev.task_event_id(task_id, "dataset_fetched"), task=task_id, url=url, sha256=fetched.sha256,
                prompts=len(prompts.prompts), object=name, size=len(fetched.data), member=prompts.member, format=prompts.format,
                rows=prompts.rows, skipped=prompts.skipped, duplicates=prompts.duplicates, deduplicate=dedupe, cached=fetched.cached,
            ))  # fmt: skip
            log.info("dataset ready", task=task_id, url=url, prompts=len(prompts.prompts), skipped=prompts.skipped, duplicates=prompts.duplicates)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # NATS away, the object store refusing: the next round tries again
            log.warning("dataset fetch did not finish; trying again", task=task_id, error=repr(e))
            await asyncio.sleep(2.0)
        finally:
            self.running.pop(task_id, None)

    async def _append(self, js, state: State, task_id: str, event: ev.Event) -> None:
        task = state.tasks[task_id]
        if task.status != "submitted" or task.dataset is not None:
            return  # cancelled, or another leader recorded it meanwhile
        what = ev.tag_of(type(event)).split(".", 1)[1]
        try:
            await bus.append(js, subj.task(task_id, what), event, expect_seq=task.last_seq, expect_filter=subj.task_level(task_id))
        except bus.StaleWrite:
            log.info("the task moved on while its dataset was fetched; deciding again", task=task_id)
