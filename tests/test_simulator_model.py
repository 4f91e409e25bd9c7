"""The simulator's performance model: command lines, catalog, memory, failures, optima, steady state."""

from __future__ import annotations

import time

import pytest

from autotune.simulator import steady_state
from autotune.simulator.catalog import gpu_by_name, params_from_name
from autotune.simulator.config import ArgError, SimSettings, parse_args, settings_from_env
from autotune.simulator.perfmodel import plan_from_args
from autotune.simulator.scheduler import simulate_closed_loop

H100 = SimSettings(gpu_type="H100")
KEYS = {"ok", "failure", "startup_s", "ttft_s", "tpot_s", "e2e_s", "output_tps", "total_tps", "requests_per_s", "error_rate"}


def ss(engine: str, args: str, *, gpu: str = "H100", inp: float = 1000, out: float = 200, conc: int = 32, **kw) -> dict:
    return steady_state(engine, args.split(), gpu_type=gpu, input_tokens=inp, output_tokens=out, concurrency=conc, **kw)


# ---- command lines and settings ---------------------------------------------------------------------


def test_sglang_command_line():
    cfg = parse_args("sglang", (  # noqa: SIM905 - the command line as a person types it
        "--model-path M --host 0.0.0.0 --port 31000 --tp-size 2 --mem-fraction-static 0.85 --max-running-requests 64 "
        "--chunked-prefill-size 4096 --schedule-policy lpm --enable-torch-compile --cuda-graph-max-bs 32 "
        "--kv-cache-dtype fp8_e5m2 --quantization fp8 --trust-remote-code --served-model-name served --dp-size 1 --pp-size 1"
    ).split())
    assert (cfg.model, cfg.host, cfg.port, cfg.tp, cfg.mem_fraction, cfg.max_running, cfg.chunk) == ("M", "0.0.0.0", 31000, 2, 0.85, 64, 4096)
    assert (cfg.schedule_policy, cfg.torch_compile, cfg.cuda_graph_max_bs, cfg.kv_cache_dtype, cfg.quantization) == ("lpm", True, 32, "fp8_e5m2", "fp8")
    assert cfg.model_name == "served" and cfg.warnings == []


def test_vllm_command_line():
    cfg = parse_args("vllm", (  # noqa: SIM905 - the command line as a person types it
        "serve Qwen/Qwen2.5-72B --host 0.0.0.0 --port 8001 --tensor-parallel-size 4 --gpu-memory-utilization 0.9 "
        "--max-num-seqs 128 --max-num-batched-tokens 8192 --enable-chunked-prefill --kv-cache-dtype fp8 --max-model-len=8192 "
        "--pipeline-parallel-size 2 --dtype bfloat16"
    ).split())
    assert (cfg.model, cfg.tp, cfg.pp, cfg.mem_fraction, cfg.max_running, cfg.chunk, cfg.max_model_len) == ("Qwen/Qwen2.5-72B", 4, 2, 0.9, 128, 8192, 8192)
    assert cfg.chunked_prefill and cfg.torch_compile and cfg.dtype == "bfloat16"
    eager = parse_args("vllm", ["serve", "M", "--enforce-eager"])
    assert not eager.cuda_graph and not eager.torch_compile
    assert not parse_args("vllm", ["serve", "M", "-O0"]).torch_compile


def test_bare_flags_unknown_flags_and_bad_values():
    cfg = parse_args("sglang", ["--model-path", "M", "--enable-torch-compile", "false", "--frobnicate", "7", "--disable-radix-cache"])
    assert cfg.torch_compile is False and cfg.prefix_caching is False
    assert cfg.warnings == ["unknown flag --frobnicate ignored by the simulator"]
    with pytest.raises(ArgError, match="invalid int value: 'two'"):
        parse_args("sglang", ["--model-path", "M", "--tp-size", "two"])
    with pytest.raises(ArgError, match="model is required"):
        parse_args("vllm", ["serve", "--port", "1"])
    with pytest.raises(ArgError, match="first word"):
        parse_args("tgi", ["--model-path", "M"])


