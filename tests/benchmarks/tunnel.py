"""Direct NATS vs `--via ssh-tunnel`, measured: a host in a network namespace (tests/fixtures/sshlab.py)
talks to a nats-server on the controller's bridge address, once directly and once through the reverse
SSH tunnel `autotune tunnel` holds (autotune.deploy.tunnel.hold, asyncssh, the same code).

Per path: request/reply round trips (p50/p99, ms), acknowledged JetStream publishes per second (what
a runner's events are), core publish throughput (MB/s, what GPU samples and log lines look like
in bulk), and for the tunnel the time from killing its SSH session to the next answered request.
Needs root, iproute2 and openssh-server. Prints one JSON line.

    just bench tunnel            # --n 2000 requests, --mb 64 of payload
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from autotune.deploy import tunnel  # noqa: E402
from autotune.shared.natsserver import NatsServer  # noqa: E402
from tests.fixtures import sshlab  # noqa: E402

CLIENT = r"""
import asyncio, json, sys, time
import nats
async def main(url, n, mb, recover):
    nc = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    js = nc.jetstream()
    rtt = []
    for _ in range(n):
        t = time.perf_counter(); await nc.request("bench.echo", b"x" * 64, timeout=5); rtt.append((time.perf_counter() - t) * 1000)
    rtt.sort()
    t = time.perf_counter(); acks = 0
    while time.perf_counter() - t < 3:
        await js.publish("bench.events", b"e" * 512); acks += 1
    acked = acks / (time.perf_counter() - t)
    payload = b"p" * 16384; count = mb * 1024 * 1024 // len(payload)
    t = time.perf_counter()
    for _ in range(count):
        await nc.publish("bench.bulk", payload)
    await nc.flush(timeout=60)
    bulk = mb / (time.perf_counter() - t)
    out = {"rtt_p50_ms": round(rtt[len(rtt) // 2], 3), "rtt_p99_ms": round(rtt[int(len(rtt) * 0.99)], 3), "acked_publish_per_s": round(acked), "bulk_mb_per_s": round(bulk, 1)}
    if recover:
        print(json.dumps(out), flush=True)
        sys.stdin.readline()  # the session is killed now
        t = time.perf_counter()
        while True:
            try:
                await nc.request("bench.echo", b"x", timeout=0.5); break
            except Exception:
                await asyncio.sleep(0.05)
        out = {"recovered_s": round(time.perf_counter() - t, 2)}
    print(json.dumps(out), flush=True)
    await nc.close()
asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"))
"""


async def responder(url: str, stop: asyncio.Event) -> None:
    import nats

    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name="BENCH", subjects=["bench.events"])

    async def echo(msg) -> None:
        await msg.respond(msg.data)

    await nc.subscribe("bench.echo", cb=echo)
    await stop.wait()
    await nc.close()


def client(ns: str, url: str, n: int, mb: int, recover: bool) -> subprocess.Popen:
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", CLIENT, url, str(n), str(mb), "1" if recover else "0"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000, help="request/reply round trips per path")
    ap.add_argument("--mb", type=int, default=64, help="MB of core publishes per path")
    args = ap.parse_args()
    if why := sshlab.available():
        sys.exit(f"tunnel benchmark: {why}")
    work = Path(tempfile.mkdtemp(prefix="autotune-bench-tunnel-"))
    lab = sshlab.Lab(work / "lab").start()
    server = None
    stop = asyncio.Event()
    serving = None
    try:
        host = lab.add_host("h")
        lab.trust(host)
        server = NatsServer(work / "nats", host=lab.controller_address).start()
        serving = asyncio.create_task(responder(server.url, stop))
        await asyncio.sleep(0.5)
        out: dict = {"host": "network namespace on this machine (veth + bridge)", "n": args.n, "mb": args.mb}
        p = client(host.ns, server.url, args.n, args.mb, False)
        stdout, stderr = await asyncio.to_thread(p.communicate, None, 600)
        assert p.returncode == 0, stderr
        out["direct"] = json.loads(stdout)

        port = 14222
        cfg = tunnel.TunnelConfig(
            host="bench", target=host.url(), identity=str(lab.client_key), known_hosts=str(lab.known_hosts), remote_port=port,
            nats_host=lab.controller_address, nats_port=server.port,
        )
        tstop = asyncio.Event()
        holding = asyncio.create_task(tunnel.hold(cfg, tstop))
        await asyncio.sleep(1.5)
        p = client(host.ns, f"nats://127.0.0.1:{port}", args.n, args.mb, True)
        line = await asyncio.to_thread(p.stdout.readline)
        out["ssh_tunnel"] = json.loads(line)
        for pid in host.pids():  # kill the tunnel's SSH session on the host
            if pid != host.sshd.pid and "sshd" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"):
                os.kill(pid, signal.SIGKILL)
        p.stdin.write("go\n")
        p.stdin.flush()
        stdout, stderr = await asyncio.to_thread(p.communicate, None, 120)
        assert p.returncode == 0, stderr
        out["ssh_tunnel"].update(json.loads(stdout.strip().splitlines()[-1]))
        tstop.set()
        await holding
        d, t = out["direct"], out["ssh_tunnel"]
        out["tunnel_rtt_overhead_ms"] = round(t["rtt_p50_ms"] - d["rtt_p50_ms"], 3)
        out["tunnel_bulk_ratio"] = round(t["bulk_mb_per_s"] / d["bulk_mb_per_s"], 2) if d["bulk_mb_per_s"] else None
        print(json.dumps(out))
    finally:
        stop.set()
        if serving is not None:
            await asyncio.gather(serving, return_exceptions=True)
        if server is not None:
            server.stop()
        lab.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
