"""The chaos suite (`just chaos`): a real task on real processes while a seeded driver kill -9s them.

A task of 30 experiments runs on 3 runners (max_parallel 3) while the driver kills, at random
times, the scheduler, a runner, the projector and the API (and, with --cluster, a NATS node), each
restarted after a delay. At the end it checks, from the log and the files:

- the task completed;
- every planned experiment attempt has exactly one terminal outcome; none is completed twice;
- no GPU was held by two running experiments at once;
- the projection equals a fresh rebuild from the log (table-by-table checksums);
- no engine process remains.

It prints one JSON line (kills, restarts, experiments, attempts, violations) and exits 1 on any
violation. `--short` is the CI form.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from autotune.runner.runtimes.local import labelled_processes  # noqa: E402
from autotune.schemas import events as ev  # noqa: E402
from autotune.shared import bus  # noqa: E402
from autotune.shared.audit import audit, peak_parallelism  # noqa: E402
from autotune.shared.natsserver import NatsServer  # noqa: E402
from autotune.shared.settings import Settings  # noqa: E402
from tests.helpers import events_of, small_spec, submit  # noqa: E402


class Service:
    def __init__(self, name: str, args: list[str], env: dict[str, str], logs: Path) -> None:
        self.name, self.args, self.env, self.logs = name, args, env, logs
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        out = open(self.logs / f"{self.name}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "autotune.cli", *self.args], stdout=out, stderr=out, env={**os.environ, **self.env}, cwd=ROOT, start_new_session=True)
        out.close()
        self.starts += 1

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.kill()

    @property
    def alive(self) -> bool:
        return bool(self.proc and self.proc.poll() is None)


async def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--runners", type=int, default=3)
    ap.add_argument("--short", action="store_true", help="CI form: 12 experiments, fewer kills")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="autotune-chaos-"))
    logs = work / "logs"
    logs.mkdir()
    t0 = time.monotonic()

    nats = NatsServer(work / "nats", log_file=str(logs / "nats.log")).start()
    settings = Settings(nats_url=nats.url, data_dir=str(work / "data"), host_ttl_s=4.0)
    env = {"AUTOTUNE_DATA_DIR": settings.data_dir, "AUTOTUNE_HOST_TTL_S": "4", "AUTOTUNE_NATS_URL": nats.url}
    db = work / "data" / "autotune.duckdb"
    hosts = [f"chaos-{i}" for i in range(args.runners)]
    services = {
        "scheduler": Service("scheduler", ["run", "scheduler"], env, logs),
        "projector": Service("projector", ["run", "projector"], env, logs),
        "api": Service("api", ["run", "api", "--port", str(_free_port())], env, logs),
        **{h: Service(h, ["run", "runner", "--host", h, "--simulate", "1xH100", "--time-scale", "40"], env, logs) for h in hosts},
    }
    for s in services.values():
        s.start()

    nc = await bus.connect(settings, "chaos")
    js = nc.jetstream()
    await bus.provision(js, settings)
    experiments = 12 if args.short else 30
    params = {"max-running-requests": [4, 8, 16, 32, 64, 128], "mem-fraction-static": [0.7, 0.8, 0.85, 0.88, 0.9]}
    raw = small_spec("chaos", parameters=params, optimization={"max_iterations": experiments, "max_parallel": 3, "timeout_per_iteration": 120},
                     benchmark={"max_requests_per_iteration": 40})
    task = await submit(js, raw)

    kills: Counter[str] = Counter()
    restarts = 0
    pending: list[tuple[float, Service]] = []
    deadline = time.monotonic() + (300 if args.short else 900)
    max_kills = 5 if args.short else 14
    gap = (1.5, 3.5) if args.short else (3.0, 8.0)
    next_kill = time.monotonic() + rng.uniform(*gap)
    # every kind of victim in a seeded order, round after round, so each is killed at least once
    victims: list[str] = []
    final = None
    while time.monotonic() < deadline:
        now = time.monotonic()
        for due, s in list(pending):
            if now >= due:
                s.start()
                restarts += 1
                pending.remove((due, s))
        if now >= next_kill and sum(kills.values()) < max_kills:
            if not victims:
                victims = ["scheduler", "projector", "api", rng.choice(hosts)]
                rng.shuffle(victims)
            victim = services[victims.pop()]
            if victim.alive:
                victim.kill()
                kills[victim.name if victim.name not in hosts else "runner"] += 1
                pending.append((now + rng.uniform(1.0, 4.0), victim))
            next_kill = now + rng.uniform(*gap)
        last = await bus.last_seq(js, f"autotune.task.{task}.*")
        if last:
            msg = await js.get_msg("AUTOTUNE_EVENTS", last)
            e = ev.decode(msg.data)
            if isinstance(e, ev.TERMINAL_TASK):
                final = e
                break
        await asyncio.sleep(0.5)
    for _, s in pending:
        s.start()
        restarts += 1

    violations: list[str] = []
    if not isinstance(final, ev.TaskCompleted):
        violations.append(f"task did not complete: {type(final).__name__ if final else 'timed out'}")
    history = await events_of(js, f"autotune.task.{task}.>")
    violations += audit(history)

    # stop everything; runners tear their engines down
    for name in hosts + ["scheduler", "api", "projector"]:
        services[name].stop()
    await asyncio.sleep(0.5)
    left = [p for p, lab in labelled_processes() if lab.get("AUTOTUNE_LABEL_HOST") in hosts]
    if left:
        violations.append(f"engine processes left running: {left}")
        for p in left:
            os.kill(p, signal.SIGKILL)

    # the incrementally built projection (caught up) must equal a fresh rebuild from the log
    violations += await _compare_projection(settings, db, work / "fresh.duckdb", env)

    attempts = sum(1 for _, e in history if isinstance(e, ev.ExperimentPlanned))
    result = {
        "benchmark": "chaos",
        "seed": args.seed,
        "short": args.short,
        "kills": dict(kills),
        "restarts": restarts,
        "experiments": len({e.n for _, e in history if isinstance(e, ev.ExperimentPlanned)}),
        "attempts": attempts,
        "retried": attempts - len({e.n for _, e in history if isinstance(e, ev.ExperimentPlanned)}),
        "completed": sum(1 for _, e in history if isinstance(e, ev.ExperimentCompleted)),
        "failed": Counter(e.kind for _, e in history if isinstance(e, ev.ExperimentFailed)),
        "peak_parallel": peak_parallelism(history),
        "violations": violations,
        "elapsed_s": round(time.monotonic() - t0, 1),
        "work_dir": str(work) if args.keep or violations else None,
    }
    await nc.close()
    nats.stop()
    if not (args.keep or violations):
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))
    return 1 if violations else 0


async def _compare_projection(settings: Settings, db: Path, fresh: Path, env: dict) -> list[str]:
    """Catch the live file up (burst), build a fresh one from the log, compare per-table checksums."""
    from autotune.projector.service import Projector
    from autotune.projector.settings import ProjectorConfig
    from autotune.projector.store import Store, checksums

    caught_up = subprocess.run(
        [sys.executable, "-m", "autotune.cli", "projector", "run", "--burst", "--db", str(db)], env={**os.environ, **env}, cwd=ROOT,
        capture_output=True, text=True, timeout=300,
    )
    if caught_up.returncode != 0:
        return [f"projector could not catch up: {caught_up.stderr[-500:]}"]
    nc = await bus.connect(settings, "chaos-rebuild")
    try:
        js = nc.jetstream()
        await Projector(nc, js, str(fresh), ProjectorConfig.from_env()).run(asyncio.Event(), burst=True, serve=False)
    finally:
        await nc.close()
    sums = []
    for path in (db, fresh):
        store = Store(str(path), read_only=True)
        try:
            sums.append(checksums(store.conn))
        finally:
            store.close()
    # gpu samples and logs keep flowing while services run; compare the tables of record
    return [f"projection differs from a rebuild in table {t}: {sums[0][t]} vs {sums[1][t]}" for t in sums[0] if sums[0][t] != sums[1].get(t)]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
