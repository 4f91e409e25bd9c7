"""Drive the external `genai-bench` tool (sgl-project/genai-bench) and read every result file it writes.

Command (genai-bench `benchmark`, flags as in its CLI option groups):

    genai-bench benchmark --api-backend sglang|vllm|openai --api-base URL [--api-key EMPTY]
        --api-model-name MODEL --model-tokenizer TOKENIZER --task text-to-text
        --traffic-scenario S ... --num-concurrency C ... --max-time-per-run MINUTES --max-requests-per-run N
        --server-engine SGLang|vLLM --server-gpu-count G [--server-gpu-type T]
        --experiment-base-dir DIR --experiment-folder-name NAME [--additional-request-params JSON]

Assumptions, from genai-bench's sources: `--max-time-per-run` is an integer number of minutes (we round
max_time_per_iteration / time_scale up, at least 1); the tokenizer defaults to the model id (genai-bench
needs one it can load); genai-bench has no warm-up count, so `warmup_requests` is not applied.

It writes, in DIR/NAME, `experiment_metadata.json` and one file per scenario x concurrency (or batch size)
named `<scenario>_<task>_<num_concurrency|batch_size>_<n>_time_<s>s.json`, holding
`{"aggregated_metrics": {...}, "individual_request_metrics": [...], "_time_unit": "s"|"ms"}`. Every such
file is parsed, whatever its scenario kind (D, N, U, I, E, R...): latencies come from the individual
requests (converted from ms when `_time_unit` says so, x time_scale), throughputs and error counts from
genai-bench's own aggregate (per engine second: / time_scale). Files without individual requests fall back
to their aggregate statistics; the experiment's percentiles are then request-weighted means of the runs'.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shutil
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec

from autotune.schemas.metrics import ExperimentMetrics, RequestSample, RunMetrics, Stats
from autotune.schemas.spec import SLO, Benchmark

from .client import BenchmarkStopped
from .stats import aggregate, run_stats

RESULT_FILE = re.compile(r"^.+_(?:num_concurrency|concurrency|batch_size)_[\d.]+_time_\d+s\.json$")
_LATENCY = ("ttft", "tpot", "e2e_latency", "output_latency")


class GenaiBenchError(RuntimeError):
    """genai-bench failed or wrote nothing usable."""


def available(executable: str = "genai-bench") -> str | None:
    """The path of the genai-bench executable, or None when it is not on PATH."""
    return shutil.which(executable)


def build_command(
    base_url: str,
    *,
    model: str,
    bench: Benchmark,
    engine: str = "sglang",
    gpus: int = 1,
    gpu_type: str | None = None,
    time_scale: float = 1.0,
    base_dir: str | os.PathLike,
    folder: str = "genai-bench",
    executable: str = "genai-bench",
) -> list[str]:
    """The genai-bench command line for a task's benchmark settings."""
    engine = engine.lower()
    backend = "sglang" if engine.startswith("sglang") else "vllm" if engine.startswith("vllm") else "openai"
    minutes = max(1, math.ceil(bench.max_time_per_iteration / max(time_scale, 1e-9)))
    cmd = [
        executable, "benchmark",
        "--api-backend", backend,
        "--api-base", base_url.rstrip("/"),
        "--api-model-name", bench.model_name or model,
        "--model-tokenizer", bench.model_tokenizer or model,
        "--task", bench.task,
        "--max-time-per-run", str(minutes),
        "--max-requests-per-run", str(bench.max_requests_per_iteration),
        "--experiment-base-dir", str(base_dir),
        "--experiment-folder-name", folder,
        "--server-gpu-count", str(gpus),
    ]
    if backend == "openai":
        cmd += ["--api-key", "EMPTY"]
    if backend in ("sglang", "vllm"):
        cmd += ["--server-engine", "SGLang" if backend == "sglang" else "vLLM"]
    if gpu_type:
        known = {"H100", "A100-80G", "A100-40G", "MI300", "A10", "H200", "B200"}
        gt = gpu_type.upper().replace("A100-40GB", "A100-40G").replace("A100-80GB", "A100-80G")
        if gt in known:
            cmd += ["--server-gpu-type", gt]
    for s in bench.traffic_scenarios:
        cmd += ["--traffic-scenario", s]
    for c in bench.num_concurrency:
        cmd += ["--num-concurrency", str(c)]
    if bench.additional_params:
        cmd += ["--additional-request-params", json.dumps(bench.additional_params)]
    return cmd


