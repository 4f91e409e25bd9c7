"""The projector's pure core (views.apply): what each event does to the rows, without NATS or DuckDB
(but for the checks that read a projection back)."""

from __future__ import annotations

import msgspec

from autotune.projector import schema as sc
from autotune.projector import views
from autotune.projector.store import Store
from autotune.projector.view_state import Message, ViewState
from autotune.projector.views import apply
from autotune.schemas import events as ev
from autotune.schemas.metrics import RunMetrics
from tests.fixtures.views_kit import EVENTS, LOGS, TELEMETRY, Log, history, lifecycle, metrics, project, rows


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
