"""Running autotune: up (every service on this machine), run (one service), demo, streams."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from autotune import __version__
from autotune.cli.connection import EXIT_INPUT, EXIT_OK, Connection, Failed, err, nats_command, stack_settings
from autotune.cli.options import add_command, json_option
from autotune.cli.render import console, span, table
from autotune.services import SERVICES


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "up", "start nats-server and every service on this machine, supervised",
                    "autotune up\nautotune up --hosts 3 --simulate 2xH100 --time-scale 10", up)  # fmt: skip
    p.add_argument("--nats-port", type=int, default=4222)
    p.add_argument("--nats-bind", default="127.0.0.1", help="address NATS listens on (0.0.0.0 or a LAN address for hosts added with `autotune deploy`)")
    p.add_argument("--api-port", type=int, default=8080)
    p.add_argument("--hosts", type=int, default=1, help="runner (host) processes to start here (0: only hosts added with `autotune deploy`)")
    p.add_argument("--simulate", help="simulated GPUs per host, e.g. 4xH100 (default: real GPUs, else simulated)")
    p.add_argument("--time-scale", type=float, default=10.0, help="simulated engines run this much faster than real time (keep it at 10 or below for faithful latencies)")
    p.add_argument("--no-auth", action="store_true", help="do not require an API token for POST calls")
    p.add_argument("--secure", action="store_true", help="NATS with a user per role and host, each allowed only the subjects it needs, over TLS (infra/nats/README.md)")
    p.add_argument("--no-tls", action="store_true", help="with --secure: plain TCP instead of TLS (users and passwords then cross the network in the clear)")

    p = add_command(sub, "run", "run one service in the foreground",
                    "autotune run scheduler --nats nats://10.0.0.5:4222\nautotune run runner --host gpu-node-7\nautotune run api --bind 0.0.0.0 --port 8080", run)  # fmt: skip
    p.add_argument("service", choices=SERVICES)
    p.add_argument("--host", help="runner/gpumon: this host's id (default: derived from the machine id)")
    p.add_argument("--simulate", help="runner/gpumon: simulated GPUs, e.g. 4xH100")
    p.add_argument("--time-scale", type=float, default=None, help="runner: simulated engines' time compression")
    p.add_argument("--takeover", action="store_true", help="runner: replace a live instance of the same host")
    p.add_argument("--engine", action="append", default=[], metavar="NAME=PATH",
                   help="runner: where an engine's executable lives on this host, e.g. vllm=/opt/vllm/bin/vllm (repeatable; AUTOTUNE_ENGINES)")
    p.add_argument("--engine-env", action="append", default=[], metavar="NAME=VALUE",
                   help="runner: set in every engine's environment, e.g. HF_HUB_OFFLINE=1 (repeatable; a task's engine_env overrides it)")
    p.add_argument("--cpu-slots", type=int, default=None,
                   help="runner: real engines served on this host's CPU at once (default: 1 without GPUs when --engine names vllm)")
    p.add_argument("--models-dir", default=None, help="runner: where model names without a `/` live (AUTOTUNE_MODELS_DIR)")
    p.add_argument("--port", type=int, default=8080, help="api: port")
    p.add_argument("--bind", default="127.0.0.1", help="api: address")

    p = add_command(sub, "demo", "run a small tuning task end to end on this machine and print the best configuration",
                    "autotune demo\nautotune demo --task-file my-task.yaml", demo)  # fmt: skip
    p.add_argument("--task-file", default=None, help="task file to run (default: examples/demo.yaml)")
    p.add_argument("--time-scale", type=float, default=10.0, help="simulated engines run this much faster than real time")

    p = add_command(sub, "streams", "the JetStream streams: replicas, max age, size; --apply gives them this environment's settings",
                    "autotune streams\nAUTOTUNE_TELEMETRY_MAX_AGE_S=86400 AUTOTUNE_LOGS_MAX_AGE_S=2592000 autotune streams --apply", streams)  # fmt: skip
    p.add_argument("--apply", action="store_true",
                   help="create what is missing and set replicas (AUTOTUNE_REPLICAS) and max ages (AUTOTUNE_TELEMETRY_MAX_AGE_S, AUTOTUNE_LOGS_MAX_AGE_S); admin only")  # fmt: skip
    json_option(p)


def run(args: argparse.Namespace) -> int:
    from autotune.services import CannotStart, service_main
    from autotune.shared import lifecycle
    from autotune.shared.log import setup_logging

    setup_logging()
    from autotune.runner.settings import parse_pairs

    s = stack_settings(args)
    try:
        runner_options = dict(engines=parse_pairs(args.engine, "engine") or None, engine_env=parse_pairs(args.engine_env, "engine-env") or None,
                              cpu_slots=args.cpu_slots, models_dir=args.models_dir)  # fmt: skip
        main = service_main(args.service, host=args.host, simulate=args.simulate, time_scale=args.time_scale, takeover=args.takeover,
                            bind=args.bind, port=args.port, runner_options=runner_options)  # fmt: skip
    except ValueError as e:
        return err(f"{args.service}: {e}", EXIT_INPUT)
    try:
        lifecycle.run_until_signal(lambda stop: main(s, stop))
    except CannotStart as e:
        return err(str(e), EXIT_INPUT)
    return EXIT_OK


def up(args: argparse.Namespace) -> int:
    from autotune import supervisor as sv
    from autotune.shared import lifecycle
    from autotune.shared.log import setup_logging

    setup_logging()
    code = EXIT_OK

    async def main(stop: asyncio.Event) -> None:
        nonlocal code
        s = stack_settings(args)
        data = Path(s.data_dir)
        if info := sv.read_stack_info(data):
            code = err(f"already running (pid {info['pid']}, NATS {info['nats_url']}); stop it first", EXIT_INPUT)
            return
        (data / "logs").mkdir(parents=True, exist_ok=True)
        passwords, ca = None, None
        if args.secure:
            from autotune.shared.tls import TlsError

            try:
                nats, passwords = sv.start_secure_nats(data, args.nats_port, sv.host_ids(args.hosts), bind=args.nats_bind, tls=not args.no_tls)
            except TlsError as e:
                code = err(str(e), EXIT_INPUT)
                return
            ca = None if args.no_tls else sv.tls_ca(data)
        else:
            nats = sv.start_nats(data, args.nats_port, bind=args.nats_bind)
        await sv.provision_as_admin(nats.url, passwords, data, tls_ca=ca)
        token = None if args.no_auth else (s.api_token or sv.new_token())
        children = sv.build_children(
            nats.url, data, api_port=args.api_port, hosts=args.hosts, simulate=args.simulate, time_scale=args.time_scale, api_token=token,
            passwords=passwords, tls_ca=ca,
        )  # fmt: skip
        api_url = f"http://127.0.0.1:{args.api_port}"
        stack = sv.Stack(data, nats.url, api_url, token, nats, children, secure=args.secure, tls_ca=ca)
        sv.stack_file(data).write_text(json.dumps(stack.info()))
        print(f"autotune {__version__} is up (Ctrl-C stops everything)")
        print(f"  NATS      {nats.url}   (watch: nats sub 'autotune.>' -s {nats.url}" + (f" --tlsca {ca}" if ca else "") + ")")
        if passwords:
            from autotune.shared import security

            print(f"  secure    a NATS user per role and host; passwords in {security.credentials_path(data)} (0600)")
            print(f"  TLS       clients verify NATS against {ca} (autotune deploy copies it to each host)" if ca else "  TLS       off (--no-tls)")
        print(f"  dashboard {api_url}/   (the fleet, tasks and results, live)")
        print(f"  API       {api_url}/api   (OpenAPI: {api_url}/schema)")
        if token:
            print(f"  API token {token}   (send `Authorization: Bearer <token>` on POST)")
        print(f"  data      {data}   (logs in {data / 'logs'})")
        print("  hosts     " + ", ".join(c.name.removeprefix("runner-") for c in children if c.name.startswith("runner-"))
              + ("  [SIMULATED GPUs and engines]" if args.simulate else "  (simulated GPUs when NVML finds none)"))  # fmt: skip
        sys.stdout.flush()
        try:
            await sv.supervise(children, data / "logs", stop, nats=nats)
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


def demo(args: argparse.Namespace) -> int:
    from autotune.cli.demo import run_demo

    return run_demo(args)


@nats_command
async def streams(args: argparse.Namespace, conn: Connection) -> int:
    from nats.js.errors import NotFoundError

    from autotune.shared.provision import ProvisionError, apply_stream_settings, stream_configs, stream_differences

    try:
        changes = await apply_stream_settings(conn.js, conn.settings) if args.apply else []
    except ProvisionError as e:
        raise Failed(str(e)) from None
    out = []
    for want in stream_configs(conn.settings):
        try:
            info = await conn.js.stream_info(want.name)
        except NotFoundError:
            out.append({"stream": want.name, "subjects": list(want.subjects or []), "missing": True, "replicas": 0, "max_age_s": 0,
                        "messages": 0, "bytes": 0, "first_seq": 0, "last_seq": 0, "differs_from_settings": ["missing"]})  # fmt: skip
            continue
        c, st = info.config, info.state
        pending = [f"{f} {was} -> {now}" for f, was, now in stream_differences(c, want)]
        out.append({
            "stream": c.name, "subjects": list(c.subjects or []), "replicas": c.num_replicas, "max_age_s": c.max_age or 0,
            "messages": st.messages, "bytes": st.bytes, "first_seq": st.first_seq, "last_seq": st.last_seq,
            "differs_from_settings": pending,
        })  # fmt: skip
    if args.json:
        print(json.dumps({"streams": out, "changed": [{"stream": n, "field": f, "was": a, "now": b} for n, f, a, b in changes]}))
        return EXIT_OK
    rows = [[o["stream"], " ".join(o["subjects"]), "missing", "", "", "", ""] if o.get("missing") else
            [o["stream"], " ".join(o["subjects"]), o["replicas"], span(o["max_age_s"]), o["messages"], f"{o['bytes'] / 2**20:.1f}",
             f"{o['first_seq']}-{o['last_seq']}"] for o in out]  # fmt: skip
    console().print(table("streams", ["stream", "subjects", "replicas", "max age", "messages", "MiB", "sequences"], rows))
    for n, f, a, b in changes:
        print(f"changed {n}: {f} {a} -> {b}")
    for n, d in [(o["stream"], d) for o in out for d in o["differs_from_settings"]]:
        what = "is missing (autotune up and every service create it at start)" if d == "missing" else f"{d} in this environment's settings"
        print(f"{n}: {what}; apply with autotune streams --apply (as admin)")
    return EXIT_OK
