"""What users ask for, as events: submit a task, clone it, cancel it, drain or remove a host.

Used by the API and the command line alike, so both enforce the same rules: a task name is claimed
atomically in the `autotune-names` bucket before `submitted` is published, so two clients can never
both get it; the `submitted` append also expects an empty task history. A finished task is never
edited: re-running it is a new task cloned from its recorded spec, with `cloned_from` set.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import math
import time
from typing import Any, NamedTuple

import msgspec
from nats.js.errors import NotFoundError

from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from autotune.schemas.spec import SpecError, TaskSpec, is_simulated, parse_spec, spec_from_obj
from autotune.shared import bus
from autotune.shared.expand import ExpandError, SearchSpace, experiment_space
from autotune.shared.kv import kv_claim


class DuplicateTask(Exception):
    def __init__(self, task: str) -> None:
        super().__init__(f"a task named `{task}` already exists; choose another task_name (or clone it)")
        self.task = task


class UnknownTask(Exception):
    def __init__(self, task: str) -> None:
        super().__init__(f"no task `{task}`; `autotune tasks` lists them")
        self.task = task


class UnknownHost(Exception):
    def __init__(self, host: str) -> None:
        super().__init__(f"no host `{host}`; `autotune hosts` lists them")
        self.host = host


def spec_to_dict(spec: TaskSpec) -> dict[str, Any]:
    return msgspec.to_builtins(spec)


INT_RANGE = (-(2**63), 2**63 - 1)


def check_numbers(value: Any, path: str = "$") -> None:
    """Refuse what the event log cannot carry faithfully: NaN and infinities (JSON has none) and
    integers beyond 64 bits. Raises SpecError with the field path."""
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise SpecError(f"{value} is not a finite number", path)
    if isinstance(value, int) and not INT_RANGE[0] <= value <= INT_RANGE[1]:
        raise SpecError(f"{value} is out of range (64-bit integers)", path)
    if isinstance(value, dict):
        for k, v in value.items():
            check_numbers(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_numbers(v, f"{path}[{i}]")


def parse(text: str | bytes, *, source: str = "", fmt: str | None = None) -> TaskSpec:
    """A task file (JSON or YAML) as a validated spec; every refusal is a SpecError with the path."""
    try:
        return _checked(parse_spec(text, source=source, fmt=fmt))
    except SpecError:
        raise
    except (ValueError, TypeError, ArithmeticError, RecursionError) as e:  # a value the validators did not expect
        raise SpecError(f"cannot accept this task file: {type(e).__name__}: {e}", source=source) from None


def from_obj(raw: Any) -> TaskSpec:
    try:
        return _checked(spec_from_obj(raw))
    except SpecError:
        raise
    except (ValueError, TypeError, ArithmeticError, RecursionError) as e:
        raise SpecError(f"cannot accept this task spec: {type(e).__name__}: {e}") from None


def _checked(spec: TaskSpec) -> TaskSpec:
    check_numbers(spec_to_dict(spec))
    return spec


class Validated(NamedTuple):
    """A task spec that would be accepted, and the search space the scheduler would expand it into."""

    spec: TaskSpec
    space: SearchSpace


def validate(source: str | bytes | dict[str, Any], *, name: str = "") -> Validated:
    """A task file (text, JSON or YAML) or an already parsed object, checked as submit checks it and
    expanded as the scheduler will (quant and parallel presets into engine flags), so that what the
    scheduler would reject at start is refused here too. Raises SpecError with path and line."""
    spec = from_obj(source) if isinstance(source, dict) else parse(source, source=name)
    try:
        return Validated(spec, experiment_space(spec))
    except ExpandError as e:
        raise SpecError(e.message, e.path, source=name) from None


def valid_token(value: str) -> bool:
    return bool(subj.TOKEN.match(value))


class Submitted(NamedTuple):
    """A task recorded in the log: its id, the sequence of its `submitted` event, the spec, and
    whether it runs on simulated engines and GPUs."""

    task: str
    seq: int
    spec: TaskSpec
    simulated: bool


async def submit_task(js, spec: TaskSpec, *, simulate: bool = False, submitted_by: str = "", cloned_from: str | None = None) -> Submitted:
    """Claim the name, publish `task.submitted`."""
    _checked(spec)
    task = spec.task_id
    names = await js.key_value(subj.NAMES_BUCKET)
    if await kv_claim(names, task, spec.task_name.encode()) is None:
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
    return Submitted(task, ack.seq, spec, is_simulated(simulate, spec.deployment_mode))


async def submitted(js, task: str) -> ev.TaskSubmitted:
    """The `submitted` event of a task, straight from the log (the truth, even while the projector lags)."""
    if not valid_token(task):
        raise UnknownTask(task)
    try:
        msg = await js.get_last_msg(subj.EVENTS_STREAM, subj.task(task, "submitted"))
    except NotFoundError:
        raise UnknownTask(task) from None
    e = ev.decode(msg.data or b"")
    if not isinstance(e, ev.TaskSubmitted):
        raise UnknownTask(task)
    return e


def merge_overrides(spec: dict[str, Any], overrides: dict[str, Any], path: str = "$") -> dict[str, Any]:
    """`overrides` laid over `spec`: mappings merge key by key, anything else replaces; None removes
    the field (back to its default)."""
    out = copy.deepcopy(spec)
    for key, value in overrides.items():
        if not isinstance(key, str):
            raise SpecError("override keys must be field names", path)
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_overrides(out[key], value, f"{path}.{key}")
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """`optimization.max_iterations=20` (the value read as YAML: numbers, booleans, lists) → nested overrides."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"`{item}` is not FIELD=VALUE, e.g. optimization.max_iterations=20")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        parts = [p for p in key.strip().split(".")]
        if any(not p for p in parts):
            raise SpecError(f"`{key}` is not a field path, e.g. optimization.max_iterations")
        node = out
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise SpecError(f"`{key}` sets a field inside `{p}`, which is already set to a value")
            node = nxt
        node[parts[-1]] = value
    return out


