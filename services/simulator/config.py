"""The engines' command lines, parsed the way SGLang and vLLM read them, plus the simulation settings.

`parse_args(engine, argv)` takes what follows the engine word:

    sglang --model-path M --host 0.0.0.0 --port P --tp-size 2 --mem-fraction-static 0.85 ...
    vllm serve M --host 0.0.0.0 --port P --tensor-parallel-size 2 --gpu-memory-utilization 0.9 ...

Both engines' spellings of the common flags are accepted for either engine. Flags the simulator does not
model but the engines have are accepted silently; flags nobody knows give one warning each. A value that
the real engine would refuse (`--tp-size two`) makes the launch fail like the engine's argparse does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

ENGINES = ("sglang", "vllm")


class ArgError(ValueError):
    """A command line the real engine would refuse (argparse exits with status 2)."""


@dataclass
class EngineConfig:
    engine: str = "sglang"
    model: str = ""
    served_model_name: str | None = None
    host: str = "127.0.0.1"
    port: int = 30000
    tp: int = 1
    pp: int = 1
    dp: int = 1
    dtype: str = "auto"
    quantization: str | None = None
    kv_cache_dtype: str = "auto"
    mem_fraction: float | None = None  # --mem-fraction-static / --gpu-memory-utilization
    max_running: int | None = None  # --max-running-requests / --max-num-seqs
    max_total_tokens: int | None = None  # sglang --max-total-tokens caps the KV pool
    gpu_blocks: int | None = None  # vLLM --num-gpu-blocks-override (x --block-size tokens)
    block_size: int = 16
    chunk: int | None = None  # --chunked-prefill-size / --max-num-batched-tokens
    chunked_prefill: bool = True  # vLLM --no-enable-chunked-prefill, sglang --chunked-prefill-size -1
    mixed_chunk: bool = False  # sglang --enable-mixed-chunk (vLLM always mixes)
    schedule_policy: str = "fcfs"
    schedule_conservativeness: float = 1.0
    torch_compile: bool = False  # sglang --enable-torch-compile; vLLM compiles unless --enforce-eager
    torch_compile_max_bs: int = 32
    cuda_graph: bool = True
    cuda_graph_max_bs: int | None = None
    max_model_len: int | None = None
    prefix_caching: bool = True
    overlap_schedule: bool = True
    warnings: list[str] = field(default_factory=list)

    @property
    def gpus_needed(self) -> int:
        return self.tp * self.pp * self.dp

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model


# flag -> (field, kind). kind: int, float, str, bool (bare, optional true/false value), neg (bare, sets False),
# list (one or more values), ignore (takes one value), ignore_bool (bare).
_COMMON: dict[str, tuple[str, str]] = {
    "--model-path": ("model", "str"),
    "--model": ("model", "str"),
    "--host": ("host", "str"),
    "--port": ("port", "int"),
    "--tp-size": ("tp", "int"),
    "--tp": ("tp", "int"),
    "--tensor-parallel-size": ("tp", "int"),
    "-tp": ("tp", "int"),
    "--pp-size": ("pp", "int"),
    "--pipeline-parallel-size": ("pp", "int"),
    "-pp": ("pp", "int"),
    "--dp-size": ("dp", "int"),
    "--dp": ("dp", "int"),
    "--data-parallel-size": ("dp", "int"),
    "-dp": ("dp", "int"),
    "--dtype": ("dtype", "str"),
    "--quantization": ("quantization", "str"),
    "-q": ("quantization", "str"),
    "--kv-cache-dtype": ("kv_cache_dtype", "str"),
    "--served-model-name": ("served_model_name", "str"),
    "--mem-fraction-static": ("mem_fraction", "float"),
    "--gpu-memory-utilization": ("mem_fraction", "float"),
    "--max-running-requests": ("max_running", "int"),
    "--max-num-seqs": ("max_running", "int"),
    "--max-total-tokens": ("max_total_tokens", "int"),
    "--num-gpu-blocks-override": ("gpu_blocks", "int"),
    "--block-size": ("block_size", "int"),
    "--chunked-prefill-size": ("chunk", "int"),
    "--max-num-batched-tokens": ("chunk", "int"),
    "--enable-chunked-prefill": ("chunked_prefill", "bool"),
    "--no-enable-chunked-prefill": ("chunked_prefill", "neg"),
    "--enable-mixed-chunk": ("mixed_chunk", "bool"),
    "--schedule-policy": ("schedule_policy", "str"),
    "--scheduling-policy": ("schedule_policy", "str"),
    "--schedule-conservativeness": ("schedule_conservativeness", "float"),
    "--enable-torch-compile": ("torch_compile", "bool"),
    "--torch-compile-max-bs": ("torch_compile_max_bs", "int"),
    "--disable-cuda-graph": ("cuda_graph", "neg"),
    "--enforce-eager": ("cuda_graph", "neg"),
    "--cuda-graph-max-bs": ("cuda_graph_max_bs", "int"),
    "--max-seq-len-to-capture": ("", "ignore"),
    "--cuda-graph-bs": ("cuda_graph_bs", "list"),
    "--cuda-graph-sizes": ("cuda_graph_bs", "list"),
    "--context-length": ("max_model_len", "int"),
    "--max-model-len": ("max_model_len", "int"),
    "--disable-radix-cache": ("prefix_caching", "neg"),
    "--enable-prefix-caching": ("prefix_caching", "bool"),
    "--no-enable-prefix-caching": ("prefix_caching", "neg"),
    "--disable-overlap-schedule": ("overlap_schedule", "neg"),
}

# Flags the engines have that do not change the simulated performance.
_IGNORED_VALUE = {
    "--tokenizer-path", "--tokenizer", "--tokenizer-mode", "--revision", "--download-dir", "--load-format",
    "--api-key", "--log-level", "--uvicorn-log-level", "--random-seed", "--seed", "--attention-backend",
    "--sampling-backend", "--grammar-backend", "--stream-interval", "--watchdog-timeout", "--page-size",
    "--swap-space", "--max-prefill-tokens", "--ep-size", "--expert-parallel-size",
    "--distributed-executor-backend", "--max-logprobs", "--num-scheduler-steps", "--compilation-config",
    "-O", "--chat-template", "--reasoning-parser", "--tool-call-parser", "--hf-overrides", "--config",
    "--nnodes", "--node-rank", "--dist-init-addr", "--nccl-port", "--base-gpu-id", "--gpu-id-step",
    "--moe-runner-backend", "--moe-a2a-backend", "--speculative-algorithm", "--speculative-draft-model-path",
    "--speculative-num-steps", "--speculative-eagle-topk", "--speculative-num-draft-tokens",
    "--speculative-config", "--limit-mm-per-prompt", "--max-queued-requests", "--decode-log-interval",
    "--file-storage-path", "--device", "--kv-cache-memory-bytes", "--tokenizer-pool-size",
    "--disable-custom-all-reduce-threshold", "--max-parallel-loading-workers", "--port-retries",
    "--dcp", "--decode-context-parallel-size", "--cp-size", "--context-parallel-size", "--moe-tp-size",
    "--moe-ep-size", "--moe-dense-tp-size", "--generation-config", "--override-generation-config",
    "--root-path", "--allowed-origins", "--ssl-keyfile", "--ssl-certfile", "--middleware", "--lora-modules",
    "--mm-processor-kwargs", "--load-balance-method", "--chunked-prefill-size-per-dp",
}
_IGNORED_BOOL = {
    "--trust-remote-code", "--disable-log-requests", "--disable-log-stats", "--enable-log-requests",
    "--enable-metrics", "--skip-tokenizer-init", "--enable-expert-parallel", "--enable-ep-moe",
    "--enable-dp-attention", "--disable-custom-all-reduce", "--enable-p2p-check", "--show-time-cost",
    "--enable-cache-report", "--log-requests", "--disable-frontend-multiprocessing", "--async-scheduling",
    "--enable-auto-tool-choice", "--disable-fastapi-docs", "--enable-nan-detection", "--enable-lora",
    "--disable-cuda-graph-padding", "--enable-deterministic-inference", "--no-enable-prefix-caching-hash",
    "--enable-two-batch-overlap", "--enable-dp-lm-head", "--enable-sleep-mode", "--disable-sliding-window",
    "--enable-return-hidden-states", "--disable-outlines-disk-cache", "--enable-flashinfer-mla",
}

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _convert(flag: str, kind: str, raw: str):
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        raise ArgError(f"argument {flag}: invalid {kind} value: {raw!r}") from None
    return raw


def parse_args(engine: str, argv: list[str]) -> EngineConfig:
    """An EngineConfig from an engine's argv (what follows the engine word; vLLM's `serve M` included)."""
    if engine not in ENGINES:
        raise ArgError(f"unknown engine {engine!r}; the first word must be one of {', '.join(ENGINES)}")
    cfg = EngineConfig(engine=engine, port=30000 if engine == "sglang" else 8000)
    args = list(argv)
    if engine == "vllm":
        if args and args[0] == "serve":
            args = args[1:]
        if args and not args[0].startswith("-"):
            cfg.model = args.pop(0)
    cuda_graph_bs: list[int] = []
    compile_level: int | None = None
    i = 0
    while i < len(args):
        tok = args[i]
        i += 1
        if not tok.startswith("-"):
            cfg.warnings.append(f"unexpected argument {tok!r} ignored")
            continue
        if tok.startswith("-O") and tok[2:].isdigit():  # vLLM -O0 .. -O3: compilation level
            compile_level = int(tok[2:])
            continue
        inline: str | None = None
        if tok.startswith("--") and "=" in tok:
            tok, inline = tok.split("=", 1)
        has_next = i < len(args) and not (args[i].startswith("-") and not _is_number(args[i]))
        spec = _COMMON.get(tok)
        if spec is None:
            if tok in _IGNORED_BOOL:
                if inline is None and has_next and args[i].lower() in _TRUE | _FALSE:
                    i += 1
                continue
            if tok in _IGNORED_VALUE:
                if inline is None and has_next:
                    i += 1
                continue
            cfg.warnings.append(f"unknown flag {tok} ignored by the simulator")
            if inline is None and has_next:
                i += 1
            continue
        name, kind = spec
        if kind in ("bool", "neg"):
            value = True
            raw = inline
            if raw is None and has_next and args[i].lower() in _TRUE | _FALSE:
                raw = args[i]
                i += 1
            if raw is not None:
                if raw.lower() not in _TRUE | _FALSE:
                    raise ArgError(f"argument {tok}: invalid boolean value: {raw!r}")
                value = raw.lower() in _TRUE
            setattr(cfg, name, value if kind == "bool" else not value)
            continue
        if kind == "ignore":
            if inline is None and has_next:
                i += 1
            continue
        if kind == "list":
            values = [inline] if inline is not None else []
            while inline is None and i < len(args) and not args[i].startswith("-"):
                values.append(args[i])
                i += 1
            if not values:
                raise ArgError(f"argument {tok}: expected at least one argument")
            for v in values:
                cuda_graph_bs.extend(int(x) for x in v.split(",") if x.strip().isdigit())
            continue
        if inline is None:
            if not has_next:
                raise ArgError(f"argument {tok}: expected one argument")
            inline = args[i]
            i += 1
        setattr(cfg, name, _convert(tok, kind, inline))
    if engine == "vllm":
        # vLLM compiles the model and captures CUDA graphs by default; --enforce-eager or -O0 turns that off.
        cfg.torch_compile = cfg.cuda_graph and compile_level != 0
    if cuda_graph_bs and cfg.cuda_graph_max_bs is None:
        cfg.cuda_graph_max_bs = max(cuda_graph_bs)
    if cfg.chunk is not None and cfg.chunk <= 0:
        cfg.chunked_prefill = False
        cfg.chunk = None
    _validate(cfg)
    return cfg


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _validate(cfg: EngineConfig) -> None:
    if not cfg.model:
        raise ArgError("the model is required (--model-path M for sglang, `vllm serve M` for vllm)")
    for name in ("tp", "pp", "dp"):
        if getattr(cfg, name) < 1:
            raise ArgError(f"--{name}-size must be at least 1, got {getattr(cfg, name)}")
    if cfg.mem_fraction is not None and not 0.0 < cfg.mem_fraction <= 1.0:
        flag = "--mem-fraction-static" if cfg.engine == "sglang" else "--gpu-memory-utilization"
        raise ArgError(f"{flag} must be in (0, 1], got {cfg.mem_fraction}")
    if cfg.max_running is not None and cfg.max_running < 1:
        raise ArgError(f"the batch limit must be at least 1, got {cfg.max_running}")
    if cfg.cuda_graph_max_bs is not None and cfg.cuda_graph_max_bs < 1:
        cfg.cuda_graph = False
    cfg.schedule_policy = cfg.schedule_policy.lower()
    if cfg.schedule_policy not in ("fcfs", "lpm", "lof", "random", "dfs-weight", "priority"):
        raise ArgError(f"argument --schedule-policy: invalid choice: {cfg.schedule_policy!r}")
    if cfg.port < 0 or cfg.port > 65535:
        raise ArgError(f"--port must be in 0..65535, got {cfg.port}")


@dataclass(frozen=True)
class SimSettings:
    """Simulation-only settings, from the environment (the runner sets them)."""

    gpu_type: str = "H100"
    gpu_count: int | None = None
    time_scale: float = 1.0
    startup_scale: float | None = None  # divides the startup time instead of time_scale when set
    seed: int = 0
    model_params_b: float | None = None
    model_active_params_b: float | None = None
    max_context: int = 32768
    prefix_share: float = 0.1  # fraction of prompt tokens a cache can reuse (system prompts, templates)
    eos_mean: float | None = None  # when set, requests without ignore_eos stop at an exponential length
    tick_ms: float = 1.0  # shortest wall-clock sleep of the scheduler loop
    record_prompts: str | None = None  # append each accepted request's prompt (a JSON line) to this file


def settings_from_env(env: dict[str, str] | None = None) -> SimSettings:
    env = dict(os.environ) if env is None else env

    def num(name: str, cast, default):
        raw = env.get(name, "").strip()
        if not raw:
            return default
        try:
            return cast(raw)
        except ValueError:
            raise ArgError(f"{name}={raw!r} is not a valid {cast.__name__}") from None

    count = num("AUTOTUNE_SIM_GPU_COUNT", int, None)
    if count is None:
        visible = env.get("CUDA_VISIBLE_DEVICES", "").strip()
        if visible and visible not in ("-1", "none", "NoDevFiles"):
            count = len([d for d in visible.split(",") if d.strip()])
    scale = num("AUTOTUNE_SIM_TIME_SCALE", float, 1.0)
    if scale <= 0:
        raise ArgError(f"AUTOTUNE_SIM_TIME_SCALE must be positive, got {scale}")
    startup = num("AUTOTUNE_SIM_STARTUP_SCALE", float, None)
    if startup is not None and startup <= 0:
        raise ArgError(f"AUTOTUNE_SIM_STARTUP_SCALE must be positive, got {startup}")
    return SimSettings(
        gpu_type=env.get("AUTOTUNE_SIM_GPU_TYPE", "").strip() or "H100",
        gpu_count=count,
        time_scale=scale,
        startup_scale=startup,
        seed=num("AUTOTUNE_SIM_SEED", int, 0),
        model_params_b=num("AUTOTUNE_SIM_MODEL_PARAMS_B", float, None),
        model_active_params_b=num("AUTOTUNE_SIM_MODEL_ACTIVE_PARAMS_B", float, None),
        max_context=num("AUTOTUNE_SIM_MAX_CONTEXT", int, 32768),
        prefix_share=min(0.95, max(0.0, num("AUTOTUNE_SIM_PREFIX_SHARE", float, 0.1))),
        eos_mean=num("AUTOTUNE_SIM_EOS_MEAN", float, None),
        tick_ms=max(0.0, num("AUTOTUNE_SIM_TICK_MS", float, 1.0)),
        record_prompts=env.get("AUTOTUNE_SIM_RECORD_PROMPTS", "").strip() or None,
    )
