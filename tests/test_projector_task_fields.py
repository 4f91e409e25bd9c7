"""The projector's views of what issue 18 added to the log: a task's fetched dataset, a planned
experiment's waiting reason (kept after it failed as unplaceable), and the engine of an OME task whose
base_runtime names a ClusterServingRuntime. Pure views plus the DuckDB store, no NATS."""

from __future__ import annotations

import json

from autotune.projector import schema as sc
from autotune.projector.view_state import ViewState
from autotune.projector.views import apply
from autotune.schemas import events as ev
from tests.fixtures.views_kit import Log, project, rows


def test_dataset_waiting_reason_and_ome_engine_reach_the_read_model(tmp_path):
    log = Log()
    spec = {"model": "llama-3-2-1b-instruct", "deployment_mode": "ome", "base_runtime": "vllm-llama-small"}
    log.add(ev.TaskSubmitted(id="s", at=log.at(), task="t", name="t", spec=spec))
    log.add(ev.TaskDatasetFetched(id="d", at=log.at(), task="t", url="https://x/p.csv", sha256="a" * 64, prompts=7, object="b" * 64,
                                  rows=9, skipped=1, duplicates=1))  # fmt: skip
    log.add(ev.TaskStarted(id="st", at=log.at(), task="t", strategy="grid_search", budget=1))
    log.add(ev.ExperimentPlanned(id="t.0.0.planned", at=log.at(), task="t", n=0, parameters={"tp_size": 4}, gpus=4))
    first = "waiting: 1 matching host, all busy with other tasks"
    log.add(ev.ExperimentWaiting(id="t.0.0.waiting-0", at=log.at(), task="t", n=0, reason=first, fits=True, gpus=4))
    state = ViewState()
    apply(state, log.messages)
    task, exp = state.rows[sc.TASKS.name][("t",)], state.rows[sc.EXPERIMENTS.name][("t", 0, 0)]
    assert task["engine"] == "vllm"  # from the ClusterServingRuntime preset base_runtime names
    assert json.loads(task["dataset"])["prompts"] == 7 and json.loads(task["dataset"])["url"] == "https://x/p.csv"
    assert (exp["status"], exp["waiting_reason"], exp["waiting_fits"]) == ("planned", first, True)
    second = "needs 4 GPUs of type H100 on one host; the largest matching host has 2"
    log.add(ev.ExperimentWaiting(id="t.0.0.waiting-1", at=log.at(), task="t", n=0, reason=second, fits=False, gpus=4))
    log.add(ev.ExperimentFailed(id="t.0.0.failed", at=log.at(), task="t", n=0, kind="unplaceable", stage="placement", message=f"unplaceable: {second}"))
    db = tmp_path / "v.duckdb"
    project(db, log.messages, [3])
    (row,) = rows(db, "SELECT status, failure_kind, waiting_reason, waiting_fits FROM experiments")
    assert row == {"status": "failed", "failure_kind": "unplaceable", "waiting_reason": second, "waiting_fits": False}
    (t,) = rows(db, "SELECT engine, dataset, experiments_failed FROM tasks")
    assert t["engine"] == "vllm" and json.loads(t["dataset"])["sha256"] == "a" * 64 and t["experiments_failed"] == 1
