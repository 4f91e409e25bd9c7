"""The simulated engine's Prometheus /metrics: its own counters, and the engine's metric names as the
real engine shows them, so engine telemetry is tested without a real engine."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .server import SimServer

# (name, Prometheus type, what it shows) of each engine's own metrics (runner/engine_metrics.py reads them)
ENGINE_METRICS = {
    "vllm": (
        ("vllm:num_requests_running", "gauge", "running"), ("vllm:num_requests_waiting", "gauge", "waiting"),
        ("vllm:kv_cache_usage_perc", "gauge", "kv"), ("vllm:num_preemptions_total", "counter", "preemptions"),
        ("vllm:prompt_tokens_total", "counter", "prompt_tokens"), ("vllm:generation_tokens_total", "counter", "generation_tokens"),
    ),
    "sglang": (
        ("sglang:num_running_reqs", "gauge", "running"), ("sglang:num_queue_reqs", "gauge", "waiting"),
        ("sglang:token_usage", "gauge", "kv"), ("sglang:num_retracted_reqs_total", "counter", "preemptions"),
        ("sglang:prompt_tokens_total", "counter", "prompt_tokens"), ("sglang:generation_tokens_total", "counter", "generation_tokens"),
    ),
}


def exposition(server: SimServer) -> str:
    running = sum(len(r.sched.running) for r in server.replicas)
    waiting = sum(len(r.sched.waiting) + len(r.sched.prefilling) for r in server.replicas)
    kv = sum(r.sched.kv_used for r in server.replicas) / max(1, server.plan.kv_capacity * len(server.replicas))
    lines = [
        "# autotune engine simulator (SIMULATED)",
        f"autotune_sim_running_requests {running}", f"autotune_sim_waiting_requests {waiting}",
        f"autotune_sim_kv_cache_usage {kv:.4f}", f"autotune_sim_requests_received_total {server.received}",
        f"autotune_sim_requests_completed_total {server.completed}", f"autotune_sim_requests_failed_total {server.failed}",
        f"autotune_sim_requests_cancelled_total {server.cancelled}", f"autotune_sim_preemptions_total {server.preempted}",
    ]
    # the engine's own names, as its /metrics shows them, so engine telemetry is tested without a real engine
    model = server.model_name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    labels = f'{{engine="0",model_name="{model}"}}' if server.cfg.engine == "vllm" else f'{{model_name="{model}"}}'
    for name, kind, value in ENGINE_METRICS[server.cfg.engine]:
        figure = {"running": running, "waiting": waiting, "kv": round(kv, 6), "preemptions": server.preempted,
                  "prompt_tokens": server.prompt_tokens, "generation_tokens": server.generation_tokens}[value]  # fmt: skip
        family = name.removesuffix("_total")
        lines += [f"# TYPE {family} {kind}", f"{name}{labels} {float(figure)}"]
    if server.cfg.engine == "vllm":  # tokens per forward pass, as a histogram whose count is the steps run
        tokens, inf = float(server.prompt_tokens + server.generation_tokens), labels[:-1] + ',le="+Inf"}'
        lines += ["# TYPE vllm:iteration_tokens_total histogram", f"vllm:iteration_tokens_total_bucket{inf} {float(server.steps)}",
                  f"vllm:iteration_tokens_total_count{labels} {float(server.steps)}", f"vllm:iteration_tokens_total_sum{labels} {tokens}"]  # fmt: skip
    return "\n".join(lines) + "\n"
