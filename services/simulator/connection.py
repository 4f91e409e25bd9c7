"""A small HTTP/1.1 server connection on an asyncio protocol: keep-alive, Content-Length request bodies,
chunked SSE responses. The standard library's http.server needs a thread per stream, and a few hundred
streams must fit on two cores."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

from .completions import error_body
from .log import log

if TYPE_CHECKING:
    from .completions import Stream
    from .server import SimServer

_STATUS = {
    200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 413: "Payload Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
}
MAX_BODY = 64 * 1024 * 1024


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
