"""Task tools: validate a task spec, submit, list, get (optionally waiting for it to end), its
experiments, one experiment, the best configuration, cancel (destructive), clone."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated, Any, Literal

import msgspec
from mcp.server.mcpserver import Context
from mcp.types import CallToolResult
from pydantic import Field

from autotune import reads
from autotune.mcp.registry import Link, answer, link_of, tool
from autotune.reads import models as m
from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from autotune.schemas.spec import SpecError, is_simulated
from autotune.schemas.status import TaskStatus
from autotune.shared import bus, commands

TaskId = Annotated[str, Field(description="task id (its name, or the name's slug), as list_tasks shows it", max_length=256)]
Spec = Annotated[
    str | dict[str, Any],
    Field(description="a task file in the original autotuner's format: its text (YAML or JSON), or the same as an object. "
                      "The resource autotune://docs/task-file describes every field"),
]  # fmt: skip
SIMULATED = "[SIMULATED engines and GPUs]"


def _sim(flag: bool) -> str:
    return f" {SIMULATED}" if flag else ""


# --- validate, submit, clone ------------------------------------------------------------------------------


@tool("Validate a task spec")
async def validate_task(spec: Spec) -> CallToolResult:
    """Check a task spec exactly as submit_task would, and expand it as the scheduler will (quant and
    parallel presets into engine flags). Answers `valid: false` with the reason, the field path and
    the line, or `valid: true` with the search space: its dimensions and their values, the settings
    every experiment shares, the number of configurations and how many experiments would run."""
    try:
        v = commands.validate(spec)
    except SpecError as e:
        where = f"line {e.line}: {e.path}" if e.line else e.path
        return await answer(None, f"invalid task spec: {where}: {e.message}", {"valid": False, "error": e.message, "path": e.path, "line": e.line})
    s, space = v.spec, v.space
    opt = s.optimization
    size = space.size
    budget = opt.max_iterations if size is None else min(size * opt.repeats, opt.max_iterations)
    dims = [
        {"name": d.name, "kind": d.kind, "size": d.size, "path": d.path,
         **({"values": list(d.values)} if d.kind in ("choice", "bundle") else {"low": d.low, "high": d.high, "log": d.log, "step": d.step})}
        for d in space.dims
    ]  # fmt: skip
    sim = is_simulated(None, s.deployment_mode)
    out = {
        "valid": True, "task_name": s.task_name, "id": s.task_id, "engine": s.engine, "model": s.model_id, "deployment_mode": s.deployment_mode,
        "simulate": sim, "strategy": opt.strategy, "objectives": opt.objectives or [opt.objective], "space_size": size, "experiments": budget,
        "dimensions": dims, "fixed": space.fixed, "spec": commands.spec_to_dict(s),
    }  # fmt: skip
    shape = " x ".join(f"{d['name']} ({d['size'] if d['size'] is not None else 'continuous'})" for d in dims) or "one configuration"
    summary = (f"valid: task {s.task_id} tunes {s.engine} {s.model_id} with {opt.strategy}; search space {shape} = "
               f"{size if size is not None else 'continuous'} configuration(s); {budget} experiment(s) at most{_sim(sim)}")  # fmt: skip
    return await answer(None, summary, out)


@tool("Submit a task", reads=False)
async def submit_task(
    ctx: Context, spec: Spec,
    simulate: Annotated[bool, Field(description="rehearse on simulated engines and GPUs of the types it asks for, whatever deployment_mode says")] = False,
) -> CallToolResult:  # fmt: skip
    """Submit a task file: it is validated (refused with the field path and line), its name claimed
    (refused if taken), and the scheduler starts it. Follow it with get_task (wait_s waits for its end)."""
    link = link_of(ctx)
    nc = await link.nc()
    spec_ = commands.validate(spec).spec
    task, seq, _, simulated = await commands.submit_task(nc.jetstream(), spec_, simulate=simulate, submitted_by="mcp")
    link.wrote(seq)
    fit = await reads.fleet_fit_or_none(nc, nc.jetstream(), spec_, simulate=simulated)
    unfit = [msgspec.to_builtins(g) for g in fit.unfit] if fit else []
    warning = (f"; warning: the live fleet ({fit.hosts} hosts) cannot run some of its configurations ("
               + "; ".join(f"{g['gpus']} GPUs: {g['reason']}" for g in unfit)
               + "): unless a host that fits joins, they will fail as unplaceable") if fit and unfit else ""  # fmt: skip
    return await answer(link, f"submitted task {task}{_sim(simulated)}; follow it with get_task{warning}",
                        {"id": task, "seq": seq, "simulate": simulated, "unfit": unfit})


@tool("Clone a task with overrides", reads=False)
async def clone_task(
    ctx: Context, task: TaskId,
    name: Annotated[str | None, Field(description="the new task's name (default: <name>-2, -3, ...)", max_length=256)] = None,
    overrides: Annotated[dict[str, Any] | None, Field(description='fields of the task file to change, nested, e.g. {"optimization": {"max_iterations": 20}}; null removes a field')] = None,
    simulate: Annotated[bool | None, Field(description="rehearse on simulated engines and GPUs (default: as the original)")] = None,
) -> CallToolResult:  # fmt: skip
    """Re-run a task as a new one from its recorded spec with overrides; the original is never edited
    and the clone records `cloned_from`."""
    link = link_of(ctx)
    nc = await link.nc()
    new, seq, _, simulated = await commands.clone_task(nc.jetstream(), task, name=name, overrides=overrides, simulate=simulate, submitted_by="mcp")
    link.wrote(seq)
    return await answer(link, f"submitted task {new}, cloned from {task}{_sim(simulated)}",
                        {"id": new, "seq": seq, "cloned_from": task, "simulate": simulated})  # fmt: skip


# --- tasks ------------------------------------------------------------------------------------------------


@tool("List tasks")
async def list_tasks(
    ctx: Context,
    status: Annotated[TaskStatus | None, Field(description="only tasks in this status")] = None,
    name: Annotated[str | None, Field(description="substring of the name or id", max_length=256)] = None,
    limit: Annotated[int, Field(ge=1, le=1000)] = 50,
    offset: Annotated[int, Field(ge=0)] = 0,
) -> CallToolResult:
    """Tasks, newest first: status, strategy, model, experiments done of the budget, best score."""
    link = link_of(ctx)
    page = await reads.list_tasks(await link.nc(), status=status, name=name, limit=limit, offset=offset, min_seq=link.min_seq)
    lines = [f"{t.id} {t.status}{' SIMULATED' if t.simulate else ''} ({t.experiments_completed + t.experiments_failed}/{t.budget or '?'} done"
             + (f", best {t.best_score:.4g} by experiment {t.best_n}" if t.best_score is not None else "") + ")" for t in page.items]  # fmt: skip
    return await answer(link, f"{len(page.items)} of {page.total} task(s)" + (": " + "; ".join(lines) if lines else ""), page)


async def _waiting(nc, link: Link, t: m.TaskDetail) -> str | None:
    """Why a task that is not finished is not moving on, in a sentence (None when it is running experiments)."""
    if t.status == TaskStatus.SUBMITTED:
        return "no scheduler has started it yet: is a scheduler running (autotune up)?"
    if t.status == TaskStatus.CANCELLING:
        return "cancel requested: waiting for its running engines to stop"
    if t.status != TaskStatus.RUNNING:
        return None
    waiting = await reads.rows(nc, "SELECT * FROM experiments WHERE task = ? AND status = 'planned' ORDER BY n", [t.id], min_seq=link.min_seq)
    if not waiting:
        return None
    told = [r.get("wait_reason") for r in waiting if r.get("wait_reason")]  # the scheduler's own words, where it records them
    if told:
        return f"{len(waiting)} experiment(s) planned and not placed: {told[0]}"
    summary = await reads.gpu_summary(nc, nc.jetstream(), kubernetes=False, min_seq=link.min_seq)
    free = ", ".join(f"{g.free} free of {g.total} {g.name}" for g in summary.fleet) or "no live GPU in the fleet"
    want = f" of type {t.gpu_type}" if t.gpu_type else ""
    return f"{len(waiting)} experiment(s) planned and not placed, waiting for free GPUs{want} ({free})"


@tool("Get a task")
async def get_task(
    ctx: Context, task: TaskId,
    wait_s: Annotated[float, Field(ge=0, le=600, description="wait up to this many seconds for the task to end before answering (0: answer now)")] = 0,
) -> CallToolResult:  # fmt: skip
    """One task: status, progress (planned / running / completed / failed / retried of the budget),
    the best experiment with its engine command line, the Pareto set, and the reason it waits if it
    does. With wait_s, answers as soon as the task ends (or when wait_s passes)."""
    link = link_of(ctx)
    nc = await link.nc()
    if wait_s > 0:
        await _until_finished(nc.jetstream(), link, task, wait_s)
    t = await reads.task_detail(nc, task, min_seq=link.min_seq)
    waiting = await _waiting(nc, link, t)
    p = t.progress
    text = (f"task {t.id} {t.status}{_sim(t.simulate)}" + (f" ({t.reason})" if t.reason else "")
            + f"; {p.done}/{p.budget or '?'} done: {p.completed} completed, {p.failed} failed, {p.running} running, {p.retried} retried")  # fmt: skip
    if t.best:
        text += f"; best: experiment {t.best.n}, score {t.best.score:.6g}: {t.best.command}"
    if waiting:
        text += f"; waiting: {waiting}"
    return await answer(link, text, {**msgspec.to_builtins(t), "waiting": waiting})


async def _until_finished(js, link: Link, task: str, wait_s: float) -> None:
    await commands.submitted(js, task)  # an unknown task: the CLI's message, at once
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(wait_s), contextlib.aclosing(bus.replay(js, subj.task_all(task))) as events:
            async for d in events:
                if isinstance(d.event, ev.TERMINAL_TASK):
                    link.wrote(d.seq)  # what is read next includes the task's end
                    return


# --- experiments ------------------------------------------------------------------------------------------

EXPERIMENT_FIELDS = ("n", "attempt", "status", "host", "parameters", "score", "mean_total_tps_per_gpu", "mean_ttft", "mean_tpot", "slo_met", "failure_kind")


@tool("List a task's experiments")
async def list_experiments(
    ctx: Context, task: TaskId,
    sort: Annotated[str, Field(description="score, n, or any column of the experiments table (e.g. mean_total_tps_per_gpu, p99_ttft)", max_length=64)] = "n",
    order: Literal["asc", "desc"] = "asc",
    status: Annotated[str | None, Field(description="planned | assigned | running | ready | cancelling | completed | failed | cancelled", max_length=32)] = None,
    latest: Annotated[bool, Field(description="only the latest attempt of each experiment")] = False,
    limit: Annotated[int, Field(ge=1, le=1000)] = 50,
    offset: Annotated[int, Field(ge=0)] = 0,
) -> CallToolResult:  # fmt: skip
    """A task's experiments (one row per attempt: parameters, status, host, score, headline metrics,
    failure), sorted by score or any metric and filtered by status."""
    link = link_of(ctx)
    page = await reads.list_experiments(await link.nc(), task, status=status, sort=sort, order=order, latest=latest, limit=limit, offset=offset,
                                        min_seq=link.min_seq)  # fmt: skip
    lines = [f"#{r['n']:.0f} (attempt {r['attempt']:.0f}) {r['status']}" + (f" score {r['score']:.4g}" if isinstance(r.get("score"), float) else "")
             + (f" {r['failure_kind']}" if r.get("failure_kind") else "") for r in page.items[:20]]  # fmt: skip
    more = f" (first 20 of {len(page.items)})" if len(page.items) > 20 else ""
    summary = f"{len(page.items)} of {page.total} experiment(s) of {task} by {sort} {order}{_sim(page.simulate)}" + (f"{more}: " + "; ".join(lines) if lines else "")
    return await answer(link, summary, page)


@tool("Get one experiment")
async def get_experiment(
    ctx: Context, task: TaskId, n: Annotated[int, Field(ge=0, description="the experiment's number in its task")],
    attempt: Annotated[int | None, Field(ge=0, description="default: the latest")] = None,
    log_lines: Annotated[int, Field(ge=0, le=500, description="lines of the engine log's tail")] = 20,
) -> CallToolResult:  # fmt: skip
    """One experiment: parameters, engine command, every run's figures, GPU telemetry while it ran
    (downsampled, and summarised), failure with its log tail, the log's last lines, every attempt."""
    link = link_of(ctx)
    d = await reads.experiment_detail(await link.nc(), task, n, attempt=attempt, log_lines=log_lines, min_seq=link.min_seq)
    e = d.experiment
    tel = d.telemetry
    telemetry = None
    if tel:
        telemetry = {
            "gpus": sorted({p.gpu for p in tel}), "samples": sum(p.samples for p in tel),
            "max_util_gpu": max((p.util_gpu_max or 0) for p in tel), "max_memory_used_mib": max((p.memory_used_mib or 0) for p in tel),
            "max_temperature_c": max((p.temperature_c or 0) for p in tel),
        }  # fmt: skip
    text = f"experiment {n} of {task} (attempt {d.attempt}) {d.status}{_sim(d.simulate)} on {e.get('host') or '-'}"
    if e.get("score") is not None:
        text += f", score {e['score']:.6g}"
    if d.failure:
        text += f"; failed: {d.failure.get('kind')} at {d.failure.get('stage')}: {d.failure.get('message') or ''}"
    if telemetry:
        text += f"; GPUs {telemetry['gpus']} peaked at {telemetry['max_util_gpu']:.0f}% and {telemetry['max_memory_used_mib']:.0f} MiB"
    return await answer(link, text, {**msgspec.to_builtins(d), "telemetry_summary": telemetry})


