"""Did the new node come up? Read from the log: this host's `registered` event after the start (a new
instance, the release's version, the GPUs expected) and a GPU sample from its monitor. No success
is ever reported without them."""

from __future__ import annotations

import asyncio
import time

import msgspec
from nats.js.errors import NotFoundError

from autotune.deploy.probe import Facts
from autotune.runner.gpus import parse_simulated
from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from autotune.shared import bus, commands


class NotRegistered(RuntimeError):
    pass


class Mark(msgspec.Struct, frozen=True):
    """Where the log stood before the node started: only what comes after counts."""

    registered_seq: int
    gpu_seq: int


async def mark(js, host: str) -> Mark:
    return Mark(
        await bus.last_seq(js, subj.host(host, "registered")),
        await bus.last_seq(js, f"{subj.PREFIX}.gpu.{host}.*", subj.TELEMETRY_STREAM),
    )


def expected_gpus(simulate: str | None, facts: Facts) -> list[str]:
    """The GPU names the node should report: the simulated set, else what nvidia-smi listed."""
    if simulate:
        return [g.name for g in parse_simulated(simulate)]
    return [g.name for g in facts.gpus]


def gpu_mismatch(registered: ev.HostRegistered, expected: list[str]) -> str | None:
    got = [g.name for g in registered.gpus]
    if not expected:
        return None if got else "it reports no GPUs"
    if len(got) != len(expected) or any(e not in g and g not in e for g, e in zip(got, expected, strict=True)):
        return f"it reports {len(got)} GPU(s) ({', '.join(got) or 'none'}); expected {len(expected)} ({', '.join(expected)})"
    return None


async def registered(js, host: str, since: Mark, *, timeout: float, version: str, expected: list[str], alive=None) -> ev.HostRegistered:
    """The first `registered` of `host` after `since`, checked; raises NotRegistered with why."""
    subject = subj.host(host, "registered")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    got: ev.HostRegistered | None = None
    while got is None:
        try:
            msg = await js.get_last_msg(subj.EVENTS_STREAM, subject)
        except NotFoundError:
            msg = None
        if msg is not None and (msg.seq or 0) > since.registered_seq:
            e = ev.decode(msg.data or b"")
            if isinstance(e, ev.HostRegistered):
                got = e
                break
        if loop.time() > deadline:
            raise NotRegistered(f"host {host} did not register within {timeout:.0f}s")
        if alive is not None and not await alive():
            raise NotRegistered(f"the node of {host} is not running (it exited)")
        await asyncio.sleep(0.3)
    if version and got.version != version:
        raise NotRegistered(f"host {host} registered version {got.version or '?'}, not {version}: an old node is still running?")
    if why := gpu_mismatch(got, expected):
        raise NotRegistered(f"host {host} registered, but {why}")
    while await bus.last_seq(js, f"{subj.PREFIX}.gpu.{host}.*", subj.TELEMETRY_STREAM) <= since.gpu_seq:
        if loop.time() > deadline:
            raise NotRegistered(f"host {host} registered, but its GPU monitor sent no sample within {timeout:.0f}s")
        await asyncio.sleep(0.3)
    return got


async def drain(js, host: str, timeout: float) -> str:
    """Ask the host to take no new experiments and wait until its running ones are done (or `timeout`)."""
    from autotune.reads.hosts import live_hosts

    live = (await live_hosts(js, [host])).get(host)
    if live is None or not live.running:
        return "nothing running"
    before = await bus.last_seq(js, subj.host(host, "drained"))
    await commands.drain_host(js, host, requested_by="deploy")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await bus.last_seq(js, subj.host(host, "drained")) > before:
            return f"{len(live.running)} experiment(s) finished"
        await asyncio.sleep(0.5)
    return f"{len(live.running)} experiment(s) still running after {timeout:.0f}s: stopping moves them to other hosts"
