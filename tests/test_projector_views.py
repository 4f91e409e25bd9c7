"""The projector's pure core (views.apply) and its DuckDB adapter, without NATS."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from autotune.projector import schema as sc
from autotune.projector import views
from autotune.projector.lane import lane_state
from autotune.projector.settings import ProjectorConfig
from autotune.projector.store import Store, checksums
from autotune.projector.view_state import Message, ViewState
from autotune.projector.views import apply
from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from autotune.schemas.metrics import ExperimentMetrics, RequestSample, RunMetrics, Stats

T0 = datetime(2025, 1, 1, tzinfo=UTC)
EVENTS, TELEMETRY, LOGS = subj.EVENTS_STREAM, subj.TELEMETRY_STREAM, subj.LOGS_STREAM


class Log:
    """Builds a stream log: each added event gets the next sequence of its stream."""

    def __init__(self) -> None:
        self.seq = {EVENTS: 0, TELEMETRY: 0, LOGS: 0}
        self.messages: list[Message] = []
        self.t = T0

    def at(self) -> datetime:
        self.t += timedelta(seconds=1)
        return self.t

    def raw(self, data: bytes, stream: str = EVENTS, subject: str = "autotune.task.x.other") -> Message:
        self.seq[stream] += 1
        m = Message(stream, self.seq[stream], subject, data, int(self.t.timestamp() * 1e6))
        self.messages.append(m)
        return m

    def add(self, event: ev.Event, stream: str = EVENTS) -> Message:
        return self.raw(ev.encode(event), stream, subject=f"autotune.{type(event).__name__}")


def metrics(samples: int = 3, runs: int = 2) -> ExperimentMetrics:
    return ExperimentMetrics(
        gpus=1, mean_ttft=0.05, p99_e2e_latency=1.5, mean_output_tps=900.0, requests=samples, completed=samples,
        runs=[RunMetrics(scenario="D(100,100)", concurrency=2**i, errors_by_kind={"http_503": i}, ttft=Stats(count=3, p50=0.04 + i)) for i in range(runs)],
        samples=[RequestSample(run=k % runs, ok=k % 5 != 4, start=k * 0.1, e2e=1.0 + k / 100, ttft=0.05, tpot=0.01, input_tokens=100, output_tokens=90, error=None if k % 5 != 4 else "timeout", itl=[0.01, 0.02] if k == 0 else []) for k in range(samples)],
    )  # fmt: skip


def lifecycle(
    log: Log, task: str = "t1", n: int = 0, attempt: int = 0, host: str = "h1", *, outcome: str = "completed", score: float = 1.0
) -> None:
    x = ev.exp_id
    log.add(ev.ExperimentPlanned(id=x(task, n, attempt, "planned"), at=log.at(), task=task, n=n, attempt=attempt, parameters={"tp": n}))
    log.add(
        ev.ExperimentAssigned(
            id=x(task, n, attempt, "assigned"),
            at=log.at(),
            task=task,
            n=n,
            attempt=attempt,
            host=host,
            gpu_indices=[0, 1],
            parameters={"tp": n},
            spec={},
        )
    )
    log.add(
        ev.ExperimentStarted(
            id=x(task, n, attempt, "started"),
            at=log.at(),
            task=task,
            n=n,
            attempt=attempt,
            host=host,
            instance="i1",
            runtime="local",
            handle="42",
        )
    )
    log.add(ev.ExperimentReady(id=x(task, n, attempt, "ready"), at=log.at(), task=task, n=n, attempt=attempt, host=host, startup_s=12.5))
    log.add(
        ev.ExperimentProgress(
            id=x(task, n, attempt, "progress.0"),
            at=log.at(),
            task=task,
            n=n,
            attempt=attempt,
            host=host,
            run_index=0,
            runs_total=2,
            run=RunMetrics(scenario="D(100,100)", concurrency=1),
        )
    )
    if outcome == "completed":
        log.add(
            ev.ExperimentCompleted(
                id=x(task, n, attempt, "completed"),
                at=log.at(),
                task=task,
                n=n,
                attempt=attempt,
                host=host,
                metrics=metrics(),
                score=score,
                slo_violations={"p99": 0.2},
            )
        )
    elif outcome == "failed":
        log.add(
            ev.ExperimentFailed(
                id=x(task, n, attempt, "failed"),
                at=log.at(),
                task=task,
                n=n,
                attempt=attempt,
                host=host,
                kind="host_lost",
                retryable=True,
                log_tail=["boom"],
            )
        )
    elif outcome == "oom":
        log.add(
            ev.ExperimentFailed(
                id=x(task, n, attempt, "failed"),
                at=log.at(),
                task=task,
                n=n,
                attempt=attempt,
                host=host,
                kind="oom",
                stage="startup",
                message="CUDA OOM",
            )
        )


def history(seed: int = 0) -> Log:
    """A small but complete history: hosts, two tasks, retries, telemetry, logs, oddities."""
    r = random.Random(seed)
    log = Log()
    for h in ("h1", "h2"):
        log.add(
            ev.HostRegistered(
                id=f"{h}.reg",
                at=log.at(),
                host=h,
                instance="i1",
                gpus=[ev.GpuInfo(index=0, uuid=f"GPU-{h}", name="H100")],
                runtimes=["local"],
                engines=["sglang"],
            )
        )
    for task in ("t1", "t2"):
        spec = {
            "task_name": task,
            "model": {"id_or_path": "llama"},
            "base_runtime": "vllm",
            "deployment_mode": "simulated",
            "optimization": {"strategy": "grid_search", "objective": "maximize_throughput"},
        }
        log.add(ev.TaskSubmitted(id=f"{task}.submitted", at=log.at(), task=task, name=task.upper(), spec=spec))
        log.add(ev.TaskStarted(id=f"{task}.started", at=log.at(), task=task, strategy="grid_search", space_size=4, budget=4))
        for n in range(3):
            host = r.choice(["h1", "h2"])
            if n == 1:
                lifecycle(log, task, n, 0, host, outcome="failed")
                lifecycle(log, task, n, 1, host, score=r.uniform(0, 5))
            else:
                lifecycle(log, task, n, 0, host, outcome=r.choice(["completed", "oom"]), score=r.uniform(0, 5))
            log.add(
                ev.GpuSample(
                    id=f"g{n}",
                    at=log.at(),
                    host=host,
                    index=0,
                    util_gpu=r.uniform(0, 100),
                    processes=[ev.GpuProcess(pid=7, used_memory_mib=1024.0)],
                ),
                TELEMETRY,
            )
            log.add(ev.LogLines(id=f"l{n}", at=log.at(), task=task, n=n, host=host, lines=["a", "b", "c"]), LOGS)
    log.add(
        ev.TaskCompleted(
            id="t1.completed",
            at=log.at(),
            task="t1",
            reason="budget",
            best_experiment=2,
            best_attempt=0,
            best_score=0.5,
            best_parameters={"tp": 2},
            pareto=[2],
        )
    )
    log.add(ev.TaskCancelRequested(id="t2.cancel", at=log.at(), task="t2", reason="user"))
    log.add(ev.TaskCancelled(id="t2.cancelled", at=log.at(), task="t2"))
    log.add(ev.HostDrainRequested(id="h2.drain", at=log.at(), host="h2"))
    log.raw(b'{"type": "task.future_thing", "id": "f1", "task": "t1", "n": 9, "at": "2025-01-01T00:00:00Z"}')
    log.raw(b"{not json")
    log.raw(b'{"type": "task.started", "id": "x", "task": 5}')
    return log


class Lanes:
    """The projector's three lanes (lane.py) over one store, in this thread, without NATS: each
    role gets its streams' messages, its own state loaded from the store, and its own file."""

    ROLES = (("state", "main", (EVENTS,)), ("log", sc.LOG_DB, (EVENTS,)), ("telemetry", sc.LOG_DB, (TELEMETRY, LOGS)))

    def __init__(self, store: Store, *, keys: bool = True) -> None:
        """Each lane's state made as the projector makes it (lane.lane_state). `keys`: the
        state lane starts knowing every stored key and the log lane every finished attempt, else
        (cache_keys=0) they ask the store about every one not cached; `loads` counts the asking."""
        self.store = store
        self.loads = 0
        cfg = ProjectorConfig() if keys else ProjectorConfig(cache_keys=0)
        self.states = {}
        for role, _, streams in self.ROLES:
            state = lane_state(store, role, streams, store.conn, store.writer(), cfg)
            if state.loader is not None:
                state.loader = self._counted(state.loader)
            self.states[role] = state

    def _counted(self, load):
        def counted(table: sc.Table, keys: list[tuple]) -> list[dict]:
            self.loads += 1
            return load(table, keys)

        return counted

    def write(self, messages: list[Message]) -> None:
        for role, db, streams in self.ROLES:
            batch = [m for m in messages if m.stream in streams]
            if batch:
                self.store.write(apply(self.states[role], batch), db=db)

    def trim(self, rows: int) -> None:
        for state in self.states.values():
            state.trim(rows)


