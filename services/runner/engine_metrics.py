"""Engine telemetry: the engine's own Prometheus `/metrics`, scraped about once a second while it is
benchmarked, summarized per experiment (events.EngineMetricsSummary).

GPU telemetry says how busy the hardware was; this says what the engine's scheduler did with it:
requests running and waiting, how full the KV cache was, how often it preempted, how many tokens it
prefilled and generated. A slow configuration usually shows why here (a full cache that preempts, a
queue that never drains because `--max-num-seqs` is small).

Names (vLLM's V1 engine, and SGLang's with `--enable-metrics`; the engine simulator exposes the same):

| summary | vLLM | SGLang |
|---|---|---|
| running | `vllm:num_requests_running` | `sglang:num_running_reqs` |
| waiting | `vllm:num_requests_waiting` | `sglang:num_queue_reqs` |
| KV cache usage (0..1) | `vllm:kv_cache_usage_perc` (older: `vllm:gpu_cache_usage_perc`) | `sglang:token_usage` |
| preemptions (counter) | `vllm:num_preemptions_total` | `sglang:num_retracted_reqs_total` |
| prompt tokens (counter) | `vllm:prompt_tokens_total` | `sglang:prompt_tokens_total` |
| generation tokens (counter) | `vllm:generation_tokens_total` | `sglang:generation_tokens_total` |
| steps (counter) | `vllm:iteration_tokens_total_count` (its tokens-per-step histogram) | none |

`steps` is how many forward passes (scheduler iterations) the engine ran over the window. Tokens over
steps is its batch: `--max-num-seqs 1` under 16 concurrent requests shows about 1 token per step.

Several label sets of one name (data-parallel engines: `engine="0"`, `engine="1"`) are added up,
except the KV cache usage, of which the fullest counts. A scrape that fails (the engine is busy or
has no metrics endpoint) is skipped: the summary says how many samples it rests on, and how many
scrapes failed. On two cores saturated by vLLM (`just bench scrape`) a scrape mid-benchmark took up
to 6 s, past the 2 s timeout, and the once-a-second loop ran at 4-6 s gaps; vLLM's gauges there read
"0 running, 0 waiting" while its token counter advanced. The gauges then rest on few samples, and
may be wrong at the source; the counters, read before and after the benchmark, stay exact.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

from autotune.schemas.events import EngineMetricsSummary
from autotune.shared.log import get_logger

log = get_logger("runner")

# summary field → the sample names that feed it, by engine family (counters with their _total suffix)
NAMES: dict[str, dict[str, tuple[str, ...]]] = {
    "vllm": {
        "running": ("vllm:num_requests_running",),
        "waiting": ("vllm:num_requests_waiting",),
        "kv": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
        "preemptions": ("vllm:num_preemptions_total",),
        "prompt_tokens": ("vllm:prompt_tokens_total",),
        "generation_tokens": ("vllm:generation_tokens_total",),
        "steps": ("vllm:iteration_tokens_total_count",),
    },
    "sglang": {
        "running": ("sglang:num_running_reqs",),
        "waiting": ("sglang:num_queue_reqs",),
        "kv": ("sglang:token_usage",),
        "preemptions": ("sglang:num_retracted_reqs_total",),
        "prompt_tokens": ("sglang:prompt_tokens_total",),
        "generation_tokens": ("sglang:generation_tokens_total",),
    },
}


def parse(text: str) -> tuple[str, dict[str, float]]:
    """One scrape: (engine family, {summary field: value}) for the names above; ("", {}) for none."""
    values: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values.setdefault(sample.name, []).append(sample.value)
    for source, names in NAMES.items():
        got: dict[str, float] = {}
        for key, candidates in names.items():
            for name in candidates:
                if name in values:
                    got[key] = max(values[name]) if key == "kv" else sum(values[name])
                    break
        if got:
            return source, got
    return "", {}


@dataclass
class Scrapes:
    """The samples of one benchmark window, and their summary. The first and the last sample may be
    bounds (taken before the first request and after the last): they close the counters' window but
    say nothing about the load, so gauges are summarized over the samples between them."""

    source: str = ""
    series: dict[str, list[float]] = field(default_factory=dict)
    samples: int = 0
    failures: int = 0
    bounded: bool = False  # the first sample is the window's opening bound (EngineScraper)
    closed: bool = False  # the last sample is its closing bound (the block ended without an error)

    def add(self, source: str, values: dict[str, float]) -> None:
        if not values:
            return
        self.source = self.source or source
        self.samples += 1
        for key, v in values.items():
            self.series.setdefault(key, []).append(v)

    def summary(self) -> EngineMetricsSummary:
        s = self.series

        def during(key: str) -> list[float]:
            xs = s.get(key) or []
            return xs[int(self.bounded): len(xs) - int(self.closed)]

        def mean(key: str) -> float | None:
            xs = during(key)
            return sum(xs) / len(xs) if xs else None

        def peak(key: str) -> float | None:
            xs = during(key)
            return max(xs) if xs else None

        def increase(key: str) -> float | None:
            """A counter's increase over the window; a reset (the engine restarted) counts from zero."""
            xs = s.get(key)
            if not xs:
                return None
            total = 0.0
            for a, b in zip(xs, xs[1:], strict=False):
                total += b - a if b >= a else b
            return total

        return EngineMetricsSummary(
            source=self.source, samples=len(during("running")), scrape_failures=self.failures, mean_running=mean("running"), max_running=peak("running"),
            mean_waiting=mean("waiting"), max_waiting=peak("waiting"), mean_kv_cache_usage=mean("kv"), max_kv_cache_usage=peak("kv"),
            preemptions=increase("preemptions"), prompt_tokens=increase("prompt_tokens"), generation_tokens=increase("generation_tokens"),
            steps=increase("steps"),
        )


class EngineScraper:
    """`async with EngineScraper(url) as scraper:` scrapes `<url>/metrics` on entry, every `interval_s`
    until the block ends, and once more then, so the counters cover exactly the block; `scraper.summary()`."""

    def __init__(self, base_url: str, *, interval_s: float = 1.0, timeout_s: float = 2.0) -> None:
        self.url = base_url.rstrip("/") + "/metrics"
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.scrapes = Scrapes(bounded=True)
        self._task: asyncio.Task | None = None
        self._client: httpx.AsyncClient | None = None

    async def scrape_once(self) -> None:
        assert self._client is not None
        try:
            r = await self._client.get(self.url)
            if r.status_code != 200:
                self.scrapes.failures += 1
                return
            source, values = parse(r.text)
        except (httpx.HTTPError, ValueError) as e:  # busy, gone, or not Prometheus text
            self.scrapes.failures += 1
            log.debug("engine metrics scrape failed", url=self.url, error=repr(e))
            return
        self.scrapes.add(source, values)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.scrape_once()

    async def __aenter__(self) -> EngineScraper:
        self._client = httpx.AsyncClient(timeout=self.timeout_s)
        await self.scrape_once()  # before the first request: the counters' window starts here
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None:
            with contextlib.suppress(Exception):
                if exc[0] is None:  # the benchmark finished: one last scrape closes the counters' window
                    before = self.scrapes.samples
                    await asyncio.wait_for(self.scrape_once(), self.timeout_s + 1)
                    self.scrapes.closed = self.scrapes.samples > before
            await self._client.aclose()

    def summary(self) -> EngineMetricsSummary:
        return self.scrapes.summary()


__all__ = ["EngineScraper", "Scrapes", "parse"]
