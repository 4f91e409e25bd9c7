"""The benchmark client: drives an OpenAI-compatible server (a real engine or the simulator) with the
task's traffic scenarios and concurrency levels and turns raw per-request samples into RunMetrics and the
ExperimentMetrics aggregate. `genai_bench` runs the external genai-bench tool instead and parses its files.
"""

from .client import BenchmarkStopped, run_benchmark, stream_request
from .http import HttpClient, RequestResult
from .stats import aggregate, meets_slo, merge, percentile, run_stats, stats

__all__ = [
    "BenchmarkStopped", "HttpClient", "RequestResult", "aggregate", "meets_slo", "merge", "percentile", "run_benchmark",
    "run_stats", "stats", "stream_request",
]