# ---- parsing ----------------------------------------------------------------------------------------


def _num(x, default: float = 0.0) -> float:
    try:
        return float(x) if x is not None else default
    except (TypeError, ValueError):
        return default


def _stats_from(d: dict | None, factor: float = 1.0, count: int = 0) -> Stats:
    if not isinstance(d, dict):
        return Stats()
    f = lambda k: _num(d.get(k)) * factor  # noqa: E731
    return Stats(count=count, min=f("min"), max=f("max"), mean=f("mean"), stddev=f("stddev"), p25=f("p25"), p50=f("p50"),
                 p75=f("p75"), p90=f("p90"), p95=f("p95"), p99=f("p99"))


def result_files(folder: str | os.PathLike) -> list[Path]:
    """Every run result file genai-bench wrote in `folder` (in run order when the metadata says it)."""
    root = Path(folder)
    files = [p for p in root.glob("*.json") if RESULT_FILE.match(p.name)]
    files += [p for p in root.glob("*.json") if p not in files and p.name != "experiment_metadata.json"
              and not p.name.startswith(("gpu_utilization", "debug_for_run")) and _looks_like_result(p)]
    order_s: list[str] = []
    order_c: list[float] = []
    meta = root / "experiment_metadata.json"
    if meta.exists():
        try:
            m = json.loads(meta.read_text())
            order_s = list(m.get("traffic_scenario") or [])
            order_c = [float(c) for c in (m.get("num_concurrency") or m.get("batch_size") or [])]
        except (ValueError, TypeError):
            pass
    keyed = []
    for p in files:
        try:
            agg = json.loads(p.read_text()).get("aggregated_metrics", {})
        except ValueError:
            continue
        s = agg.get("scenario") or ""
        c = _num(agg.get("num_concurrency") if agg.get("iteration_type", "num_concurrency") != "batch_size" else agg.get("batch_size"), 1)
        keyed.append(((order_s.index(s) if s in order_s else len(order_s), s), (order_c.index(c) if c in order_c else len(order_c), c), p))
    keyed.sort(key=lambda k: (k[0], k[1]))
    return [p for _, _, p in keyed]


def _looks_like_result(p: Path) -> bool:
    try:
        return "aggregated_metrics" in json.loads(p.read_text())
    except (ValueError, OSError):
        return False