async def clone_task(
    js,
    source: str,
    *,
    name: str | None = None,
    overrides: dict[str, Any] | None = None,
    simulate: bool | None = None,
    submitted_by: str = "",
) -> Submitted:
    """Submit a new task from `source`'s recorded spec with `overrides`; the source is never touched.

    Without a name the clone is called `<source>-2` (or -3, ... the first one free). `simulate`
    defaults to the source's. Raises UnknownTask, SpecError (path into the spec), DuplicateTask."""
    original = await submitted(js, source)
    overrides = dict(overrides or {})
    if "task_name" in overrides:
        raise SpecError("give the clone's name as `task_name` beside `overrides`, not inside them", "$.overrides.task_name")
    raw = merge_overrides(original.spec, overrides)
    sim = original.simulate if simulate is None else simulate
    candidates = [name] if name else [f"{original.name}-{k}" for k in range(2, 100)]
    for candidate in candidates:
        raw["task_name"] = candidate
        spec = from_obj(raw)
        try:
            return await submit_task(js, spec, simulate=sim, submitted_by=submitted_by, cloned_from=source)
        except DuplicateTask:
            if name:
                raise
    raise DuplicateTask(f"{original.name}-99")


async def cancel_task(js, task: str, *, reason: str = "", requested_by: str = "") -> int:
    """Publish `task.cancel_requested` (a command: no expected sequence; the scheduler acts on it)."""
    if not valid_token(task) or await bus.last_seq(js, subj.task(task, "submitted")) == 0:
        raise UnknownTask(task)
    e = ev.TaskCancelRequested(id=ev.task_event_id(task, "cancel_requested"), task=task, reason=reason, requested_by=requested_by)
    ack = await bus.append(js, subj.task(task, "cancel_requested"), e)
    return ack.seq


