"""An OpenAI completions or chat-completions request: its validation, the OpenAI error shape, and the
response (SSE chunks written as tokens come, or one JSON body at the end)."""

from __future__ import annotations

import json
import random
import time
import uuid
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .connection import Connection
    from .replica import Replica
    from .scheduler import Sequence
    from .server import SimServer

FINGERPRINT = "autotune-simulated"
_WORDS = (  # noqa: SIM905 - a word list reads better as text
    "the of and to in is that it for as with was on be by at this are from or an which have not but they all "
    "one we can their has been more were will when there would so what about if into time only also may its "
    "other new after some these two first than any most over such"
).split()
_TOKENS = [(" " + w).encode() for w in _WORDS]
_ERROR_TYPE = {400: "BadRequestError", 404: "NotFoundError", 405: "MethodNotAllowed", 413: "BadRequestError",
               500: "InternalServerError", 501: "NotImplementedError", 503: "ServiceUnavailableError"}


class RequestError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


def error_body(status: int, message: str, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": _ERROR_TYPE.get(status, "Error"), "param": param, "code": status},
            "object": "error", "system_fingerprint": FINGERPRINT}


def int_field(body: dict, name: str, default: int | None, low: int) -> int | None:
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
