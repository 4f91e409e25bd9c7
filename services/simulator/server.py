"""The simulated engine's OpenAI-compatible HTTP server, with the scheduler driven in (scaled) real time.

A small HTTP/1.1 implementation on asyncio protocols (keep-alive, chunked SSE responses): the standard
library's http.server needs a thread per stream, and a few hundred streams must fit on two cores.

Each dp replica runs a loop: plan a step, sleep until its end (simulated seconds / time scale, kept on
an absolute timeline so oversleeping is caught up), apply it, and write the tokens. When the loop falls
behind (steps shorter than the host can schedule), it applies steps back to back and writes every
stream's tokens once per tick (AUTOTUNE_SIM_TICK_MS, 1 ms): each SSE event still carries one token.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sys
import time
import uuid

from .config import ArgError, SimSettings, parse_args, settings_from_env
from .perfmodel import Plan, make_plan
from .scheduler import Scheduler, Sequence

FINGERPRINT = "autotune-simulated"
_WORDS = (  # noqa: SIM905 - a word list reads better as text
    "the of and to in is that it for as with was on be by at this are from or an which have not but they all "
    "one we can their has been more were will when there would so what about if into time only also may its "
    "other new after some these two first than any most over such"
).split()
_TOKENS = [(" " + w).encode() for w in _WORDS]
_STATUS = {
    200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 413: "Payload Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
}
_ERROR_TYPE = {400: "BadRequestError", 404: "NotFoundError", 405: "MethodNotAllowed", 413: "BadRequestError",
               500: "InternalServerError", 501: "NotImplementedError", 503: "ServiceUnavailableError"}
MAX_BODY = 64 * 1024 * 1024


def log(level: str, message: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    sys.stderr.write(f"[{stamp}] {level} {message}\n")
    sys.stderr.flush()


class RequestError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


def error_body(status: int, message: str, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": _ERROR_TYPE.get(status, "Error"), "param": param, "code": status},
            "object": "error", "system_fingerprint": FINGERPRINT}


# ---- request parsing -------------------------------------------------------------------------------


def _int_field(body: dict, name: str, default: int | None, low: int) -> int | None:
    v = body.get(name, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise RequestError(400, f"`{name}` must be an integer, got {v!r}", name)
    if v < low:
        raise RequestError(400, f"`{name}` must be at least {low}, got {v}", name)
    return v


def count_prompt(body: dict, chat: bool) -> int:
    """Prompt tokens: whitespace-separated words (or the length of a token-id list)."""
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError(400, "`messages` is required: a non-empty list of {role, content}", "messages")
        words = 0
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m:
                raise RequestError(400, f"`messages[{i}]` must be an object with a `role`", "messages")
            content = m.get("content")
            if isinstance(content, str):
                words += len(content.split())
            elif isinstance(content, list):
                for part in content:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        words += len(part["text"].split())
            elif content is not None:
                raise RequestError(400, f"`messages[{i}].content` must be a string or a list of parts", "messages")
        if words == 0:
            raise RequestError(400, "the messages contain no text", "messages")
        return words
    if "prompt" not in body:
        raise RequestError(400, "`prompt` is required", "prompt")
    prompt = body["prompt"]
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        n = len(prompt.split())
    elif isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        n = len(prompt)
    elif isinstance(prompt, list):
        raise RequestError(400, "batched prompts are not supported by the simulator: send one prompt per request", "prompt")
    else:
        raise RequestError(400, "`prompt` must be a string or a list of token ids", "prompt")
    if n == 0:
        raise RequestError(400, "the prompt is empty", "prompt")
    return n


class Stream:
    """One request's response: SSE chunks written as tokens come, or one JSON body at the end."""

    __slots__ = (
        "conn", "chat", "stream", "include_usage", "model", "rid", "created", "prompt_tokens", "target", "max_tokens",
        "count", "buf", "started", "recv_wall", "first_wall", "seq", "replica", "prefix", "mid", "offset", "done",
        "server",
    )

    def __init__(self, server: SimServer, conn: Connection, chat: bool, body: dict, prompt_tokens: int, target: int, max_tokens: int):
        self.server = server
        self.conn = conn
        self.chat = chat
        self.stream = bool(body.get("stream", False))
        opts = body.get("stream_options") or {}
        self.include_usage = bool(isinstance(opts, dict) and opts.get("include_usage"))
        self.model = body.get("model") or server.model_name
        if not isinstance(self.model, str):
            self.model = server.model_name
        self.rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.prompt_tokens = prompt_tokens
        self.target = target
        self.max_tokens = max_tokens
        self.count = 0
        self.buf: list[bytes] = []
        self.started = False  # response headers written
        self.recv_wall = time.monotonic()
        self.first_wall: float | None = None
        self.seq: Sequence | None = None
        self.replica: Replica | None = None
        self.offset = random.randrange(len(_TOKENS))
        self.done = False
        head = {"id": self.rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": self.created,
                "model": self.model, "system_fingerprint": FINGERPRINT}
        prefix = json.dumps(head, separators=(",", ":"))[:-1]
        if chat:
            self.prefix = (f'data: {prefix},"choices":[{{"index":0,"delta":{{"content":"').encode()
            self.mid = b'"},"logprobs":null,"finish_reason":null}]}\n\n'
        else:
            self.prefix = (f'data: {prefix},"choices":[{{"index":0,"text":"').encode()
            self.mid = b'","logprobs":null,"finish_reason":null}]}\n\n'

    @property
    def finish_reason(self) -> str:
        return "length" if self.target >= self.max_tokens else "stop"

    def head_chunk(self) -> dict:
        return {"id": self.rid, "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "system_fingerprint": FINGERPRINT}

    def token(self) -> None:
        self.count += 1
        self.server.generation_tokens += 1
        if not self.stream:
            return
        if self.count == 1 and self.chat:
            role = self.head_chunk()
            role["choices"] = [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]
            self.buf.append(b"data: " + json.dumps(role, separators=(",", ":")).encode() + b"\n\n")
        word = _TOKENS[(self.offset + self.count) % len(_TOKENS)]
        if self.count < self.target:
            self.buf.append(self.prefix + word + self.mid)
        else:
            last = self.mid.replace(b'"finish_reason":null', b'"finish_reason":"' + self.finish_reason.encode() + b'"')
            if not self.include_usage:
                # No usage chunk to carry the server's own timing: the last token chunk carries it.
                timing = json.dumps(self.timing(time.monotonic()), separators=(",", ":")).encode()
                last = last[: -len(b"}\n\n")] + b',"autotune_server_timing":' + timing + b"}\n\n"
            self.buf.append(self.prefix + word + last)
        self.server.dirty.append(self)

    def timing(self, now: float) -> dict:
        scale = self.server.sim.time_scale
        first = self.first_wall if self.first_wall is not None else now
        seq = self.seq
        return {
            "ttft_s": round((first - self.recv_wall) * scale, 6),
            "e2e_s": round((now - self.recv_wall) * scale, 6),
            "time_scale": scale,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.count,
            "preemptions": seq.preemptions if seq else 0,
            "replica": self.replica.index if self.replica else 0,
            "lag_s": round(self.replica.lag() if self.replica else 0.0, 6),
        }

    def usage(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.count, "total_tokens": self.prompt_tokens + self.count}

    def flush(self, now: float) -> None:
        if not self.buf or self.conn.closed:
            self.buf.clear()
            return
        if self.first_wall is None:
            self.first_wall = now
        data = b"".join(self.buf)
        self.buf.clear()
        if not self.started:
            self.started = True
            self.conn.write_stream_head()
        self.conn.write_chunk(data)

    def finish(self, now: float) -> None:
        """The engine produced the last token: close the response."""
        self.done = True
        if self.stream:
            self.flush(now)
            tail = []
            if self.include_usage:
                chunk = self.head_chunk()
                chunk.update(choices=[], usage=self.usage(), autotune_server_timing=self.timing(now))
                tail.append(b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n")
            tail.append(b"data: [DONE]\n\n")
            self.conn.write_chunk(b"".join(tail))
            self.conn.end_stream()
            return
        if self.first_wall is None:
            self.first_wall = now
        text = "".join(_TOKENS[(self.offset + i) % len(_TOKENS)].decode() for i in range(1, self.count + 1))
        body = self.head_chunk()
        body["object"] = "chat.completion" if self.chat else "text_completion"
        if self.chat:
            body["choices"] = [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": self.finish_reason}]
        else:
            body["choices"] = [{"index": 0, "text": text, "logprobs": None, "finish_reason": self.finish_reason}]
        body["usage"] = self.usage()
        body["autotune_server_timing"] = self.timing(now)
        self.conn.send_json(200, body)

    def fail(self, now: float, status: int, message: str) -> None:
        self.done = True
        if self.stream and self.started:
            self.flush(now)
            err = error_body(status, message)
            err["autotune_server_timing"] = self.timing(now)
            self.conn.write_chunk(b"data: " + json.dumps(err).encode() + b"\n\ndata: [DONE]\n\n")
            self.conn.end_stream()
        else:
            self.buf.clear()
            self.conn.send_json(status, error_body(status, message))


class Replica:
    """One dp rank: a scheduler and the loop that runs it in scaled real time."""

    def __init__(self, server: SimServer, index: int):
        self.server = server
        self.index = index
        self.sched = Scheduler(server.plan, random.Random(server.sim.seed * 1000 + index))
        self.wake = asyncio.Event()
        self.sim_now = 0.0  # simulated seconds since the server's epoch
        self.tokens = 0

    def lag(self) -> float:
        """How far (simulated seconds) this replica runs behind the wall clock."""
        return max(0.0, self.server.sim_clock() - self.sim_now) if self.sched.has_work() else 0.0

    def submit(self, stream: Stream, prompt: int, compute: int) -> None:
        seq = Sequence(id(stream), prompt, stream.target, compute, random.random(), self.server.sim_clock(), stream)
        stream.seq = seq
        stream.replica = self
        self.sched.add(seq)
        self.wake.set()

    def cancel(self, stream: Stream) -> None:
        if stream.seq is not None:
            self.sched.cancel(stream.seq)

    async def run(self) -> None:
        server = self.server
        loop = asyncio.get_running_loop()
        scale = server.sim.time_scale
        tick = server.sim.tick_ms / 1000.0
        emit = _emit
        last_yield = loop.time()
        while True:
            if not self.sched.has_work():
                server.flush()
                self.wake.clear()
                await self.wake.wait()
                # Requests arrive in bursts (a wave of clients): let what already reached the socket in.
                await asyncio.sleep(0)
                await asyncio.sleep(0)
                self.sim_now = max(self.sim_now, server.sim_clock())
                last_yield = loop.time()
            step = self.sched.plan_step()
            if step is None:
                server.flush()
                self.wake.clear()
                await self.wake.wait()
                continue
            end = self.sim_now + step.duration
            delay = server.wall0 + end / scale - loop.time()
            if delay > 0:
                server.flush()
                await asyncio.sleep(delay)
                last_yield = loop.time()
            elif loop.time() - last_yield >= tick:
                # Behind: let the sockets breathe, then carry on back to back.
                server.flush()
                await asyncio.sleep(0)
                last_yield = loop.time()
            self.sim_now = end
            out = self.sched.finish_step(step, end, emit)
            if out.finished or out.failed:
                server.flush()
                clock = time.monotonic
                for seq in out.finished:
                    stream = seq.sink
                    if stream is not None and not stream.done:
                        stream.finish(clock())
                for seq in out.failed:
                    stream = seq.sink
                    if stream is not None and not stream.done:
                        code, message = seq.error or (500, "failed")
                        stream.fail(clock(), code, message)
                server.completed += len(out.finished)
                server.failed += len(out.failed)
            if out.preempted:
                server.preempted += len(out.preempted)


def _emit(seq: Sequence) -> None:
    stream = seq.sink
    if stream is not None:
        stream.token()


class Connection(asyncio.Protocol):
    def __init__(self, server: SimServer):
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.busy = False  # a response is in progress
        self.keep_alive = True
        self.closed = False
        self.active: Stream | None = None
        self.continued = False

    def connection_made(self, transport) -> None:
        # no TCP_NODELAY to set: asyncio sets it on every TCP transport it makes (since Python 3.6)
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.active is not None and not self.active.done:
            self.active.done = True
            if self.active.replica is not None:
                self.active.replica.cancel(self.active)
            self.server.cancelled += 1
        self.active = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self.process()

    def process(self) -> None:
        while not self.busy and not self.closed:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > 65536:
                    self.keep_alive = False
                    self.send_json(413, error_body(413, "request headers too large"))
                return
            head = bytes(self.buffer[:end]).decode("latin-1")
            lines = head.split("\r\n")
            try:
                method, target, version = lines[0].split(" ", 2)
            except ValueError:
                self.keep_alive = False
                self.send_json(400, error_body(400, "malformed request line"))
                return
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            if headers.get("transfer-encoding", "").lower() == "chunked":
                self.keep_alive = False
                self.send_json(501, error_body(501, "chunked request bodies are not supported; send Content-Length"))
                return
            try:
                length = int(headers.get("content-length", "0") or 0)
            except ValueError:
                length = -1
            if length < 0 or length > MAX_BODY:
                self.keep_alive = False
                self.send_json(413 if length > 0 else 400, error_body(413 if length > 0 else 400, "bad Content-Length"))
                return
            if len(self.buffer) < end + 4 + length:
                if headers.get("expect", "").lower() == "100-continue" and not self.continued:
                    self.continued = True
                    self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                return
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            self.continued = False
            conn_header = headers.get("connection", "").lower()
            self.keep_alive = (version == "HTTP/1.1" and conn_header != "close") or conn_header == "keep-alive"
            self.busy = True
            try:
                self.server.handle(self, method, target.split("?", 1)[0], body)
            except Exception as exc:  # a bug in the simulator must not kill the connection silently
                log("ERROR", f"internal error handling {method} {target}: {exc!r}")
                if self.busy:
                    self.send_json(500, error_body(500, f"internal simulator error: {exc!r}"))

    # ---- writing ---------------------------------------------------------------------------------

    def _headers(self, status: int, extra: list[tuple[str, str]]) -> bytes:
        lines = [f"HTTP/1.1 {status} {_STATUS.get(status, 'Error')}", "server: autotune-simulator", "x-autotune-simulated: 1"]
        lines += [f"{k}: {v}" for k, v in extra]
        lines.append("connection: keep-alive" if self.keep_alive else "connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def send_bytes(self, status: int, body: bytes, content_type: str) -> None:
        if self.closed:
            return
        self.transport.write(self._headers(status, [("content-type", content_type), ("content-length", str(len(body)))]) + body)
        self._done()

    def send_json(self, status: int, obj) -> None:
        self.send_bytes(status, json.dumps(obj).encode(), "application/json")

    def write_stream_head(self) -> None:
        if not self.closed:
            self.transport.write(self._headers(200, [("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache"), ("transfer-encoding", "chunked")]))

    def write_chunk(self, data: bytes) -> None:
        if not self.closed and data:
            self.transport.write(b"%x\r\n%b\r\n" % (len(data), data))

    def end_stream(self) -> None:
        if not self.closed:
            self.transport.write(b"0\r\n\r\n")
        self._done()

    def _done(self) -> None:
        self.active = None
        self.busy = False
        if not self.keep_alive:
            if not self.closed:
                self.transport.close()
            self.closed = True
            return
        if self.buffer:
            asyncio.get_running_loop().call_soon(self.process)


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


class SimServer:
    def __init__(self, plan: Plan, sim: SimSettings):
        self.plan = plan
        self.sim = sim
        self.cfg = plan.cfg
        self.model_name = self.cfg.model_name
        self.ready = False
        self.wall0 = 0.0
        self.replicas: list[Replica] = []
        self.rr = 0
        self.dirty: list[Stream] = []
        self.rng = random.Random(sim.seed)
        self.completed = self.failed = self.cancelled = self.preempted = self.received = 0
        self.prompt_tokens = self.generation_tokens = 0

    def sim_clock(self) -> float:
        return (time.monotonic() - self.wall0) * self.sim.time_scale

    def start(self) -> None:
        self.wall0 = time.monotonic()
        self.replicas = [Replica(self, i) for i in range(self.cfg.dp)]
        for r in self.replicas:
            asyncio.get_running_loop().create_task(r.run())

    def flush(self) -> None:
        if not self.dirty:
            return
        clock = time.monotonic
        dirty, self.dirty = self.dirty, []
        for stream in dirty:
            if stream.buf:
                stream.flush(clock())

    # ---- routes ----------------------------------------------------------------------------------

    def handle(self, conn: Connection, method: str, path: str, body: bytes) -> None:
        if path in ("/health", "/health_generate", "/v1/health", "/ping"):
            if method not in ("GET", "HEAD", "POST"):
                return conn.send_json(405, error_body(405, f"{method} not allowed on {path}"))
            if not self.ready:
                return conn.send_json(503, error_body(503, "the simulated engine is still starting (loading weights)"))
            return conn.send_bytes(200, b"", "text/plain")
        if path in ("/v1/completions", "/v1/chat/completions"):
            if method != "POST":
                return conn.send_json(405, error_body(405, f"use POST on {path}"))
            if not self.ready:
                return conn.send_json(503, error_body(503, "the simulated engine is still starting"))
            return self.generate(conn, body, chat=path.endswith("chat/completions"))
        if method not in ("GET", "HEAD"):
            return conn.send_json(405, error_body(405, f"{method} is not allowed on {path}"))
        if path == "/v1/models":
            if not self.ready:
                return conn.send_json(503, error_body(503, "the simulated engine is still starting"))
            data = [{"id": self.model_name, "object": "model", "created": int(self.wall0), "owned_by": "autotune-simulated",
                     "root": self.cfg.model, "max_model_len": self.plan.max_model_len}]
            return conn.send_json(200, {"object": "list", "data": data})
        if path == "/version":
            return conn.send_json(200, {"version": f"{self.cfg.engine}-simulated", "simulated": True})
        if path == "/get_model_info":
            return conn.send_json(200, {"model_path": self.cfg.model, "is_generation": True, "simulated": True})
        if path in ("/autotune/plan", "/get_server_info"):
            return conn.send_json(200, self.describe())
        if path == "/metrics":
            return conn.send_bytes(200, self.metrics().encode(), "text/plain; version=0.0.4")
        return conn.send_json(404, error_body(404, f"no route {method} {path}"))

    def describe(self) -> dict:
        p = self.plan
        return {
            "simulated": True, "engine": self.cfg.engine, "model": self.cfg.model, "gpu_type": p.gpu.name,
            "gpu_count": p.gpu_count, "tp": self.cfg.tp, "pp": self.cfg.pp, "dp": self.cfg.dp,
            "params_b": p.shape.params_b, "active_params_b": p.shape.active_b, "memory_gib": p.memory,
            "mem_fraction": p.mem_fraction, "kv_capacity_tokens": p.kv_capacity, "max_running_requests": p.max_running,
            "chunk": p.chunk, "cuda_graph_max_bs": p.cuda_graph_bs, "torch_compile": p.compile, "max_model_len": p.max_model_len,
            "startup_s": p.startup_s, "time_scale": self.sim.time_scale, "seed": self.sim.seed, "warnings": p.warnings,
        }

    def metrics(self) -> str:
        running = sum(len(r.sched.running) for r in self.replicas)
        waiting = sum(len(r.sched.waiting) + len(r.sched.prefilling) for r in self.replicas)
        kv = sum(r.sched.kv_used for r in self.replicas) / max(1, self.plan.kv_capacity * len(self.replicas))
        lines = [
            "# autotune engine simulator (SIMULATED)",
            f"autotune_sim_running_requests {running}", f"autotune_sim_waiting_requests {waiting}",
            f"autotune_sim_kv_cache_usage {kv:.4f}", f"autotune_sim_requests_received_total {self.received}",
            f"autotune_sim_requests_completed_total {self.completed}", f"autotune_sim_requests_failed_total {self.failed}",
            f"autotune_sim_requests_cancelled_total {self.cancelled}", f"autotune_sim_preemptions_total {self.preempted}",
        ]
        # the engine's own names, as its /metrics shows them, so engine telemetry is tested without a real engine
        model = self.model_name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        labels = f'{{engine="0",model_name="{model}"}}' if self.cfg.engine == "vllm" else f'{{model_name="{model}"}}'
        for name, kind, value in ENGINE_METRICS[self.cfg.engine]:
            figure = {"running": running, "waiting": waiting, "kv": round(kv, 6), "preemptions": self.preempted,
                      "prompt_tokens": self.prompt_tokens, "generation_tokens": self.generation_tokens}[value]  # fmt: skip
            family = name.removesuffix("_total")
            lines += [f"# TYPE {family} {kind}", f"{name}{labels} {float(figure)}"]
        return "\n".join(lines) + "\n"

    def record(self, body: dict, chat: bool) -> None:
        """AUTOTUNE_SIM_RECORD_PROMPTS: one JSON line per accepted request (model, and prompt or messages),
        so a test can check exactly what a benchmark sent. One write per line: lines never interleave."""
        line = {"model": body.get("model"), "port": self.cfg.port}
        line.update({"messages": body.get("messages")} if chat else {"prompt": body.get("prompt")})
        try:
            with open(self.sim.record_prompts, "a", encoding="utf-8") as f:  # type: ignore[arg-type]
                f.write(json.dumps(line) + "\n")
        except OSError as exc:
            log("WARNING", f"cannot record the prompt in {self.sim.record_prompts}: {exc}")

    def generate(self, conn: Connection, raw: bytes, chat: bool) -> None:
        try:
            try:
                body = json.loads(raw or b"")
            except ValueError as exc:
                raise RequestError(400, f"the request body is not valid JSON: {exc}") from None
            if not isinstance(body, dict):
                raise RequestError(400, "the request body must be a JSON object")
            prompt = count_prompt(body, chat)
            max_tokens = body.get("max_completion_tokens") if chat and body.get("max_tokens") is None else body.get("max_tokens")
            name = "max_tokens" if body.get("max_tokens") is not None or not chat else "max_completion_tokens"
            limit = self.plan.max_model_len
            if max_tokens is None:
                max_tokens = 16 if not chat else max(1, min(4096, limit - prompt))
            else:
                max_tokens = _int_field({name: max_tokens}, name, None, 1)
            n = _int_field(body, "n", 1, 1)
            if n != 1:
                raise RequestError(400, "n > 1 is not supported by the simulator", "n")
            min_tokens = _int_field(body, "min_tokens", 0, 0)
            if min_tokens > max_tokens:
                raise RequestError(400, f"min_tokens ({min_tokens}) must be at most max_tokens ({max_tokens})", "min_tokens")
            if "stream" in body and not isinstance(body["stream"], bool):
                raise RequestError(400, "`stream` must be a boolean", "stream")
            if prompt + max_tokens > limit:
                raise RequestError(
                    400,
                    f"This model's maximum context length is {limit} tokens. However, you requested {prompt + max_tokens} "
                    f"tokens ({prompt} in the prompt, {max_tokens} in the completion). Please reduce the length of the prompt or completion.",
                    "max_tokens",
                )
            replica = self.replicas[self.rr % len(self.replicas)]
            self.rr += 1
            why = replica.sched.admissible(prompt, max_tokens)
            if why:
                raise RequestError(400, why, "max_tokens")
        except RequestError as err:
            return conn.send_json(err.status, error_body(err.status, err.message, err.param))
        target = max_tokens
        if not body.get("ignore_eos", False) and self.sim.eos_mean:
            natural = 1 + int(self.rng.expovariate(1.0 / self.sim.eos_mean))
            target = min(max_tokens, max(min_tokens, natural, 1))
        stream = Stream(self, conn, chat, body, prompt, target, max_tokens)
        conn.active = stream
        self.received += 1
        if self.sim.record_prompts:
            self.record(body, chat)
        self.prompt_tokens += prompt
        compute = max(1, int(round(prompt * (1.0 - self.plan.prefix_hit))))
        replica.submit(stream, prompt, compute)


# ---- process -------------------------------------------------------------------------------------

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
