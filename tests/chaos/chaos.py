"""The chaos suite (`just chaos`): a real task on real processes while a seeded driver kill -9s and pauses them.

A task of 30 experiments runs on 3 runners (max_parallel 3) while the driver kills, at random
times, the scheduler, a runner, the projector and the API (and, with --cluster, a NATS node), each
restarted after a delay; and, on a schedule of its own, pauses a runner, the scheduler or the projector
(SIGSTOP, a stand-in for a stalled VM or a partition) for a random time, longer than the liveness TTL
half the time, then resumes it (SIGCONT). The first pause is always a runner's, longer than the TTL.
It checks, from the log, the files and the machine:

- the task completed;
- every planned experiment attempt has exactly one terminal outcome; none is completed twice;
- no GPU was held by two running experiments at once, in the log (`shared/audit.py`) and on the
  machine: /proc is sampled every few milliseconds (tests/fixtures/machine.py), and two live engine
  processes of different attempts on one host GPU at the same moment is a violation;
- the projection equals a fresh rebuild from the log (table-by-table checksums);
- no engine process remains.

It prints one JSON line (kills, pauses, restarts, experiments, attempts, violations) and exits 1 on any
violation. `--short` is the CI form.

`--cluster` runs it on a 3-node NATS cluster (tests/chaos/cluster.py): streams replicated x3, every
service connected as its own role's user with the URLs of all nodes, liveness keys of 15 s. A node is
one more victim, killed only when every stream and durable consumer is fully replicated, so two nodes
are never down (or catching up) at once and every raft group keeps its quorum.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import secrets
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
from autotune.shared.log import setup_logging  # noqa: E402
from autotune.shared.natsserver import NatsServer  # noqa: E402
from autotune.shared.net import free_port  # noqa: E402
from autotune.shared.provision import provision  # noqa: E402
from autotune.shared.settings import Settings  # noqa: E402
from tests.chaos.cluster import LocalCluster, healthy  # noqa: E402
from tests.fixtures.machine import GpuWatch  # noqa: E402
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

    def pause(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            os.killpg(self.proc.pid, signal.SIGCONT)  # a paused service must run to see its SIGTERM
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.kill()

    @property
    def alive(self) -> bool:
        return bool(self.proc and self.proc.poll() is None)


class Node:
    """A NATS cluster node as a victim: SIGKILLed, then started again from its configuration and store."""

    def __init__(self, cluster: LocalCluster, name: str) -> None:
        self.cluster, self.name = cluster, name

    def start(self) -> None:
        self.cluster.start(self.name)

    def kill(self) -> None:
        self.cluster.kill(self.name)

    @property
    def alive(self) -> bool:
        return self.cluster.alive(self.name)


class Run:
    """The processes of one run, the victims among them, and what was killed and restarted when."""

    def __init__(self, rng: random.Random, hosts: list[str], logs: Path, cluster: LocalCluster | None, t0: float, *, ttl_s: float) -> None:
        self.rng, self.hosts, self.logs, self.cluster, self.t0 = rng, hosts, logs, cluster, t0
        self.pause_rng = random.Random(rng.random())  # pauses on a schedule of their own: the kills stay as seeded before
        self.ttl_s = ttl_s
        self.services: dict[str, Service | Node] = {}
        self.kills: Counter[str] = Counter()
        self.pauses: Counter[str] = Counter()
        self.long_pauses: Counter[str] = Counter()  # pauses longer than the liveness TTL
        self.paused: list[tuple[float, Service]] = []  # (when, what) to resume
        self.pause_victims: list[tuple[str, bool]] = []
        self.restarts = 0
        self.pending: list[tuple[float, Service | Node]] = []  # (when, what) to restart
        self.violations: list[str] = []
        self.victims: list[str] = []
        self.dead: set[Service | Node] = set()
        self.timeline = open(logs / "chaos.log", "a", buffering=1)  # noqa: SIM115 - the driver's own log: what it did when

    def note(self, what: str) -> None:
        self.timeline.write(f"{time.strftime('%H:%M:%S')} +{time.monotonic() - self.t0:6.1f}s {what}\n")

    async def drive(self, js, task: str, *, deadline: float, max_kills: int, gap: tuple[float, float], max_pauses: int = 0,
                    pause_gap: tuple[float, float] = (3.0, 8.0)) -> ev.Event | None:  # fmt: skip
        """Kill, pause, resume and restart until the task ends (its terminal event) or the deadline."""
        next_kill = time.monotonic() + self.rng.uniform(*gap)
        next_pause = time.monotonic() + self.pause_rng.uniform(*pause_gap)
        while time.monotonic() < deadline:
            now = time.monotonic()
            self._restart_due(now)
            self._resume_due(now)
            if "scheduler" in self._died():
                return None  # nothing can finish the task now
            if now >= next_kill and sum(self.kills.values()) < max_kills:
                next_kill = now + (self.rng.uniform(*gap) if await self._kill_next(js, now) else 1.0)
            if now >= next_pause and sum(self.pauses.values()) < max_pauses:
                next_pause = now + (self.pause_rng.uniform(*pause_gap) if self._pause_next(now) else 1.0)
            try:
                if final := await _task_end(js, task):
                    return final
            except Exception:  # noqa: BLE001 - the node this client talks to was killed; it reconnects
                pass
            await asyncio.sleep(0.5)
        return None

    def restart_all(self) -> None:
        self._resume_due(float("inf"))
        self._restart_due(float("inf"))

    def _resume_due(self, now: float) -> None:
        for due, s in list(self.paused):
            if now >= due:
                self.note(f"resume {s.name}")
                s.resume()
                self.paused.remove((due, s))

    def _pause_next(self, now: float) -> bool:
        """Pause the next victim (a runner, the scheduler or the projector); False when it is not running now."""
        if not self.pause_victims:
            # a round: every kind once, long or short by a coin; the first round starts with a runner
            # paused longer than the TTL, so even a short run has one
            first = not self.pauses
            self.pause_victims = [("runner", self.pause_rng.random() < 0.5), ("scheduler", self.pause_rng.random() < 0.5),
                                  ("projector", self.pause_rng.random() < 0.5)]  # fmt: skip
            self.pause_rng.shuffle(self.pause_victims)
            if first:
                self.pause_victims.append(("runner", True))
        kind, long = self.pause_victims.pop()
        name = self.pause_rng.choice(self.hosts) if kind == "runner" else kind
        victim = self.services[name]
        if not isinstance(victim, Service) or not victim.alive or any(s is victim for _, s in self.paused):
            self.pause_victims.append((kind, long))
            return False
        seconds = self.ttl_s * (self.pause_rng.uniform(1.2, 1.8) if long else self.pause_rng.uniform(0.1, 0.8))
        self.note(f"pause {name} for {seconds:.1f}s ({'longer' if long else 'shorter'} than the {self.ttl_s:g}s TTL)")
        victim.pause()
        self.pauses[kind] += 1
        self.long_pauses[kind] += long
        self.paused.append((now + seconds, victim))
        return True

    def _restart_due(self, now: float) -> None:
        for due, s in list(self.pending):
            if now >= due:
                self.note(f"restart {s.name}")
                s.start()
                self.restarts += 1
                self.pending.remove((due, s))

    def _died(self) -> set[str]:
        """Services that exited by themselves (a violation: nothing restarts them here); says which and why, once."""
        waiting = [s for _, s in self.pending]
        died = {s for s in self.services.values() if isinstance(s, Service) and not s.alive and s not in waiting}
        for s in died - self.dead:
            code = s.proc.returncode if s.proc else None
            self.violations.append(f"{s.name} exited by itself (code {code}): {_last_error(self.logs / f'{s.name}.log')}")
            self.note(f"{s.name} exited by itself with code {code}")
        self.dead |= died
        return {s.name for s in died}

    async def _kill_next(self, js, now: float) -> bool:
        """Kill the next victim; False when it is a NATS node and the cluster is not ready to lose one."""
        # every kind of victim in a seeded order, round after round, so each is killed at least once
        if not self.victims:
            self.victims = ["scheduler", "projector", "api", self.rng.choice(self.hosts)] + (["nats"] if self.cluster else [])
            self.rng.shuffle(self.victims)
        name = self.victims.pop()
        if name == "nats":
            assert self.cluster is not None
            # never a second node while one is down or catching up: that could cost a raft group its quorum
            if any(isinstance(s, Node) for _, s in self.pending) or not await healthy(js):
                self.victims.insert(0, name)  # after the others of this round
                return False
            leader = await _events_leader(js) if self.rng.random() < 0.5 else None  # the event stream's leader, half the time
            name = leader or self.rng.choice(self.cluster.names)
        victim = self.services[name]
        if victim.alive:
            self.note(f"kill {name}")
            victim.kill()
            self.paused = [(due, s) for due, s in self.paused if s is not victim]
            self.kills["nats" if isinstance(victim, Node) else "runner" if name in self.hosts else name] += 1
            self.pending.append((now + self.rng.uniform(1.0, 4.0), victim))
        return True

    def stop(self) -> None:
        """SIGTERM the services (runners first: they tear their engines down), SIGKILL what lingers."""
        for name in self.hosts + ["scheduler", "api", "projector"]:
            if name in self.services:
                self.services[name].stop()


async def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--runners", type=int, default=3)
    ap.add_argument("--short", action="store_true", help="CI form: 18 experiments (24 on a cluster), fewer kills")
    ap.add_argument("--cluster", action="store_true", help="3 NATS nodes, streams x3, a user per role; a node is a victim too")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="autotune-chaos-"))
    logs = work / "logs"
    logs.mkdir()
    t0 = time.monotonic()
    # host names of this run alone: engines of another run on this machine are neither reaped nor watched
    run_id = secrets.token_hex(2)
    hosts = [f"chaos{run_id}-{i}" for i in range(args.runners)]
    cluster = LocalCluster(work, hosts, logs=logs) if args.cluster else None
    ttl_s = 15.0 if cluster else 4.0
    run = Run(random.Random(args.seed), hosts, logs, cluster, t0, ttl_s=ttl_s)
    watch = GpuWatch(hosts)
    setup_logging()  # what runs in this process (the fresh rebuild's projector) logs to the timeline, not the terminal
    logging.getLogger().handlers[0].setStream(run.timeline)

    nc = None
    nats_stop = cluster.stop if cluster else (lambda: None)
    try:
        if cluster:
            cluster.start_all()
            settings = cluster.settings("admin")
            role_env = cluster.env
        else:
            nats = NatsServer(work / "nats", log_file=str(logs / "nats.log"))
            nats_stop = nats.stop
            settings = Settings(nats_url=nats.start().url, data_dir=str(work / "data"), host_ttl_s=ttl_s)
            env = {"AUTOTUNE_DATA_DIR": settings.data_dir, "AUTOTUNE_HOST_TTL_S": f"{ttl_s:g}", "AUTOTUNE_NATS_URL": settings.nats_url}

            def role_env(user: str) -> dict[str, str]:
                return env

        db = Path(settings.data_dir) / "autotune.duckdb"

        async def nats_error(e: Exception) -> None:
            run.note(f"driver connection: {e!r}")

        nc = await bus.connect(settings, "chaos", error_cb=nats_error)
        # provision as admin before any service starts (in a cluster: once there is a JetStream leader)
        js = nc.jetstream(timeout=2) if cluster else nc.jetstream()
        await _retry(lambda: provision(js, settings), 60 if cluster else 0)
        if cluster and not await _until(lambda: healthy(js), 60):
            run.note("the cluster did not become healthy after provisioning")

        run.services = {
            "scheduler": Service("scheduler", ["run", "scheduler"], role_env("scheduler"), logs),
            "projector": Service("projector", ["run", "projector"], role_env("projector"), logs),
            "api": Service("api", ["run", "api", "--port", str(free_port())], role_env("api"), logs),
            **{h: Service(h, ["run", "runner", "--host", h, "--simulate", "1xH100", "--time-scale", "40"], role_env(f"runner-{h}"), logs) for h in hosts},
        }
        watch.start()
        for s in run.services.values():
            s.start()
        if cluster:
            run.services |= {n: Node(cluster, n) for n in cluster.names}
        # short: long enough that every kind of victim is killed before the task ends (with 12, a task
        # on a loaded CI machine twice ended after three kills: the fifth comes ~16 s in). On a
        # cluster a node's turn waits while the cluster catches up, so the round takes longer: with
        # 18, a CI run once ended before its fifth kill (the scheduler's)
        experiments = (24 if cluster else 18) if args.short else 30
        params = {"max-running-requests": [4, 8, 16, 32, 64, 128], "mem-fraction-static": [0.7, 0.8, 0.85, 0.88, 0.9]}
        raw = small_spec("chaos", parameters=params, optimization={"max_iterations": experiments, "max_parallel": 3, "timeout_per_iteration": 120},
                         benchmark={"max_requests_per_iteration": 40})
        task = await submit(js, raw)

        final = await run.drive(
            js, task,
            deadline=time.monotonic() + (150 if args.short else 900) * (1.5 if cluster else 1),  # short: well inside the CI test's 400 s
            # short: one round of every kind of victim; full: about three rounds
            max_kills=5 if args.short else (15 if cluster else 14),
            # with a fifth kind of victim, the full form kills faster so that every kind is killed before the task ends
            gap=(1.5, 3.5) if args.short else ((2.0, 5.0) if cluster else (3.0, 8.0)),
            # short: the first pause (a runner's, past the TTL) comes early; full: about two rounds
            max_pauses=2 if args.short else 7,
            pause_gap=(1.0, 3.0) if args.short else (4.0, 10.0),
        )
        run.note(f"the task ended: {type(final).__name__}" if final else "the run ended without the task ending")
        run.restart_all()
        if cluster and not await _until(lambda: healthy(js), 60):
            run.note("the cluster did not become healthy again after the run")

        violations = run.violations
        if not isinstance(final, ev.TaskCompleted):
            violations.append(f"task did not complete: {type(final).__name__ if final else 'timed out'}")
        history = await _retry(lambda: events_of(js, f"autotune.task.{task}.>"), 60 if cluster else 0)
        violations += audit(history)
        host_history = [e for _, e in await _retry(lambda: events_of(js, "autotune.host.>"), 60 if cluster else 0)]

        run.stop()
        await asyncio.sleep(0.5)
        watch.stop()
        violations += watch.violations
        left = [p for p, lab in labelled_processes() if lab.get("AUTOTUNE_LABEL_HOST") in hosts]
        if left:
            violations.append(f"engine processes left running: {left}")
            for p in left:
                os.kill(p, signal.SIGKILL)

        # the incrementally built projection (caught up) must equal a fresh rebuild from the log
        violations += await _compare_projection(settings, db, work / "fresh.duckdb", role_env("projector"))
    finally:
        watch.stop()
        run.stop()
        if nc is not None:
            await nc.close()
        nats_stop()
        logging.getLogger().handlers[0].setStream(sys.stderr)
        run.timeline.close()

    planned = [e for _, e in history if isinstance(e, ev.ExperimentPlanned)]
    result = {
        "benchmark": "chaos",
        "seed": args.seed,
        "short": args.short,
        "cluster": args.cluster,
        "kills": dict(run.kills),
        "pauses": dict(run.pauses),
        "long_pauses": dict(run.long_pauses),  # longer than the liveness TTL
        "restarts": run.restarts,
        "experiments": len({e.n for e in planned}),
        "attempts": len(planned),
        "retried": len(planned) - len({e.n for e in planned}),
        "completed": sum(1 for _, e in history if isinstance(e, ev.ExperimentCompleted)),
        "failed": Counter(e.kind for _, e in history if isinstance(e, ev.ExperimentFailed)),
        "peak_parallel": peak_parallelism(history),
        "machine": {"samples": watch.samples, "engines": len(watch.engines_seen), "peak_per_gpu": watch.peak},
        # what the pauses and kills did to hosts: declared lost, back after fencing (attempts they found taken from them)
        "hosts": {"lost": sum(isinstance(e, ev.HostLost) for e in host_history), "returned": sum(isinstance(e, ev.HostReturned) for e in host_history),
                  "fenced": sum(len(e.fenced) for e in host_history if isinstance(e, ev.HostReturned))},  # fmt: skip
        "violations": violations,
        "elapsed_s": round(time.monotonic() - t0, 1),
        "work_dir": str(work) if args.keep or violations else None,
    }
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


def _last_error(log: Path) -> str:
    """The last line of a service's log that names an error (a traceback's last line), else its last line."""
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()] if log.exists() else []
    errors = [line for line in lines if "Error" in line.split(":", 1)[0] or " ERROR " in line]
    return (errors or lines or ["(no log)"])[-1][:300]


async def _task_end(js, task: str) -> ev.Event | None:
    """The task's terminal event, if its last task-level event is one."""
    last = await bus.last_seq(js, f"autotune.task.{task}.*")
    if last:
        e = ev.decode((await js.get_msg("AUTOTUNE_EVENTS", last)).data)
        if isinstance(e, ev.TERMINAL_TASK):
            return e
    return None


async def _events_leader(js) -> str | None:
    try:
        return (await js.stream_info("AUTOTUNE_EVENTS")).cluster.leader
    except Exception:  # noqa: BLE001 - no leader right now
        return None


async def _retry(call, seconds: float):
    """`call()` until it succeeds, for `seconds` at most (a cluster may be electing leaders); then once more, raising."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            return await call()
        except Exception:  # noqa: BLE001
            await asyncio.sleep(0.5)
    return await call()


async def _until(check, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.5)
    return False


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
