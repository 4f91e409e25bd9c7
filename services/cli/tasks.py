"""Tasks: submit, tasks, task, cancel (--wait), clone, best."""

from __future__ import annotations

import argparse
import json
import sys

from autotune.cli.connection import EXIT_FAILED, EXIT_OK, Connection, err, nats_command
from autotune.cli.options import add_command, json_option
from autotune.cli.render import REAL_CPU, SIMULATED, ago, cell, console, shown, table


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "submit", "submit a task file (JSON or YAML, the original tool's format)",
                    "autotune submit examples/quickstart.yaml --watch\nautotune submit my-task.json --simulate --watch   # rehearse on simulated engines and GPUs\n"
                    "autotune submit my-task.json --json", submit)  # fmt: skip
    p.add_argument("file")
    p.add_argument("--watch", action="store_true", help="follow the task live (progress bar, finished experiments) until it ends")
    p.add_argument("--simulate", action="store_true", help="rehearse on simulated engines and GPUs of the types it asks for, whatever deployment_mode says")
    json_option(p)

    p = add_command(sub, "tasks", "list tasks, newest first", "autotune tasks\nautotune tasks --status running --json\nautotune tasks --name llama --limit 10", tasks)
    p.add_argument("--status", help="submitted | running | cancelling | completed | failed | cancelled | rejected")
    p.add_argument("--name", help="substring of the name")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--offset", type=int, default=0)
    json_option(p)

    p = add_command(sub, "task", "show one task: status, progress, best experiment and its command line, Pareto set",
                    "autotune task quickstart\nautotune task quickstart --json", task)  # fmt: skip
    p.add_argument("id")
    json_option(p)

    p = add_command(sub, "cancel", "cancel a task: its running engines are stopped",
                    "autotune cancel quickstart\nautotune cancel quickstart --reason 'wrong model'\nautotune cancel quickstart --wait --timeout 300", cancel)  # fmt: skip
    p.add_argument("id")
    p.add_argument("--reason", default="")
    p.add_argument("--wait", action="store_true", help="return once every engine of the task is stopped (exit 1 if --timeout passes first)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds --wait waits (default 120)")
    json_option(p)

    p = add_command(sub, "clone", "re-run a task as a new one (the original is never edited), with overrides",
                    "autotune clone quickstart\nautotune clone quickstart --name quickstart-long --set optimization.max_iterations=20 --watch\n"
                    "autotune clone quickstart --set 'benchmark.num_concurrency=[1, 8, 32]' --simulate", clone)  # fmt: skip
    p.add_argument("id")
    p.add_argument("--name", help="the new task's name (default: <name>-2, -3, ...)")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", help="override a field of the task file (VALUE is YAML); repeatable")
    sim = p.add_mutually_exclusive_group()
    sim.add_argument("--simulate", dest="simulate", action="store_const", const=True, default=None, help="rehearse on simulated engines and GPUs")
    sim.add_argument("--no-simulate", dest="simulate", action="store_const", const=False, help="run for real even if the original was a rehearsal")
    p.add_argument("--watch", action="store_true", help="follow the new task live until it ends")
    json_option(p)

    p = add_command(sub, "best", "the best configuration as an engine command line, a docker run line or a Kubernetes manifest",
                    "autotune best quickstart\nautotune best quickstart --format docker\n"
                    "autotune best quickstart --format k8s > deploy.yaml && kubectl apply -f deploy.yaml", best)  # fmt: skip
    p.add_argument("id")
    p.add_argument("--format", choices=["cmd", "docker", "k8s"], default="cmd")
    p.add_argument("--n", type=int, help="export this experiment instead of the best")
    p.add_argument("--port", type=int, help="the engine's port (default: 30000 SGLang, 8000 vLLM)")
    json_option(p)


def submit(args: argparse.Namespace) -> int:
    from autotune.schemas.spec import SpecError
    from autotune.shared import commands

    # the file is checked before anything connects: a bad file says so even when autotune is down
    try:
        with open(args.file, "rb") as f:
            text = f.read()
    except OSError as e:
        return err(f"cannot read the task file {args.file}: {e.strerror}")
    try:
        spec = commands.parse(text, source=args.file)
    except SpecError as e:
        return err(f"invalid task file {e}")
    return _submit(args, spec)


@nats_command
async def _submit(args: argparse.Namespace, conn: Connection, spec) -> int:
    from autotune.shared import commands

    await conn.ensure_provisioned()
    unfit = await _unfit_warning(conn, spec, simulate=args.simulate, quiet=args.json)
    task, seq, _, simulated = await commands.submit_task(conn.js, spec, simulate=args.simulate, submitted_by="cli")
    return await _submitted(
        args, conn, task, simulated, as_json={"id": task, "seq": seq, "simulate": simulated, "unfit": unfit},
        said=f"submitted task {task}" + (f"  {SIMULATED} (a rehearsal: figures are not real hardware)" if simulated else ""),
        follow=f"autotune task {task}   |   autotune events --follow 'autotune.task.{task}.>'   |   nats sub 'autotune.task.{task}.>'",
    )  # fmt: skip


