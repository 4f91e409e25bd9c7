"""`python3 -m autotune.simulator`: the command line, the simulated startup (its phases, or the failure
the plan foresees), serving until SIGTERM or SIGINT, and the periodic batch log line."""

from __future__ import annotations

import asyncio
import signal
import sys

from .config import ArgError, SimSettings, parse_args, settings_from_env
from .connection import Connection
from .log import log
from .perfmodel import Plan, make_plan
from .server import SimServer

USAGE = """usage: python3 -m autotune.simulator {sglang,vllm} ENGINE-ARGS...
  sglang --model-path M --host 0.0.0.0 --port P [--tp-size N --mem-fraction-static F ...]
  vllm serve M --host 0.0.0.0 --port P [--tensor-parallel-size N --gpu-memory-utilization F ...]
A SIMULATED engine: no GPU is used; speeds follow a performance model (see the package README).
Environment: AUTOTUNE_SIM_GPU_TYPE (H100), AUTOTUNE_SIM_GPU_COUNT, AUTOTUNE_SIM_TIME_SCALE (1.0),
AUTOTUNE_SIM_STARTUP_SCALE (= time scale), AUTOTUNE_SIM_SEED (0), AUTOTUNE_SIM_MODEL_PARAMS_B, AUTOTUNE_SIM_MAX_CONTEXT, AUTOTUNE_SIM_PREFIX_SHARE,
AUTOTUNE_SIM_EOS_MEAN, AUTOTUNE_SIM_TICK_MS, AUTOTUNE_SIM_RECORD_PROMPTS."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    engine, args = argv[0], argv[1:]
    if "-h" in args or "--help" in args:
        print(USAGE)
        return 0
    try:
        cfg = parse_args(engine, args)
        sim = settings_from_env()
    except ArgError as exc:
        sys.stderr.write(f"{USAGE}\n{engine}: error: {exc}\n")
        return 2
    plan = make_plan(cfg, sim)
    try:
        return asyncio.run(serve(plan, sim))
    except KeyboardInterrupt:
        return 130


async def serve(plan: Plan, sim: SimSettings) -> int:
    cfg = plan.cfg
    log("INFO", f"SIMULATED {cfg.engine} server (autotune engine simulator) - no GPU is used, speeds follow a performance model")
    log("INFO", f"SIMULATED model={cfg.model} ({plan.shape.params_b:g}B params, {plan.shape.active_b:g}B active) gpu={plan.gpu.name} x {plan.gpu_count} "
                f"tp={cfg.tp} pp={cfg.pp} dp={cfg.dp} time_scale={sim.time_scale:g} seed={sim.seed}")
    for w in plan.warnings:
        log("WARNING", w)
    loop = asyncio.get_running_loop()
    server = SimServer(plan, sim)
    try:
        listener = await loop.create_server(lambda: Connection(server), cfg.host, cfg.port, reuse_address=True, backlog=1024)
    except OSError as exc:
        log("ERROR", f"cannot listen on {cfg.host}:{cfg.port}: {exc}")
        return 1
    port = listener.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    scale = sim.startup_scale or sim.time_scale
    m = plan.memory
    log("INFO", f"SIMULATED memory per GPU (GiB): total {m['total']:g}, pool {m['pool']:g} (fraction {plan.mem_fraction:g}), weights {m['weights']:g}, "
                f"KV cache {m['kv_cache']:g}, activations {m['activations']:g}, CUDA graphs {m['cuda_graphs']:g}, slack {m['slack']:g}")

    async def wait(seconds: float) -> bool:
        try:
            await asyncio.wait_for(stop.wait(), timeout=max(0.0, seconds / scale))
            return True
        except asyncio.TimeoutError:  # noqa: UP041 - Python < 3.11 has its own class
            return False

    if plan.failure:
        if await wait(plan.failure_at_s):
            return 0
        sys.stderr.write("Traceback (most recent call last):\n  File \"<simulated engine>\", line 1, in <module>\n")
        for line in plan.failure_lines:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()
        log("ERROR", f"SIMULATED engine failed at startup ({plan.failure})")
        listener.close()
        return 1
    for phase, seconds in plan.startup_phases:
        log("INFO", f"SIMULATED {phase}: {seconds:.1f} s (simulated)")
        if await wait(seconds * plan.startup_s / max(1e-9, sum(s for _, s in plan.startup_phases))):
            listener.close()
            return 0
    log("INFO", f"SIMULATED KV cache: {plan.kv_capacity} tokens per replica; max running requests {plan.max_running}; "
                f"chunked prefill {plan.chunk}; CUDA graph max bs {plan.cuda_graph_bs}; startup took {plan.startup_s:.1f} s (simulated)")
    server.start()
    server.ready = True
    if cfg.engine == "sglang":
        log("INFO", "The server is fired up and ready to roll! (SIMULATED)")
    else:
        log("INFO", "Application startup complete. (SIMULATED)")
    log("INFO", f"Uvicorn running on http://{cfg.host}:{port} (Press CTRL+C to quit) (SIMULATED)")
    last = (0, 0)
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=10.0)
        except asyncio.TimeoutError:  # noqa: UP041 - Python < 3.11 has its own class
            pass
        if (server.received, server.completed) != last and not stop.is_set():
            last = (server.received, server.completed)
            running = sum(len(r.sched.running) for r in server.replicas)
            queued = sum(len(r.sched.waiting) for r in server.replicas)
            usage = sum(r.sched.kv_used for r in server.replicas) / max(1, plan.kv_capacity * cfg.dp)
            log("INFO", f"SIMULATED batch: #running-req {running}, #queue-req {queued}, token usage {usage:.2f}, "
                        f"completed {server.completed}, failed {server.failed}, preempted {server.preempted}")
    log("INFO", "shutting down (SIMULATED)")
    listener.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
