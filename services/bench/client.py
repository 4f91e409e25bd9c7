"""The builtin benchmark client: closed-loop streaming load against an OpenAI-compatible server.

For each scenario x concurrency (in that order) it sends `warmup_requests` requests that are not
counted, then keeps `concurrency` requests in flight until `max_requests_per_iteration` have been sent
or `max_time_per_iteration` minutes have passed; requests still in flight at the time limit are
cancelled and not counted (neither requests nor errors).

Time compression: against the simulator running with AUTOTUNE_SIM_TIME_SCALE = s, pass time_scale=s.
The run's time limit is then max_time_per_iteration x 60 / s wall seconds, and every measured duration
(TTFT, TPOT, inter-token gaps, e2e, run duration) is multiplied by s, so figures are engine seconds and
compare with real engines and with the SLO thresholds. Throughputs are per engine second.

Per request: TTFT (the first token's chunk, even one whose text is empty: vLLM sends a byte-level token
that does not complete a character as text ""; chat's first chunk, the role with empty content, is not a
token), every inter-token gap, TPOT = (e2e - TTFT) / (tokens - 1), e2e
(until `[DONE]`), tokens from the usage the server reports (else the count of content chunks), and an
error kind: `http_<status>` (a status or an error event in the stream), `connection`, `disconnected`,
`timeout`, `incomplete_stream`, `empty_response`, `client_error`. Inter-token gaps are kept in
RequestSample.itl only with keep_itl=True: one float per token would make experiment events too large
for NATS (1 MB payloads) with long outputs.

Requests carry `stream: true, stream_options: {include_usage: true}, max_tokens, ignore_eos: true` plus
`bench.additional_params`, which may override anything but model, prompt/messages, stream and max_tokens
(those define the scenario). Prompts are exactly the sampled number of words, the first one random.

Replay (`prompts`, the task's dataset): each run sends the prompts in their order, from the first
(warmup requests take the first ones, the measured requests go on from there; past the end they
start over), as `prompt`, or as one user message for chat tasks. The scenario then gives only the
output length (`max_tokens`); input tokens are what the server's usage reports for each prompt.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import time
from collections.abc import Awaitable, Callable

import msgspec

from autotune.schemas.metrics import ExperimentMetrics, RequestSample, RunMetrics
from autotune.schemas.scenarios import Scenario, parse_scenario
from autotune.schemas.spec import SLO, Benchmark

from .http import HttpClient, RequestResult
from .stats import aggregate, run_stats

CHAT_TASKS = ("chat", "text-to-text-chat", "chat-completions", "chat_completions")
_CORE_FIELDS = ("model", "prompt", "messages", "stream", "max_tokens")


_encode = msgspec.json.encode


class BenchmarkStopped(Exception):
    """`stop` was set: the benchmark ended early. `partial` holds the runs finished before that."""

    def __init__(self, partial: ExperimentMetrics):
        super().__init__("benchmark stopped before it finished")
        self.partial = partial


# ---- one streamed request ---------------------------------------------------------------------------


async def stream_request(client: HttpClient, path: str, payload: dict, *, timeout: float | None = None) -> RequestResult:
    """POST one streaming completion and time every content chunk. Never raises for request failures."""
    return await client.post_stream(path, _encode(payload), stream=bool(payload.get("stream", True)), timeout=timeout)


# ---- prompts ----------------------------------------------------------------------------------------

_VOCAB = (  # noqa: SIM905 - a word list reads better as text
    "time person year way day thing man world life hand part child eye woman place work week case point "
    "government company number group problem fact be have do say get make go know take see come think look "
    "want give use find tell ask seem feel try leave call good new first last long great little own other old "
    "right big high different small large next early young important few public bad same able"
).split()


def make_prompt(words: int, rng: random.Random) -> str:
    """A prompt of exactly `words` whitespace-separated words; the first is unique (no accidental cache hits)."""
    head = f"r{rng.getrandbits(48):x}"
    if words <= 1:
        return head
    start = rng.randrange(len(_VOCAB))
    body = [_VOCAB[(start + i * 7) % len(_VOCAB)] for i in range(words - 1)]
    return head + " " + " ".join(body)


def build_payload(bench: Benchmark, model: str, prompt: str, max_tokens: int, chat: bool) -> dict:
    payload: dict = {"model": model}
    if chat:
        payload["messages"] = [{"role": "user", "content": prompt}]
    else:
        payload["prompt"] = prompt
    payload.update(stream=True, stream_options={"include_usage": True}, max_tokens=max_tokens, ignore_eos=True)
    for key, value in bench.additional_params.items():
        if key not in _CORE_FIELDS:
            payload[key] = value
    return payload


def is_chat(bench: Benchmark) -> bool:
    return bench.task.lower() in CHAT_TASKS


# ---- the benchmark ----------------------------------------------------------------------------------


def _to_sample(res: RequestResult, run: int, run_start: float, input_tokens: int, scale: float, keep_itl: bool) -> RequestSample:
    out = res.completion_tokens if res.completion_tokens is not None else res.chunks
    tpot = None
    if res.ok and res.ttft is not None and out > 1:
        tpot = (res.e2e - res.ttft) / (out - 1) * scale
    return RequestSample(
        run=run,
        ok=res.ok,
        start=(res.sent - run_start) * scale,
        e2e=res.e2e * scale,
        ttft=res.ttft * scale if res.ttft is not None else None,
        tpot=tpot,
        input_tokens=res.prompt_tokens if res.prompt_tokens is not None else input_tokens,
        output_tokens=out if res.ok else (res.completion_tokens or res.chunks),
        error=res.error,
        itl=[g * scale for g in res.gaps] if keep_itl and res.ok else [],
    )


async def _call(on_run, run: RunMetrics) -> None:
    if on_run is None:
        return
    out = on_run(run)
    if inspect.isawaitable(out):
        await out


async def run_benchmark(
    base_url: str,
    *,
    model: str,
    bench: Benchmark,
    slo: SLO | None = None,
    gpus: int = 1,
    time_scale: float = 1.0,
    on_run: Callable[[RunMetrics], Awaitable[None] | None] | None = None,
    stop: asyncio.Event | None = None,
    seed: int = 0,
    keep_itl: bool = False,
    request_timeout: float | None = None,
    prompts: list[str] | None = None,
) -> ExperimentMetrics:
    """Benchmark the server at `base_url` with every scenario x concurrency of `bench` (module docstring).

    Raises ScenarioError for a scenario it cannot parse (before sending anything) and BenchmarkStopped
    when `stop` is set (in-flight requests are cancelled at once).
    """
    scenarios = [parse_scenario(s) for s in bench.traffic_scenarios]
    if time_scale <= 0:
        raise ValueError(f"time_scale must be positive, got {time_scale}")
    if prompts is not None and not prompts:
        raise ValueError("an empty prompt list cannot be replayed")
    chat = is_chat(bench)
    path = "/v1/chat/completions" if chat else "/v1/completions"
    runs: list[RunMetrics] = []
    samples: list[RequestSample] = []
    stop = stop or asyncio.Event()
    async with HttpClient(base_url) as session:
        index = 0
        for si, scenario in enumerate(scenarios):
            for concurrency in bench.num_concurrency:
                rng = random.Random(f"{seed}/{si}/{concurrency}")
                run, run_samples = await _one_run(
                    session, path, scenario, concurrency, index, bench=bench, model=model, chat=chat, slo=slo,
                    scale=time_scale, rng=rng, stop=stop, keep_itl=keep_itl, request_timeout=request_timeout, prompts=prompts,
                )
                if run is None:
                    raise BenchmarkStopped(aggregate(runs, samples, gpus))
                runs.append(run)
                samples.extend(run_samples)
                index += 1
                await _call(on_run, run)
                if stop.is_set():
                    raise BenchmarkStopped(aggregate(runs, samples, gpus))
    return aggregate(runs, samples, gpus)


async def _one_run(
    session: HttpClient,
    path: str,
    scenario: Scenario,
    concurrency: int,
    index: int,
    *,
    bench: Benchmark,
    model: str,
    chat: bool,
    slo: SLO | None,
    scale: float,
    rng: random.Random,
    stop: asyncio.Event,
    keep_itl: bool,
    request_timeout: float | None,
    prompts: list[str] | None = None,
) -> tuple[RunMetrics | None, list[RequestSample]]:
    """One scenario x concurrency run; (None, []) when stopped."""
    loop = asyncio.get_running_loop()
    window = bench.max_time_per_iteration * 60.0 / scale
    concurrency = max(1, concurrency)
    replayed = 0

    def next_payload() -> tuple[dict, int]:
        nonlocal replayed
        n_in, n_out = scenario.sample(rng)
        if prompts is not None:  # replay: the dataset's prompt, the scenario's output length
            prompt = prompts[replayed % len(prompts)]
            replayed += 1
            return build_payload(bench, model, prompt, n_out, chat), len(prompt.split())
        return build_payload(bench, model, make_prompt(n_in, rng), n_out, chat), n_in

    sent = 0

    async def closed_loop(total: int, width: int, sink: list | None) -> None:
        nonlocal sent
        sent = 0

        async def worker() -> None:
            nonlocal sent
            while sent < total:
                sent += 1
                payload, n_in = next_payload()
                res = await stream_request(session, path, payload, timeout=request_timeout)
                if sink is not None:
                    sink.append((res, n_in))

        await asyncio.gather(*(worker() for _ in range(min(width, total))))

    async def bounded(coro, seconds: float) -> bool:
        """Run until done, the time limit or stop; False when stopped."""
        task = loop.create_task(coro)
        stopper = loop.create_task(stop.wait())
        try:
            await asyncio.wait({task, stopper}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (task, stopper):
                if not t.done():
                    t.cancel()
            await asyncio.gather(task, stopper, return_exceptions=True)
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # a bug, not a request failure: those come back as results
        return not stop.is_set()

    if bench.warmup_requests > 0 and not await bounded(closed_loop(bench.warmup_requests, concurrency, None), window):
        return None, []
    results: list[tuple[RequestResult, int]] = []
    run_start = time.perf_counter()
    if not await bounded(closed_loop(max(0, bench.max_requests_per_iteration), concurrency, results), window):
        return None, []
    samples = [_to_sample(res, index, run_start, n_in, scale, keep_itl) for res, n_in in results]
    end = max((res.sent + res.e2e for res, _ in results), default=run_start)
    duration = (end - run_start) * scale
    run = run_stats(samples, scenario=scenario.text, concurrency=concurrency, duration_s=duration, slo=slo)
    return run, samples
