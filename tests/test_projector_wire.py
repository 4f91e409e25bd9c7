"""The feeds' lean NATS protocol parser: frames split anywhere across socket reads."""

from __future__ import annotations

import asyncio

from autotune.projector.feed import parse_ack_reply
from autotune.projector.wire import LeanWire


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        pass


STREAM = (
    b"INFO {}\r\n"
    b"MSG _INBOX.a 1 $JS.ACK.S.c.1.10.1.1700000000000000000.5 5\r\nhello\r\n"
    b"PING\r\n"
    b"HMSG _INBOX.a 1 $JS.ACK.S.c.1.11.2.1700000000000000001.4 28 33\r\nNATS/1.0\r\nNats-Msg-Id: x\r\n\r\nworld\r\n"
    b"HMSG _INBOX.a 1 49 49\r\nNATS/1.0 408 Request Timeout\r\nNats-Pending: 1\r\n\r\n\r\n"
    b"MSG _INBOX.other 9 3\r\nnot\r\n"
    b"HMSG _INBOX.a 1 $JS.ACK.S.c.1.12.3.1700000000000000002.0 12 12\r\nNATS/1.0\r\n\r\n\r\n"
    b"PONG\r\n"
)


async def test_frames_split_anywhere_parse_the_same():
    async def run(chunks: list[bytes]) -> tuple[list, list[bytes]]:
        got: list = []
        wire = LeanWire(["nats://127.0.0.1:1"])
        wire.connection_made(FakeTransport())  # type: ignore[arg-type]
        await wire.subscribe("_INBOX.a", lambda *a: got.append(a))
        for c in chunks:
            wire.data_received(c)
        return got, wire._transport.written  # type: ignore[union-attr]

    whole, _ = await run([STREAM])
    assert whole == [
        ("_INBOX.a", "$JS.ACK.S.c.1.10.1.1700000000000000000.5", "", "", b"hello"),
        ("_INBOX.a", "$JS.ACK.S.c.1.11.2.1700000000000000001.4", "", "", b"world"),
        ("_INBOX.a", None, "408", "Request Timeout", b""),
        ("_INBOX.a", "$JS.ACK.S.c.1.12.3.1700000000000000002.0", "", "", b""),
    ]
    for cut in range(1, len(STREAM)):
        got, written = await run([STREAM[:cut], STREAM[cut:]])
        assert got == whole, cut
        assert b"PONG\r\n" in written
    got, _ = await run([STREAM[i : i + 1] for i in range(len(STREAM))])
    assert got == whole


def test_ack_reply_v1_and_v2():
    assert parse_ack_reply("$JS.ACK.S.c.1.10.1.1700000000000000000.5") == (10, 1, 1700000000000000000, 5)
    assert parse_ack_reply("$JS.ACK.dom.acchash.S.c.1.10.1.1700000000000000000.5.tok") == (10, 1, 1700000000000000000, 5)


async def test_connect_sends_credentials_from_the_url():
    wire = LeanWire(["nats://alice:s3cr%40t@127.0.0.1:1"])
    t = FakeTransport()
    wire.connection_made(t)  # type: ignore[arg-type]
    wire._handshake = asyncio.get_running_loop().create_future()
    wire._auth = {"user": "alice", "pass": "s3cr@t"}
    wire.data_received(b'INFO {"server_id": "x"}\r\n')
    assert t.written and b'"user": "alice"' in t.written[0] and b'"pass": "s3cr@t"' in t.written[0]
    wire.data_received(b"PONG\r\n")
    assert wire._handshake.done()
    assert LeanWire.usable("nats://a:b@h:4222,nats://h2:4222", None)
    assert not LeanWire.usable("tls://h:4222", None) and not LeanWire.usable("nats://h:4222", "/x.creds")