def project(path, messages: list[Message], splits: list[int], *, reopen: bool = True, keys: bool = True) -> dict:
    """Apply `messages` in batches cut at `splits`, with fresh states (rows reloaded from DuckDB)
    at each cut, and the store closed and reopened there too when `reopen`."""
    cuts = [0, *splits, len(messages)]
    store = Store(str(path))
    for a, b in zip(cuts, cuts[1:], strict=False):
        if reopen:
            store.close()
            store = Store(str(path))
        Lanes(store, keys=keys).write(messages[a:b])
    try:
        return checksums(store.conn)
    finally:
        store.close()


def rows(path, sql: str) -> list[dict]:
    store = Store(str(path))
    try:
        return store.conn.sql(sql).to_arrow_table().to_pylist()
    finally:
        store.close()


# --- pure view updates -----------------------------------------------------------------------------


def test_task_and_experiment_lifecycle(tmp_path):
    log = Log()
    log.add(ev.HostRegistered(id="h1", at=log.at(), host="h1", instance="i", gpus=[ev.GpuInfo(index=0, uuid="u", name="H100")]))
    log.add(
        ev.TaskSubmitted(
            id="s",
            at=log.at(),
            task="t1",
            name="first",
            spec={"model": "m", "base_runtime": "vllm", "optimization": {"strategy": "random"}},
        )
    )
    log.add(ev.TaskStarted(id="st", at=log.at(), task="t1", strategy="random", budget=3))
    state = ViewState()
    apply(state, log.messages)
    task = state.rows[sc.TASKS.name][("t1",)]
    assert (task["status"], task["engine"], task["model"], task["strategy"], task["budget"]) == ("running", "vllm", "m", "random", 3)

    mark = len(log.messages)
    lifecycle(log, "t1", 0, 0, "h1")
    ch = apply(state, log.messages[mark : mark + 3])  # planned, assigned, started
    exp = state.rows[sc.EXPERIMENTS.name][("t1", 0, 0)]
    assert exp["status"] == "running" and exp["host"] == "h1" and exp["gpu_indices"] == [0, 1]
    assert ("t1", 0, 0) in ch.upserts[sc.EXPERIMENTS.name]
    assert not ch.upserts[sc.TASKS.name] and not ch.upserts[sc.HOSTS.name]  # an experiment event writes its own row only
    db = tmp_path / "a.duckdb"
    project(db, log.messages[: mark + 3], [])
    assert rows(db, "SELECT status, running_experiments FROM hosts")[0] == {"status": "busy", "running_experiments": 1}

    ch = apply(state, log.messages[mark + 3 :])  # ready, progress, completed
    assert exp["status"] == "completed" and exp["score"] == 1.0 and exp["startup_s"] == 12.5 and exp["runs_done"] == 1
    assert exp["mean_ttft"] == 0.05 and exp["requests"] == 3 and exp["slo_violations"] == '{"p99":0.2}'
    assert not ch.experiment_runs and not ch.metrics and not ch.events  # the state lane writes rows, nothing else
    results = apply(ViewState(role="log"), log.messages)
    assert len(results.experiment_runs) == 2 and len(results.metrics) == 1  # samples expand in SQL from the payload
    assert len(results.events) == len(log.messages) and not any(results.upserts.values())
    project(db, log.messages, [mark + 3])
    assert rows(db, "SELECT status, running_experiments FROM hosts")[0] == {"status": "online", "running_experiments": 0}
    t = rows(db, "SELECT experiments_planned, experiments_completed, best_n, best_score, best_parameters, last_seq FROM tasks")[0]
    assert t == {"experiments_planned": 1, "experiments_completed": 1, "best_n": 0, "best_score": 1.0, "best_parameters": '{"tp":0}',
                 "last_seq": log.messages[-1].seq}  # fmt: skip