@tool("Best configuration")
async def best_config(
    ctx: Context, task: TaskId,
    format: Annotated[Literal["cmd", "docker", "k8s"], Field(description="cmd: engine command line; docker: a docker run line; k8s: Deployment + Service")] = "cmd",
    n: Annotated[int | None, Field(ge=0, description="this experiment instead of the best")] = None,
    port: Annotated[int | None, Field(ge=1, le=65535, description="the engine's port (default: 30000 SGLang, 8000 vLLM)")] = None,
) -> CallToolResult:  # fmt: skip
    """The best (or experiment n's) configuration as something to run: an engine command line, a
    `docker run` line, or a Kubernetes manifest."""
    link = link_of(ctx)
    out = await reads.export(await link.nc(), task, format, n=n, port=port, min_seq=link.min_seq)
    head = f"task {out.task}, experiment {out.n} (attempt {out.attempt}), score {out.score}" + (f" ({out.note})" if out.note else "")
    text = f"{head}:\n{out.content}" if format == "cmd" else f"{head}; the {format} content is in `content`"
    return await answer(link, text, out)


@tool("Cancel a task", reads=False, changes_fleet=True, idempotent=True)
async def cancel_task(
    ctx: Context, task: TaskId, reason: Annotated[str, Field(max_length=1000)] = "",
    wait: Annotated[bool, Field(description="answer only once every engine of the task is stopped (or timeout_s passes)")] = False,
    timeout_s: Annotated[float, Field(gt=0, le=600, description="how long wait waits")] = 120,
) -> CallToolResult:  # fmt: skip
    """Cancel a task: its running engines are stopped and nothing more is planned. With wait, the
    answer says which experiments were stopped, or which have not reported when timeout_s passed."""
    link = link_of(ctx)
    js = (await link.nc()).jetstream()
    seq = await commands.cancel_task(js, task, reason=reason, requested_by="mcp")
    link.wrote(seq)
    if not wait:
        return await answer(link, f"cancel requested for task {task}; its running engines are being stopped",
                            {"id": task, "seq": seq, "status": "cancel_requested"})  # fmt: skip
    out = await commands.wait_cancelled(js, task, seq, timeout_s)
    if out.timed_out:
        text = f"task {task} is still stopping after {timeout_s:.0f} s; {out.why_waiting}"
    elif out.already_ended:
        text = f"task {task} had already ended ({out.status}); nothing was running"
    else:
        stopped = ", ".join(f"experiment {r['n']} on {r['host']}" for r in out.stopped) or "no experiment was running"
        text = f"task {task} {out.status}: none of its engines is running ({stopped}; {out.elapsed_s:.2f} s after the request)"
    return await answer(link, text, out)
