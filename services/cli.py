"""The `autotune` command line. Every command has --help with examples; --json for scripts.

Exit codes: 0 ok; 1 the thing asked for failed (task failed, query error); 2 bad input (invalid
task file, unknown task); 3 autotune is not reachable (no NATS / no projector).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import textwrap
from pathlib import Path

from autotune import __version__

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_UNREACHABLE = 0, 1, 2, 3


def _settings(args: argparse.Namespace):
    from autotune.shared.settings import Settings
    from autotune.supervisor import read_stack_info

    s = Settings.from_env()
    if getattr(args, "data_dir", None):
        s.data_dir = args.data_dir
    if getattr(args, "nats", None):
        s.nats_url = args.nats
    elif not os.environ.get("AUTOTUNE_NATS_URL") and (info := read_stack_info(Path(s.data_dir))):
        s.nats_url = info["nats_url"]
    return s


def _err(msg: str, code: int = EXIT_INPUT) -> int:
    sys.stderr.write(f"autotune: {msg}\n")
    return code


async def _connect(args):
    from autotune.shared import bus

    s = _settings(args)
    try:
        nc = await bus.connect(s, "cli", connect_timeout=3, max_reconnect_attempts=1, allow_reconnect=False)
    except Exception:
        raise Unreachable(f"cannot reach NATS at {s.nats_url}; start autotune with `autotune up` (or pass --nats URL)") from None
    return nc, s


class Unreachable(Exception):
    pass


# --- commands ------------------------------------------------------------------------------------------


def cmd_run(args) -> int:
    from autotune.shared import lifecycle
    from autotune.shared import log as logging

    logging.setup()
    s = _settings(args)
    if args.service == "scheduler":
        from autotune.scheduler.service import run
    elif args.service == "projector":
        from autotune.projector.service import run
    elif args.service == "api":
        from autotune.api.service import run as api_run

        def run(settings, *, stop):
            return api_run(settings, stop=stop, host=args.bind, port=args.port)
    elif args.service == "runner":
        from autotune.runner.service import HostTaken, RunnerSettings
        from autotune.runner.service import run as runner_run

        rs = RunnerSettings.from_env(simulate=args.simulate, time_scale=args.time_scale, takeover=args.takeover or None)
        if args.host:
            rs.host = args.host

        async def run(settings, *, stop):
            try:
                await runner_run(settings, stop=stop, runner=rs)
            except HostTaken as e:
                sys.stderr.write(f"autotune: {e}\n")
                raise SystemExit(EXIT_INPUT) from None
    elif args.service == "gpumon":
        from autotune.gpumon.service import run as gm_run
        from autotune.runner.settings import default_host_id

        def run(settings, *, stop):
            return gm_run(settings, stop=stop, host=args.host or default_host_id(), simulate=args.simulate)
    else:
        return _err(f"unknown service `{args.service}`")
    lifecycle.run_until_signal(lambda stop: run(s, stop=stop))
    return EXIT_OK


def cmd_up(args) -> int:
    from autotune.shared import lifecycle
    from autotune.shared import log as logging

    logging.setup()
    return asyncio_run_up(args, lifecycle)


def asyncio_run_up(args, lifecycle) -> int:
    code = EXIT_OK

    async def main(stop: asyncio.Event) -> None:
        nonlocal code
        from autotune import supervisor as sv

        s = _settings(args)
        data = Path(s.data_dir)
        if info := sv.read_stack_info(data):
            sys.stderr.write(f"autotune: already running (pid {info['pid']}, NATS {info['nats_url']}); stop it first\n")
            code = EXIT_INPUT
            return
        (data / "logs").mkdir(parents=True, exist_ok=True)
        nats = sv.start_nats(data, args.nats_port)
        token = None if args.no_auth else (s.api_token or sv.new_token())
        children = sv.build_children(nats.url, data, api_port=args.api_port, hosts=args.hosts, simulate=args.simulate, time_scale=args.time_scale, api_token=token)
        api_url = f"http://127.0.0.1:{args.api_port}"
        stack = sv.Stack(data, nats.url, api_url, token, nats, children)
        sv.stack_file(data).write_text(json.dumps(stack.info()))
        print(f"autotune {__version__} is up (Ctrl-C stops everything)")
        print(f"  NATS      {nats.url}   (watch: nats sub 'autotune.>' -s {nats.url})")
        print(f"  API       {api_url}   (OpenAPI: {api_url}/schema)")
        if token:
            print(f"  API token {token}   (send `Authorization: Bearer <token>` on POST)")
        print(f"  data      {data}   (logs in {data / 'logs'})")
        if args.simulate or True:
            print("  hosts     " + ", ".join(c.name.removeprefix("runner-") for c in children if c.name.startswith("runner-"))
                  + ("  [SIMULATED GPUs and engines]" if args.simulate else "  (simulated GPUs when NVML finds none)"))
        sys.stdout.flush()
        try:
            await sv.supervise(children, data / "logs", stop)
        finally:
            _kill_leftover_engines([c.name.removeprefix("runner-") for c in children if c.name.startswith("runner-")])
            nats.stop()
            sv.stack_file(data).unlink(missing_ok=True)
            print("autotune stopped; the event log stays in", data / "nats")

    lifecycle.run_until_signal(main)
    return code


def _kill_leftover_engines(hosts: list[str]) -> None:
    import signal

    from autotune.runner.runtimes import LABEL_HOST
    from autotune.runner.runtimes.local import labelled_processes

    for pid, labels in labelled_processes():
        if labels.get(LABEL_HOST) in hosts:
            try:
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def cmd_submit(args) -> int:
    from autotune.schemas.spec import SpecError, load_spec_file
    from autotune.shared import commands

    try:
        spec = load_spec_file(args.file)
    except SpecError as e:
        return _err(f"invalid task file {e}")

    async def main() -> int:
        nc, _ = await _connect(args)
        try:
            js = nc.jetstream()
            try:
                task, seq = await commands.submit_task(js, spec, simulate=args.simulate, submitted_by="cli")
            except commands.DuplicateTask as e:
                return _err(str(e))
            if args.json and not args.watch:
                print(json.dumps({"id": task, "seq": seq}))
                return EXIT_OK
            print(f"submitted task {task}" + (" (SIMULATED rehearsal)" if args.simulate else ""))
            if not args.watch:
                print(f"  follow it: autotune task {task}   |   autotune submit ... --watch   |   nats sub 'autotune.task.{task}.>'")
                return EXIT_OK
            return await _watch_and_report(js, task, spec_dict=None, simulated=args.simulate or spec.deployment_mode == "simulated", as_json=args.json)
        finally:
            await nc.close()

    return _run_async(main())


async def _watch_and_report(js, task: str, *, spec_dict: dict | None, simulated: bool, as_json: bool = False) -> int:
    from autotune.schemas import events as ev
    from autotune.watch import best_command, watch_task

    view = await watch_task(js, task, simulated=simulated, live=not as_json)
    final = view.final
    if isinstance(final, ev.TaskCompleted):
        if spec_dict is None:
            from autotune.shared import bus

            async for d in bus.replay(js, f"autotune.task.{task}.submitted", follow=False):
                spec_dict = d.event.spec
        cmd = best_command(spec_dict or {}, final.best_parameters or {})
        if as_json:
            print(json.dumps({"task": task, "status": "completed", "best_experiment": final.best_experiment, "best_score": final.best_score, "best_parameters": final.best_parameters, "command": cmd}))
        else:
            print(f"\nbest configuration: experiment {final.best_experiment}, score {final.best_score:.4f} ({final.reason})")
            print(f"  {cmd}")
            if view.simulated:
                print("  (measured on SIMULATED engines and GPUs: rehearse here, confirm on real hardware)")
        return EXIT_OK
    if isinstance(final, ev.TaskRejected):
        return _err(f"task rejected: {final.path}: {final.reason}")
    reason = getattr(final, "reason", "cancelled")
    print(f"task {task} ended: {type(final).__name__} {reason}")
    return EXIT_FAILED


def _run_async(coro) -> int:
    try:
        return asyncio.run(coro)
    except Unreachable as e:
        return _err(str(e), EXIT_UNREACHABLE)
    except KeyboardInterrupt:
        return 130


def _print_rows(res, as_json: bool, title: str | None = None) -> None:
    rows = res.rows_as_dicts()
    if as_json:
        print(json.dumps(rows, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for c in res.columns:
        t.add_column(c, overflow="fold")
    for r in res.rows:
        t.add_row(*["" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v)) for v in r])
    Console(width=max(120, os.get_terminal_size().columns if sys.stdout.isatty() else 200)).print(t)


def _query_cmd(sql: str, params: list | None, args, title: str | None = None, empty: str | None = None) -> int:
    from autotune.shared import query as q

    async def main() -> int:
        nc, _ = await _connect(args)
        try:
            try:
                res = await q.sql(nc, sql, params, limit=getattr(args, "limit", None))
            except q.QueryError as e:
                return _err(str(e), EXIT_FAILED)
            if empty and not res.rows:
                return _err(empty)
            _print_rows(res, args.json, title)
            return EXIT_OK
        finally:
            await nc.close()

    return _run_async(main())


def cmd_sql(args) -> int:
    return _query_cmd(args.query, None, args)


def cmd_tasks(args) -> int:
    where = "WHERE status = ?" if args.status else ""
    return _query_cmd(
        f"SELECT id, status, strategy, objective, model, deployment_mode, experiments_completed AS done, experiments_failed AS failed, "
        f"best_n AS best, round(best_score, 4) AS best_score, submitted_at FROM tasks {where} ORDER BY submitted_at DESC",
        [args.status] if args.status else None, args, "tasks",
    )


def cmd_task(args) -> int:
    return _query_cmd("SELECT * FROM tasks WHERE id = ?", [args.id], args, f"task {args.id}", empty=f"no task `{args.id}`")


def cmd_experiments(args) -> int:
    order = {"score": "score NULLS LAST", "n": "n, attempt"}.get(args.sort, f"{args.sort} NULLS LAST")
    return _query_cmd(
        "SELECT n, attempt, status, host, parameters, round(score, 4) AS score, round(mean_total_tps_per_gpu, 1) AS tps_per_gpu, "
        "round(mean_ttft, 4) AS ttft, round(mean_tpot, 5) AS tpot, round(mean_e2e_latency, 3) AS e2e, slo_met, failure_kind "
        f"FROM experiments WHERE task = ? ORDER BY {order}",
        [args.id], args, f"experiments of {args.id}",
    )


def cmd_cancel(args) -> int:
    from autotune.shared import commands

    async def main() -> int:
        nc, _ = await _connect(args)
        try:
            try:
                await commands.cancel_task(nc.jetstream(), args.id, reason=args.reason, requested_by="cli")
            except commands.UnknownTask as e:
                return _err(str(e))
            print(f"cancel requested for task {args.id}; running engines are being stopped")
            return EXIT_OK
        finally:
            await nc.close()

    return _run_async(main())


def cmd_demo(args) -> int:
    from autotune.demo import run_demo

    return run_demo(args)


def cmd_bench(args) -> int:
    from autotune.bench.cli import bench_main

    return bench_main(args.rest)


def cmd_projector(args) -> int:
    from autotune.projector.cli import projector_main

    return projector_main(args.rest)


# --- parser --------------------------------------------------------------------------------------------


def _sub(sp, name: str, help_: str, examples: str, func) -> argparse.ArgumentParser:
    p = sp.add_parser(
        name, help=help_, description=help_, epilog="examples:\n" + textwrap.indent(examples.strip(), "  "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=func)
    p.add_argument("--nats", help="NATS URL (default: the stack `autotune up` started, else $AUTOTUNE_NATS_URL)")
    p.add_argument("--data-dir", help="data directory (default: ~/.local/share/autotune)")
    return p


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="autotune", description="Find the best serving configuration of an LLM engine by experiment.",
        epilog="Start with: autotune demo   |   autotune up   then   autotune submit examples/quickstart.yaml --watch",
    )
    ap.add_argument("--version", action="version", version=f"autotune {__version__}")
    sp = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _sub(sp, "up", "start nats-server and every service on this machine, supervised", "autotune up\nautotune up --hosts 3 --simulate 2xH100 --time-scale 10", cmd_up)
    p.add_argument("--nats-port", type=int, default=4222)
    p.add_argument("--api-port", type=int, default=8080)
    p.add_argument("--hosts", type=int, default=1, help="runner (host) processes to start")
    p.add_argument("--simulate", help="simulated GPUs per host, e.g. 4xH100 (default: real GPUs, else simulated)")
    p.add_argument("--time-scale", type=float, default=10.0, help="simulated engines run this much faster than real time (keep it at 10 or below for faithful latencies)")
    p.add_argument("--no-auth", action="store_true", help="do not require an API token for POST calls")

    p = _sub(sp, "run", "run one service in the foreground", "autotune run scheduler --nats nats://10.0.0.5:4222\nautotune run runner --host gpu-node-7", cmd_run)
    p.add_argument("service", choices=["scheduler", "runner", "projector", "api", "gpumon"])
    p.add_argument("--host", help="runner/gpumon: this host's id (default: derived from the machine id)")
    p.add_argument("--simulate", help="runner/gpumon: simulated GPUs, e.g. 4xH100")
    p.add_argument("--time-scale", type=float, default=None, help="runner: simulated engines' time compression")
    p.add_argument("--takeover", action="store_true", help="runner: replace a live instance of the same host")
    p.add_argument("--port", type=int, default=8080, help="api: port")
    p.add_argument("--bind", default="127.0.0.1", help="api: address")

    p = _sub(sp, "submit", "submit a task file (JSON or YAML)", "autotune submit examples/quickstart.yaml --watch\nautotune submit my-task.json --simulate --json", cmd_submit)
    p.add_argument("file")
    p.add_argument("--watch", action="store_true", help="follow the task live until it ends")
    p.add_argument("--simulate", action="store_true", help="rehearse on simulated engines and GPUs, whatever deployment_mode says")
    p.add_argument("--json", action="store_true")

    p = _sub(sp, "tasks", "list tasks", "autotune tasks\nautotune tasks --status running --json", cmd_tasks)
    p.add_argument("--status")
    p.add_argument("--json", action="store_true")

    p = _sub(sp, "task", "show one task", "autotune task quickstart", cmd_task)
    p.add_argument("id")
    p.add_argument("--json", action="store_true")

    p = _sub(sp, "experiments", "list a task's experiments", "autotune experiments quickstart --sort score", cmd_experiments)
    p.add_argument("id")
    p.add_argument("--sort", default="n", help="n | score | any experiments column")
    p.add_argument("--json", action="store_true")

    p = _sub(sp, "cancel", "cancel a task: stops its running engines", "autotune cancel quickstart", cmd_cancel)
    p.add_argument("id")
    p.add_argument("--reason", default="")

    p = _sub(sp, "sql", "run a read-only SQL query on the projection", 'autotune sql "select id, status, best_score from tasks"', cmd_sql)
    p.add_argument("query")
    p.add_argument("--limit", type=int)
    p.add_argument("--json", action="store_true")

    p = _sub(sp, "demo", "run a small tuning task end to end on this machine and print the best configuration", "autotune demo", cmd_demo)
    p.add_argument("--task-file", default=None, help="task file to run (default: examples/demo.yaml)")
    p.add_argument("--time-scale", type=float, default=10.0, help="simulated engines run this much faster than real time")

    p = _sub(sp, "bench", "benchmark a running OpenAI-compatible server", "autotune bench --url http://127.0.0.1:30000 --model M --concurrency 1 8", cmd_bench)
    p.add_argument("rest", nargs=argparse.REMAINDER)

    p = _sub(sp, "projector", "projector maintenance (rebuild the read model from the log)", "autotune projector rebuild", cmd_projector)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