def test_the_metric_columns_are_stored_in_one_list_and_read_back_under_their_names(tmp_path):
    """experiment_rows keeps the 28 metric columns in one DOUBLE[] (a commit costs per column);
    `experiments` and the state's loader give every one back under its own name, and an attempt
    without results stores NULL."""
    values = {name: float(i) + 0.5 for i, name in enumerate((*sc.HEADLINE, *sc.TELEMETRY), start=1)}
    log = Log()
    lifecycle(log, "t1", 0, outcome="running")
    x = ev.exp_id
    log.add(
        ev.ExperimentCompleted(
            id=x("t1", 0, 0, "completed"), at=log.at(), task="t1", n=0, attempt=0, host="h1", score=2.0,
            metrics=msgspec.structs.replace(metrics(), **{h: values[h] for h in sc.HEADLINE}),
            telemetry=ev.TelemetrySummary(samples=7, **{t: values[t] for t in sc.TELEMETRY}),
        )
    )  # fmt: skip
    lifecycle(log, "t1", 1, outcome="running")
    db = tmp_path / "m.duckdb"
    project(db, log.messages, [])
    names = ", ".join(f'"{c}"' for c in values)
    assert rows(db, f"SELECT {names} FROM experiments WHERE n = 0") == [values]
    assert rows(db, f"SELECT {names} FROM experiments WHERE n = 1") == [dict.fromkeys(values)]
    assert rows(db, "SELECT n, metrics IS NULL AS empty FROM experiment_rows ORDER BY n") == [{"n": 0, "empty": False}, {"n": 1, "empty": True}]
    assert [c for c in rows(db, "SELECT * FROM experiments LIMIT 1")[0]] == sc.EXPERIMENTS.names  # the columns, in order
    store = Store(str(db))  # what a restarted state lane reads back equals what it had
    try:
        state = ViewState()
        apply(state, log.messages)
        for row in store.load(sc.EXPERIMENTS, [("t1", 0, 0), ("t1", 1, 0)], store.conn):
            assert row == state.rows[sc.EXPERIMENTS.name][(row["task"], row["n"], row["attempt"])]
    finally:
        store.close()


