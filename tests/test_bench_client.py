"""The benchmark client against real simulator processes."""

from __future__ import annotations

import asyncio
import contextlib
import re
import urllib.request

import msgspec
import pytest

from autotune.bench import BenchmarkStopped, run_benchmark
from autotune.bench.cli import bench_main
from autotune.schemas.metrics import ExperimentMetrics
from autotune.schemas.spec import SLO, Benchmark, SLOTerm
from autotune.shared.net import free_port
from autotune.simulator import steady_state
from autotune.simulator.process import SimProcess

SCALE = 20.0
ENGINE = ["sglang", "--model-path", "Llama-3.1-8B"]


@pytest.fixture(scope="module")
def sim():
    env = {"AUTOTUNE_SIM_TIME_SCALE": str(SCALE), "AUTOTUNE_SIM_STARTUP_SCALE": "1000", "AUTOTUNE_SIM_SEED": "3"}
    with SimProcess(ENGINE, env=env) as p:
        yield p


def counters(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    return {m[1]: float(m[2]) for m in re.finditer(r"^(autotune_sim_\w+) ([\d.]+)$", text, re.M)}


def reference_percentile(values, q):
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


async def test_exact_request_counts_with_warmup_excluded(sim):
    before = counters(sim.url)["autotune_sim_requests_received_total"]
    bench = Benchmark(traffic_scenarios=["D(20,8)"], num_concurrency=[1, 3], max_requests_per_iteration=7, warmup_requests=2)
    seen = []
    exp = await run_benchmark(sim.url, model="m", bench=bench, time_scale=SCALE, on_run=seen.append)
    assert [(r.scenario, r.concurrency, r.requests, r.completed, r.errors) for r in exp.runs] == [
        ("D(20,8)", 1, 7, 7, 0), ("D(20,8)", 3, 7, 7, 0)]
    assert seen == exp.runs
    assert len(exp.samples) == 14 and [s.run for s in exp.samples].count(1) == 7
    assert counters(sim.url)["autotune_sim_requests_received_total"] - before == 2 * (2 + 7)
    assert exp.requests == 14 and exp.success_rate == 1.0
    assert all(s.input_tokens == 20 and s.output_tokens == 8 for s in exp.samples)


async def test_percentiles_come_from_the_raw_samples(sim):
    bench = Benchmark(traffic_scenarios=["N(60,20)/(12,4)", "U(10,40)/(4,16)"], num_concurrency=[2, 5], max_requests_per_iteration=10)
    slo = SLO(ttft=SLOTerm(threshold=10.0))

    async def on_run(run) -> None:  # an async callback works too
        await asyncio.sleep(0)

    exp = await run_benchmark(sim.url, model="m", bench=bench, slo=slo, time_scale=SCALE, on_run=on_run, seed=5)
    assert len(exp.runs) == 4 and exp.requests == 40
    for i, run in enumerate(exp.runs):
        mine = [s for s in exp.samples if s.run == i and s.ok]
        for q, got in ((25, run.e2e_latency.p25), (50, run.e2e_latency.p50), (90, run.e2e_latency.p90), (99, run.e2e_latency.p99)):
            assert got == pytest.approx(reference_percentile([s.e2e for s in mine], q))
        assert run.ttft.p99 == pytest.approx(reference_percentile([s.ttft for s in mine], 99))
        assert run.goodput_rps == pytest.approx(run.requests_per_s)  # a generous SLO: every request is good
    pooled = [s.e2e for s in exp.samples if s.ok]
    assert exp.p90_e2e_latency == pytest.approx(reference_percentile(pooled, 90))
    assert exp.mean_e2e_latency == pytest.approx(sum(pooled) / len(pooled))
    weights = [r.requests for r in exp.runs]
    assert exp.mean_output_tps == pytest.approx(sum(w * r.output_tps for w, r in zip(weights, exp.runs, strict=True)) / sum(weights))
    # token counts come from the usage the server reports, and vary with the scenario
    assert len({s.input_tokens for s in exp.samples}) > 3 and len({s.output_tokens for s in exp.samples}) > 3


async def test_per_request_timing_and_kept_inter_token_gaps(sim):
    bench = Benchmark(traffic_scenarios=["D(30,12)"], num_concurrency=[2], max_requests_per_iteration=4, warmup_requests=0)
    exp = await run_benchmark(sim.url, model="m", bench=bench, time_scale=SCALE, keep_itl=True)
    for s in exp.samples:
        assert s.ok and s.output_tokens == 12 and len(s.itl) == 11
        assert 0 < s.ttft < s.e2e and s.tpot == pytest.approx((s.e2e - s.ttft) / 11)
        assert sum(s.itl) <= s.e2e - s.ttft + 1e-9
    plain = await run_benchmark(sim.url, model="m", bench=bench, time_scale=SCALE)
    assert all(s.itl == [] for s in plain.samples) and plain.completed == 4


async def test_chat_task_uses_chat_completions(sim):
    bench = Benchmark(task="chat", traffic_scenarios=["D(15,5)"], max_requests_per_iteration=3, additional_params={"temperature": 0.2, "max_tokens": 999})
    exp = await run_benchmark(sim.url, model="m", bench=bench, time_scale=SCALE)
    assert exp.completed == 3 and all(s.output_tokens == 5 for s in exp.samples)  # max_tokens stays the scenario's


async def test_errors_are_counted_by_kind():
    # A KV cache of 100 blocks x 16 tokens against a batch limit of 64: far beyond it.
    engine = ["vllm", "serve", "Llama-3.1-8B", "--num-gpu-blocks-override", "100", "--max-model-len", "1024", "--max-num-seqs", "64"]
    with SimProcess(engine, env={"AUTOTUNE_SIM_TIME_SCALE": "40", "AUTOTUNE_SIM_STARTUP_SCALE": "1000"}) as p:
        bench = Benchmark(traffic_scenarios=["D(100,200)", "D(600,600)"], num_concurrency=[32], max_requests_per_iteration=64, warmup_requests=0)
        exp = await run_benchmark(p.url, model="m", bench=bench, time_scale=40)
    under_load, too_long = exp.runs
    assert under_load.errors_by_kind.get("http_503", 0) > 0 and under_load.completed > 0
    assert under_load.errors == sum(under_load.errors_by_kind.values()) and under_load.requests == 64
    assert too_long.errors_by_kind == {"http_400": 64} and too_long.completed == 0
    assert 0 < exp.success_rate < 1 and exp.error_rate == pytest.approx(1 - exp.success_rate)
    model = steady_state("vllm", engine[1:], gpu_type="H100", input_tokens=100, output_tokens=200, concurrency=32)
    assert model["error_rate"] > 0


async def test_an_unreachable_server_gives_connection_errors():
    bench = Benchmark(max_requests_per_iteration=3, warmup_requests=1)
    exp = await run_benchmark(f"http://127.0.0.1:{free_port()}", model="m", bench=bench)
    assert exp.runs[0].errors_by_kind == {"connection": 3} and exp.success_rate == 0.0


async def test_the_time_limit_cancels_requests_in_flight(sim):
    # 0.2 s of wall time (x20 = 4 engine seconds) for requests that take ~13 engine seconds
    bench = Benchmark(traffic_scenarios=["D(10,2000)"], num_concurrency=[3], max_requests_per_iteration=10,
                      max_time_per_iteration=4 / 60, warmup_requests=0)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    exp = await run_benchmark(sim.url, model="m", bench=bench, time_scale=SCALE)
    assert loop.time() - t0 < 2.0
    assert exp.runs[0].requests == 0 and exp.samples == []  # the 3 in flight were cancelled, not counted


async def test_stop_aborts_promptly_and_the_server_drops_the_requests(sim):
    before = counters(sim.url)["autotune_sim_requests_cancelled_total"]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.call_later(0.3, stop.set)
    bench = Benchmark(traffic_scenarios=["D(10,5000)"], num_concurrency=[4], max_requests_per_iteration=8, warmup_requests=0)
    t0 = loop.time()
    with pytest.raises(BenchmarkStopped) as info:
        await run_benchmark(sim.url, model="m", bench=bench, time_scale=SCALE, stop=stop)
    assert loop.time() - t0 < 1.5 and info.value.partial.runs == []
    for _ in range(50):
        if counters(sim.url)["autotune_sim_requests_cancelled_total"] - before >= 4:
            break
        await asyncio.sleep(0.02)
    assert counters(sim.url)["autotune_sim_requests_cancelled_total"] - before == 4
    assert counters(sim.url)["autotune_sim_running_requests"] == 0


async def test_live_measurements_agree_with_the_steady_state_model():
    scale = 5.0
    env = {"AUTOTUNE_SIM_TIME_SCALE": str(scale), "AUTOTUNE_SIM_STARTUP_SCALE": "1000", "AUTOTUNE_SIM_SEED": "2"}
    with SimProcess(ENGINE, env=env) as p:
        for inp, out, conc in ((100, 100, 1), (500, 300, 16)):
            n = max(12, 3 * conc)
            bench = Benchmark(traffic_scenarios=[f"D({inp},{out})"], num_concurrency=[conc], max_requests_per_iteration=n, warmup_requests=conc)
            run = (await run_benchmark(p.url, model="m", bench=bench, time_scale=scale)).runs[0]
            model = steady_state("sglang", ENGINE[1:], gpu_type="H100", input_tokens=inp, output_tokens=out, concurrency=conc, seed=2)
            assert run.e2e_latency.mean == pytest.approx(model["e2e_s"], rel=0.15)
            assert run.tpot.mean == pytest.approx(model["tpot_s"], rel=0.15)
            assert run.output_tps == pytest.approx(model["output_tps"], rel=0.15)
            assert run.ttft.mean == pytest.approx(model["ttft_s"], rel=0.25, abs=0.02)


def test_bench_cli_prints_json_and_tables(sim, capsys):
    argv = ["--url", sim.url, "--model", "m", "--scenario", "D(12,6)", "--concurrency", "1", "2", "--requests", "4", "--time-scale", str(SCALE)]
    assert bench_main([*argv, "--json", "--param", "temperature=0.5"]) == 0
    exp = msgspec.json.decode(capsys.readouterr().out, type=ExperimentMetrics)
    assert [r.requests for r in exp.runs] == [4, 4] and exp.completed == 8
    assert bench_main(argv) == 0
    out = capsys.readouterr().out
    assert "D(12,6)" in out and "aggregate over 8 requests" in out
    assert bench_main(["--url", sim.url, "--model", "m", "--scenario", "X(1)"]) == 2
    assert "is not a scenario" in capsys.readouterr().err


async def test_a_kept_alive_connection_dropped_by_the_server_is_retried_once():
    """Servers close idle keep-alive connections (uvicorn after 5 s); a request that meets such a close
    before any response byte is sent again on a new connection."""
    from autotune.bench import HttpClient

    body = b'data: {"choices":[{"text":" hi","finish_reason":"length"}]}\n\ndata: [DONE]\n\n'
    handlers: list[asyncio.Event] = []

    async def handle(reader, writer):
        finished = asyncio.Event()
        handlers.append(finished)
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(v for k, _, v in (line.partition(b":") for line in head.split(b"\r\n")) if k.lower() == b"content-length"))
                await reader.readexactly(length)
                if served == 1:  # the second request on this connection: drop it unanswered
                    break
                served += 1
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: %d\r\n\r\n%b" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            finished.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with HttpClient(f"http://127.0.0.1:{port}") as client:
            first = await client.post_stream("/v1/completions", b"{}")
            second = await client.post_stream("/v1/completions", b"{}")
        assert first.ok and not first.reused
        assert second.ok and second.chunks == 1 and not second.reused  # answered on the new connection
    finally:
        await asyncio.wait_for(asyncio.gather(*(h.wait() for h in handlers)), 5)
        server.close()
        await server.wait_closed()