def test_settings_from_environment():
    s = settings_from_env({"AUTOTUNE_SIM_GPU_TYPE": "A100", "CUDA_VISIBLE_DEVICES": "0,3,5", "AUTOTUNE_SIM_TIME_SCALE": "10", "AUTOTUNE_SIM_SEED": "4"})
    assert (s.gpu_type, s.gpu_count, s.time_scale, s.seed) == ("A100", 3, 10.0, 4)
    assert settings_from_env({}).gpu_count is None
    with pytest.raises(ArgError):
        settings_from_env({"AUTOTUNE_SIM_TIME_SCALE": "-1"})


def test_gpu_catalog_and_model_sizes():
    assert gpu_by_name("NVIDIA A100-SXM4-40GB")[0].memory_gib == 40
    assert gpu_by_name("a100")[0].memory_gib == 80
    assert gpu_by_name("RTX 4090")[0].name == "RTX4090"
    assert gpu_by_name("L40S")[0].name == "L40S" and gpu_by_name("NVIDIA L4")[0].name == "L4"
    assert gpu_by_name("TPU-v5")[1] is not None
    assert params_from_name("meta-llama/Llama-3.1-8B-Instruct")[:2] == (8.0, 8.0)
    assert params_from_name("Qwen/Qwen2.5-72B-Instruct")[0] == 72.0
    assert params_from_name("Meta-Llama-3-70B-Instruct-FP8")[0] == 70.0
    assert params_from_name("Qwen2.5-0.5B")[0] == 0.5
    total, active, experts, _ = params_from_name("mistralai/Mixtral-8x7B-Instruct-v0.1")
    assert 40 < total < 50 and 10 < active < 15 and experts == 8
    assert params_from_name("Qwen3-30B-A3B")[:2] == (30.0, 3.0)
    assert params_from_name("my-model")[3] is not None  # unknown size: a warning


# ---- memory and failures ----------------------------------------------------------------------------


def test_oom_when_the_weights_do_not_fit():
    p = plan_from_args("sglang", ["--model-path", "Llama-3.1-70B"], H100)
    assert p.failure == "oom" and any("CUDA out of memory" in line for line in p.failure_lines)
    assert plan_from_args("sglang", ["--model-path", "Llama-3.1-70B", "--tp-size", "2"], H100).failure is None
    # fp8 weights halve the footprint: 70B fits one H200 but still not one H100 with room for a KV cache
    assert plan_from_args("sglang", ["--model-path", "Llama-3.1-70B", "--quantization", "fp8"], SimSettings(gpu_type="H200")).failure is None
    r = ss("vllm", "serve Llama-3.1-70B")
    assert r["ok"] is False and r["failure"] == "oom" and r["output_tps"] == 0


def test_memory_fraction_too_high_ooms_and_too_low_has_no_cache():
    assert plan_from_args("sglang", ["--model-path", "Llama-3.1-8B", "--mem-fraction-static", "0.99"], H100).failure == "oom"
    assert plan_from_args("vllm", ["serve", "Llama-3.1-8B", "--gpu-memory-utilization", "0.99"], H100).failure == "oom"
    low = plan_from_args("sglang", ["--model-path", "Llama-3.1-8B", "--mem-fraction-static", "0.187"], H100)
    assert low.failure == "oom" and any("Not enough memory" in line for line in low.failure_lines)


def test_crash_regions():
    assert plan_from_args("sglang", ["--model-path", "Llama-3.1-8B", "--tp-size", "3"], SimSettings(gpu_count=4)).failure == "crash"
    assert plan_from_args("sglang", ["--model-path", "Llama-3.1-8B", "--tp-size", "4"], SimSettings(gpu_count=2)).failure == "crash"
    # vLLM refuses a context longer than its KV cache
    p = plan_from_args("vllm", ["serve", "Llama-3.1-70B", "-tp", "2", "--max-model-len", "131072"], H100)
    assert p.failure == "crash" and "max seq len" in p.failure_lines[0]
    assert ss("sglang", "--model-path M --tp-size two")["failure"] == "crash"