def test_first_terminal_event_wins_and_retries_count_apart(tmp_path):
    log = Log()
    log.add(ev.TaskSubmitted(id="s", at=log.at(), task="t1", name="t1", spec={}))
    lifecycle(log, "t1", 0, 0, outcome="failed")  # retryable (host_lost)
    lifecycle(log, "t1", 0, 1, outcome="completed")
    lifecycle(log, "t1", 1, 0, outcome="oom")
    log.add(ev.ExperimentFailed(id="late", at=log.at(), task="t1", n=0, attempt=1, kind="crashed"))  # stale: ignored
    log.add(
        ev.ExperimentProgress(
            id="p",
            at=log.at(),
            task="t1",
            n=0,
            attempt=1,
            host="h1",
            run_index=5,
            runs_total=6,
            run=RunMetrics(scenario="x", concurrency=1),
        )
    )
    state = ViewState()
    apply(state, log.messages)
    a0, a1 = state.rows[sc.EXPERIMENTS.name][("t1", 0, 0)], state.rows[sc.EXPERIMENTS.name][("t1", 0, 1)]
    assert (a0["status"], a0["failure_kind"], a0["retryable"]) == ("failed", "host_lost", True)
    assert (a1["status"], a1["failure_kind"], a1["retryable"], a1["runs_done"]) == ("completed", None, None, 1)
    db = tmp_path / "a.duckdb"
    project(db, log.messages, [])
    cols = "experiments_planned, experiments_retried, experiments_failed, experiments_completed, experiments_cancelled"
    assert rows(db, f"SELECT {cols} FROM tasks")[0] == dict(zip(cols.split(", "), (2, 1, 1, 1, 0), strict=True))