async def _submitted(args: argparse.Namespace, conn: Connection, task: str, simulated: bool, *, as_json: dict, said: str, follow: str) -> int:
    """What submit and clone say once the task is in the log; with --watch, the task live until it ends."""
    if args.json and not args.watch:
        print(json.dumps(as_json))
        return EXIT_OK
    if not args.json:
        print(said)
    if not args.watch:
        print(f"  follow it: {follow}")
        return EXIT_OK
    from autotune.cli.watch import watch_and_report

    return await watch_and_report(conn.js, task, spec_dict=None, simulated=simulated, as_json=args.json)


async def _unfit_warning(conn: Connection, spec, *, simulate: bool, quiet: bool) -> list[dict]:
    """Warn (stderr) about the configurations the live fleet could never run; never refuses (a host that fits may
    join). Says nothing when the fleet cannot be read (no projector yet)."""
    import msgspec

    from autotune import reads

    fitness = await reads.fleet_fit_or_none(conn.nc, conn.js, spec, simulate=simulate)
    if fitness is None:  # the warning is a courtesy: a fleet that cannot be read must not stop a submit
        return []
    groups = [msgspec.to_builtins(g) for g in fitness.unfit]
    if groups and not quiet:
        count = sum(g.configurations or 0 for g in fitness.unfit)
        some = f"{count} of {fitness.space_size}" if fitness.space_size and all(g.configurations for g in fitness.unfit) else "some"
        sys.stderr.write(f"autotune: warning: the live fleet ({fitness.hosts} host{'s' if fitness.hosts != 1 else ''}) cannot run {some} "
                         "configurations of this task; unless a host that fits joins, they will fail as unplaceable:\n")  # fmt: skip
        for g in fitness.unfit:
            n = f"{g.configurations} configuration{'s' if g.configurations != 1 else ''}" if g.configurations else "configurations"
            sys.stderr.write(f"  {g.gpus} GPU{'s' if g.gpus != 1 else ''}, {n} (e.g. {'; '.join(g.examples)}): {g.reason}\n")
    return groups


@nats_command
async def tasks(args: argparse.Namespace, conn: Connection) -> int:
    from autotune import reads

    page = await reads.list_tasks(conn.nc, status=args.status, name=args.name, limit=args.limit, offset=args.offset)
    return shown(args, page.items, lambda: _show_tasks(page))


def _show_tasks(page) -> None:
    rows = [
        [t.id, t.status, "SIMULATED" if t.simulate else ("REAL CPU" if t.real_cpu else t.deployment_mode), t.strategy, t.objective, t.model,
         f"{t.experiments_completed + t.experiments_failed}/{t.budget or '?'}", t.experiments_failed, t.best_n,
         t.best_score, ago(t.submitted_at)]
        for t in page.items
    ]  # fmt: skip
    title = f"tasks ({len(page.items)} of {page.total})"
    console().print(table(title, ["id", "status", "mode", "strategy", "objective", "model", "done", "failed", "best", "best score", "submitted"], rows))


@nats_command
async def task(args: argparse.Namespace, conn: Connection) -> int:
    from autotune import reads

    t = await reads.task_detail(conn.nc, args.id)
    return shown(args, t, lambda: _show_task(t))


def _show_task(t) -> None:
    c = console()
    p = t.progress
    c.print(f"[bold]task {t.id}[/bold]" + (f"  [bold yellow]{SIMULATED}[/bold yellow]" if t.simulate else "") + (f"  [bold cyan]{REAL_CPU}[/bold cyan]" if t.real_cpu else ""))
    reason = f"{t.reason_path}: {t.reason}" if t.reason and t.reason_path else t.reason
    c.print(f"  status     {t.status}" + (f" ({reason})" if reason else "") + (f"  cloned from {t.cloned_from}" if t.cloned_from else ""))
    c.print(f"  tunes      {t.engine} {t.model}  mode {t.deployment_mode}" + (f"  gpu_type {t.gpu_type}" if t.gpu_type else ""))
    c.print(f"  strategy   {t.strategy}, {' + '.join(t.objectives)}")
    bar = ""
    if p.budget:
        filled = int(30 * min(p.done, p.budget) / p.budget)
        bar = "█" * filled + "░" * (30 - filled) + " "
    c.print(f"  progress   {bar}{p.done}/{p.budget or '?'} done: {p.completed} completed, {p.failed} failed, {p.running} running, "
            f"{p.retried} retried, {p.cancelled} cancelled" + (f"  ({p.elapsed_s:.0f}s" + (f" of {p.time_budget_s:.0f}s" if p.time_budget_s else "") + ")" if p.elapsed_s else ""))  # fmt: skip
    c.print(f"  submitted  {t.submitted_at}" + (f" by {t.submitted_by}" if t.submitted_by else "") + (f"; finished {t.finished_at}" if t.finished_at else ""))
    if t.dataset:
        d = t.dataset
        c.print(f"  dataset    {d.get('url')}: {d.get('prompts')} prompts (sha256 {str(d.get('sha256'))[:12]}, {d.get('rows')} rows, "
                f"{d.get('skipped')} unreadable, {d.get('duplicates')} duplicates dropped)", soft_wrap=True)  # fmt: skip
    for w in t.waiting:
        c.print(f"  [yellow]waiting[/yellow]    experiment {w.n} ({w.gpus} GPU{'s' if w.gpus != 1 else ''}): {w.reason}"
                + ("" if w.fits else "  (no host can run it: it fails as unplaceable unless one joins)"), soft_wrap=True)  # fmt: skip
    if t.best:
        b = t.best
        c.print(f"  best       experiment {b.n} (attempt {b.attempt}), score {cell(b.score)}: {cell(b.parameters)}")
        c.print(f"             {b.command}", soft_wrap=True)
        if t.simulate:
            c.print("             (measured on SIMULATED engines and GPUs)")
    for i, pt in enumerate(t.pareto):
        c.print(("  pareto     " if i == 0 else "             ") + f"experiment {pt.n}: objectives {', '.join(cell(v) for v in pt.objectives)}  {cell(pt.parameters)}")
    c.print(f"  more       autotune experiments {t.id} --sort score   |   autotune best {t.id} --format docker   |   autotune clone {t.id}")


