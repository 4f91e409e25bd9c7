"""How the feeds receive messages: a lean NATS connection of their own, or nats-py.

The projector is bound by Python time (one GIL): nats-py spends ~20 us per message (a regex
parser, a Msg object, parsed headers, an asyncio queue and a task switch each). The feeds need
none of that: they subscribe to an inbox, publish pull requests and read raw deliveries. LeanWire
speaks just that much of the NATS protocol (CONNECT, SUB/UNSUB, PUB, MSG/HMSG, PING/PONG) and parses
a whole socket read at a time: ~9 us per message, measured here, so the projector keeps the GIL
for projecting. JetStream API calls still go through nats-py.

LeanWire handles plain `nats://` servers with a user/password or token in the URL, tries the
servers in turn and reconnects forever; with a credentials file or TLS the feeds use NatsPyWire.
A handler gets (subject, reply, status, description, payload); status is "" for a delivery and
e.g. "408" for a status message.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from autotune.shared.log import get_logger
from autotune.shared.settings import Settings

log = get_logger("projector")

Handler = Callable[[str, str | None, str, str, bytes], None]


async def connect(nc: NATS, settings: Settings | None, lean: bool) -> Any:
    """The feeds' wire: a LeanWire of their own where it can speak to the servers, else `nc`'s."""
    if settings is not None and lean and not settings.tls_ca and LeanWire.usable(settings.nats_url, settings.creds):
        try:
            return await LeanWire([u.strip() for u in settings.nats_url.split(",")]).connect()
        except (ConnectionError, TimeoutError) as e:
            log.warning("lean feed connection failed; reading through nats-py", error=str(e))
    return NatsPyWire(nc)


class NatsPyWire:
    """The feeds over the service's nats-py connection (credentials files, TLS)."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self._subs: dict[int, Any] = {}
        self._ids = itertools.count(1)

    def new_inbox(self) -> str:
        return self.nc.new_inbox()

    async def subscribe(self, subject: str, handler: Handler) -> int:
        async def cb(msg: Msg) -> None:
            headers = msg.headers or {}
            handler(msg.subject, msg.reply or None, headers.get("Status", ""), headers.get("Description", ""), msg.data)

        sid = next(self._ids)
        self._subs[sid] = await self.nc.subscribe(subject, cb=cb, pending_msgs_limit=-1, pending_bytes_limit=-1)
        return sid

    async def unsubscribe(self, sid: int) -> None:
        sub = self._subs.pop(sid, None)
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def publish(self, subject: str, payload: bytes, reply: str) -> None:
        task = asyncio.get_running_loop().create_task(self.nc.publish(subject, payload, reply=reply))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def close(self) -> None:
        for sid in list(self._subs):
            await self.unsubscribe(sid)


