"""Load generator: how much streaming load the simulator + benchmark client sustain, and how exact the
client's clock is. Run: `uv run python tests/benchmarks/loadgen.py [--concurrency 256] [--seconds 15]`.

Starts the simulator (large batch limits, high time scale), keeps `concurrency` streamed requests in
flight for a bounded time with the benchmark client's own request code, and prints ONE JSON line:
sustained requests/s and tokens/s (wall clock), the client process's CPU use, and the client's timing
error - client-measured TTFT / e2e versus the simulator's own per-request timings
(`autotune_server_timing`), p50/p99 of the difference in wall milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

from autotune.bench.client import make_prompt, stream_request
from autotune.bench.http import HttpClient
from autotune.bench.stats import percentile
from autotune.simulator.process import SimProcess


def server_cpu_seconds(pid: int) -> float | None:
    """CPU seconds the simulator process used so far (Linux /proc), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)
    except (OSError, IndexError, ValueError):
        return None


def start_simulator(scale: float, model: str) -> SimProcess:
    args = ["sglang", "--model-path", model, "--max-running-requests", "1024", "--cuda-graph-max-bs", "512"]
    env = {"AUTOTUNE_SIM_TIME_SCALE": str(scale), "AUTOTUNE_SIM_STARTUP_SCALE": "100", "AUTOTUNE_SIM_SEED": "1"}
    return SimProcess(args, env=env).start().wait_ready(60)


async def drive(url: str, concurrency: int, seconds: float, input_words: int, output_tokens: int) -> dict:
    import random

    rng = random.Random(7)
    results = []
    deadline = time.perf_counter() + seconds
    async with HttpClient(url) as session:

        async def worker() -> None:
            while time.perf_counter() < deadline:
                payload = {
                    "model": "m", "prompt": make_prompt(input_words, rng), "max_tokens": output_tokens, "stream": True,
                    "stream_options": {"include_usage": True}, "ignore_eos": True,
                }
                results.append(await stream_request(session, "/v1/completions", payload))

        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {"results": results, "cpu": cpu, "wall": wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--time-scale", type=float, default=5.0)
    ap.add_argument("--input", type=int, default=128)
    ap.add_argument("--output", type=int, default=128)
    ap.add_argument("--model", default="Llama-3.1-8B")
    a = ap.parse_args()
    sim = start_simulator(a.time_scale, a.model)
    try:
        run = asyncio.run(drive(sim.url, a.concurrency, a.seconds, a.input, a.output))
        server_cpu = server_cpu_seconds(sim.proc.pid)
    finally:
        sim.close()
    results, wall, scale = run["results"], run["wall"], a.time_scale
    ok = [r for r in results if r.ok and r.server_timing]
    ttft_err = sorted(abs(r.ttft - r.server_timing["ttft_s"] / scale) * 1e3 for r in ok)
    e2e_err = sorted(abs(r.e2e - r.server_timing["e2e_s"] / scale) * 1e3 for r in ok)
    lag = sorted(r.server_timing.get("lag_s", 0.0) / scale * 1e3 for r in ok)
    tokens = sum(r.completion_tokens or r.chunks for r in ok)
    print(json.dumps({
        "concurrency": a.concurrency, "time_scale": scale, "wall_s": round(wall, 2), "requests": len(results),
        "ok": len(ok), "errors": len(results) - len(ok),
        "requests_per_s": round(len(ok) / wall, 1), "output_tokens_per_s": round(tokens / wall),
        "sse_events_per_s": round(sum(r.chunks for r in ok) / wall),
        "client_cpu_fraction": round(run["cpu"] / wall, 3),
        "server_cpu_seconds": server_cpu,
        "ttft_error_ms": {"p50": round(percentile(ttft_err, 50), 3), "p99": round(percentile(ttft_err, 99), 3)},
        "e2e_error_ms": {"p50": round(percentile(e2e_err, 50), 3), "p99": round(percentile(e2e_err, 99), 3)},
        "server_lag_ms": {"p50": round(percentile(lag, 50), 3), "p99": round(percentile(lag, 99), 3)},
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
