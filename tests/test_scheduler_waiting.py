"""The scheduler's pure core on experiments that find no room: the reason they wait (recorded when it
changes, not every round), `unplaceable` once no host could ever run them (after the grace, not while
a host is busy or back within it), and tasks that wait for their dataset before they start."""

from __future__ import annotations

from datetime import timedelta

from autotune.scheduler.decide import Limits
from autotune.scheduler.waiting import WaitLimits
from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from tests.test_scheduler_core import T0, Log, assigned, complete, host, submitted

LIMITS = Limits(waiting=WaitLimits(waiting_after_s=2.0, waiting_repeat_s=30.0, unplaceable_grace_s=60.0))
PAR = {"parameters": {"mem-fraction-static": [0.8], "max-running-requests": [8]}, "parallel_config": {"tp": [2, 4]}, "gpu_type": "H100", "deployment_mode": "docker"}


def real(name: str, n: int = 2, model: str = "NVIDIA H100 80GB HBM3"):
    h = host(name, n)
    h.gpus = [g.__class__(index=g.index, uuid=g.uuid, name=model) for g in h.gpus]
    h.runtimes, h.simulated, h.engines = ["docker"], False, ["sglang", "vllm"]
    return h


def registered(log: Log, h, at=T0) -> None:
    gpus = [ev.GpuInfo(index=g.index, uuid=g.uuid, name=g.name) for g in h.gpus]
    log.add(subj.host(h.host, "registered"), ev.HostRegistered(id=f"{h.host}.reg", host=h.host, instance=h.instance, gpus=gpus,
                                                                runtimes=h.runtimes, engines=h.engines, simulated=h.simulated, at=at))  # fmt: skip


def of(actions, kind):
    return [a.event for a in actions if isinstance(a.event, kind)]


def run(log: Log, fleet, t, **kw):
    return log.step(fleet, now=T0 + timedelta(seconds=t), limits=LIMITS, **kw)


def test_an_experiment_no_host_can_fit_says_why_then_fails_as_unplaceable_and_the_task_finishes():
    log = Log()
    log.add(*submitted("big", optimization={"max_iterations": 4, "max_parallel": 1}, **PAR))
    fleet = {"a": real("a", 2), "b": real("b", 2)}
    for h in fleet.values():
        registered(log, h)
    run(log, fleet, 0)  # started
    first = assigned(run(log, fleet, 0.5) + run(log, fleet, 1))
    assert first and first[0].parameters["__parallel"] == "tp=2"  # 2 GPUs: fits
    complete(log, first[0], 1.0)
    planned = of(run(log, fleet, 2), ev.ExperimentPlanned)
    assert planned[0].gpus == 4
    assert run(log, fleet, 3) == []  # a short wait says nothing
    (w,) = of(run(log, fleet, 5), ev.ExperimentWaiting)
    assert w.reason == "needs 4 GPUs of type H100 on one host; the largest matching host has 2" and not w.fits and w.gpus == 4
    for t in (6, 20, 40):  # the same reason is not recorded again
        assert run(log, fleet, t) == []
    (f,) = of(run(log, fleet, 61), ev.ExperimentFailed)
    assert f.kind == "unplaceable" and f.stage == "placement" and not f.retryable and "the largest matching host has 2" in f.message
    exp = log.state.tasks["big"].experiments[1]
    assert exp.outcome == "failed" and exp.told  # the optimizer learns from it
    done = of(run(log, fleet, 62), ev.TaskCompleted)
    assert done and done[0].best_experiment == 0 and done[0].reason == "grid_exhausted"


def test_busy_hosts_keep_it_waiting_with_the_reason_and_never_fail_it():
    log = Log()
    log.add(*submitted("first", optimization={"max_iterations": 1}, parallel_config={"tp": 2}, gpu_type="H100", deployment_mode="docker"))
    log.add(*submitted("second", optimization={"max_iterations": 1}, parallel_config={"tp": 2}, gpu_type="H100", deployment_mode="docker"))
    fleet = {"a": real("a", 2)}
    registered(log, fleet["a"])
    run(log, fleet, 0)
    run(log, fleet, 0.5)
    placed = assigned(run(log, fleet, 1))
    assert [a.task for a in placed] == ["first"]
    (w,) = of(run(log, fleet, 4), ev.ExperimentWaiting)
    assert (w.task, w.fits, w.reason) == ("second", True, "waiting: 1 matching host, all busy with other tasks")
    for t in (30, 61, 100):  # far past the grace (until the first one's watchdog frees the host)
        assert not [e for e in of(run(log, fleet, t), ev.ExperimentFailed) if e.task == "second"]


