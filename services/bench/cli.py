"""`autotune bench`: run the benchmark client alone against a server and print a table or JSON.

    autotune bench --url http://127.0.0.1:30000 --model M --scenario 'D(100,100)' --concurrency 1 4 --requests 50 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

import msgspec

from autotune.schemas.metrics import ExperimentMetrics
from autotune.schemas.scenarios import ScenarioError, parse_scenario
from autotune.schemas.spec import Benchmark

from .client import BenchmarkStopped, run_benchmark


def _param(text: str) -> tuple[str, object]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: write KEY=VALUE (VALUE is JSON when it parses, else a string)")
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="autotune bench", description="Benchmark an OpenAI-compatible server (an engine or the simulator).")
    add_arguments(ap)
    return ap


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of `autotune bench`; the `autotune` command's `bench` subcommand parses them too."""
    ap.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:30000")
    ap.add_argument("--model", required=True, help="model name sent in requests")
    ap.add_argument("--scenario", nargs="+", default=["D(100,100)"], help="traffic scenarios: D(in,out), N(mi,si)/(mo,so), U(a,b)/(c,d)")
    ap.add_argument("--concurrency", nargs="+", type=int, default=[1], help="concurrency levels")
    ap.add_argument("--requests", type=int, default=50, help="max requests per scenario x concurrency run (default 50)")
    ap.add_argument("--max-time", type=float, default=10.0, help="max MINUTES per run (default 10; divided by --time-scale)")
    ap.add_argument("--warmup", type=int, default=1, help="uncounted warm-up requests before each run (default 1)")
    ap.add_argument("--task", default="text-to-text", help="text-to-text (/v1/completions) or chat (/v1/chat/completions)")
    ap.add_argument("--param", action="append", type=_param, default=[], metavar="KEY=VALUE", help="extra request field (repeatable)")
    ap.add_argument("--time-scale", type=float, default=1.0, help="the simulator's AUTOTUNE_SIM_TIME_SCALE: durations are reported in engine seconds")
    ap.add_argument("--gpus", type=int, default=1, help="GPUs serving, for per-GPU throughput")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=None, help="per-request timeout, wall seconds")
    ap.add_argument("--itl", action="store_true", help="keep every inter-token gap in the JSON samples")
    ap.add_argument("--json", action="store_true", help="print the ExperimentMetrics as JSON")


def _ms(x: float) -> str:
    return f"{x * 1000:.1f}"


def render(m: ExperimentMetrics, time_scale: float = 1.0) -> str:
    scale = f" (engine seconds = wall x {time_scale:g})" if time_scale != 1 else ""
    head = ["scenario", "conc", "req", "ok", "err", "req/s", "out tok/s", "total tok/s", "TTFT mean ms", "TTFT p99 ms",
            "TPOT mean ms", "TPOT p99 ms", "E2E mean s", "E2E p99 s"]
    rows = [head]
    for r in m.runs:
        rows.append([
            r.scenario, str(r.concurrency), str(r.requests), str(r.completed), str(r.errors), f"{r.requests_per_s:.2f}",
            f"{r.output_tps:.1f}", f"{r.total_tps:.1f}", _ms(r.ttft.mean), _ms(r.ttft.p99), _ms(r.tpot.mean), _ms(r.tpot.p99),
            f"{r.e2e_latency.mean:.3f}", f"{r.e2e_latency.p99:.3f}",
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    errors = {}
    for r in m.runs:
        for k, v in r.errors_by_kind.items():
            errors[k] = errors.get(k, 0) + v
    lines += [
        "",
        f"aggregate over {m.requests} requests{scale}: e2e mean {m.mean_e2e_latency:.3f} s, p50 {m.p50_e2e_latency:.3f}, "
        f"p90 {m.p90_e2e_latency:.3f}, p99 {m.p99_e2e_latency:.3f}; TTFT mean {_ms(m.mean_ttft)} ms; TPOT mean {_ms(m.mean_tpot)} ms",
        f"throughput (request-weighted mean / max): output {m.mean_output_tps:.1f} / {m.max_output_tps:.1f} tok/s, "
        f"total {m.mean_total_tps:.1f} / {m.max_total_tps:.1f} tok/s, per GPU ({m.gpus}) total {m.mean_total_tps_per_gpu:.1f} tok/s; "
        f"success {m.success_rate:.1%}" + (f"; errors {errors}" if errors else ""),
    ]
    return "\n".join(lines)


def bench_main(argv: list[str]) -> int:
    """Entry point of `python -m autotune.bench.cli`; returns the process exit status."""
    return run(parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run the benchmark the parsed options describe and print it; returns the process exit status."""
    try:
        for s in args.scenario:
            parse_scenario(s)
    except ScenarioError as exc:
        print(f"autotune bench: {exc}", file=sys.stderr)
        return 2
    if args.time_scale <= 0 or args.requests < 0 or args.max_time <= 0 or any(c < 1 for c in args.concurrency):
        print("autotune bench: --time-scale and --max-time must be positive, --requests >= 0, --concurrency >= 1", file=sys.stderr)
        return 2
    bench = Benchmark(
        task=args.task, traffic_scenarios=args.scenario, num_concurrency=args.concurrency,
        max_time_per_iteration=args.max_time, max_requests_per_iteration=args.requests,
        additional_params=dict(args.param), warmup_requests=args.warmup,
    )

    async def go() -> ExperimentMetrics:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):
                pass

        def progress(run) -> None:
            if not args.json:
                print(f"  {run.scenario} x {run.concurrency}: {run.completed}/{run.requests} ok, {run.output_tps:.1f} out tok/s", file=sys.stderr)

        return await run_benchmark(
            args.url, model=args.model, bench=bench, gpus=args.gpus, time_scale=args.time_scale, on_run=progress,
            stop=stop, seed=args.seed, keep_itl=args.itl, request_timeout=args.timeout,
        )

    status = 0
    try:
        metrics = asyncio.run(go())
    except BenchmarkStopped as stopped:
        metrics, status = stopped.partial, 130
        print("autotune bench: stopped; showing the runs that finished", file=sys.stderr)
    if args.json:
        sys.stdout.write(msgspec.json.encode(metrics).decode() + "\n")
    else:
        print(render(metrics, args.time_scale))
    if metrics.requests and metrics.completed == 0:
        status = status or 1
    return status


if __name__ == "__main__":
    sys.exit(bench_main(sys.argv[1:]))
