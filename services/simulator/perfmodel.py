"""The simulator's performance model: how fast an engine configuration serves a model on a GPU type.

Everything here is a pure function of (engine flags, GPU type, model size, seed). The live server
(`server.py` + `scheduler.py`) runs a continuous-batching scheduler whose every iteration takes
`step_time(...)` seconds; `steady_state(...)` runs that same scheduler in virtual time (deterministic,
milliseconds per call) for evaluating hundreds of configurations without HTTP, so it agrees with what
the live server measures. The README beside this file has the tables.

Memory (per GPU, GiB)
    weights      = params x bytes/param / (tp x pp)     bf16 2, fp8/int8 1, int4 (awq/gptq) ~0.56
    SGLang       static pool = mem_fraction_static x memory holds weights + KV cache; the rest must hold
                 CUDA context + activations (grow with --chunked-prefill-size) + CUDA graphs (grow with
                 --cuda-graph-max-bs, x1.3 with torch.compile). Default fraction: memory minus a reserve
                 that grows with the chunk size and graph batch size (as SGLang computes it).
    vLLM         gpu_memory_utilization x memory holds weights + activations (profiled at
                 --max-num-batched-tokens) + KV cache; the rest must hold context + graphs + non-torch.
    KV cache     tokens = pool x min(tp, kv_heads) x pp / kv_bytes_per_token; kv bytes per token =
                 2 x layers x 8 kv heads x 128 x dtype bytes (fp8 KV cache halves it).
    Failures     weights > pool -> torch.OutOfMemoryError while loading; no room left for the KV cache ->
                 "Not enough memory"; too little outside the pool (fraction too high, ~>0.95) ->
                 OutOfMemoryError capturing CUDA graphs; vLLM max_model_len > KV capacity -> crash;
                 tp x pp x dp > GPUs or heads not divisible by tp -> crash.
    Pressure     less than 1 GiB of slack outside the pool slows every step by up to 12% (allocator churn),
                 so the best fraction is just below the cliff, not at it.

One engine iteration (`step_time`): B decoding sequences with total context ctx, plus p prefill tokens
    memory     (weights read / tp + KV read) / (0.8 x bandwidth); MoE reads only the experts touched
    compute    2 x active params x (B + p) / (tp x TFLOPs x mfu(B + p)) + prefill attention; fp8 weights
               double tensor throughput on GPUs with fp8; mfu(n) = 0.75 n / (n + 96)
    gpu        smooth max of the two (both matter near the ridge); torch.compile -7..10%
    TP comm    2 all-reduces per layer: latency (NVLink ~8 us, PCIe ~30 us, x0.6 inside a CUDA graph)
               + bandwidth (tokens x hidden x 2 bytes; PCIe makes TP prefill expensive)
    overhead   kernel launches: ~0.4 ms inside a CUDA graph (decode, B <= cuda-graph-max-bs),
               ~1-4 ms eager; scheduler CPU time per request (SGLang overlaps most of it)
    PP         x(0.55 + 0.45/pp) plus a hop per stage: capacity, not latency
    noise      a per-configuration factor (seeded, sigma 2%) and per-step jitter (seeded, sigma 2%)

Scheduling (`scheduler.py`)
    A step carries every decoding sequence plus up to the chunk budget of prefill tokens (vLLM: the
    budget includes the decodes; SGLang: prefill-only steps that pause decoding unless
    --enable-mixed-chunk). Admission needs a free slot (--max-running-requests / --max-num-seqs) and KV
    room for the prompt (SGLang also reserves 30% x conservativeness of the remaining outputs). When the
    KV cache overflows, the newest sequence is preempted and recomputed later; one preempted more than
    3 times fails (HTTP 503, or an error event with code 503 once streaming). Prefix caching (radix
    cache) skips `AUTOTUNE_SIM_PREFIX_SHARE` (10%) of prompt compute; `lpm` keeps all of it, other
    policies ~70%, and lpm costs a little CPU per waiting request (up to 128, where SGLang falls back
    to fcfs).

Startup: base + weight loading (per-rank GiB / 1.6 GiB/s) + torch.compile + CUDA graph capture (grows with
--cuda-graph-max-bs) + KV allocation, all divided by AUTOTUNE_SIM_TIME_SCALE (or
AUTOTUNE_SIM_STARTUP_SCALE) in the live server.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field

from .catalog import GIB, GPU, ModelShape, gpu_by_name, model_shape, params_from_name
from .config import ArgError, EngineConfig, SimSettings, parse_args

MAX_PREEMPTIONS = 3
BW_EFFICIENCY = 0.8
SGLANG_RESERVE_RATIO = 0.3


def _bytes_per_param(cfg: EngineConfig) -> tuple[float, str]:
    """Weight bytes per parameter and the compute kind: 'bf16', 'fp8' (w8a8) or 'w4' (weight-only int4)."""
    q = (cfg.quantization or "").lower()
    name = cfg.model.lower()
    if q in ("fp8", "fp8_e4m3", "modelopt", "modelopt_fp8", "w8a8_fp8", "fbgemm_fp8", "compressed-tensors-fp8", "ptpc_fp8"):
        return 1.0, "fp8"
    if q in ("w8a8_int8", "int8", "qqq", "experts_int8", "bitsandbytes-8bit"):
        return 1.0, "int8"
    if q in ("awq", "gptq", "awq_marlin", "gptq_marlin", "marlin", "gguf", "bitsandbytes", "w4a16", "moe_wna16", "mxfp4"):
        return 0.56, "w4"
    if not q:
        if any(t in name for t in ("-awq", "-gptq", "int4", "4bit", "w4a16")):
            return 0.56, "w4"
        if "fp8" in name:
            return 1.0, "fp8"
    dtype = cfg.dtype.lower()
    if dtype in ("float32", "fp32", "float"):
        return 4.0, "fp32"
    return 2.0, "bf16"


def _kv_dtype_bytes(cfg: EngineConfig, weight_kind: str) -> float:
    kv = cfg.kv_cache_dtype.lower()
    if kv.startswith("fp8") or kv in ("int8", "fp4_e2m1"):
        return 1.0
    if kv == "auto" and weight_kind == "fp32":
        return 4.0
    return 2.0


@dataclass
class Plan:
    """Everything derived once from a configuration: memory, capacity, failure, startup, step costs."""

    cfg: EngineConfig
    sim: SimSettings
    gpu: GPU
    shape: ModelShape
    gpu_count: int
    bytes_per_param: float
    weight_kind: str
    kv_bytes_per_token: float  # whole model, one token
    mem_fraction: float
    max_running: int
    chunk: int  # prefill token budget per step
    mixed: bool  # decodes and prefill in the same step
    cuda_graph_bs: int  # 0 when CUDA graphs are off
    compile: bool
    max_model_len: int
    kv_capacity: int = 0  # tokens per dp replica
    memory: dict[str, float] = field(default_factory=dict)  # GiB per GPU, for logs and docs
    pressure: float = 0.0  # 0..1 allocator pressure
    failure: str | None = None  # None | "oom" | "crash"
    failure_lines: list[str] = field(default_factory=list)
    failure_at_s: float = 0.0  # simulated seconds after launch
    startup_s: float = 0.0
    startup_phases: list[tuple[str, float]] = field(default_factory=list)
    noise: float = 1.0  # per-configuration systematic factor
    prefix_hit: float = 0.0  # fraction of prompt compute skipped by the prefix cache
    reserve_ratio: float = 0.0
    warnings: list[str] = field(default_factory=list)

    # ---- step cost -------------------------------------------------------------------------------

    def step_time(self, decode: int, decode_ctx: float, prefill: int = 0, prefill_pos: float = 0.0, waiting: int = 0) -> float:
        """Seconds for one iteration: `decode` sequences with `decode_ctx` context tokens in total, plus
        `prefill` prompt tokens whose attention spans `prefill_pos` token-positions in total."""
        tokens = decode + prefill
        if tokens <= 0:
            return 0.0
        g, s, cfg = self.gpu, self.shape, self.cfg
        tp = cfg.tp
        bpp = self.bytes_per_param
        # memory traffic per GPU
        if s.moe:
            per_expert = (s.params_b - s.active_b) / max(1, s.experts - s.experts_per_token)
            shared = max(0.0, s.active_b - s.experts_per_token * per_expert)
            touched = 1.0 - (1.0 - s.experts_per_token / s.experts) ** tokens
            weights = (shared + s.experts * per_expert * touched) * 1e9 * bpp
        else:
            weights = s.params_b * 1e9 * bpp
        kv_read = (decode_ctx + min(prefill_pos, prefill * 4096.0)) * self.kv_bytes_per_token / min(tp, s.kv_heads)
        t_mem = (weights / tp + kv_read) / (g.bandwidth_tbs * 1e12 * BW_EFFICIENCY)
        # compute
        tflops = g.tflops_bf16 * 1e12
        if self.weight_kind in ("fp8", "int8") and g.fp8:
            tflops *= 2.0
        elif self.weight_kind == "w4":
            tflops *= 0.8  # dequantization in the GEMM
        elif self.weight_kind == "fp32":
            tflops *= 0.25
        mfu = 0.75 * tokens / (tokens + 96.0)
        flops = 2.0 * s.active_b * 1e9 * tokens + 4.0 * s.layers * s.hidden * prefill_pos
        t_comp = flops / (tp * tflops * mfu)
        gpu = (t_mem**3 + t_comp**3) ** (1.0 / 3.0)
        graph = prefill == 0 and 0 < decode <= self.cuda_graph_bs
        if self.compile:
            if cfg.engine == "vllm":
                gpu *= 0.95
            elif graph and decode <= cfg.torch_compile_max_bs:
                gpu *= 0.9
        if self.kv_bytes_per_token < s.kv_bytes_per_token_bf16:
            gpu *= 1.02  # fp8 KV dequantization in attention
        gpu *= 1.0 + 0.12 * self.pressure
        comm = 0.0
        if tp > 1:
            latency = g.link_latency_us * 1e-6 * (1.0 + 0.5 * math.log2(tp)) * (0.6 if graph else 1.0)
            volume = 2.0 * (tp - 1) / tp * tokens * s.hidden * 2.0 / (g.link_gbs * 1e9)
            comm = 2 * s.layers * (latency + volume)
        pp = cfg.pp
        t = (gpu + comm) * (0.55 + 0.45 / pp) + (pp - 1) * 0.3e-3
        # launch + scheduler CPU
        launch = 0.25e-3 + 0.004e-3 * s.layers if graph else 0.8e-3 + 0.045e-3 * s.layers
        if cfg.engine == "sglang":
            sched = (0.25e-3 + 6e-6 * (decode + min(prefill, 64))) * (0.35 if cfg.overlap_schedule else 1.0)
            if cfg.schedule_policy in ("lpm", "dfs-weight") and waiting <= 128:
                sched += 3e-6 * waiting
        else:
            sched = 0.35e-3 + 5e-6 * (decode + min(prefill, 64))
        return (t + launch + sched) * self.noise

    def prefill_budget(self, decoding: int) -> int:
        if self.cfg.engine == "vllm":
            return max(0, self.chunk - decoding)
        return self.chunk


def _config_noise(cfg: EngineConfig, sim: SimSettings, shape: ModelShape) -> float:
    key = "|".join(
        str(x)
        for x in (
            sim.seed, cfg.engine, shape.params_b, sim.gpu_type.upper(), cfg.tp, cfg.pp, cfg.dp, cfg.dtype,
            cfg.quantization, cfg.kv_cache_dtype, cfg.mem_fraction, cfg.max_running, cfg.chunk,
            cfg.chunked_prefill, cfg.mixed_chunk, cfg.schedule_policy, cfg.torch_compile, cfg.cuda_graph,
            cfg.cuda_graph_max_bs, cfg.prefix_caching, cfg.overlap_schedule, cfg.max_total_tokens, cfg.gpu_blocks,
        )
    )
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    z = random.Random(h).gauss(0.0, 1.0)
    return math.exp(0.02 * max(-2.5, min(2.5, z)))


def _n_graphs(bs: int) -> int:
    """CUDA graphs captured up to batch size bs: 1, 2, 4, 8, then every 8."""
    return min(bs, 4) + max(0, bs - 8) // 8 + (1 if bs >= 8 else 0)


def make_plan(cfg: EngineConfig, sim: SimSettings) -> Plan:
    """Resolve defaults, lay out memory, decide failure and startup time for a parsed configuration."""
    warnings = list(cfg.warnings)
    gpu, gw = gpu_by_name(sim.gpu_type)
    if gw:
        warnings.append(gw)
    total_b, active_b, experts, mw = params_from_name(cfg.model)
    if mw and cfg.served_model_name and params_from_name(cfg.served_model_name)[3] is None:
        total_b, active_b, experts, mw = params_from_name(cfg.served_model_name)  # served from a mounted path: the name tells
    if sim.model_params_b:
        total_b = sim.model_params_b
        active_b = sim.model_active_params_b or (active_b * sim.model_params_b / total_b if experts else total_b)
        mw = None
    elif sim.model_active_params_b:
        active_b = sim.model_active_params_b
    if mw:
        warnings.append(mw)
    shape = model_shape(total_b, active_b, experts, sim.max_context)
    bpp, kind = _bytes_per_param(cfg)
    kv_token = shape.kv_bytes_per_token_bf16 / 2.0 * _kv_dtype_bytes(cfg, kind)
    mem = gpu.memory_gib
    tp, pp, dp = cfg.tp, cfg.pp, cfg.dp
    need = tp * pp * dp
    gpu_count = sim.gpu_count if sim.gpu_count is not None else need
    engine = cfg.engine

    # defaults the engines pick for themselves
    if cfg.chunked_prefill:
        chunk = cfg.chunk or (8192 if engine == "vllm" else (2048 if mem < 25 else 4096 if mem < 60 else 8192))
    else:
        chunk = max(cfg.max_model_len or shape.max_context, 8192)
    if cfg.cuda_graph:
        cg_default = (512 if engine == "vllm" else (16 if mem < 25 else 64 if mem < 50 else 160 if tp < 4 else 256))
        cg_bs = cfg.cuda_graph_max_bs or cg_default
    else:
        cg_bs = 0
    compile_on = cfg.torch_compile
    max_model_len = cfg.max_model_len or shape.max_context

    # memory per GPU, GiB
    weights = total_b * 1e9 * bpp / (tp * pp) / GIB
    context = 0.75 + (0.35 if tp * pp > 1 else 0.0)
    act = 0.25 + chunk * shape.hidden * 30.0 * (1.5 if shape.moe else 1.0) / tp / GIB
    graphs = 0.0
    if cg_bs:
        graphs = (0.1 + cg_bs * 0.0015 * shape.layers / 32.0) * (0.5 + 0.5 / tp) * (1.3 if compile_on else 1.0)
    if engine == "sglang":
        if cfg.mem_fraction is None:
            reserved = 1.0 + max(chunk, 2048) * 1.5 / 1024 + cg_bs * 2.0 / 1024 + tp * pp / 8.0
            fraction = round(min(0.92, max(0.5, (mem - reserved) / mem)), 3)
        else:
            fraction = cfg.mem_fraction
        pool_total = fraction * mem
        kv_pool = pool_total - weights
        outside_need = context + act + graphs
        margin = mem - pool_total - outside_need
    else:
        fraction = cfg.mem_fraction if cfg.mem_fraction is not None else 0.9
        pool_total = fraction * mem
        kv_pool = pool_total - weights - act
        outside_need = context + graphs + 0.3
        margin = mem - pool_total - outside_need
    kv_per_gpu_token = kv_token / (min(tp, shape.kv_heads) * pp)
    capacity = int(max(0.0, kv_pool) * GIB / kv_per_gpu_token) if kv_pool > 0 else 0
    if cfg.max_total_tokens:
        capacity = min(capacity, cfg.max_total_tokens)
    if cfg.gpu_blocks and engine == "vllm":
        capacity = cfg.gpu_blocks * cfg.block_size
    if cfg.max_running is not None:
        max_running = cfg.max_running
    elif engine == "vllm":
        max_running = 256
    else:
        max_running = max(1, min(4096, capacity // 2))
    if cg_bs:
        cg_bs = min(cg_bs, max_running) if engine == "sglang" else cg_bs
    pressure = min(1.0, max(0.0, 1.0 - margin)) if margin >= 0 else 1.0

    plan = Plan(
        cfg=cfg, sim=sim, gpu=gpu, shape=shape, gpu_count=gpu_count, bytes_per_param=bpp, weight_kind=kind,
        kv_bytes_per_token=kv_token, mem_fraction=fraction, max_running=max_running, chunk=chunk,
        mixed=engine == "vllm" or cfg.mixed_chunk, cuda_graph_bs=cg_bs, compile=compile_on,
        max_model_len=max_model_len, kv_capacity=capacity, pressure=pressure, warnings=warnings,
        reserve_ratio=(SGLANG_RESERVE_RATIO * cfg.schedule_conservativeness if engine == "sglang" else 0.0),
    )
    plan.memory = {
        "total": mem, "pool": round(pool_total, 2), "weights": round(weights, 2), "kv_cache": round(max(kv_pool, 0.0), 2),
        "activations": round(act, 2), "cuda_graphs": round(graphs, 2), "context": round(context, 2),
        "slack": round(margin, 2),
    }
    plan.noise = _config_noise(cfg, sim, shape)
    share = sim.prefix_share if cfg.prefix_caching else 0.0
    policy = 1.0 if cfg.schedule_policy in ("lpm", "dfs-weight") else 0.7
    plan.prefix_hit = share * policy if engine == "sglang" else share * 0.8

    # startup, in simulated seconds
    phases: list[tuple[str, float]] = []
    phases.append(("init", (15.0 if engine == "sglang" else 20.0) + 2.0 * math.log2(tp * pp) + 1.0 * (dp - 1)))
    load = max(1.0, weights / 1.6)
    if compile_on:
        if engine == "sglang":
            comp = (30.0 + 1.5 * _n_graphs(min(cfg.torch_compile_max_bs, cg_bs or cfg.torch_compile_max_bs))) * (shape.layers / 32.0) ** 0.5
        else:
            comp = 25.0 * (shape.layers / 32.0) ** 0.5
    else:
        comp = 0.0
    capture = _n_graphs(cg_bs) * 0.12 * (shape.layers / 32.0) * (2.0 if compile_on and engine == "sglang" else 1.0) if cg_bs else 0.0
    kv_alloc = 1.0 + 0.01 * max(kv_pool, 0.0)

    def fail(kind: str, at: float, *lines: str) -> Plan:
        plan.failure, plan.failure_at_s, plan.failure_lines = kind, at, list(lines)
        plan.startup_s = at
        return plan

    t = phases[0][1]
    if need > gpu_count:
        return fail("crash", t * 0.3, f"RuntimeError: this configuration needs tp x pp x dp = {tp} x {pp} x {dp} = {need} GPUs but only {gpu_count} are visible (SIMULATED)")
    if shape.heads % tp:
        return fail("crash", t * 0.3, f"ValueError: Total number of attention heads ({shape.heads}) must be divisible by tensor parallel size ({tp}). (SIMULATED)")
    oom = (
        f"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate {{alloc:.2f}} GiB. GPU 0 has a total capacity of "
        f"{mem:.2f} GiB of which {{free:.2f}} GiB is free. (SIMULATED)"
    )
    if engine == "vllm" and pool_total + outside_need > mem:
        return fail(
            "oom", t,
            f"ValueError: Free memory on device ({mem - outside_need:.2f}/{mem:.2f} GiB) on startup is less than desired GPU memory utilization ({fraction}, {pool_total:.2f} GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes. (SIMULATED)",
            oom.format(alloc=outside_need, free=mem - pool_total),
        )
    if weights > pool_total - (act if engine == "vllm" else 0.0):
        at = t + load * min(1.0, pool_total / max(weights, 1e-9))
        return fail("oom", at, oom.format(alloc=min(weights, 2.0 + weights * 0.05), free=max(0.0, pool_total - weights * 0.95)),
                    f"RuntimeError: weights need {weights:.2f} GiB per GPU but the memory pool is {pool_total:.2f} GiB (mem fraction {fraction}); raise the fraction or the tensor parallel size (SIMULATED)")
    t += load
    phases.append(("load weights", load))
    if capacity < 1024:
        if engine == "sglang":
            return fail("oom", t + 1.0, oom.format(alloc=0.5, free=max(0.0, kv_pool)),
                        "RuntimeError: Not enough memory. Please try to increase --mem-fraction-static. (SIMULATED)")
        return fail("oom", t + 2.0, oom.format(alloc=0.5, free=max(0.0, kv_pool)),
                    "ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when initializing the engine. (SIMULATED)")
    if engine == "vllm" and max_model_len > capacity:
        return fail("crash", t + 2.0,
                    f"ValueError: The model's max seq len ({max_model_len}) is larger than the maximum number of tokens that can be stored in KV cache ({capacity}). Try increasing `gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine. (SIMULATED)")
    phases.append(("allocate KV cache", kv_alloc))
    t += kv_alloc
    if comp:
        phases.append(("torch.compile", comp))
        t += comp
    if margin < 0:
        at = t + capture * 0.5 + 1.0
        return fail("oom", at, oom.format(alloc=min(outside_need, 1.0 - margin), free=max(0.0, mem - pool_total - context)),
                    f"RuntimeError: CUDA graph capture failed: out of memory ({-margin:.2f} GiB short outside the static pool; lower the memory fraction, --cuda-graph-max-bs or the chunked prefill size) (SIMULATED)")
    if capture:
        phases.append(("capture CUDA graphs", capture))
        t += capture
    phases.append(("start server", 2.0))
    t += 2.0
    plan.startup_s = t * (0.97 + 0.06 * (plan.noise - 0.9))
    plan.startup_phases = phases
    return plan


def plan_from_args(engine: str, args: list[str], sim: SimSettings) -> Plan:
    return make_plan(parse_args(engine, args), sim)


# ---- steady state --------------------------------------------------------------------------------


def _failure_result(kind: str, startup: float) -> dict:
    return {
        "ok": False, "failure": kind, "startup_s": startup, "ttft_s": 0.0, "tpot_s": 0.0, "e2e_s": 0.0,
        "output_tps": 0.0, "total_tps": 0.0, "requests_per_s": 0.0, "error_rate": 1.0,
    }


def steady_state(
    engine: str,
    args: list[str],
    *,
    gpu_type: str,
    gpu_count: int | None = None,
    model_params_b: float | None = None,
    input_tokens: float,
    output_tokens: float,
    concurrency: int,
    seed: int = 0,
) -> dict:
    """Steady-state figures of the simulated server under a closed loop of `concurrency` clients.

    `args` is the engine argv after the engine word (model included). Pure and deterministic: it runs
    the live server's scheduler (`scheduler.py`, same step costs, same seeded noise) in virtual time,
    skipping over stretches of pure decoding, for one warm-up wave and 2 x concurrency (at least 24)
    measured requests of exactly `input_tokens` in / `output_tokens` out - a few milliseconds per call.
    Times in seconds (simulated, i.e. engine time), throughputs per second over all dp replicas.

    A configuration that fails to start returns ok=False with failure "oom" or "crash" and startup_s =
    when it fails; one that starts but fails more than 5% of requests under this load returns ok=False,
    failure "errors_under_load" with the figures of the requests that succeeded.
    """
    sim = SimSettings(gpu_type=gpu_type, gpu_count=gpu_count, seed=seed, model_params_b=model_params_b)
    try:
        p = plan_from_args(engine, list(args), sim)
    except ArgError:
        return _failure_result("crash", 0.0)
    if p.failure:
        return _failure_result(p.failure, p.failure_at_s)
    return closed_loop(p, input_tokens, output_tokens, concurrency, seed=seed)


def closed_loop(p: Plan, input_tokens: float, output_tokens: float, concurrency: int, *, seed: int = 0) -> dict:
    """Steady state of a started server under `concurrency` closed-loop clients (see steady_state)."""
    from .scheduler import simulate_closed_loop  # the scheduler builds on this module

    n_in = max(1, int(round(input_tokens)))
    n_out = max(1, int(round(output_tokens)))
    dp = p.cfg.dp
    result = {
        "ok": True, "failure": None, "startup_s": p.startup_s, "ttft_s": 0.0, "tpot_s": 0.0, "e2e_s": 0.0,
        "output_tps": 0.0, "total_tps": 0.0, "requests_per_s": 0.0, "error_rate": 0.0,
    }
    if n_in + n_out > p.kv_capacity or n_in + n_out > p.max_model_len:
        # the server refuses every such request with 400
        result.update(ok=False, failure="errors_under_load", error_rate=1.0)
        return result
    # Round robin over dp replicas: each serves its share of the clients.
    shares: dict[int, int] = {}
    for i in range(max(1, concurrency)):
        shares[i % dp] = shares.get(i % dp, 0) + 1
    by_size: dict[int, int] = {}
    for c in shares.values():
        by_size[c] = by_size.get(c, 0) + 1
    totals = {k: 0.0 for k in ("ttft_s", "tpot_s", "e2e_s", "output_tps", "input_tps", "requests_per_s", "error_rate")}
    weight = 0.0
    for c, replicas in by_size.items():
        r = simulate_closed_loop(p, n_in, n_out, c, requests=max(2 * c, 24), warmup=c, seed=seed)
        for k in ("output_tps", "input_tps", "requests_per_s"):
            totals[k] += r[k] * replicas
        for k in ("ttft_s", "tpot_s", "e2e_s", "error_rate"):
            totals[k] += r[k] * c * replicas
        weight += c * replicas
    for k in ("ttft_s", "tpot_s", "e2e_s", "error_rate"):
        result[k] = totals[k] / weight
    for k in ("output_tps", "requests_per_s"):
        result[k] = totals[k]
    result["total_tps"] = totals["output_tps"] + totals["input_tps"]
    if result["error_rate"] > 0.05:
        result.update(ok=False, failure="errors_under_load")
    return result