def test_fp8_kv_cache_doubles_capacity_and_helps_when_kv_bound():
    bf16 = plan_from_args("sglang", ["--model-path", "Llama-3.1-8B"], H100)
    fp8 = plan_from_args("sglang", ["--model-path", "Llama-3.1-8B", "--kv-cache-dtype", "fp8_e5m2"], H100)
    assert fp8.kv_capacity == pytest.approx(2 * bf16.kv_capacity, rel=0.01)
    tight = "serve Llama-3.1-8B --gpu-memory-utilization 0.3 --max-model-len 4096"
    a = ss("vllm", tight, inp=500, out=1500, conc=128)
    b = ss("vllm", tight + " --kv-cache-dtype fp8", inp=500, out=1500, conc=128)
    assert b["error_rate"] < a["error_rate"] and b["output_tps"] > a["output_tps"]


def test_startup_grows_with_torch_compile_and_cuda_graph_batch_size():
    def startup(extra: str) -> float:
        return plan_from_args("sglang", ["--model-path", "Llama-3.1-8B", *extra.split()], H100).startup_s

    assert startup("--enable-torch-compile") > startup("") + 20
    assert startup("--disable-cuda-graph") < startup("--cuda-graph-max-bs 32") < startup("--cuda-graph-max-bs 160") < startup("--cuda-graph-max-bs 512")
    assert plan_from_args("sglang", ["--model-path", "Llama-3.1-70B", "--tp-size", "4"], H100).startup_s > startup("")


# ---- speed -----------------------------------------------------------------------------------------


def test_tensor_parallelism_lowers_tpot_for_big_models_but_not_linearly():
    tpot = {tp: ss("sglang", f"--model-path Llama-3.1-70B --tp-size {tp}", inp=100, out=200, conc=1)["tpot_s"] for tp in (2, 4, 8)}
    assert tpot[2] > tpot[4] > tpot[8]
    assert tpot[2] / tpot[8] < 3.6  # 4x the GPUs, well under 4x faster
    # for a 1B model TP buys little: communication eats the gain
    small = {tp: ss("sglang", f"--model-path Llama-3.2-1B --tp-size {tp}", inp=100, out=200, conc=1)["tpot_s"] for tp in (1, 4)}
    assert small[4] > 0.6 * small[1]


def test_cuda_graphs_and_torch_compile_speed_up_decoding():
    base = ss("sglang", "--model-path Llama-3.1-8B", inp=100, out=200, conc=8)["tpot_s"]
    assert ss("sglang", "--model-path Llama-3.1-8B --disable-cuda-graph", inp=100, out=200, conc=8)["tpot_s"] > base * 1.1
    assert ss("sglang", "--model-path Llama-3.1-8B --enable-torch-compile", inp=100, out=200, conc=8)["tpot_s"] < base


def test_interior_optimum_in_chunked_prefill():
    ttft = {c: ss("vllm", f"serve Llama-3.1-8B --max-num-batched-tokens {c}", inp=2000, out=200, conc=32)["ttft_s"] for c in (256, 1024, 32768)}
    assert ttft[1024] < ttft[256] and ttft[1024] < ttft[32768]
    tpot = {c: ss("vllm", f"serve Llama-3.1-8B --max-num-batched-tokens {c}", inp=2000, out=200, conc=32)["tpot_s"] for c in (1024, 32768)}
    assert tpot[32768] < tpot[1024]  # the other side of the trade: fewer decode steps stalled by prefill


def goodput(engine: str, command: str, **load) -> float:
    """Output tokens per second under `load`; 0 where the configuration fails under it."""
    r = ss(engine, command, **load)
    return r["output_tps"] if r["ok"] else 0.0


def test_interior_optimum_in_the_batch_limit():
    command = "serve Llama-3.1-8B --gpu-memory-utilization 0.3 --max-model-len 4096 --max-num-seqs {}"
    scores = {n: goodput("vllm", command.format(n), inp=500, out=1500, conc=128) for n in (8, 16, 32, 40, 256)}
    best = max(scores, key=scores.get)
    assert best not in (8, 256), scores
    assert scores[256] == 0.0  # far beyond the KV cache: errors under load


