"""Live view of one task, straight from the event log: a progress bar, the best so far, and a table of
its experiments (finished ones with their figures; running ones with where and how far). Used by
`autotune submit --watch`, `autotune clone --watch` and `autotune demo`."""

from __future__ import annotations

import json
import shlex
import sys

from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from autotune.cli.connection import EXIT_FAILED, EXIT_OK, err
from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from autotune.schemas.spec import REAL_CPU_NOTE, is_cpu_serving, is_simulated
from autotune.shared import bus


def _fmt(v: float | None, unit: str = "", digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}{unit}"


def params_text(p: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in p.items() if not str(k).startswith("__"))


class TaskView:
    def __init__(self, task: str, simulated: bool) -> None:
        self.task = task
        self.simulated = simulated
        self.rows: dict[int, dict] = {}
        self.params: dict[int, dict] = {}
        self.budget = 0
        self.final: ev.Event | None = None
        self.rejected: ev.TaskRejected | None = None
        self.strategy = ""
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        self.bar = self.progress.add_task(f"{task}: waiting for the scheduler", total=None)

    def apply(self, e: ev.AnyEvent) -> None:
        match e:
            case ev.TaskSubmitted():
                self.simulated = self.simulated or is_simulated(e.simulate, e.spec.get("deployment_mode"))
            case ev.TaskStarted():
                self.budget = e.budget
                self.strategy = e.strategy
                self.progress.update(self.bar, total=e.budget, description=self._description())
            case ev.ExperimentPlanned():
                self.params[e.n] = dict(e.parameters)
                self.rows.setdefault(e.n, {"status": "queued"})["status"] = "queued" if e.attempt == 0 else f"retry {e.attempt}"
            case ev.ExperimentAssigned():
                self.rows.setdefault(e.n, {})["status"] = f"on {e.host}"
                self.rows[e.n]["gpus"] = ",".join(map(str, e.gpu_indices))
            case ev.ExperimentReady():
                self.rows.setdefault(e.n, {})["status"] = "benchmarking"
            case ev.ExperimentProgress():
                self.rows.setdefault(e.n, {})["status"] = f"benchmarking {e.run_index + 1}/{e.runs_total}"
            case ev.ExperimentCompleted():
                m = e.metrics
                self.rows[e.n] = {
                    **self.rows.get(e.n, {}), "status": "done" if not e.hard_fail else "slo fail", "score": e.score,
                    "tps": m.mean_total_tps_per_gpu, "ttft": m.mean_ttft, "tpot": m.mean_tpot, "e2e": m.mean_e2e_latency, "slo": e.slo_met,
                }
                self._advance()
            case ev.ExperimentFailed():
                self.rows.setdefault(e.n, {})["status"] = f"failed: {e.kind}" + (" (will retry)" if e.retryable else "")
                if not e.retryable:
                    self._advance()
            case ev.ExperimentCancelled():
                self.rows.setdefault(e.n, {})["status"] = "cancelled"
            case ev.TaskRejected():
                self.rejected = e
                self.final = e
            case ev.TaskCompleted() | ev.TaskFailed() | ev.TaskCancelled():
                self.final = e
            case _:
                pass

    def _advance(self) -> None:
        done = sum(1 for r in self.rows.values() if r.get("status", "").startswith(("done", "slo fail", "failed: ")) and "retry" not in r.get("status", ""))
        self.progress.update(self.bar, completed=done, description=self._description())

    def _description(self) -> str:
        failed = sum(1 for r in self.rows.values() if r.get("status", "").startswith("failed: ") and "retry" not in r.get("status", ""))
        text = f"{self.task}" + (f" ({self.strategy})" if self.strategy else "") + (f", {failed} failed" if failed else "")
        return text + ("  [SIMULATED]" if self.simulated else "")

    def best(self) -> tuple[int, dict] | None:
        done = [(n, r) for n, r in self.rows.items() if r.get("status") == "done" and r.get("score") is not None]
        return min(done, key=lambda nr: nr[1]["score"]) if done else None

    def table(self) -> Table:
        title = f"task {self.task}" + ("  [SIMULATED engines and GPUs]" if self.simulated else "")
        t = Table(title=title, title_justify="left")
        for col in ("#", "status", "parameters", "score", "tok/s/GPU", "TTFT s", "TPOT s", "e2e s", "SLO"):
            t.add_column(col, justify="right" if col not in ("status", "parameters") else "left")
        best = min((r["score"] for r in self.rows.values() if r.get("status") == "done"), default=None)
        for n in sorted(self.rows):
            r = self.rows[n]
            star = " *" if best is not None and r.get("score") == best else ""
            t.add_row(
                f"{n}{star}", r.get("status", ""), params_text(self.params.get(n, {})), _fmt(r.get("score")), _fmt(r.get("tps"), digits=1),
                _fmt(r.get("ttft")), _fmt(r.get("tpot"), digits=4), _fmt(r.get("e2e")), {True: "met", False: "violated"}.get(r.get("slo"), "-"),
            )
        return t

    def render(self):
        from rich.console import Group
        from rich.text import Text

        best = self.best()
        line = Text(f"best so far: experiment {best[0]}, score {best[1]['score']:.4f}  {params_text(self.params.get(best[0], {}))}" if best else "best so far: -")
        return Group(self.progress, line, self.table())


