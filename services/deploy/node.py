"""`autotune node`: a host's runner and GPU monitor under one supervisor (this runs on the GPU host).

The supervisor (autotune.supervisor.supervise, the same one `autotune up` uses) restarts a child
that exits, with a growing back-off, and logs the last lines it wrote. SIGTERM stops the node
gracefully: the runner first (it tears its engines down and reports what it was running as
retryable, so those experiments move to other hosts), then the GPU monitor.

The node pins itself to one release: started as `<prefix>/current/venv/bin/python`, it re-executes
itself from the release `current` points to at that moment, so switching `current` for an upgrade
never mixes two releases' code in one process tree.

Where systemd runs, a unit keeps the node running (`Restart=always`). Elsewhere `--daemon` detaches
it with a pidfile; nothing then brings it back after a reboot, and it says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec

from autotune.deploy.layout import Credentials, NodeConfig
from autotune.shared.log import get_logger

log = get_logger("node")

NODE_MARK = "autotune.cli node"  # in a node's command line: how a pid is recognized as ours


class NodeError(RuntimeError):
    pass


def load(path: str) -> tuple[NodeConfig, Credentials]:
    try:
        cfg = msgspec.json.decode(Path(path).read_bytes(), type=NodeConfig)
    except (OSError, msgspec.MsgspecError) as e:
        raise NodeError(f"cannot read the node configuration {path}: {e}") from None
    try:
        creds = msgspec.json.decode(Path(cfg.credentials).read_bytes(), type=Credentials)
    except (OSError, msgspec.MsgspecError) as e:
        raise NodeError(f"cannot read the node's NATS credentials {cfg.credentials}: {e}") from None
    return cfg, creds


def pin_release(argv: list[str]) -> None:
    """Re-execute from the real release directory when started through the `current` link."""
    if sys.prefix == sys.base_prefix:  # not in a virtualenv: nothing to pin
        return
    real = os.path.realpath(sys.prefix)
    if real != sys.prefix and os.path.exists(f"{real}/bin/python"):
        os.execv(f"{real}/bin/python", [f"{real}/bin/python", "-m", "autotune.cli", "node", *argv])


def children(cfg: NodeConfig, creds: Credentials, python: str | None = None):
    from autotune.supervisor import Child

    py = python or sys.executable
    env = {"AUTOTUNE_DATA_DIR": cfg.data_dir, "AUTOTUNE_HOST": cfg.host, **cfg.env}
    if cfg.nats_ca:
        env["AUTOTUNE_NATS_CA"] = cfg.nats_ca
    runner = [py, "-m", "autotune.cli", "run", "runner", "--host", cfg.host]
    gpumon = [py, "-m", "autotune.cli", "run", "gpumon", "--host", cfg.host]
    if cfg.simulate:
        runner += ["--simulate", cfg.simulate]
        gpumon += ["--simulate", cfg.simulate]
    if cfg.time_scale is not None:
        runner += ["--time-scale", str(cfg.time_scale)]
    # credentials in the environment (readable by this user and root only), never in argv
    return [
        Child("runner", runner, {**env, "AUTOTUNE_NATS_URL": creds.runner}),
        Child("gpumon", gpumon, {**env, "AUTOTUNE_NATS_URL": creds.gpumon}),
    ]


async def run(cfg: NodeConfig, creds: Credentials, stop: asyncio.Event) -> None:
    from autotune.supervisor import supervise

    release = os.path.basename(os.path.dirname(os.path.realpath(sys.prefix))) if sys.prefix != sys.base_prefix else ""
    Path(cfg.data_dir).mkdir(parents=True, exist_ok=True)
    log.info("node started", host=cfg.host, release=release or "-", nats=cfg.nats_url, via=cfg.via, simulated=bool(cfg.simulate), pid=os.getpid())
    await supervise(children(cfg, creds), Path(cfg.log_dir), stop)
    log.info("node stopped", host=cfg.host, release=release or "-")


# --- the daemon (where systemd does not run) -----------------------------------------------------------


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def running_pid(pidfile: str) -> int | None:
    """The node's pid from its pidfile, if that process is alive and is a node."""
    try:
        pid = int(Path(pidfile).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if NODE_MARK in _cmdline(pid) else None


def start_daemon(config: str, cfg: NodeConfig) -> int:
    """Detach a node (its own session, stdio to node.log) and write its pidfile. Returns its pid."""
    if (pid := running_pid(cfg.pidfile)) is not None:
        return pid
    Path(cfg.log_dir).mkdir(parents=True, exist_ok=True)
    Path(cfg.pidfile).parent.mkdir(parents=True, exist_ok=True)
    with open(Path(cfg.log_dir) / "node.log", "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "autotune.cli", "node", "--config", config], stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    tmp = f"{cfg.pidfile}.tmp"
    Path(tmp).write_text(f"{proc.pid}\n")
    os.replace(tmp, cfg.pidfile)
    time.sleep(0.3)
    if proc.poll() is not None:
        raise NodeError(f"the node exited at once (code {proc.returncode}); see {cfg.log_dir}/node.log")
    return proc.pid


def _descendants(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        out += kids
        todo += kids
    return out


def stop_daemon(cfg: NodeConfig, timeout: float = 90.0) -> bool:
    """SIGTERM the node (it stops its children), SIGKILL what is left after `timeout`. True if one ran."""
    pid = running_pid(cfg.pidfile)
    if pid is None:
        Path(cfg.pidfile).unlink(missing_ok=True)
        return False
    tree = _descendants(pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and NODE_MARK in _cmdline(pid):
        time.sleep(0.1)
    for p in [pid, *tree]:  # whatever did not stop in time, and any grandchild an engine left behind
        if _cmdline(p):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, signal.SIGKILL)
    Path(cfg.pidfile).unlink(missing_ok=True)
    return True


def status(cfg: NodeConfig) -> dict:
    pid = running_pid(cfg.pidfile)
    return {"host": cfg.host, "running": pid is not None, "pid": pid}


def main(args) -> int:
    """`autotune node` (the CLI passes its parsed arguments)."""
    from autotune.shared import lifecycle

    if args.config:
        try:
            cfg, creds = load(args.config)
        except NodeError as e:
            sys.stderr.write(f"autotune: {e}\n")
            return 2
    else:
        from autotune.runner.settings import default_host_id
        from autotune.shared.settings import Settings, default_data_dir

        url = args.nats or Settings.from_env().nats_url
        data = os.environ.get("AUTOTUNE_DATA_DIR") or str(default_data_dir())
        cfg = NodeConfig(
            host=args.host or default_host_id(), simulate=args.simulate, time_scale=args.time_scale, data_dir=data,
            log_dir=f"{data}/logs/node", pidfile=f"{data}/node.pid", credentials="", nats_url=url.rsplit("@", 1)[-1],
        )
        creds = Credentials(runner=url, gpumon=url)
    if args.stop:
        stopped = stop_daemon(cfg)
        print(json.dumps({"stopped": stopped}) if args.json else ("node stopped" if stopped else "no node was running"))
        return 0
    if args.status:
        print(json.dumps(status(cfg)))
        return 0
    if args.daemon:
        if not args.config:
            sys.stderr.write("autotune: --daemon needs --config (what `autotune deploy` writes)\n")
            return 2
        try:
            pid = start_daemon(args.config, cfg)
        except NodeError as e:
            sys.stderr.write(f"autotune: {e}\n")
            return 1
        print(
            json.dumps({"pid": pid}) if args.json
            else f"node {cfg.host} runs as a daemon (pid {pid}, pidfile {cfg.pidfile}); without systemd it does not come back after a reboot"
        )
        return 0
    if args.config:
        pin_release(["--config", args.config])
    lifecycle.run_until_signal(lambda stop: run(cfg, creds, stop))
    return 0