class LeanWire(asyncio.Protocol):
    """A minimal NATS client for high-rate deliveries to a few inbox subscriptions."""

    def __init__(self, servers: list[str], *, name: str = "autotune-projector-feed", ping_interval: float = 5.0) -> None:
        self.servers = servers
        self.name = name
        self.ping_interval = ping_interval
        self.connected = asyncio.Event()
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._subs: dict[int, tuple[str, Handler]] = {}
        self._ids = itertools.count(1)
        self._inbox = f"_INBOX.{socket.gethostname().replace('.', '-')}-{id(self):x}"
        self._closing = False
        self._server = 0
        self._auth: dict[str, str] = {}
        self._handshake: asyncio.Future | None = None
        self._pongs = 0
        self._keeper: asyncio.Task | None = None

    @staticmethod
    def usable(url: str, creds: str | None) -> bool:
        return not creds and all(urlsplit(u.strip()).scheme in ("nats", "") for u in url.split(","))

    # --- connection --------------------------------------------------------------------------------

    async def connect(self, timeout: float = 5.0) -> LeanWire:
        await asyncio.wait_for(self._connect_once(), timeout)
        self._keeper = asyncio.create_task(self._keep_alive(), name="lean-wire")
        return self

    async def _connect_once(self) -> None:
        last: Exception | None = None
        for _ in range(len(self.servers)):
            url = urlsplit(self.servers[self._server % len(self.servers)].strip())
            self._server += 1
            self._auth = {}
            if url.username and url.password is not None:
                self._auth = {"user": unquote(url.username), "pass": unquote(url.password)}
            elif url.username:
                self._auth = {"auth_token": unquote(url.username)}
            try:
                loop = asyncio.get_running_loop()
                self._handshake = loop.create_future()
                self._buf = bytearray()
                await loop.create_connection(lambda: self, url.hostname or "127.0.0.1", url.port or 4222)
                await asyncio.wait_for(self._handshake, 5.0)
            except (OSError, TimeoutError, ConnectionError) as e:
                last = e
                if self._transport is not None:
                    self._transport.close()
                continue
            for sid, (subject, _) in self._subs.items():
                self._write(f"SUB {subject} {sid}\r\n".encode())
            self.connected.set()
            return
        from autotune.shared.security import redacted

        raise ConnectionError(f"cannot reach any NATS server of {[redacted(s) for s in self.servers]}: {last}")

    async def _keep_alive(self) -> None:
        """Ping to notice a dead connection; reconnect forever while open."""
        while not self._closing:
            await asyncio.sleep(self.ping_interval)
            if not self.connected.is_set():
                try:
                    await self._connect_once()
                    log.info("feed connection restored")
                except (ConnectionError, TimeoutError) as e:
                    log.warning("feed connection down; retrying", error=str(e))
                continue
            pongs = self._pongs
            self._write(b"PING\r\n")
            await asyncio.sleep(self.ping_interval)
            if self._pongs == pongs and self._transport is not None and not self._closing:
                log.warning("feed connection stalled; reconnecting")
                self._transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self.connected.clear()
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_exception(ConnectionError("closed during the handshake"))

    async def close(self) -> None:
        self._closing = True
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        if self._transport is not None:
            self._transport.close()

    def _write(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)

    # --- the feeds' side -------------------------------------------------------------------------------

    def new_inbox(self) -> str:
        return f"{self._inbox}.{next(self._ids)}"

    async def subscribe(self, subject: str, handler: Handler) -> int:
        sid = next(self._ids)
        self._subs[sid] = (subject, handler)
        self._write(f"SUB {subject} {sid}\r\n".encode())
        return sid

    async def unsubscribe(self, sid: int) -> None:
        if self._subs.pop(sid, None) is not None:
            self._write(f"UNSUB {sid}\r\n".encode())

    def publish(self, subject: str, payload: bytes, reply: str) -> None:
        self._write(b"PUB %s %s %d\r\n%s\r\n" % (subject.encode(), reply.encode(), len(payload), payload))

    # --- parsing -----------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos, n = 0, len(buf)
        subs = self._subs
        while True:
            end = buf.find(b"\r\n", pos)
            if end < 0:
                break
            head = buf[pos : pos + 4]
            if head == b"HMSG" or head == b"MSG ":
                hmsg = head == b"HMSG"
                args = bytes(buf[pos + (5 if hmsg else 4) : end]).split(b" ")
                total = int(args[-1])
                start = end + 2
                if start + total + 2 > n:
                    break  # the rest of this message is in the next read
                hlen = int(args[-2]) if hmsg else 0
                has_reply = len(args) == (5 if hmsg else 4)
                entry = subs.get(int(args[1]))
                if entry is not None:
                    status = desc = ""
                    if hlen and buf[start + 8 : start + 9] == b" ":  # "NATS/1.0 408 Request Timeout"
                        first = bytes(buf[start + 9 : buf.find(b"\r\n", start)]).decode()
                        status, _, desc = first.partition(" ")
                    try:
                        entry[1](
                            args[0].decode(),
                            args[2].decode() if has_reply else None,
                            status,
                            desc,
                            bytes(buf[start + hlen : start + total]),
                        )
                    except Exception as e:  # a handler's bug must not take the connection down
                        log.error("feed handler failed", exc=True, error=repr(e))
                pos = start + total + 2
                continue
            line = bytes(buf[pos:end])
            pos = end + 2
            if line == b"PING":
                self._write(b"PONG\r\n")
            elif line == b"PONG":
                self._pongs += 1
                if self._handshake is not None and not self._handshake.done():
                    self._handshake.set_result(True)
            elif line.startswith(b"INFO"):
                if self._handshake is not None and not self._handshake.done():
                    opts = {
                        "verbose": False, "pedantic": False, "headers": True, "no_responders": True, "protocol": 1,
                        "lang": "python", "version": "autotune-lean", "name": self.name, **self._auth,
                    }  # fmt: skip
                    self._write(b"CONNECT " + json.dumps(opts).encode() + b"\r\nPING\r\n")
            elif line.startswith(b"-ERR"):
                log.warning("feed connection error from the server", error=line.decode(errors="replace"))
        del buf[:pos]