async def watch_task(js, task: str, *, console: Console | None = None, simulated: bool = False, live: bool = True) -> TaskView:
    """Follow the task's events from its first one until it finishes; returns the final view.

    With `live=False` nothing is drawn (for --json): the caller prints the outcome."""
    view = TaskView(task, simulated)
    if not live:
        async for d in bus.replay(js, subj.task_all(task)):
            view.apply(d.event)
            if view.final is not None:
                break
        return view
    console = console or Console(width=None if sys.stdout.isatty() else 160)  # piped: wide enough for the table
    with Live(view.render(), console=console, refresh_per_second=4, transient=False) as lv:
        async for d in bus.replay(js, subj.task_all(task)):
            view.apply(d.event)
            lv.update(view.render())
            if view.final is not None:
                break
    return view


def best_command(spec_dict: dict, params: dict) -> str:
    from autotune.schemas.spec import spec_from_obj
    from autotune.shared.expand import engine_command

    spec = spec_from_obj(spec_dict)
    return shlex.join(engine_command(spec, params, port=30000))


async def watch_and_report(js, task: str, *, spec_dict: dict | None, simulated: bool, as_json: bool = False) -> int:
    """Follow the task live until it ends, then say how: the best configuration as a command line (exit 0),
    or why it did not complete (exit 2 rejected, 1 failed or cancelled)."""
    view = await watch_task(js, task, simulated=simulated, live=not as_json)
    final = view.final
    if isinstance(final, ev.TaskCompleted):
        if spec_dict is None:
            from autotune.shared import commands

            spec_dict = (await commands.submitted(js, task)).spec
        cmd = best_command(spec_dict or {}, final.best_parameters or {}) if final.best_parameters is not None else None
        if as_json:
            print(json.dumps({"task": task, "status": "completed", "simulate": view.simulated, "reason": final.reason,
                              "best_experiment": final.best_experiment, "best_score": final.best_score,
                              "best_parameters": final.best_parameters, "pareto": final.pareto, "command": cmd}))  # fmt: skip
        elif final.best_experiment is None:
            print(f"\ntask {task} completed ({final.reason}) without a successful experiment")
        else:
            print(f"\nbest configuration: experiment {final.best_experiment}, score {final.best_score:.4f} ({final.reason})")
            print(f"  {cmd}")
            if view.simulated:
                print("  (measured on SIMULATED engines and GPUs: rehearse here, confirm on real hardware)")
            elif is_cpu_serving((spec_dict or {}).get("gpu_type")):
                print(f"  ({REAL_CPU_NOTE})")
            print(f"  as docker run / Kubernetes: autotune best {task} --format docker | k8s")
        return EXIT_OK
    if isinstance(final, ev.TaskRejected):
        return err(f"task rejected: {final.path}: {final.reason}")
    reason = getattr(final, "reason", "cancelled")
    if as_json:
        print(json.dumps({"task": task, "status": type(final).__name__.removeprefix("Task").lower(), "reason": reason, "simulate": view.simulated}))
    else:
        print(f"task {task} ended: {type(final).__name__} {reason}")
    return EXIT_FAILED