def parse_result_file(path: str | os.PathLike, run: int, *, time_scale: float = 1.0, slo: SLO | None = None) -> tuple[RunMetrics, list[RequestSample]]:
    """One genai-bench run file -> RunMetrics and its RequestSamples (index `run`)."""
    data = json.loads(Path(path).read_text())
    agg = data.get("aggregated_metrics") or {}
    unit = str(data.get("_time_unit", "s")).lower()
    factor = (0.001 if unit in ("ms", "millisecond", "milliseconds") else 1.0) * time_scale
    scenario = str(agg.get("scenario") or Path(path).name.split("_text-to-text")[0])
    if agg.get("iteration_type") == "batch_size":
        concurrency = int(round(_num(agg.get("batch_size"), 1)))
    else:
        concurrency = int(round(_num(agg.get("num_concurrency"), 1)))
    samples: list[RequestSample] = []
    for r in data.get("individual_request_metrics") or []:
        code = r.get("error_code")
        ok = code is None
        ttft = r.get("ttft")
        tpot = r.get("tpot")
        samples.append(RequestSample(
            run=run, ok=ok, start=0.0,  # genai-bench does not record when each request started
            e2e=_num(r.get("e2e_latency")) * factor,
            ttft=_num(ttft) * factor if ttft is not None else None,
            tpot=_num(tpot) * factor if tpot is not None and ok else None,
            input_tokens=int(_num(r.get("num_input_tokens"))),
            output_tokens=int(_num(r.get("num_output_tokens"))),
            error=None if ok else f"http_{code}",
        ))
    duration = _num(agg.get("run_duration")) * time_scale
    rps = agg.get("requests_per_second")
    if rps is None and agg.get("requests_per_minute") is not None:
        rps = _num(agg.get("requests_per_minute")) / 60.0
    if samples:
        base = run_stats(samples, scenario=scenario, concurrency=concurrency, duration_s=duration or None, slo=slo)
    else:
        st = agg.get("stats") or {}
        done = int(_num(agg.get("num_completed_requests")))
        base = RunMetrics(
            scenario=scenario, concurrency=concurrency, duration_s=duration,
            ttft=_stats_from(st.get("ttft"), factor, done), tpot=_stats_from(st.get("tpot"), factor, done),
            e2e_latency=_stats_from(st.get("e2e_latency"), factor, done),
            output_latency=_stats_from(st.get("output_latency"), factor, done),
            output_speed=_stats_from(st.get("output_inference_speed"), 1.0 / time_scale, done),
            input_tokens=_stats_from(st.get("num_input_tokens"), 1.0, done),
            output_tokens=_stats_from(st.get("num_output_tokens"), 1.0, done),
        )
    freq = {f"http_{k}": int(v) for k, v in (agg.get("error_codes_frequency") or {}).items()}
    requests = int(_num(agg.get("num_requests"), base.requests))
    completed = int(_num(agg.get("num_completed_requests"), base.completed))
    errors = int(_num(agg.get("num_error_requests"), base.errors))
    tput = lambda key, mine: _num(agg.get(key)) / time_scale if agg.get(key) is not None else mine  # noqa: E731
    out_tps = tput("mean_output_throughput_tokens_per_s", base.output_tps)
    in_tps = tput("mean_input_throughput_tokens_per_s", base.input_tps)
    run_metrics = RunMetrics(
        scenario=scenario, concurrency=concurrency, requests=requests, completed=completed, errors=errors,
        errors_by_kind=freq or base.errors_by_kind, duration_s=duration or base.duration_s,
        requests_per_s=_num(rps) / time_scale if rps is not None else base.requests_per_s,
        input_tps=in_tps, output_tps=out_tps,
        total_tps=tput("mean_total_tokens_throughput_tokens_per_s", in_tps + out_tps),
        ttft=base.ttft, tpot=base.tpot, e2e_latency=base.e2e_latency, output_latency=base.output_latency,
        output_speed=base.output_speed, input_tokens=base.input_tokens, output_tokens=base.output_tokens,
        goodput_rps=base.goodput_rps,
    )
    return run_metrics, samples


def parse_results(folder: str | os.PathLike, *, gpus: int = 1, time_scale: float = 1.0, slo: SLO | None = None) -> ExperimentMetrics:
    """Every run file in a genai-bench experiment folder -> ExperimentMetrics (see module docstring)."""
    runs: list[RunMetrics] = []
    samples: list[RequestSample] = []
    files = result_files(folder)
    if not files:
        raise GenaiBenchError(f"no genai-bench result files in {folder}")
    for p in files:
        run, s = parse_result_file(p, len(runs), time_scale=time_scale, slo=slo)
        runs.append(run)
        samples.extend(s)
    exp = aggregate(runs, samples, gpus)
    if any(r.requests and not any(s.run == i for s in samples) for i, r in enumerate(runs)):
        exp = _with_run_level_latency(exp)
    return exp