def test_only_the_winning_terminal_event_adds_results(tmp_path):
    """experiment_runs and request_samples come from the log lane, which evolves no rows: it keeps
    the results of the first terminal event of each attempt only (as `_advance` does), also when
    that event was committed before a restart (read back from `events`)."""
    log = Log()
    log.add(ev.TaskSubmitted(id="s", at=log.at(), task="t1", name="t1", spec={}))
    lifecycle(log, "t1", 0, 0, outcome="completed")
    lifecycle(log, "t1", 1, 0, outcome="none")
    log.add(ev.ExperimentCancelled(id="c1", at=log.at(), task="t1", n=1, host="h1", reason="user"))
    cut = len(log.messages)
    for n in (0, 1):  # a second completion of each, with results: stale
        log.add(ev.ExperimentCompleted(id=f"again{n}", at=log.at(), task="t1", n=n, host="h1", metrics=metrics(samples=5, runs=3), score=9.0))
    log.add(ev.ExperimentCompleted(id="late2", at=log.at(), task="t1", n=2, host="h1", metrics=metrics(samples=4, runs=1), score=3.0))
    per_attempt = "SELECT n, count(*) AS runs FROM experiment_runs GROUP BY n ORDER BY n"
    samples = "SELECT n, count(*) AS samples FROM request_samples GROUP BY n ORDER BY n"
    for splits, keys in (([], True), ([cut], True), ([cut + 1], True), ([cut], False), ([cut + 1], False)):
        db = tmp_path / f"a{len(splits)}{splits[0] if splits else ''}{keys}.duckdb"
        project(db, log.messages, splits, keys=keys)
        assert rows(db, per_attempt) == [{"n": 0, "runs": 2}, {"n": 2, "runs": 1}]
        assert rows(db, samples) == [{"n": 0, "samples": 3}, {"n": 2, "samples": 4}]
        assert rows(db, "SELECT n, status, score FROM experiments ORDER BY n") == [
            {"n": 0, "status": "completed", "score": 1.0}, {"n": 1, "status": "cancelled", "score": None},
            {"n": 2, "status": "completed", "score": 3.0},
        ]  # fmt: skip


def test_the_best_so_far_is_derived_until_the_scheduler_names_one(tmp_path):
    """`tasks.best_*`: the lowest finite score of a completed attempt that did not hard-fail (ties:
    the earliest finished), until TaskCompleted names the best; then that verdict."""
    log = Log()
    log.add(ev.TaskSubmitted(id="s", at=log.at(), task="t1", name="t1", spec={}))
    lifecycle(log, "t1", 0, 0, score=2.0)
    lifecycle(log, "t1", 1, 0, score=1.0)
    lifecycle(log, "t1", 2, 0, score=1.0)  # a tie finished later
    lifecycle(log, "t1", 3, 0, score=float("nan"))
    db = tmp_path / "a.duckdb"
    best = "SELECT best_n, best_attempt, best_score, best_parameters FROM tasks"
    project(db, log.messages, [])
    assert rows(db, best)[0] == {"best_n": 1, "best_attempt": 0, "best_score": 1.0, "best_parameters": '{"tp":1}'}
    verdict = ev.TaskCompleted(
        id="c", at=log.at(), task="t1", reason="budget", best_experiment=0, best_attempt=0, best_score=2.0, best_parameters={"tp": 0}
    )
    log.add(verdict)
    project(db, log.messages, [len(log.messages) - 1])
    assert rows(db, best)[0] == {"best_n": 0, "best_attempt": 0, "best_score": 2.0, "best_parameters": '{"tp":0}'}


