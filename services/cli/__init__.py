"""The `autotune` command line. Every command has --help with examples; --json for scripts.

It talks to NATS directly (the stack `autotune up` started is found through <data dir>/up.json, else
$AUTOTUNE_NATS_URL or --nats) and reads through the projector's query service, so it needs no API
server. It shows what the HTTP API shows, in the same shapes with --json.

Exit codes: 0 ok; 1 the thing asked for failed (task failed, query error); 2 bad input (invalid
task file, unknown task, host or experiment); 3 autotune is not reachable (no NATS / no projector).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from autotune import __version__
from autotune.cli import experiments, hosts, inspect, tasks
from autotune.cli.connection import EXIT_INPUT, EXIT_OK, Failed, nats_command
from autotune.cli.connection import err as _err
from autotune.cli.connection import stack_settings as _settings
from autotune.cli.options import add_command as _sub
from autotune.cli.options import json_option as _json
from autotune.cli.render import console as _console
from autotune.cli.render import span as _span
from autotune.cli.render import table as _table


def _with_nats(args, fn) -> int:  # the old skeleton, until every command uses @nats_command
    @nats_command
    async def run(args, conn):
        return await fn(conn.nc, conn.js, conn.settings)

    return run(args)


async def _ensure_provisioned(js, settings) -> None:
    from autotune.shared import bus

    try:
        await bus.provision(js, settings)
    except Exception:
        pass


# --- running a command: connect, map errors to exit codes -------------------------------------------------


# --- output -------------------------------------------------------------------------------------------------


# --- commands: services ---------------------------------------------------------------------------------


def cmd_run(args) -> int:
    from autotune.shared import lifecycle
    from autotune.shared.log import setup_logging

    setup_logging()
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
    from autotune.shared.log import setup_logging

    setup_logging()
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
        passwords = None
        if args.secure:
            nats, passwords = sv.start_secure_nats(data, args.nats_port, sv.host_ids(args.hosts))
        else:
            nats = sv.start_nats(data, args.nats_port)
        await sv.provision_as_admin(nats.url, passwords, data)
        token = None if args.no_auth else (s.api_token or sv.new_token())
        children = sv.build_children(
            nats.url, data, api_port=args.api_port, hosts=args.hosts, simulate=args.simulate, time_scale=args.time_scale, api_token=token,
            passwords=passwords,
        )
        api_url = f"http://127.0.0.1:{args.api_port}"
        stack = sv.Stack(data, nats.url, api_url, token, nats, children, secure=args.secure)
        sv.stack_file(data).write_text(json.dumps(stack.info()))
        print(f"autotune {__version__} is up (Ctrl-C stops everything)")
        print(f"  NATS      {nats.url}   (watch: nats sub 'autotune.>' -s {nats.url})")
        if passwords:
            from autotune.shared import security

            print(f"  secure    a NATS user per role and host; passwords in {security.credentials_path(data)} (0600)")
        print(f"  dashboard {api_url}/   (the fleet, tasks and results, live)")
        print(f"  API       {api_url}/api   (OpenAPI: {api_url}/schema)")
        if token:
            print(f"  API token {token}   (send `Authorization: Bearer <token>` on POST)")
        print(f"  data      {data}   (logs in {data / 'logs'})")
        print("  hosts     " + ", ".join(c.name.removeprefix("runner-") for c in children if c.name.startswith("runner-"))
              + ("  [SIMULATED GPUs and engines]" if args.simulate else "  (simulated GPUs when NVML finds none)"))
        sys.stdout.flush()
        try:
            await sv.supervise(children, data / "logs", stop)
        finally:
            # a runner that had to be SIGKILLed leaves its engines: reap them as a restarted runner would
            from autotune.runner.runtimes.local import LocalRuntime

            for c in children:
                if c.name.startswith("runner-"):
                    await LocalRuntime().reap_orphans(c.name.removeprefix("runner-"), keep=set())
            nats.stop()
            sv.stack_file(data).unlink(missing_ok=True)
            print("autotune stopped; the event log stays in", data / "nats")

    lifecycle.run_until_signal(main)
    return code


# --- commands: tasks ------------------------------------------------------------------------------------------


def cmd_streams(args) -> int:
    from nats.js.errors import NotFoundError

    from autotune.shared import bus

    async def main(nc, js, settings) -> int:
        try:
            changes = await bus.apply_stream_settings(js, settings) if args.apply else []
        except bus.ProvisionError as e:
            raise Failed(str(e)) from None
        out = []
        for want in bus.stream_configs(settings):
            try:
                info = await js.stream_info(want.name)
            except NotFoundError:
                out.append({"stream": want.name, "subjects": list(want.subjects or []), "missing": True, "replicas": 0, "max_age_s": 0,
                            "messages": 0, "bytes": 0, "first_seq": 0, "last_seq": 0, "differs_from_settings": ["missing"]})  # fmt: skip
                continue
            c, st = info.config, info.state
            pending = [f"{f} {was} -> {now}" for f, was, now in bus.stream_differences(c, want)]
            out.append({
                "stream": c.name, "subjects": list(c.subjects or []), "replicas": c.num_replicas, "max_age_s": c.max_age or 0,
                "messages": st.messages, "bytes": st.bytes, "first_seq": st.first_seq, "last_seq": st.last_seq,
                "differs_from_settings": pending,
            })  # fmt: skip
        if args.json:
            print(json.dumps({"streams": out, "changed": [{"stream": n, "field": f, "was": a, "now": b} for n, f, a, b in changes]}))
            return EXIT_OK
        rows = [[o["stream"], " ".join(o["subjects"]), "missing", "", "", "", ""] if o.get("missing") else
                [o["stream"], " ".join(o["subjects"]), o["replicas"], _span(o["max_age_s"]), o["messages"], f"{o['bytes'] / 2**20:.1f}",
                 f"{o['first_seq']}-{o['last_seq']}"] for o in out]  # fmt: skip
        _console().print(_table("streams", ["stream", "subjects", "replicas", "max age", "messages", "MiB", "sequences"], rows))
        for n, f, a, b in changes:
            print(f"changed {n}: {f} {a} -> {b}")
        pending = [(o["stream"], d) for o in out for d in o["differs_from_settings"]]
        for n, d in pending:
            what = "is missing (autotune up and every service create it at start)" if d == "missing" else f"{d} in this environment's settings"
            print(f"{n}: {what}; apply with autotune streams --apply (as admin)")
        return EXIT_OK

    return _with_nats(args, main)


# --- commands: hosts ------------------------------------------------------------------------------------------


# --- commands: live views, SQL, snapshot ------------------------------------------------------------------


# --- commands: the rest ------------------------------------------------------------------------------------


def cmd_mcp(args) -> int:
    from autotune.mcp.stdio import serve

    return serve(_settings(args), allow_fleet_changes=args.allow_fleet_changes)


def cmd_demo(args) -> int:
    from autotune.cli.demo import run_demo

    return run_demo(args)


def cmd_bench(args) -> int:
    from autotune.bench.cli import bench_main

    return bench_main(args.rest)


def cmd_projector(args) -> int:
    from autotune.projector.cli import projector_main

    os.environ.setdefault("AUTOTUNE_NATS_URL", _settings(args).nats_url)  # the stack `autotune up` started
    return projector_main(args.rest)


# --- parser --------------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="autotune", description="Find the best serving configuration of an LLM engine by experiment.",
        epilog="Start with: autotune demo   |   autotune up   then   autotune submit examples/quickstart.yaml --watch\n"
        "Exit codes: 0 ok, 1 failed (task failed, query error), 2 bad input (invalid file, unknown task/host), 3 autotune not reachable.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--version", action="version", version=f"autotune {__version__}")
    sp = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # running it
    p = _sub(sp, "up", "start nats-server and every service on this machine, supervised", "autotune up\nautotune up --hosts 3 --simulate 2xH100 --time-scale 10", cmd_up)
    p.add_argument("--nats-port", type=int, default=4222)
    p.add_argument("--api-port", type=int, default=8080)
    p.add_argument("--hosts", type=int, default=1, help="runner (host) processes to start")
    p.add_argument("--simulate", help="simulated GPUs per host, e.g. 4xH100 (default: real GPUs, else simulated)")
    p.add_argument("--time-scale", type=float, default=10.0, help="simulated engines run this much faster than real time (keep it at 10 or below for faithful latencies)")
    p.add_argument("--no-auth", action="store_true", help="do not require an API token for POST calls")
    p.add_argument("--secure", action="store_true", help="NATS with a user per role and host, each allowed only the subjects it needs (infra/nats/README.md)")

    p = _sub(sp, "run", "run one service in the foreground", "autotune run scheduler --nats nats://10.0.0.5:4222\nautotune run runner --host gpu-node-7\nautotune run api --bind 0.0.0.0 --port 8080", cmd_run)
    p.add_argument("service", choices=["scheduler", "runner", "projector", "api", "gpumon"])
    p.add_argument("--host", help="runner/gpumon: this host's id (default: derived from the machine id)")
    p.add_argument("--simulate", help="runner/gpumon: simulated GPUs, e.g. 4xH100")
    p.add_argument("--time-scale", type=float, default=None, help="runner: simulated engines' time compression")
    p.add_argument("--takeover", action="store_true", help="runner: replace a live instance of the same host")
    p.add_argument("--port", type=int, default=8080, help="api: port")
    p.add_argument("--bind", default="127.0.0.1", help="api: address")

    p = _sub(sp, "demo", "run a small tuning task end to end on this machine and print the best configuration", "autotune demo\nautotune demo --task-file my-task.yaml", cmd_demo)
    p.add_argument("--task-file", default=None, help="task file to run (default: examples/demo.yaml)")
    p.add_argument("--time-scale", type=float, default=10.0, help="simulated engines run this much faster than real time")

    # tasks
    # hosts
    # live views and data
    p = _sub(sp, "streams", "the JetStream streams: replicas, max age, size; --apply gives them this environment's settings",
             "autotune streams\nAUTOTUNE_TELEMETRY_MAX_AGE_S=86400 AUTOTUNE_LOGS_MAX_AGE_S=2592000 autotune streams --apply", cmd_streams)
    p.add_argument("--apply", action="store_true",
                   help="create what is missing and set replicas (AUTOTUNE_REPLICAS) and max ages (AUTOTUNE_TELEMETRY_MAX_AGE_S, AUTOTUNE_LOGS_MAX_AGE_S); admin only")
    _json(p)

    p = _sub(sp, "mcp", "serve autotune's tools to an LLM agent over MCP (stdio): hosts, tasks, experiments, SQL",
             "autotune mcp\nautotune mcp --allow-fleet-changes   # also drain_host, remove_host, cancel_task\n"
             'claude mcp add autotune -- uv run --directory /path/to/autotune autotune mcp', cmd_mcp)  # fmt: skip
    p.add_argument("--allow-fleet-changes", action="store_true", help="offer the tools that change the fleet or stop work (drain_host, remove_host, cancel_task)")

    # tools
    p = _sub(sp, "bench", "benchmark a running OpenAI-compatible server", "autotune bench --url http://127.0.0.1:30000 --model M --concurrency 1 8", cmd_bench, connects=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)

    p = _sub(sp, "projector", "projector maintenance (rebuild the read model from the log, snapshot, checksum)", "autotune projector rebuild\nautotune projector snapshot /tmp/x.duckdb", cmd_projector, connects=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    tasks.register(sp)
    experiments.register(sp)
    hosts.register(sp)
    inspect.register(sp)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
