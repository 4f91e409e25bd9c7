"""Engine telemetry: the engine's Prometheus /metrics, parsed and summarized; against a real simulator
process (which exposes vLLM's and SGLang's own metric names) while the benchmark client loads it."""

from __future__ import annotations

import pytest

from autotune.bench import run_benchmark
from autotune.runner.engine_metrics import EngineScraper, Scrapes, parse
from autotune.schemas.spec import Benchmark
from autotune.simulator.process import SimProcess

# lines as vLLM 0.32.0 (CPU build) prints them, trimmed to what the summary reads and a neighbour of each
VLLM_TEXT = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="/m/tiny-llama"} 3.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="/m/tiny-llama"} 5.0
# TYPE vllm:num_requests_waiting_by_reason gauge
vllm:num_requests_waiting_by_reason{engine="0",model_name="/m/tiny-llama",reason="capacity"} 5.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="/m/tiny-llama"} 0.25
# TYPE vllm:num_preemptions counter
vllm:num_preemptions_total{engine="0",model_name="/m/tiny-llama"} 2.0
vllm:num_preemptions_created{engine="0",model_name="/m/tiny-llama"} 1.7966548375649219e+09
# TYPE vllm:prompt_tokens counter
vllm:prompt_tokens_total{engine="0",model_name="/m/tiny-llama"} 3202.0
vllm:prompt_tokens_created{engine="0",model_name="/m/tiny-llama"} 1.7966548375649457e+09
# TYPE vllm:generation_tokens counter
vllm:generation_tokens_total{engine="0",model_name="/m/tiny-llama"} 3200.0
# TYPE vllm:iteration_tokens_total histogram
vllm:iteration_tokens_total_sum{engine="0",model_name="/m/tiny-llama"} 6402.0
vllm:iteration_tokens_total_bucket{engine="0",le="1.0",model_name="/m/tiny-llama"} 3100.0
vllm:iteration_tokens_total_bucket{engine="0",le="+Inf",model_name="/m/tiny-llama"} 3232.0
vllm:iteration_tokens_total_count{engine="0",model_name="/m/tiny-llama"} 3232.0
"""


def test_parse_reads_vllm_names_and_skips_created_timestamps():
    source, values = parse(VLLM_TEXT)
    assert source == "vllm"
    assert values == {"running": 3.0, "waiting": 5.0, "kv": 0.25, "preemptions": 2.0, "prompt_tokens": 3202.0, "generation_tokens": 3200.0,
                      "steps": 3232.0}


def test_parse_adds_up_data_parallel_engines_but_takes_the_fullest_kv_cache():
    text = VLLM_TEXT + 'vllm:num_requests_running{engine="1",model_name="m"} 4.0\nvllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.75\n'
    _, values = parse(text)
    assert values["running"] == 7.0 and values["kv"] == 0.75


def test_parse_reads_sglang_names_and_nothing_from_other_servers():
    assert parse('sglang:num_running_reqs{model_name="m"} 2\nsglang:token_usage{model_name="m"} 0.5\n') == ("sglang", {"running": 2.0, "kv": 0.5})
    assert parse("process_cpu_seconds_total 12.0\n") == ("", {})


def test_summary_gauges_as_mean_and_max_counters_as_increase_through_a_reset():
    s = Scrapes()
    for running, kv, gen in ((0, 0.0, 100), (4, 0.5, 150), (8, 0.9, 400), (2, 0.1, 30)):  # the counter restarts at the last
        s.add("vllm", {"running": running, "kv": kv, "generation_tokens": gen})
    got = s.summary()
    assert got.source == "vllm" and got.samples == 4
    assert got.mean_running == 3.5 and got.max_running == 8
    assert got.max_kv_cache_usage == 0.9 and got.mean_kv_cache_usage == pytest.approx(0.375)
    assert got.generation_tokens == 50 + 250 + 30
    assert got.preemptions is None and got.mean_waiting is None  # never reported: unknown, not zero


def test_gauges_leave_out_the_bounds_of_the_window_which_only_close_the_counters():
    s = Scrapes(bounded=True, closed=True)
    for running, gen in ((0, 100), (16, 300), (12, 700), (0, 900)):  # idle before the first request and after the last
        s.add("vllm", {"running": running, "generation_tokens": gen})
    got = s.summary()
    assert got.samples == 2 and got.mean_running == 14 and got.max_running == 16
    assert got.generation_tokens == 800
    # a window shorter than one interval: no load sample, the counters still count
    short = Scrapes(bounded=True, closed=True)
    short.add("vllm", {"running": 0, "generation_tokens": 0})
    short.add("vllm", {"running": 0, "generation_tokens": 50})
    assert (short.summary().samples, short.summary().mean_running, short.summary().generation_tokens) == (0, None, 50)


@pytest.mark.parametrize("engine", [["vllm", "serve", "Llama-3.1-8B"], ["sglang", "--model-path", "Llama-3.1-8B"]])
async def test_scraper_against_the_simulator_counts_what_the_benchmark_sent(engine):
    env = {"AUTOTUNE_SIM_TIME_SCALE": "2", "AUTOTUNE_SIM_STARTUP_SCALE": "1000", "AUTOTUNE_SIM_SEED": "1"}
    with SimProcess(engine, env=env) as sim:
        bench = Benchmark(traffic_scenarios=["D(50,40)"], num_concurrency=[8], max_requests_per_iteration=40, warmup_requests=0)
        async with EngineScraper(sim.url, interval_s=0.05) as scraper:
            metrics = await run_benchmark(sim.url, model="Llama-3.1-8B", bench=bench, time_scale=2)
    got = scraper.summary()
    assert got.source == engine[0]
    assert got.samples >= 3
    # the counters cover the whole window (a last scrape after the benchmark): exactly what was sent
    assert got.prompt_tokens == 40 * 50
    assert got.generation_tokens == sum(s.output_tokens for s in metrics.samples) == 40 * 40
    assert got.max_running is not None and 1 <= got.max_running <= 8
    assert got.max_kv_cache_usage is not None and 0 < got.max_kv_cache_usage <= 1
    if engine[0] == "vllm":  # forward passes: 8 clients batch, so fewer steps than tokens, never under a token each per client
        assert got.generation_tokens / 8 <= got.steps < got.generation_tokens, got
    else:
        assert got.steps is None  # SGLang has no step counter: unknown, not zero


async def test_a_scrape_that_fails_is_counted_not_summarized():
    """An engine that does not answer /metrics (here: nothing listens on the port) leaves no sample, and
    the summary says how many scrapes failed: "no gauge figure" is then told apart from "idle"."""
    import asyncio

    from autotune.shared.net import free_port

    async with EngineScraper(f"http://127.0.0.1:{free_port()}", interval_s=0.05, timeout_s=0.5) as scraper:
        await asyncio.sleep(0.3)
    got = scraper.summary()
    assert got.source == "" and got.samples == 0 and got.generation_tokens is None
    assert got.scrape_failures >= 3, got