def test_interior_optimum_in_the_memory_fraction():
    command = "--model-path Llama-3.1-70B --tp-size 2 --mem-fraction-static {}"
    scores = {f: goodput("sglang", command.format(f), inp=1000, out=1000, conc=128) for f in (0.84, 0.88, 0.92, 0.94, 0.99)}
    best = max(scores, key=scores.get)
    assert best in (0.92, 0.94), scores
    assert scores[0.99] == 0.0 and scores[0.84] < scores[best]


def test_errors_under_load_when_the_batch_limit_is_far_beyond_the_kv_cache():
    r = ss("vllm", "serve Llama-3.1-8B --gpu-memory-utilization 0.3 --max-model-len 4096 --max-num-seqs 256", inp=500, out=1500, conc=128)
    assert r["failure"] == "errors_under_load" and r["error_rate"] > 0.05 and not r["ok"]
    fine = ss("vllm", "serve Llama-3.1-8B --gpu-memory-utilization 0.3 --max-model-len 4096 --max-num-seqs 32", inp=500, out=1500, conc=128)
    assert fine["ok"] and fine["error_rate"] == 0


def test_concurrency_beyond_the_batch_limit_queues():
    capped = ss("sglang", "--model-path Llama-3.1-8B --max-running-requests 16", inp=200, out=200, conc=64)
    free = ss("sglang", "--model-path Llama-3.1-8B", inp=200, out=200, conc=64)
    assert capped["ttft_s"] > 10 * free["ttft_s"] and capped["output_tps"] < free["output_tps"]


def test_data_parallel_replicas_add_throughput():
    one = ss("sglang", "--model-path Llama-3.1-8B", inp=200, out=500, conc=128)
    two = ss("sglang", "--model-path Llama-3.1-8B --dp-size 2", inp=200, out=500, conc=128)
    # each replica serves half the clients: a smaller batch per GPU, so more but not double throughput
    assert two["output_tps"] > 1.15 * one["output_tps"] and two["e2e_s"] < one["e2e_s"]


# ---- steady state ----------------------------------------------------------------------------------


def test_steady_state_contract_determinism_and_noise():
    r = ss("sglang", "--model-path Llama-3.1-8B", seed=1)
    assert set(r) == KEYS and r["ok"] and r["failure"] is None and r["error_rate"] == 0
    assert r["e2e_s"] == pytest.approx(r["ttft_s"] + 199 * r["tpot_s"], rel=0.02)
    assert r["total_tps"] == pytest.approx(r["output_tps"] * 1200 / 200, rel=1e-6)
    assert ss("sglang", "--model-path Llama-3.1-8B", seed=1) == r
    other = ss("sglang", "--model-path Llama-3.1-8B", seed=2)
    assert other != r and other["tpot_s"] == pytest.approx(r["tpot_s"], rel=0.1)


def test_steady_state_is_fast_enough_for_landscapes():
    t0 = time.perf_counter()
    n = 0
    for tp in (1, 2, 4):
        for mr in (16, 64, 256):
            for ch in (2048, 8192):
                ss("sglang", f"--model-path Llama-3.1-70B --tp-size {tp} --max-running-requests {mr} --chunked-prefill-size {ch}", inp=1000, out=300, conc=64)
                n += 1
    assert (time.perf_counter() - t0) / n < 0.25


def test_closed_loop_without_skipping_agrees_with_the_fast_path():
    p = plan_from_args("sglang", ["--model-path", "Llama-3.1-8B"], H100)
    fast = simulate_closed_loop(p, 300, 100, 8, 32, warmup=8, jitter=0.0)
    slow = simulate_closed_loop(p, 300, 100, 8, 32, warmup=8, jitter=0.0, fast=False)
    for k in ("ttft_s", "tpot_s", "e2e_s", "output_tps"):
        assert fast[k] == pytest.approx(slow[k], rel=0.02), k
    assert fast["steps"] <= slow["steps"]
