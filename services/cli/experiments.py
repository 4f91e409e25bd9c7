"""A task's experiments: experiments, experiment, logs."""

from __future__ import annotations

import argparse
import json
import sys

from autotune.cli.connection import EXIT_OK, Connection, nats_command
from autotune.cli.options import add_command, json_option
from autotune.cli.render import REAL_CPU, SIMULATED, cell, console, shown, table

EXP_COLUMNS = [("n", "n"), ("attempt", "try"), ("status", "status"), ("host", "host"), ("parameters", "parameters"), ("score", "score"),
               ("mean_total_tps_per_gpu", "tok/s/GPU"), ("mean_ttft", "TTFT s"), ("mean_tpot", "TPOT s"), ("mean_e2e_latency", "e2e s"),
               ("slo_met", "SLO met"), ("failure_kind", "failure / waiting")]  # fmt: skip


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "experiments", "list a task's experiments, sorted by score or any metric",
                    "autotune experiments quickstart --sort score\nautotune experiments quickstart --sort mean_total_tps_per_gpu --desc\n"
                    "autotune experiments quickstart --status failed", experiments)  # fmt: skip
    p.add_argument("id")
    p.add_argument("--sort", default="n", help="n | score | any column of the experiments table (see `autotune sql 'describe experiments'`)")
    p.add_argument("--desc", action="store_true", help="largest first")
    p.add_argument("--status", help="planned | assigned | running | ready | cancelling | completed | failed | cancelled")
    p.add_argument("--latest", action="store_true", help="only the latest attempt of each experiment")
    p.add_argument("--limit", type=int, default=1000)
    json_option(p)

    p = add_command(sub, "experiment", "show one experiment: parameters, command, runs, GPU telemetry, failure and log excerpt",
                    "autotune experiment quickstart 3\nautotune experiment quickstart 3 --attempt 0 --json", experiment)  # fmt: skip
    _experiment_arguments(p, attempt="default: the latest")
    p.add_argument("--log-lines", type=int, default=20)
    json_option(p)

    p = add_command(sub, "logs", "print an experiment's engine and runner log; --follow tails it until the experiment ends",
                    "autotune logs quickstart 3\nautotune logs quickstart 3 --follow", logs)  # fmt: skip
    _experiment_arguments(p, attempt="default: every attempt")
    p.add_argument("--follow", "-f", action="store_true")
    json_option(p)


def _experiment_arguments(p: argparse.ArgumentParser, *, attempt: str) -> None:
    """The task, experiment number and --attempt that name one experiment's attempt(s)."""
    p.add_argument("id")
    p.add_argument("n", type=int)
    p.add_argument("--attempt", type=int, help=attempt)


@nats_command
async def experiments(args: argparse.Namespace, conn: Connection) -> int:
    from autotune import reads

    page = await reads.list_experiments(conn.nc, args.id, status=args.status, sort=args.sort, order="desc" if args.desc else None,
                                        latest=args.latest, limit=args.limit)  # fmt: skip
    return shown(args, page.items, lambda: _show_experiments(args, page))


def _show_experiments(args: argparse.Namespace, page) -> None:
    title = f"experiments of {args.id} ({len(page.items)} of {page.total}, by {args.sort})" + (f"  {SIMULATED}" if page.simulate else "") + (f"  {REAL_CPU}" if page.real_cpu else "")
    rows = [[r.get(c) for c, _ in EXP_COLUMNS[:-1]] + [_why(r)] for r in page.items]
    console().print(table(title, [h for _, h in EXP_COLUMNS], rows))


def _why(row: dict) -> str | None:
    """An experiment's failure kind, or while it is planned the reason it waits."""
    if row.get("status") == "planned" and row.get("waiting_reason"):
        return row["waiting_reason"]
    return row.get("failure_kind")


@nats_command
async def experiment(args: argparse.Namespace, conn: Connection) -> int:
    from autotune import reads

    d = await reads.experiment_detail(conn.nc, args.id, args.n, attempt=args.attempt, log_lines=args.log_lines)
    return shown(args, d, lambda: _show_experiment(d))


def per_step(t: dict) -> str:
    """The engine's forward passes and its batch, where the engine counts them (vLLM)."""
    return f", forward passes {cell(t['steps'])} ({cell(t['tokens_per_step'])} tokens per pass)" if t.get("steps") else ""