def test_redelivered_and_duplicated_messages_change_nothing():
    log = history()
    state = ViewState()
    first = apply(state, log.messages)
    assert first.applied > 0 and first.skipped == 0
    before = msgspec.json.encode({k: sorted(map(str, v.values())) for k, v in state.rows.items()})
    again = apply(state, log.messages[::-1] + log.messages)  # every message again, in any order
    assert again.skipped == len(log.messages) * 2 and not again.positions and not any(again.upserts.values())
    assert msgspec.json.encode({k: sorted(map(str, v.values())) for k, v in state.rows.items()}) == before


def test_undecodable_messages_become_dead_letters_and_unknown_types_are_kept():
    log = Log()
    log.raw(b"{not json")
    log.raw(b"[1, 2]")
    log.raw(b'{"id": "no-type"}')
    log.raw(b'{"type": "experiment.planned", "id": "x", "task": "t", "n": "zero", "parameters": {}}')
    log.raw(b'{"type": "experiment.cloned", "id": "y", "task": "t", "n": 1, "at": "2025-01-01T00:00:00Z", "future": true}')
    log.raw(b'{"type": "gpu.sample", "id": "z", "host": "h", "index": 0, "hello": 1}' + b" " * 200, TELEMETRY)
    passed = ViewState(max_event_bytes=150)  # the state lane passes over them: the log lane records them
    ch = apply(passed, log.messages)
    assert not ch.dead_letters and not ch.events and passed.positions[EVENTS].seq == 5 and passed.positions[EVENTS].dead_letters == 0
    state = ViewState(max_event_bytes=150, role="log")
    ch = apply(state, log.messages)
    errors = [d[-1] for d in ch.dead_letters]
    assert errors[0].startswith("not JSON")
    assert "expected a JSON object" in errors[1]
    assert "no `type` tag" in errors[2]
    assert errors[3].startswith("invalid `experiment.planned`") and "$.n" in errors[3]
    assert errors[4].startswith("oversized: 270 bytes")
    assert [d[:2] for d in ch.dead_letters] == [(EVENTS, 1), (EVENTS, 2), (EVENTS, 3), (EVENTS, 4), (TELEMETRY, 1)]
    assert ch.dead_letters[0][5] == b"{not json"  # the raw bytes
    (unknown,) = ch.events
    assert unknown[5:11] == ("experiment.cloned", False, "t", 1, 0, None)
    assert state.positions[EVENTS].seq == 5 and state.positions[EVENTS].unknown == 1 and state.positions[EVENTS].dead_letters == 4
    assert state.positions[TELEMETRY].dead_letters == 1


def test_the_telemetry_lane_dead_letters_events_that_belong_on_the_events_stream():
    """The telemetry lane commits beside the others and must never touch their rows: a lifecycle
    event published under a telemetry subject is a dead letter there."""
    log = Log()
    log.add(ev.GpuSample(id="g", at=log.at(), host="h1", index=0, util_gpu=50.0), TELEMETRY)
    log.add(ev.TaskSubmitted(id="s", at=log.at(), task="t", name="t", spec={}), TELEMETRY)
    log.add(ev.LogLines(id="l", at=log.at(), task="t", n=0, host="h1", lines=["a"]), LOGS)
    log.raw(b'{"type": "gpu.future", "id": "f", "host": "h1"}', TELEMETRY)
    state = ViewState(complete=True, role="telemetry")
    ch = apply(state, log.messages)
    assert [d[:2] for d in ch.dead_letters] == [(TELEMETRY, 2)]
    assert ch.dead_letters[0][-1].startswith("`task.submitted` does not belong on AUTOTUNE_TELEMETRY")
    assert len(ch.gpu_samples) == 1 and len(ch.log_lines) == 1 and [e[5] for e in ch.events] == ["gpu.future"]
    assert not any(ch.upserts.values()) and not any(state.rows.values())
    assert (state.positions[TELEMETRY].seq, state.positions[TELEMETRY].dead_letters, state.positions[TELEMETRY].unknown) == (3, 1, 1)