async def host_known(js, host: str) -> bool:
    """Whether the log has ever heard of `host` (any host event)."""
    return valid_token(host) and await bus.last_seq(js, f"{subj.PREFIX}.host.{host}.*") > 0


async def drain_host(js, host: str, *, requested_by: str = "") -> int:
    """Ask a host to take no new experiments; its runner finishes what runs and reports `drained`."""
    e = ev.HostDrainRequested(id=f"host.{host}.drain.{int(time.time())}", host=host, requested_by=requested_by)
    return (await bus.append(js, subj.host(host, "drain_requested"), e)).seq


async def remove_host(js, host: str, *, requested_by: str = "") -> int:
    """Take a host out of the fleet: the scheduler places nothing more on it, views list it as removed."""
    e = ev.HostRemoved(id=f"host.{host}.removed.{int(time.time())}", host=host, requested_by=requested_by)
    return (await bus.append(js, subj.host(host, "removed"), e)).seq


class CancelOutcome(msgspec.Struct, kw_only=True):
    """How a cancel ended (`wait_cancelled`): the task's final status, or `cancelling` when the
    timeout passed first, with the experiments stopped meanwhile and those still running."""

    id: str
    seq: int
    status: str
    stopped: list[dict[str, Any]] = []  # {n, attempt, host, outcome}: experiments that ended after the request
    still_running: list[dict[str, Any]] = []  # {n, attempt, host}: only when the timeout passed
    elapsed_s: float = 0.0
    already_ended: bool = False  # the task had ended before the request: nothing was running
    timed_out: bool = False

    @property
    def why_waiting(self) -> str:
        """For a timed-out wait: what has not reported, or that no scheduler is ending the task."""
        if self.still_running:
            left = ", ".join(f"experiment {r['n']} (attempt {r['attempt']}) on {r['host'] or '?'}" for r in self.still_running)
            return f"not yet reported: {left}. A runner that is down is noticed once its liveness key expires (autotune hosts)"
        return "none of its experiments is running, but no scheduler has ended it: is a scheduler running (autotune up)?"


async def wait_cancelled(js, task: str, cancel_seq: int, timeout_s: float, *, on_stopped=None) -> CancelOutcome:
    """Follow the task's events until it ends (or `timeout_s` passes), calling `on_stopped(record)` as
    each running experiment ends after the request at `cancel_seq`.

    A runner writes `experiment.cancelled` only once the engine is gone and its GPUs are free, so a
    status other than `cancelling` means nothing of the task runs any more."""
    t0 = time.monotonic()
    hosts: dict[tuple[int, int], str] = {}
    active: set[tuple[int, int]] = set()
    stopped: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(timeout_s), contextlib.aclosing(bus.replay(js, subj.task_all(task))) as events:
            async for d in events:
                e = d.event
                key = (getattr(e, "n", -1), getattr(e, "attempt", 0))
                if isinstance(e, ev.ExperimentAssigned):
                    hosts[key] = e.host
                    active.add(key)
                elif isinstance(e, ev.TERMINAL_EXPERIMENT):
                    active.discard(key)
                    if d.seq > cancel_seq:
                        record = {"n": key[0], "attempt": key[1], "host": hosts.get(key) or e.host, "outcome": ev.tag_of(type(e))}
                        stopped.append(record)
                        if on_stopped is not None:
                            on_stopped(record)
                elif isinstance(e, ev.TERMINAL_TASK):
                    return CancelOutcome(
                        id=task, seq=cancel_seq, status=ev.tag_of(type(e)).removeprefix("task."), stopped=stopped,
                        elapsed_s=round(time.monotonic() - t0, 3), already_ended=d.seq < cancel_seq,
                    )  # fmt: skip
    except TimeoutError:
        pass
    return CancelOutcome(
        id=task, seq=cancel_seq, status="cancelling", stopped=stopped, timed_out=True, elapsed_s=round(time.monotonic() - t0, 3),
        still_running=[{"n": n, "attempt": a, "host": hosts.get((n, a))} for n, a in sorted(active)],
    )  # fmt: skip