def test_a_host_back_within_the_grace_keeps_it_waiting_and_the_grace_counts_from_when_it_went():
    log = Log()
    log.add(*submitted("t", optimization={"max_iterations": 1}, parallel_config={"tp": 4}, gpu_type="H100", deployment_mode="docker"))
    big = real("big", 4)
    registered(log, big)
    run(log, {"big": big}, 0)
    run(log, {"big": big}, 0.5)  # planned
    log.add(subj.host("big", "lost"), ev.HostLost(id="big.lost", host="big", instance=big.instance, at=T0 + timedelta(seconds=1)))
    (w,) = of(run(log, {}, 5), ev.ExperimentWaiting)
    assert not w.fits and "no live host" in w.reason
    assert not of(run(log, {}, 50), ev.ExperimentFailed)  # the grace counts from the loss at 1 s
    registered(log, big, at=T0 + timedelta(seconds=55))  # back: placed, never failed
    assert assigned(run(log, {"big": big}, 56))
    assert not of(run(log, {"big": big}, 200), ev.ExperimentFailed)


def test_no_host_of_the_right_kind_names_what_is_missing():
    log = Log()
    log.add(*submitted("a100", optimization={"max_iterations": 1}, gpu_type="A100", deployment_mode="docker"))
    fleet = {"a": real("a", 8)}
    registered(log, fleet["a"])
    run(log, fleet, 0)
    run(log, fleet, 0.5)
    (w,) = of(run(log, fleet, 3), ev.ExperimentWaiting)
    assert w.reason == "needs 1 GPU of type A100 on one host; no live host has that type (they have: NVIDIA H100 80GB HBM3)"
    log2 = Log()
    log2.add(*submitted("k8s", optimization={"max_iterations": 1}, deployment_mode="kubernetes"))
    registered(log2, fleet["a"])
    run(log2, fleet, 0)
    run(log2, fleet, 0.5)
    (w,) = of(run(log2, fleet, 3), ev.ExperimentWaiting)
    assert w.reason == "no live host runs sglang in kubernetes mode (the live hosts offer: docker)"


def test_a_task_with_a_dataset_starts_only_once_its_dataset_is_recorded_and_assignments_carry_it():
    log = Log()
    log.add(*submitted("ds", benchmark={"dataset_url": "https://example.com/p.jsonl"}, optimization={"max_iterations": 1}))
    fleet = {"h": host("h", 2)}
    assert run(log, fleet, 0) == [] and run(log, fleet, 5) == []  # waits for the service's fetch
    fetched = ev.TaskDatasetFetched(id="ds.dataset_fetched", task="ds", url="https://example.com/p.jsonl", sha256="ab" * 32, prompts=3,
                                    object="cd" * 32, at=T0)  # fmt: skip
    log.add(subj.task("ds", "dataset_fetched"), fetched)
    assert of(run(log, fleet, 6), ev.TaskStarted)
    run(log, fleet, 6.5)
    (a,) = assigned(run(log, fleet, 7))
    assert a.dataset == fetched.ref()
    cancelled = Log()
    cancelled.add(*submitted("dc", benchmark={"dataset_url": "https://example.com/p.jsonl"}))
    cancelled.add(subj.task("dc", "cancel_requested"), ev.TaskCancelRequested(id="dc.cancel_requested", task="dc", at=T0))
    assert of(run(cancelled, fleet, 1), ev.TaskCancelled)


def test_submit_warning_groups_the_configurations_no_live_host_could_run_by_gpu_count():
    from autotune.schemas.spec import spec_from_obj
    from autotune.shared.expand import experiment_space
    from autotune.shared.fit import unfit_configurations

    spec = spec_from_obj({"task_name": "big", "model": "meta-llama/Llama-3.1-70B-Instruct", "deployment_mode": "docker", "gpu_type": "H100",
                          "parallel_config": {"tp": [2, 4], "dp": [1, 2]}, "parameters": {"mem-fraction-static": [0.8, 0.9]}})  # fmt: skip
    kw = dict(engine="sglang", deployment_mode="docker", gpu_type="H100", simulate=False)
    size, unfit = unfit_configurations(experiment_space(spec), {"a": real("a", 2), "b": real("b", 2)}, **kw)
    assert size == 8
    assert [(u.gpus, u.configurations, u.examples) for u in unfit] == [(4, 4, ("tp=2,dp=2", "tp=4,dp=1")), (8, 2, ("tp=4,dp=2",))]
    assert unfit[0].reason == "needs 4 GPUs of type H100 on one host; the largest matching host has 2"
    assert unfit_configurations(experiment_space(spec), {"c": real("c", 8)}, **kw) == (8, [])
    _, none = unfit_configurations(experiment_space(spec), {}, **kw)
    assert [(u.gpus, u.reason) for u in none][0] == (2, "no live host takes work (start one: autotune up, or autotune deploy)")