def test_the_two_lanes_of_the_events_stream_decode_each_message_once(monkeypatch):
    """The state and log lanes share what either decoded (the other takes it); the result is what
    each gets decoding alone, and what waits for the other lane is bounded."""
    log = history()
    shared: dict = {}
    state, logs = ViewState(shared=shared), ViewState(role="log", shared=shared)
    apply(state, log.messages)
    assert len(shared) == len(log.messages)  # every message, decoded once, waits for the other lane
    from_shared = apply(logs, log.messages)
    assert not shared
    alone = ViewState(role="log")
    assert apply(alone, log.messages).events == from_shared.events and alone.positions == logs.positions
    assert _rows_of(log.messages) == state.rows
    monkeypatch.setattr(views, "SHARED_MAX", 3)
    apply(ViewState(shared=shared), log.messages)
    assert len(shared) == 3  # the oldest went first


def _rows_of(messages: list[Message]) -> dict:
    state = ViewState()
    apply(state, messages)
    return state.rows


def test_missing_at_uses_the_stored_time_so_replays_agree():
    log = Log()
    m = log.raw(b'{"type": "task.submitted", "id": "s", "task": "t", "name": "t", "spec": {}}')
    a, b = ViewState(), ViewState()
    apply(a, [m])
    apply(b, [m])
    tasks = sc.TASKS.name
    assert a.rows[tasks][("t",)]["submitted_at"] == b.rows[tasks][("t",)]["submitted_at"] == views.utc_from_us(m.stored_us)


# --- through DuckDB ------------------------------------------------------------------------------------


def test_rows_land_in_every_table(tmp_path):
    log = history()
    project(tmp_path / "a.duckdb", log.messages, [])
    db = tmp_path / "a.duckdb"
    counts = {name: rows(db, f"SELECT count(*) AS n FROM {name}")[0]["n"] for name in sc.PUBLIC}
    assert counts["tasks"] == 2 and counts["hosts"] == 2 and counts["experiments"] == 8
    assert counts["gpu_samples"] == 6 and counts["log_lines"] == 18 and counts["dead_letters"] == 2
    completed = rows(db, "SELECT count(*) AS n FROM experiments WHERE status = 'completed'")[0]["n"]
    assert counts["experiment_runs"] == 2 * completed and counts["request_samples"] == 3 * completed
    s = rows(db, "SELECT * FROM request_samples ORDER BY task, n, attempt, i LIMIT 1")[0]
    assert (s["run"], s["ok"], s["e2e"], s["input_tokens"], s["itl"]) == (0, True, 1.0, 100, [0.01, 0.02])
    r = rows(db, "SELECT * FROM experiment_runs ORDER BY task, n, attempt, run DESC LIMIT 1")[0]
    assert (r["concurrency"], r["errors_by_kind"], r["ttft_count"], r["ttft_p50"]) == (2, '{"http_503":1}', 3, 1.04)
    g = rows(db, "SELECT * FROM gpu_samples LIMIT 1")[0]
    assert g["processes"] == '[{"pid":7,"used_memory_mib":1024.0}]' and g["uuid"] is None and g["at"] is not None
    t1 = rows(db, "SELECT * FROM tasks WHERE id = 't1'")[0]
    assert (t1["status"], t1["best_n"], t1["best_parameters"], t1["model"], t1["engine"]) == ("completed", 2, '{"tp":2}', "llama", "vllm")
    assert rows(db, "SELECT status FROM tasks WHERE id = 't2'")[0]["status"] == "cancelled"
    assert rows(db, "SELECT status FROM hosts WHERE host = 'h2'")[0]["status"] == "draining"
    e = rows(db, "SELECT payload FROM events WHERE type = 'experiment.completed' LIMIT 1")[0]
    payload = msgspec.json.decode(e["payload"])
    assert payload["metrics"]["runs"] == payload["metrics"]["samples"] == [] and payload["metrics"]["mean_ttft"] == 0.05  # typed elsewhere
    unknown = rows(db, "SELECT * FROM events WHERE NOT known")[0]
    assert (unknown["type"], unknown["n"], unknown["at"]) == ("task.future_thing", 9, T0)
    pos = {r["stream"]: r for r in rows(db, "SELECT * FROM positions")}
    assert pos[EVENTS]["unknown"] == 1 and pos[EVENTS]["dead_letters"] == 2


