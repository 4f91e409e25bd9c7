"""A lean HTTP/1.1 client for streamed completions, on asyncio protocols.

aiohttp costs ~30 us of CPU per SSE event through its stream reader; at tens of thousands of tokens per
second on two cores that makes the client the bottleneck and skews its own clock. Here each response
is parsed inside `data_received` (chunked or Content-Length bodies), the SSE events of a read are split
there, and every event is stamped with the time the bytes reached Python - the earliest point a Python
client can observe. Plain token events are recognised by substring tests without decoding JSON; any
other event (usage, errors, finish reasons, unknown shapes) is decoded with msgspec.

Connections are kept alive and reused (one request at a time each). https works through the default SSL
context. Cancelling a request closes its connection, which tells the server to drop the request.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import msgspec

_clock = time.perf_counter


class _Delta(msgspec.Struct):
    content: str | None = None
    role: str | None = None


class _Choice(msgspec.Struct):
    text: str | None = None
    delta: _Delta | None = None
    finish_reason: str | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class _Error(msgspec.Struct):
    message: str | None = None
    code: int | str | None = None


class _Chunk(msgspec.Struct):
    choices: list[_Choice] = []
    usage: _Usage | None = None
    error: _Error | str | None = None
    autotune_server_timing: dict | None = None


_decode_chunk = msgspec.json.Decoder(_Chunk).decode


def error_kind(code) -> str:
    try:
        return f"http_{int(code)}"
    except (TypeError, ValueError):
        return "http_500"


@dataclass
class RequestResult:
    """One request as seen on the wire; times are wall-clock seconds from when it was sent."""

    sent: float  # perf_counter when the request was handed to the socket
    ok: bool = False
    status: int = 0
    ttft: float | None = None
    e2e: float = 0.0
    gaps: list[float] = field(default_factory=list)  # between content chunks
    chunks: int = 0  # content chunks (tokens, for servers that send one token per chunk)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None
    message: str = ""
    server_timing: dict | None = None
    reused: bool = False  # sent on a kept-alive connection


class _Exchange:
    """Parses one response: status, headers, body framing, SSE events."""

    __slots__ = ("result", "future", "state", "buf", "status", "chunked", "remaining", "keep_alive", "sse", "body",
                 "last", "done_event", "finished", "stream")

    HEAD, BODY, CHUNK_SIZE, CHUNK_DATA, CHUNK_CRLF, TRAILER, END = range(7)

    def __init__(self, result: RequestResult, future: asyncio.Future, stream: bool):
        self.result = result
        self.future = future
        self.state = self.HEAD
        self.buf = b""
        self.status = 0
        self.chunked = False
        self.remaining = -1  # Content-Length left, -1 = until close
        self.keep_alive = True
        self.sse = b""
        self.body: list[bytes] = []
        self.last = 0.0
        self.done_event = False
        self.finished = False
        self.stream = stream

    def feed(self, data: bytes, now: float) -> bool:
        """Consume bytes; True when the response is complete."""
        buf = self.buf + data if self.buf else data
        self.buf = b""
        while buf:
            st = self.state
            if st == self.HEAD:
                i = buf.find(b"\r\n\r\n")
                if i < 0:
                    self.buf = buf
                    return False
                self._head(buf[:i].decode("latin-1"))
                buf = buf[i + 4 :]
                if self.status == 100:
                    self.state = self.HEAD
                    continue
                if not self.chunked and self.remaining == 0:
                    self.state = self.END
                    return True
                self.state = self.CHUNK_SIZE if self.chunked else self.BODY
            elif st == self.BODY:
                if self.remaining < 0:
                    self._data(buf, now)
                    return False
                piece = buf[: self.remaining]
                self.remaining -= len(piece)
                buf = buf[len(piece) :]
                self._data(piece, now)
                if self.remaining == 0:
                    self.state = self.END
                    return True
            elif st == self.CHUNK_SIZE:
                i = buf.find(b"\r\n")
                if i < 0:
                    self.buf = buf
                    return False
                size = int(buf[:i].split(b";", 1)[0].strip() or b"0", 16)
                buf = buf[i + 2 :]
                if size == 0:
                    self.state = self.TRAILER
                else:
                    self.remaining = size
                    self.state = self.CHUNK_DATA
            elif st == self.CHUNK_DATA:
                piece = buf[: self.remaining]
                self.remaining -= len(piece)
                buf = buf[len(piece) :]
                self._data(piece, now)
                if self.remaining == 0:
                    self.state = self.CHUNK_CRLF
            elif st == self.CHUNK_CRLF:
                if len(buf) < 2:
                    self.buf = buf
                    return False
                buf = buf[2:]
                self.state = self.CHUNK_SIZE
            elif st == self.TRAILER:
                i = buf.find(b"\r\n")
                if i < 0:
                    self.buf = buf
                    return False
                line, buf = buf[:i], buf[i + 2 :]
                if not line:
                    self.state = self.END
                    return True
            else:
                return True
        return self.state == self.END

    def _head(self, text: str) -> None:
        lines = text.split("\r\n")
        parts = lines[0].split(" ", 2)
        self.status = int(parts[1])
        version = parts[0]
        self.result.status = self.status
        conn = ""
        self.remaining = -1
        self.chunked = False
        for line in lines[1:]:
            k, _, v = line.partition(":")
            k = k.strip().lower()
            if k == "content-length":
                self.remaining = int(v.strip())
            elif k == "transfer-encoding" and "chunked" in v.lower():
                self.chunked = True
            elif k == "connection":
                conn = v.strip().lower()
        self.keep_alive = (version == "HTTP/1.1" and conn != "close") or conn == "keep-alive"
        if self.remaining < 0 and not self.chunked:
            self.keep_alive = False

    def _data(self, data: bytes, now: float) -> None:
        if self.status != 200 or not self.stream:
            self.body.append(data)
            return
        sse = self.sse + data if self.sse else data
        start = 0
        while True:
            i = sse.find(b"\n\n", start)
            if i < 0:
                break
            self._event(sse[start:i], now)
            start = i + 2
        self.sse = sse[start:]

    def _event(self, event: bytes, now: float) -> None:
        res = self.result
        for line in event.split(b"\n") if b"\n" in event else (event,):
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].lstrip()
            if payload == b"[DONE]":
                self.done_event = True
                continue
            # Fast path: a plain token chunk (no usage, error, finish reason or server timing).
            # A chunk with empty text is a token too: a byte-level BPE token that does not complete a
            # character comes with text "" (vLLM sends it; its own client counts it). Chat's first
            # chunk, the assistant role with content "", is not.
            if (b'finish_reason":null' in payload and b'"usage"' not in payload and b'"error"' not in payload
                    and b"autotune_server_timing" not in payload):
                if b'"text":"' in payload:
                    self._token(now)
                    continue
                if b'"content":"' in payload:
                    if b'"role"' not in payload or b'"content":""' not in payload:
                        self._token(now)
                    continue
            try:
                chunk = _decode_chunk(payload)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            if chunk.error is not None:
                if isinstance(chunk.error, _Error):
                    res.error, res.message = error_kind(chunk.error.code), chunk.error.message or ""
                else:
                    res.error, res.message = "http_500", str(chunk.error)
            for choice in chunk.choices:
                if choice.text is not None:  # completions: every chunk of text is a token, even an empty one
                    token = bool(choice.text) or not choice.finish_reason
                else:  # chat: content, but not the role chunk's empty content
                    d = choice.delta
                    token = d is not None and d.content is not None and (bool(d.content) or (d.role is None and not choice.finish_reason))
                if token:
                    self._token(now)
                if choice.finish_reason:
                    self.finished = True
            if chunk.usage is not None:
                res.prompt_tokens = chunk.usage.prompt_tokens
                res.completion_tokens = chunk.usage.completion_tokens
            if chunk.autotune_server_timing is not None:
                res.server_timing = chunk.autotune_server_timing

    def _token(self, now: float) -> None:
        res = self.result
        if res.ttft is None:
            res.ttft = now - res.sent
        else:
            res.gaps.append(now - self.last)
        self.last = now
        res.chunks += 1

    def complete(self, now: float) -> None:
        res = self.result
        res.e2e = now - res.sent
        if self.status != 200:
            res.error = res.error or f"http_{self.status}"
            res.message = b"".join(self.body)[:500].decode("utf-8", "replace")
        elif not self.stream:
            self._non_stream()
        elif res.error is None:
            if not (self.done_event or self.finished):
                res.error = "incomplete_stream"
            elif res.ttft is None:
                res.error = "empty_response"
        res.ok = res.error is None
        if not self.future.done():
            self.future.set_result(res)

    def _non_stream(self) -> None:
        res = self.result
        try:
            data = msgspec.json.decode(b"".join(self.body))
        except msgspec.DecodeError:
            res.error = "bad_response"
            return
        usage = data.get("usage") or {}
        res.prompt_tokens = usage.get("prompt_tokens")
        res.completion_tokens = usage.get("completion_tokens")
        res.server_timing = data.get("autotune_server_timing")
        res.ttft = res.e2e  # no tokens before the whole answer
        res.chunks = 1


class _Connection(asyncio.Protocol):
    def __init__(self, client: HttpClient):
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.exchange: _Exchange | None = None
        self.closed = False

    def connection_made(self, transport) -> None:
        # no TCP_NODELAY to set: asyncio sets it on every TCP transport it makes (since Python 3.6)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        now = _clock()
        ex = self.exchange
        if ex is None:
            return
        try:
            complete = ex.feed(data, now)
        except (ValueError, IndexError) as exc:
            ex.result.error, ex.result.message = "bad_response", repr(exc)
            self.exchange = None
            ex.result.e2e = now - ex.result.sent
            if not ex.future.done():
                ex.future.set_result(ex.result)
            self.transport.close()
            return
        if complete:
            self.exchange = None
            ex.complete(now)
            if ex.keep_alive and not self.closed:
                self.client._release(self)
            else:
                self.transport.close()

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.client._forget(self)
        ex = self.exchange
        if ex is not None:
            self.exchange = None
            now = _clock()
            if ex.remaining < 0 and ex.state == _Exchange.BODY:
                ex.complete(now)  # body delimited by the close
            elif not ex.future.done():
                ex.result.error = "disconnected"
                ex.result.message = str(exc) if exc else "the server closed the connection mid-response"
                ex.result.e2e = now - ex.result.sent
                ex.future.set_result(ex.result)


class HttpClient:
    """Keep-alive connections to one origin; `post_stream` sends one JSON request and times the response."""

    def __init__(self, base_url: str, *, connect_timeout: float = 30.0):
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"{base_url!r}: only http:// and https:// URLs are supported")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self.prefix = parts.path.rstrip("/")
        self.host_header = parts.netloc
        self.connect_timeout = connect_timeout
        self.idle: list[_Connection] = []
        self.all: set[_Connection] = set()

    async def _acquire(self, fresh: bool = False) -> tuple[_Connection, bool]:
        """A connection and whether it was reused from the pool."""
        while self.idle and not fresh:
            conn = self.idle.pop()
            if not conn.closed:
                return conn, True
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(
            loop.create_connection(lambda: _Connection(self), self.host, self.port, ssl=self.ssl), self.connect_timeout
        )
        self.all.add(conn)
        return conn, False

    def _release(self, conn: _Connection) -> None:
        self.idle.append(conn)

    def _forget(self, conn: _Connection) -> None:
        self.all.discard(conn)

    async def post_stream(self, path: str, body: bytes, *, stream: bool = True, timeout: float | None = None) -> RequestResult:
        """POST `body` (JSON) to `path`. Never raises for request failures: they come back as result.error.

        A kept-alive connection the server closed while idle (uvicorn does after 5 s) fails before any
        response byte arrives; the request is then sent once more on a new connection.
        """
        res = await self._attempt(path, body, stream, timeout, fresh=False)
        if res.reused and res.error == "disconnected" and res.status == 0:
            res = await self._attempt(path, body, stream, timeout, fresh=True)
        return res

    async def _attempt(self, path: str, body: bytes, stream: bool, timeout: float | None, fresh: bool) -> RequestResult:
        res = RequestResult(sent=_clock())
        try:
            conn, res.reused = await self._acquire(fresh)
        except (OSError, TimeoutError) as exc:
            res.e2e = _clock() - res.sent
            res.error = "timeout" if isinstance(exc, TimeoutError) else "connection"
            res.message = str(exc) or type(exc).__name__
            return res
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        conn.exchange = _Exchange(res, future, stream)
        head = (
            f"POST {self.prefix}{path} HTTP/1.1\r\nhost: {self.host_header}\r\ncontent-type: application/json\r\n"
            f"accept: text/event-stream, application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        ).encode()
        res.sent = _clock()
        conn.transport.write(head + body)
        try:
            if timeout:
                return await asyncio.wait_for(asyncio.shield(future), timeout)
            return await future
        except TimeoutError:
            conn.exchange = None
            conn.transport.close()
            res.e2e = _clock() - res.sent
            res.error, res.message = "timeout", f"no complete response within {timeout} s"
            return res
        except asyncio.CancelledError:
            conn.exchange = None
            conn.transport.close()
            raise

    async def close(self) -> None:
        for conn in list(self.all):
            if conn.transport is not None:
                conn.transport.close()
        self.idle.clear()
        self.all.clear()
        await asyncio.sleep(0)

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
