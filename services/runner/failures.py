"""Why an engine failed, from how it exited and its last lines: the failure kinds of schemas/events/experiments.py,
with the line that says why (vLLM's and SGLang's own messages, as the real engines print them)."""

from __future__ import annotations

import re

from autotune.schemas import events as ev
from autotune.schemas.metrics import ExperimentMetrics

# an engine that refuses its flags (vLLM's and SGLang's argparse, vLLM's config validation) exits at startup with one of these
REJECTED_MARKERS = (
    "error: unrecognized arguments", "error: argument ", "error: invalid choice", "error: the following arguments are required",
    "validation error for", "pydantic_core._pydantic_core.validationerror",
)
# vLLM: the KV cache cannot hold one request of --max-model-len
KV_CACHE_MARKERS = (
    "kv cache is needed, which is larger than the available kv cache memory", "to serve at least one request with the model",
    "no available memory for the cache blocks", "insufficient memory for kv cache",
)
OOM_MARKERS = ("out of memory", "outofmemoryerror", "cuda error", "cublas_status_alloc_failed", "not enough memory", "no available memory for the cache blocks")


class Failure(Exception):
    """An attempt failed in a way we classified; `metrics` holds the runs that finished before it."""

    def __init__(self, kind: str, message: str, *, retryable: bool | None = None, metrics: ExperimentMetrics | None = None) -> None:
        super().__init__(message)
        self.kind, self.message = kind, message
        self.retryable = kind in ev.RETRYABLE if retryable is None else retryable
        self.metrics = metrics


class EngineExited(Exception):
    def __init__(self, code: int | None, stage: str, metrics: ExperimentMetrics | None = None) -> None:
        self.code, self.stage, self.metrics = code, stage, metrics


def classify_exit(lines: list[str], reason: str, e: EngineExited) -> Failure:
    """The failure of an engine that exited during `e.stage`: its flags refused (`launch_error`, the
    configuration's fault, not retried), a KV cache too small for its context (`oom`), out of memory,
    or `crashed`; `reason` is what the runtime knows beyond the code (a signal, `OOMKilled`)."""
    how = f"code {e.code}" if e.code is not None else "no exit code"
    why = f" ({reason})" if reason and reason != "OOMKilled" else (" (killed: out of memory)" if reason == "OOMKilled" else "")
    exited = f"the engine exited with {how}{why} during {e.stage}"
    if e.stage == "startup" and (line := first_line(lines, REJECTED_MARKERS)):
        # the configuration's fault, not the host's: another host would refuse it too
        return Failure("launch_error", f"the engine rejected its command line: {line} ({exited})", retryable=False, metrics=e.metrics)
    if line := first_line(lines, KV_CACHE_MARKERS):
        return Failure("oom", f"the KV cache is too small for this configuration: {line} ({exited})", retryable=False, metrics=e.metrics)
    tail = "\n".join(lines).lower()
    kind = "oom" if reason == "OOMKilled" or any(m in tail for m in OOM_MARKERS) else "crashed"
    return Failure(kind, exited, retryable=False, metrics=e.metrics)


def lost_connections(m: ExperimentMetrics) -> bool:
    """Whether requests failed the way they do when the server goes away (not an HTTP error it sent)."""
    return any(kind in ("connection", "disconnected", "incomplete_stream") for run in m.runs for kind in run.errors_by_kind)


def first_line(lines: list[str], markers: tuple[str, ...], width: int = 400) -> str | None:
    """The first line that contains one of `markers` (lower case), without the engine's log prefix."""
    for line in lines:
        low = line.lower()
        if any(m in low for m in markers):
            # without vLLM's prefix: "(EngineCore pid=123) ERROR 12-07 14:54:02 [core.py:1510] "
            text = re.sub(r"^(\([A-Za-z]+ pid=\d+\)\s*)?([A-Z]+ \d\d-\d\d \d\d:\d\d:\d\d \[[^\]]*\]\s*)?", "", line.strip())
            return text[:width]
    return None


def error_tail(lines: list[str], keep: int = 30) -> list[str]:
    """The engine's last lines, with the first traceback or error line kept in view when it is earlier."""
    tail = lines[-keep:]
    markers = ("traceback", "error", "exception")
    if any(any(m in line.lower() for m in markers) for line in tail):
        return tail
    for i in range(len(lines) - keep - 1, -1, -1):
        if any(m in lines[i].lower() for m in markers):
            return [lines[i], "..."] + lines[-(keep - 2):]
    return tail