def test_batch_boundaries_and_reloads_do_not_change_the_result(tmp_path):
    """The incremental projection, cut anywhere and reopened (rows reloaded from DuckDB), equals
    the projection in one go."""
    log = history(1)
    whole = project(tmp_path / "whole.duckdb", log.messages, [])
    cuts = sorted(random.Random(1).sample(range(1, len(log.messages)), 8))
    assert project(tmp_path / "cut.duckdb", log.messages, cuts) == whole
    assert project(tmp_path / "asking.duckdb", log.messages, cuts, keys=False) == whole  # every miss asks the store
    small = project(tmp_path / "small.duckdb", log.messages, list(range(3, len(log.messages), 3)), reopen=False)
    assert small == whole


@pytest.mark.parametrize("keys", [True, False])
def test_cache_trimming_reloads_rows_from_the_store(tmp_path, keys):
    """Rows are trimmed to one per table after every batch. Without the keys (cache_keys=0) the
    log lane's finished attempts are trimmed too, and it asks the store whether one finished."""
    log = history(3)
    whole = project(tmp_path / "whole.duckdb", log.messages, [])
    store = Store(str(tmp_path / "trim.duckdb"))
    lanes = Lanes(store, keys=keys)
    for i in range(0, len(log.messages), 7):
        lanes.write(log.messages[i : i + 7])
        lanes.trim(1)
    assert checksums(store.conn) == whole
    store.close()


def test_a_state_that_knows_every_stored_key_creates_new_rows_without_asking(tmp_path):
    """Reopened on a full store, the state lane loads the stored keys once: an event of a new
    attempt creates its row with no lookup, one of a stored attempt reads the row back."""
    log = history(2)
    first = len(log.messages)
    lifecycle(log, "t9", 0, 0)  # a new task's attempt: new rows only
    log.add(ev.ExperimentCancelled(id="late", at=log.at(), task="t1", n=0, host="h1"))  # a stored one
    whole = project(tmp_path / "whole.duckdb", log.messages, [])
    for keys, loads in ((True, 0), (False, 1)):
        path = str(tmp_path / f"keys{keys}.duckdb")
        project(path, log.messages[:first], [])
        store = Store(path)
        lanes = Lanes(store, keys=keys)
        lanes.write(log.messages[first:-1])
        assert lanes.loads == loads, keys  # new rows: a lookup only without the keys
        lanes.write(log.messages[-1:])
        assert lanes.loads == loads + 1, keys
        assert checksums(store.conn) == whole
        store.close()


def test_positions_say_what_every_lane_has_applied(tmp_path):
    """`positions` is the lowest position of the lanes of each stream, also before a lane's first
    commit: a reader polling it never sees the state lane's tables behind what it says."""
    events = [m for m in history().messages if m.stream == EVENTS]
    store = Store(str(tmp_path / "p.duckdb"))
    lanes = Lanes(store)
    seq = "SELECT seq FROM positions WHERE stream = 'AUTOTUNE_EVENTS'"
    assert store.conn.sql(seq).fetchall() == [(0,)]
    store.write(apply(lanes.states["log"], events), db=sc.LOG_DB)
    assert store.conn.sql(seq).fetchall() == [(0,)]
    store.write(apply(lanes.states["state"], events[:-1]), db="main")
    assert store.conn.sql(seq).fetchall() == [(events[-2].seq,)]
    store.close()


def test_schema_version_mismatch_is_refused(tmp_path):
    path = str(tmp_path / "old.duckdb")
    Store(path).close()
    import duckdb

    conn = duckdb.connect(path)
    conn.execute("UPDATE projector_meta SET value = '0'")
    conn.close()
    with pytest.raises(Exception, match="rebuild"):
        Store(path)