def _show_experiment(d) -> None:
    c = console()
    e = d.experiment
    c.print(f"[bold]experiment {d.n} of task {d.task}[/bold] (attempt {d.attempt})" + (f"  [bold yellow]{SIMULATED}[/bold yellow]" if d.simulate else "")
            + (f"  [bold cyan]{REAL_CPU}[/bold cyan]" if d.real_cpu else ""))  # fmt: skip
    c.print(f"  status      {d.status}" + (f"  score {cell(e.get('score'))}" if e.get("score") is not None else "")
            + (f"  SLO {'met' if e.get('slo_met') else 'violated'}" if e.get("slo_met") is not None else ""))  # fmt: skip
    c.print(f"  placed on   {e.get('host') or '-'} GPUs {cell(e.get('gpu_indices')) or '-'} ({e.get('gpu_type') or '?'}), runtime {e.get('runtime') or '-'}")
    c.print(f"  parameters  {cell(d.parameters)}")
    if d.command:
        c.print(f"  command     {d.command}", soft_wrap=True)
    c.print(f"  timing      startup {cell(e.get('startup_s')) or '-'} s, total {cell(e.get('duration_s')) or '-'} s, started {e.get('started_at') or '-'}")
    if d.engine_env:
        c.print(f"  engine env  {cell(d.engine_env)}", soft_wrap=True)
    if t := d.engine_telemetry:
        failed = f" ({t['scrape_failures']} scrapes failed or timed out)" if t.get("scrape_failures") else ""
        c.print(f"  engine      {t['source']} /metrics, {t['samples']} samples{failed}: running mean {cell(t['mean_running'])} max {cell(t['max_running'])}, "
                f"waiting mean {cell(t['mean_waiting'])} max {cell(t['max_waiting'])}, KV cache mean {cell(t['mean_kv_cache_usage'])} "
                f"max {cell(t['max_kv_cache_usage'])}, preemptions {cell(t['preemptions'])}, tokens prompt {cell(t['prompt_tokens'])} "
                f"generated {cell(t['generation_tokens'])}{per_step(t)}", soft_wrap=True)  # fmt: skip
    if d.failure:
        f = d.failure
        c.print(f"  [red]failed[/red]      {f['kind']} at {f['stage']}" + (" (retried)" if f.get("retryable") else "") + f": {f.get('message') or ''}")
        for line in f.get("log_tail") or []:
            c.print(f"    | {line}", soft_wrap=True)
    if d.runs:
        cols = ["run", "scenario", "concurrency", "requests", "errors", "requests_per_s", "output_tps", "total_tps", "ttft_p50", "ttft_p99",
                "tpot_p50", "e2e_latency_p50", "e2e_latency_p99"]  # fmt: skip
        c.print(table("runs", cols, [[r.get(k) for k in cols] for r in d.runs]))
    if d.telemetry:
        by_gpu: dict[int, list] = {}
        for pt in d.telemetry:
            by_gpu.setdefault(pt.gpu, []).append(pt)
        rows = [[g, len(pts), sum(p.samples for p in pts), max((p.util_gpu_max or 0) for p in pts),
                 max((p.memory_used_mib or 0) for p in pts), max((p.temperature_c or 0) for p in pts)] for g, pts in sorted(by_gpu.items())]  # fmt: skip
        c.print(table(f"GPU telemetry while it ran ({d.telemetry_bucket_s} s buckets)", ["gpu", "points", "samples", "max util %", "max mem MiB", "max temp C"], rows))
    if d.log_excerpt:
        c.print(f"  log (last {len(d.log_excerpt)} lines; all of it: autotune logs {d.task} {d.n})")
        for line in d.log_excerpt:
            c.print(f"    | {line}", soft_wrap=True, markup=False)


@nats_command
async def logs(args: argparse.Namespace, conn: Connection) -> int:
    from autotune.reads import stream
    from autotune.shared import commands

    await commands.submitted(conn.js, args.id)  # an unknown task is an error, not an empty log
    end: dict = {}
    async for kind, data in stream.logs(conn.js, args.id, args.n, attempt=args.attempt, follow=args.follow):
        if kind == "end":
            end = data
            break
        if args.json:
            print(json.dumps(data), flush=True)
        else:
            for line in data["lines"]:
                print(line, flush=True)
    if end and not args.json:
        sys.stderr.write(f"# experiment {args.n} of {args.id}, attempt {end.get('attempt')}: {end.get('status')}\n")
    return EXIT_OK