def _with_run_level_latency(exp: ExperimentMetrics) -> ExperimentMetrics:
    """Some runs came without individual requests: take latency figures as request-weighted means of
    the runs' own statistics instead of pooled percentiles."""
    runs = exp.runs
    total = sum(r.completed for r in runs) or 1

    def w(get) -> float:
        return sum(r.completed * get(r) for r in runs) / total

    return msgspec.structs.replace(
        exp,
        mean_e2e_latency=w(lambda r: r.e2e_latency.mean), p50_e2e_latency=w(lambda r: r.e2e_latency.p50),
        p90_e2e_latency=w(lambda r: r.e2e_latency.p90), p99_e2e_latency=w(lambda r: r.e2e_latency.p99),
        mean_ttft=w(lambda r: r.ttft.mean), p50_ttft=w(lambda r: r.ttft.p50), p90_ttft=w(lambda r: r.ttft.p90),
        p99_ttft=w(lambda r: r.ttft.p99), mean_tpot=w(lambda r: r.tpot.mean), p50_tpot=w(lambda r: r.tpot.p50),
        p90_tpot=w(lambda r: r.tpot.p90), p99_tpot=w(lambda r: r.tpot.p99),
    )


# ---- running ----------------------------------------------------------------------------------------


async def run_genai_bench(
    base_url: str,
    *,
    model: str,
    bench: Benchmark,
    workdir: str | os.PathLike,
    engine: str = "sglang",
    slo: SLO | None = None,
    gpus: int = 1,
    gpu_type: str | None = None,
    time_scale: float = 1.0,
    on_run: Callable[[RunMetrics], Awaitable[None] | None] | None = None,
    on_log: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
    executable: str = "genai-bench",
    poll_s: float = 2.0,
) -> ExperimentMetrics:
    """Run genai-bench into `workdir`, report each run file as it appears, and parse them all at the end.

    Raises GenaiBenchError when genai-bench is missing, fails, or writes no result; BenchmarkStopped
    (with the runs written so far) when `stop` is set. The process group is always killed on the way out.
    """
    path = available(executable)
    if path is None:
        raise GenaiBenchError(f"{executable!r} is not on PATH; install genai-bench or use the builtin driver")
    folder = "genai-bench"
    out_dir = Path(workdir) / folder
    cmd = build_command(base_url, model=model, bench=bench, engine=engine, gpus=gpus, gpu_type=gpu_type,
                        time_scale=time_scale, base_dir=workdir, folder=folder, executable=path)
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
    )
    tail: list[str] = []
    seen: set[Path] = set()

    async def read_output() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            tail.append(line)
            del tail[:-40]
            if on_log is not None:
                on_log(line)

    async def report_new() -> None:
        for p in result_files(out_dir) if out_dir.exists() else []:
            if p in seen:
                continue
            seen.add(p)
            if on_run is not None:
                try:
                    run, _ = parse_result_file(p, len(seen) - 1, time_scale=time_scale, slo=slo)
                except (ValueError, KeyError):
                    continue
                res = on_run(run)
                if asyncio.iscoroutine(res):
                    await res

    reader = asyncio.ensure_future(read_output())
    waiter = asyncio.ensure_future(proc.wait())
    stopper = asyncio.ensure_future(stop.wait()) if stop is not None else None
    try:
        while not waiter.done():
            pending = {waiter} | ({stopper} if stopper else set())
            await asyncio.wait(pending, timeout=poll_s, return_when=asyncio.FIRST_COMPLETED)
            if stopper is not None and stopper.done():
                _kill(proc)
                try:
                    partial = parse_results(out_dir, gpus=gpus, time_scale=time_scale, slo=slo)
                except GenaiBenchError:
                    partial = ExperimentMetrics(gpus=gpus)
                raise BenchmarkStopped(partial)
            await report_new()
        await reader
        await report_new()
    except asyncio.CancelledError:
        _kill(proc)
        raise
    finally:
        if stopper is not None:
            stopper.cancel()
        if proc.returncode is None:
            _kill(proc)
            await proc.wait()
        reader.cancel()
    if proc.returncode != 0:
        raise GenaiBenchError(f"genai-bench exited with status {proc.returncode}: " + " | ".join(tail[-10:]))
    return parse_results(out_dir, gpus=gpus, time_scale=time_scale, slo=slo)


def _kill(proc: asyncio.subprocess.Process) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass
