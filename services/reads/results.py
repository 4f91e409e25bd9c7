"""A task's results as plottable columns: every finished experiment with its score and any two
metrics, the 2-D Pareto frontier of those two, the SLO bounds that apply to them, and one
experiment's latency distributions from its raw request samples.

Columnar (one list per field) because a task may have tens of thousands of experiments: a chart
wants arrays, and arrays are a fraction of the bytes of one object per row.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal, NamedTuple

import msgspec

from autotune.reads.common import BadRequest, all_columns, finite, redact, rows, simulated
from autotune.reads.tasks import task_row
from autotune.shared import query as q


class Metric(NamedTuple):
    label: str
    sql: str  # an expression over one row of `experiments`
    better: Literal["min", "max"]
    slo: tuple[str, ...] = ()  # the spec's SLO term this metric is bounded by: ("latency", "p90") or ("tpot",)
    inverse: bool = False  # the SLO bounds 1 / metric (tokens/s/user is 1 / mean TPOT)


# What a Pareto plot may put on an axis. tps_per_user is the per-user decode speed, 1 / mean TPOT
# (what a person reading the stream sees); a TPOT SLO bounds it from below exactly.
METRICS: dict[str, Metric] = {
    "tps_per_user": Metric("tokens/s/user (1 / mean TPOT)", "1.0 / nullif(mean_tpot, 0)", "max", ("tpot",), inverse=True),
    "mean_total_tps_per_gpu": Metric("tokens/s/GPU (total, mean)", "mean_total_tps_per_gpu", "max"),
    "mean_output_tps_per_gpu": Metric("output tokens/s/GPU (mean)", "mean_output_tps_per_gpu", "max"),
    "mean_total_tps": Metric("tokens/s (total, mean)", "mean_total_tps", "max"),
    "mean_output_tps": Metric("output tokens/s (mean)", "mean_output_tps", "max"),
    "requests_per_s": Metric("requests/s", "requests_per_s", "max"),
    "mean_ttft": Metric("mean TTFT (s)", "mean_ttft", "min", ("ttft",)),
    "p50_ttft": Metric("p50 TTFT (s)", "p50_ttft", "min"),
    "p90_ttft": Metric("p90 TTFT (s)", "p90_ttft", "min"),
    "p99_ttft": Metric("p99 TTFT (s)", "p99_ttft", "min"),
    "mean_tpot": Metric("mean TPOT (s)", "mean_tpot", "min", ("tpot",)),
    "p90_tpot": Metric("p90 TPOT (s)", "p90_tpot", "min"),
    "p99_tpot": Metric("p99 TPOT (s)", "p99_tpot", "min"),
    "mean_e2e_latency": Metric("mean end-to-end latency (s)", "mean_e2e_latency", "min"),
    "p50_e2e_latency": Metric("p50 end-to-end latency (s)", "p50_e2e_latency", "min", ("latency", "p50")),
    "p90_e2e_latency": Metric("p90 end-to-end latency (s)", "p90_e2e_latency", "min", ("latency", "p90")),
    "p99_e2e_latency": Metric("p99 end-to-end latency (s)", "p99_e2e_latency", "min", ("latency", "p99")),
    "success_rate": Metric("success rate", "success_rate", "max"),
    "score": Metric("score (lower is better)", "score", "min"),
    "startup_s": Metric("engine startup (s)", "startup_s", "min"),
    "max_memory_used_mib": Metric("max GPU memory used (MiB)", "max_memory_used_mib", "min"),
}
DEFAULT_X, DEFAULT_Y = "tps_per_user", "mean_total_tps_per_gpu"
FINISHED = ("completed", "failed")


class Points(msgspec.Struct, kw_only=True):
    """Every finished attempt of a task in the order they finished, one list per field."""

    task: str
    simulate: bool
    x: str
    y: str
    x_label: str
    y_label: str
    x_better: str
    y_better: str
    n: list[int]
    attempt: list[int]
    status: list[str]
    score: list[float | None]
    slo_met: list[bool | None]
    failure_kind: list[str | None]
    xs: list[float | None]
    ys: list[float | None]
    parameters: dict[str, list[Any]]  # parameter name -> its value per point
    frontier: list[int] = []  # indices into the lists above, along the frontier
    frontier_keys: list[list[int]] = []  # [n, attempt] of every frontier point of the whole task, along x
    x_bound: float | None = None  # the SLO's limit on x (feasible: x <= bound when x_better is min, else >=)
    y_bound: float | None = None


def check_metric(name: str, axis: str) -> Metric:
    metric = METRICS.get(name)
    if metric is None:
        raise BadRequest(f"cannot plot `{name}` on {axis}; one of {', '.join(METRICS)}")
    return metric


def slo_bound(spec: dict, metric: Metric) -> float | None:
    """The threshold the task's SLO puts on `metric`, in the metric's own unit, or None."""
    node: Any = spec.get("slo") if isinstance(spec, dict) else None
    for key in metric.slo:
        node = node.get(key) if isinstance(node, dict) else None
    threshold = node.get("threshold") if isinstance(node, dict) else None
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or threshold <= 0:
        return None
    return 1.0 / threshold if metric.inverse else float(threshold)


def frontier(xs: list[float | None], ys: list[float | None], x_better: str, y_better: str, keep: list[bool]) -> list[int]:
    """Indices of the points no other point dominates in (x, y), sorted along x; O(n log n).
    Only points with `keep` (completed, not a hard SLO failure) and both values take part."""
    sx = -1.0 if x_better == "max" else 1.0
    sy = -1.0 if y_better == "max" else 1.0
    pts = sorted(
        ((sx * x, sy * y, i) for i, (x, y) in enumerate(zip(xs, ys, strict=True)) if keep[i] and x is not None and y is not None),
    )
    out: list[int] = []
    best_y = float("inf")
    last_x: float | None = None
    for x, y, i in pts:  # ascending oriented x: a point is on the front when its y beats every earlier one
        if y < best_y:
            if out and last_x == x:  # same x, better y: the earlier one is dominated
                out.pop()
            out.append(i)
            best_y, last_x = y, x
    return out


async def _given(value: Any) -> Any:
    return value


def _json_path(key: str) -> str:
    """A JSON path literal for one object key, whatever its characters (a parameter name is the user's)."""
    return "'$." + msgspec.json.encode(key).decode().replace("'", "''") + "'"


def significant(expr: str, digits: int = 6) -> str:
    """SQL for `expr` to `digits` significant digits: what a chart can show, and a third of the bytes
    of a double's 17 (the frontier is taken from the same rounded figures the chart draws)."""
    return (f"CASE WHEN ({expr}) IS NULL OR ({expr}) = 0 OR NOT isfinite({expr}) THEN ({expr}) "
            f"ELSE round({expr}, {digits - 1} - CAST(floor(log10(abs({expr}))) AS INTEGER)) END")  # fmt: skip


async def parameter_keys(nc, task: str, *, min_seq: int | None = None) -> list[str]:
    """Every parameter name the task's finished experiments ran with."""
    got = await rows(
        nc, f"SELECT DISTINCT unnest(json_keys(parameters)) AS k FROM experiments WHERE task = ? AND status IN {FINISHED!r} "
        "AND json_type(parameters) = 'OBJECT' ORDER BY k", [task], min_seq=min_seq,
    )  # fmt: skip
    return [r["k"] for r in got]


async def task_points(nc, task: str, *, x: str = DEFAULT_X, y: str = DEFAULT_Y, ns: list[int] | None = None,
                      min_seq: int | None = None, row: dict | None = None, keys: list[str] | None = None) -> Points:  # fmt: skip
    """The task's finished attempts with metrics `x` and `y` (names in METRICS); only experiments
    `ns` when given (what a live chart appends), with the frontier of the whole task all the same.
    Read as columns (a list per field), not a dict per row: a task has tens of thousands. `row` and
    `keys`: the task's row (task_row) and parameter_keys when the caller has just read them."""
    mx, my = check_metric(x, "x"), check_metric(y, "y")
    where = f"task = ? AND status IN {FINISHED!r}"
    if row is None or keys is None:
        # the parameters' names first (the spec's, and any other an experiment ran with), so that
        # each comes back as a column of values: a JSON object per row was most of the bytes
        row, keys = await asyncio.gather(task_row(nc, task, min_seq=min_seq) if row is None else _given(row),
                                         parameter_keys(nc, task, min_seq=min_seq) if keys is None else _given(keys))  # fmt: skip
    spec = row.get("spec") if isinstance(row.get("spec"), dict) else {}
    names = list(spec["parameters"]) if isinstance(spec.get("parameters"), dict) else []
    names += [k for k in keys if k not in names]
    values = "".join(f", json_extract(parameters, {_json_path(k)}) AS p{i}" for i, k in enumerate(names))
    inner = (f"SELECT n, attempt, status, slo_met, coalesce(hard_fail, false) AS hard_fail, ({mx.sql}) AS x, ({my.sql}) AS y, score, failure_kind, "
             f"parameters, coalesce(finished_at, planned_at) AS t FROM experiments WHERE {where}")  # fmt: skip
    point = f"n, attempt, status, slo_met, hard_fail, {significant('x')} AS x, {significant('y')} AS y"
    full = f"SELECT {point}, {significant('score')} AS score, failure_kind{values} FROM ("
    if ns is None:
        got = everything = await all_columns(nc, f"{full}{inner}) ORDER BY t, n, attempt", [task], min_seq=min_seq)
    else:
        marks = ", ".join("?" for _ in ns) or "NULL"
        got, everything = await asyncio.gather(
            all_columns(nc, f"{full}{inner} AND n IN ({marks})) ORDER BY t, n, attempt", [task, *ns], min_seq=min_seq),
            all_columns(nc, f"SELECT {point} FROM ({inner}) ORDER BY t, n, attempt", [task], min_seq=min_seq),
        )
    parameters = {}
    for i, k in enumerate(names):
        col = got[f"p{i}"]
        parameters[k] = [redact(v) for v in col] if {dict, list} & set(map(type, col)) else col  # secrets hide only in objects
    keep = [st == "completed" and not hard for st, hard in zip(everything["status"], everything["hard_fail"], strict=True)]
    front = frontier(everything["x"], everything["y"], mx.better, my.better, keep)
    front_keys = [(everything["n"][i], everything["attempt"][i]) for i in front]
    at = {k: i for i, k in enumerate(zip(got["n"], got["attempt"], strict=True))}
    return Points(
        task=task, simulate=simulated(row), x=x, y=y, x_label=mx.label, y_label=my.label, x_better=mx.better, y_better=my.better,
        n=got["n"], attempt=got["attempt"], status=got["status"], score=got["score"], slo_met=got["slo_met"], failure_kind=got["failure_kind"],
        xs=got["x"], ys=got["y"], parameters=parameters, frontier=[at[k] for k in front_keys if k in at], frontier_keys=[list(k) for k in front_keys],
        x_bound=slo_bound(spec, mx), y_bound=slo_bound(spec, my),
    )  # fmt: skip


# --- latency distributions from raw samples ------------------------------------------------------------

LATENCIES = {"ttft": "time to first token (s)", "tpot": "time per output token (s)", "e2e": "end-to-end latency (s)"}
QUANTILES = [round(i / 100, 2) for i in range(1, 100)]


class Distribution(msgspec.Struct, kw_only=True):
    """One latency over an attempt's successful requests: exact percentiles and the empirical CDF
    (the value at each percent from 1 to 99, plus the extremes)."""

    metric: str
    label: str
    count: int
    mean: float | None
    p50: float | None
    p90: float | None
    p99: float | None
    cdf_p: list[float]
    cdf_v: list[float | None]


class Distributions(msgspec.Struct, kw_only=True):
    task: str
    n: int
    attempt: int
    requests: int
    failed: int
    items: list[Distribution]


async def latency_distributions(nc, task: str, n: int, attempt: int, *, run: int | None = None, min_seq: int | None = None) -> Distributions:
    """TTFT, TPOT and end-to-end latency of the attempt's requests (`request_samples`), computed in
    SQL from the raw samples: exact, and the same whatever the number of requests."""
    where, params = "task = ? AND n = ? AND attempt = ?", [task, n, attempt]
    if run is not None:
        where += " AND run = ?"
        params.append(run)
    cols = []
    for k in LATENCIES:
        cols.append(f"count({k}) FILTER (WHERE ok) AS {k}_count, avg({k}) FILTER (WHERE ok) AS {k}_mean, "
                    f"min({k}) FILTER (WHERE ok) AS {k}_min, max({k}) FILTER (WHERE ok) AS {k}_max, "
                    f"quantile_cont({k}, {QUANTILES!r}) FILTER (WHERE ok) AS {k}_q")  # fmt: skip
    got = await q.sql(
        nc, f"SELECT count(*) AS requests, count(*) FILTER (WHERE NOT ok) AS failed, {', '.join(cols)} FROM request_samples WHERE {where}",
        params, min_seq=min_seq,
    )  # fmt: skip
    r = got.rows_as_dicts()[0] if got.rows else {}
    items = []
    for k, label in LATENCIES.items():
        qs = r.get(f"{k}_q") or []
        count = r.get(f"{k}_count") or 0
        pick = dict(zip(QUANTILES, qs, strict=False))
        items.append(Distribution(
            metric=k, label=label, count=count, mean=finite(r.get(f"{k}_mean")), p50=finite(pick.get(0.5)), p90=finite(pick.get(0.9)),
            p99=finite(pick.get(0.99)), cdf_p=[0.0, *QUANTILES, 1.0] if count else [],
            cdf_v=[finite(r.get(f"{k}_min")), *[finite(v) for v in qs], finite(r.get(f"{k}_max"))] if count else [],
        ))  # fmt: skip
    return Distributions(task=task, n=n, attempt=attempt, requests=r.get("requests") or 0, failed=r.get("failed") or 0, items=items)
