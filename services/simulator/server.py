"""The simulated engine's OpenAI-compatible server: its routes, its state (the replicas, the counters),
and the admission of a completions request (validated, then sent to a replica round-robin)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import TYPE_CHECKING

from .completions import RequestError, Stream, count_prompt, error_body, int_field
from .log import log
from .prometheus import exposition
from .replica import Replica

if TYPE_CHECKING:
    from .config import SimSettings
    from .connection import Connection
    from .perfmodel import Plan


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
        self.steps = 0  # forward passes, across replicas (vLLM's iteration_tokens histogram counts them)

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
            return conn.send_bytes(200, exposition(self).encode(), "text/plain; version=0.0.4")
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
                max_tokens = int_field({name: max_tokens}, name, None, 1)
            n = int_field(body, "n", 1, 1)
            if n != 1:
                raise RequestError(400, "n > 1 is not supported by the simulator", "n")
            min_tokens = int_field(body, "min_tokens", 0, 0)
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
