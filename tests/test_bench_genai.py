"""The genai-bench driver: command line, parsing every result file (hand-made fixture shapes), running it."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from autotune.bench.genai_bench import GenaiBenchError, build_command, parse_results, result_files, run_genai_bench
from autotune.schemas.spec import Benchmark
from tests.fixtures.genai_bench import HANDMADE, fake_genai_bench


def test_the_command_carries_the_task_benchmark_settings(tmp_path):
    bench = Benchmark(traffic_scenarios=["D(100,100)", "N(480,240)/(300,150)"], num_concurrency=[1, 8], max_time_per_iteration=10,
                      max_requests_per_iteration=64, additional_params={"temperature": 0.0}, model_tokenizer="meta-llama/Llama-3.1-8B")
    cmd = build_command("http://127.0.0.1:30000/", model="llama", bench=bench, engine="sglang", gpus=2, gpu_type="H100",
                        time_scale=4, base_dir=tmp_path, folder="exp")
    assert cmd[:2] == ["genai-bench", "benchmark"]

    def values(flag):
        return [cmd[i + 1] for i, c in enumerate(cmd) if c == flag]

    assert values("--api-backend") == ["sglang"] and values("--api-base") == ["http://127.0.0.1:30000"]
    assert values("--api-model-name") == ["llama"] and values("--model-tokenizer") == ["meta-llama/Llama-3.1-8B"]
    assert values("--traffic-scenario") == ["D(100,100)", "N(480,240)/(300,150)"] and values("--num-concurrency") == ["1", "8"]
    assert values("--max-time-per-run") == ["3"]  # 10 minutes / time scale 4, rounded up to whole minutes
    assert values("--max-requests-per-run") == ["64"] and values("--server-gpu-count") == ["2"]
    assert values("--server-engine") == ["SGLang"] and values("--server-gpu-type") == ["H100"]
    assert values("--additional-request-params") == ['{"temperature": 0.0}']
    assert values("--experiment-base-dir") == [str(tmp_path)] and values("--experiment-folder-name") == ["exp"]
    other = build_command("http://x:1", model="m", bench=Benchmark(), engine="tgi", base_dir=tmp_path)
    assert "--api-key" in other and "openai" in other


def test_every_result_file_is_parsed_in_run_order():
    files = [p.name for p in result_files(HANDMADE)]
    assert len(files) == 5 and files[0].startswith("N480") and files[-1].startswith("I256")
    exp = parse_results(HANDMADE, gpus=2)
    assert [(r.scenario, r.concurrency) for r in exp.runs] == [
        ("N(480,240)/(300,150)", 1), ("D(100,100)", 1), ("D(100,100)", 4), ("U(50,100)/(200,250)", 4), ("I(256,256)", 1)]
    n, d1, d4, u, img = exp.runs
    assert (d4.requests, d4.completed, d4.errors, d4.errors_by_kind) == (4, 3, 1, {"http_503": 1})
    assert d4.ttft.mean == pytest.approx(0.09)  # milliseconds in the file
    assert d4.tpot.mean == pytest.approx(0.013) and d4.output_tps == 150.0 and d4.duration_s == 2.0
    assert d1.ttft.mean == pytest.approx(0.06) and d1.requests_per_s == pytest.approx(0.857)
    assert n.requests_per_s == pytest.approx(10 / 60)  # older files give requests per minute
    assert n.e2e_latency.p99 == 9.5 and n.ttft.count == 10  # no individual requests: the file's own statistics
    assert u.output_tokens.mean == 230 and img.input_tokens.mean == 256
    assert len(exp.samples) == 3 + 4 + 2 + 1
    assert {s.run for s in exp.samples} == {1, 2, 3, 4}
    assert exp.requests == 20 and exp.completed == 19
    assert exp.mean_output_tps == pytest.approx((10 * 50 + 3 * 85.7 + 4 * 150 + 2 * 150 + 1 * 40) / 20)
    assert exp.mean_output_tps_per_gpu == pytest.approx(exp.mean_output_tps / 2)


def test_time_scale_converts_to_engine_seconds():
    plain = parse_results(HANDMADE)
    scaled = parse_results(HANDMADE, time_scale=4)
    assert scaled.runs[2].ttft.mean == pytest.approx(4 * plain.runs[2].ttft.mean)
    assert scaled.runs[2].output_tps == pytest.approx(plain.runs[2].output_tps / 4)


def test_only_files_with_individual_requests_pool_percentiles(tmp_path):
    for name in ("experiment_metadata.json", "D100_100_text-to-text_num_concurrency_1_time_5s.json", "D100_100_text-to-text_num_concurrency_4_time_7s.json"):
        shutil.copy(HANDMADE / name, tmp_path / name)
    exp = parse_results(tmp_path)
    ok = sorted(s.e2e for s in exp.samples if s.ok)
    assert exp.mean_e2e_latency == pytest.approx(sum(ok) / len(ok))
    with pytest.raises(GenaiBenchError):
        parse_results(tmp_path / "missing")


async def test_run_genai_bench_end_to_end_with_a_stand_in(tmp_path):
    exe = fake_genai_bench(tmp_path)
    seen, lines = [], []
    exp = await run_genai_bench("http://127.0.0.1:1", model="m", bench=Benchmark(), workdir=tmp_path / "work", executable=str(exe),
                                on_run=seen.append, on_log=lines.append, poll_s=0.05)
    assert len(exp.runs) == 5 and len(seen) == 5 and lines and "fake genai-bench benchmark" in lines[0]
    with pytest.raises(GenaiBenchError, match="status 3"):
        await run_genai_bench("http://127.0.0.1:1", model="m", bench=Benchmark(max_requests_per_iteration=0),
                              workdir=tmp_path / "w2", executable=str(exe))
    with pytest.raises(GenaiBenchError, match="not on PATH"):
        await run_genai_bench("http://127.0.0.1:1", model="m", bench=Benchmark(), workdir=tmp_path, executable="no-such-genai-bench")


async def test_stop_kills_genai_bench(tmp_path):
    from autotune.bench import BenchmarkStopped

    exe = fake_genai_bench(tmp_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.call_later(0.3, stop.set)
    t0 = loop.time()
    with pytest.raises(BenchmarkStopped):
        await run_genai_bench("http://127.0.0.1:1", model="m", bench=Benchmark(traffic_scenarios=["D(1,1)"]), workdir=tmp_path / "w",
                              executable=str(exe), stop=stop, poll_s=0.05)
    assert loop.time() - t0 < 5