@nats_command
async def cancel(args: argparse.Namespace, conn: Connection) -> int:
    from autotune.shared import commands

    seq = await commands.cancel_task(conn.js, args.id, reason=args.reason, requested_by="cli")
    if args.wait:
        return await _wait_cancelled(conn.js, args.id, seq, args.timeout, as_json=args.json)
    if args.json:
        print(json.dumps({"id": args.id, "seq": seq, "status": "cancel_requested"}))
    else:
        print(f"cancel requested for task {args.id}; its running engines are being stopped (autotune cancel {args.id} --wait waits for them)")
    return EXIT_OK


async def _wait_cancelled(js, task: str, cancel_seq: int, timeout_s: float, *, as_json: bool) -> int:
    """Follow the task's events until it ends, saying as each running experiment's engine is stopped
    (commands.wait_cancelled); 0 once nothing of the task runs any more."""
    from autotune.shared import commands

    def say(line: str) -> None:
        if not as_json:
            print(line, flush=True)

    def stopped(r: dict) -> None:
        where = f" on {r['host']}" if r["host"] else ""
        what = "engine stopped" if r["outcome"] == "experiment.cancelled" and r["host"] else r["outcome"].removeprefix("experiment.")
        say(f"  experiment {r['n']} (attempt {r['attempt']}){where}: {what}")

    say(f"cancel requested for task {task}; waiting up to {timeout_s:.0f} s for its engines to stop")
    out = await commands.wait_cancelled(js, task, cancel_seq, timeout_s, on_stopped=stopped)
    if out.timed_out:
        if as_json:
            print(json.dumps({"id": task, "seq": cancel_seq, "status": "cancelling", "stopped": out.stopped, "still_running": out.still_running}))
        return err(f"task {task} is still stopping after {timeout_s:.0f} s; {out.why_waiting}; wait longer with --timeout, or look at autotune task {task}", EXIT_FAILED)
    if as_json:
        print(json.dumps({"id": task, "seq": cancel_seq, "status": out.status, "stopped": out.stopped, "elapsed_s": out.elapsed_s}))
    elif out.already_ended:
        print(f"task {task} had already ended ({out.status}); nothing was running")
    else:
        print(f"task {task} {out.status}: none of its engines is running ({out.elapsed_s:.2f} s after the request)")
    return EXIT_OK


def clone(args: argparse.Namespace) -> int:
    from autotune.schemas.spec import SpecError
    from autotune.shared import commands

    try:  # checked before anything connects, as submit checks its file
        overrides = commands.parse_assignments(args.set or [])
    except SpecError as e:
        return err(e.message)
    return _clone(args, overrides)


@nats_command
async def _clone(args: argparse.Namespace, conn: Connection, overrides: dict) -> int:
    from autotune.shared import commands

    await conn.ensure_provisioned()
    task, seq, _, simulated = await commands.clone_task(conn.js, args.id, name=args.name, overrides=overrides, simulate=args.simulate, submitted_by="cli")
    return await _submitted(
        args, conn, task, simulated, as_json={"id": task, "seq": seq, "cloned_from": args.id, "simulate": simulated},
        said=f"submitted task {task}, cloned from {args.id}" + (f" with {cell(overrides)}" if overrides else "") + (f"  {SIMULATED}" if simulated else ""),
        follow=f"autotune task {task}",
    )  # fmt: skip


@nats_command
async def best(args: argparse.Namespace, conn: Connection) -> int:
    from autotune import reads

    out = await reads.export(conn.nc, args.id, args.format, n=args.n, port=args.port)
    return shown(args, out, lambda: _show_best(args, out))


def _show_best(args: argparse.Namespace, out) -> None:
    if out.note and args.format != "k8s":
        sys.stderr.write(f"# {out.note}\n")
    sys.stderr.write(f"# task {out.task}, experiment {out.n} (attempt {out.attempt}), score {cell(out.score)}\n")
    print(out.content.rstrip("\n"))
