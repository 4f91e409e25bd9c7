"""A 3-node NATS cluster on loopback for the chaos suite (`chaos.py --cluster`).

Each node runs the configuration `autotune.shared.security.render_cluster_config` renders for a real
fleet (routes, `sync_interval: always`, a user per role and host, route authorization); a node can be
SIGKILLed and started again from the same configuration and store, so it rejoins and catches up. Every
service connects as its own role with the URLs of all three nodes, and streams are replicated x3.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from autotune.schemas import subjects as subj
from autotune.shared import security
from autotune.shared.natsserver import NatsServer
from autotune.shared.net import free_port
from autotune.shared.settings import Settings

# A liveness key must outlive a stream leader election (up to ~10 s after a node dies), or every node
# failure also declares the hosts lost: 15 s, as infra/nats/README.md recommends for clusters.
HOST_TTL_S = 15.0
REPLICAS = 3


class LocalCluster:
    """Nodes n1..n<size>, their configs (0600) and stores under `root`, credentials under `root/data`."""

    def __init__(self, root: Path, hosts: list[str], *, size: int = 3, logs: Path | None = None) -> None:
        self.root, self.logs = root, logs or root
        self.data_dir = root / "data"
        self.peers = [
            security.ClusterPeer(name=f"n{i}", host="127.0.0.1", client_port=free_port(), cluster_port=free_port())
            for i in range(1, size + 1)
        ]
        self.passwords = security.generate_credentials(self.data_dir, hosts)
        self.servers: dict[str, NatsServer] = {}
        route_password = secrets.token_urlsafe(24)
        for i, peer in enumerate(self.peers, start=1):
            text = security.render_cluster_config(
                i, self.peers, store_dir=str(self._store(peer.name)), hosts=hosts, passwords=self.passwords, route_password=route_password,
            )
            fd = os.open(self._conf(peer.name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)

    def _store(self, name: str) -> Path:
        return self.root / "nats" / name

    def _conf(self, name: str) -> Path:
        return self.root / f"nats-{name}.conf"

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.peers]

    def start(self, name: str) -> None:
        """Start (or restart, from its store) one node."""
        self.servers[name] = NatsServer(self._store(name), config=str(self._conf(name)), log_file=str(self.logs / f"nats-{name}.log")).start()

    def start_all(self) -> LocalCluster:
        for name in self.names:
            self.start(name)
        return self

    def kill(self, name: str) -> None:
        self.servers[name].stop(kill=True)

    def alive(self, name: str) -> bool:
        s = self.servers.get(name)
        return bool(s and s.proc and s.proc.poll() is None)

    def url(self, user: str, *only: str) -> str:
        """Every node's URL (or only these nodes'), each with `user`'s credentials."""
        urls = ",".join(f"nats://127.0.0.1:{p.client_port}" for p in self.peers if not only or p.name in only)
        return security.nats_url(urls, user, self.passwords[user])

    def settings(self, user: str) -> Settings:
        return Settings(nats_url=self.url(user), data_dir=str(self.data_dir), replicas=REPLICAS, host_ttl_s=HOST_TTL_S)

    def env(self, user: str) -> dict[str, str]:
        """A service's environment: its own user (never on a command line, which `ps` shows), every node."""
        return {
            "AUTOTUNE_NATS_URL": self.url(user), "AUTOTUNE_DATA_DIR": str(self.data_dir),
            "AUTOTUNE_REPLICAS": str(REPLICAS), "AUTOTUNE_HOST_TTL_S": f"{HOST_TTL_S:g}",
        }

    def stop(self) -> None:
        for s in self.servers.values():
            s.stop()


async def healthy(js) -> bool:
    """Every stream and bucket has a leader and all its replicas are online and current: losing any
    one node now keeps a quorum everywhere."""
    for name in security.STREAMS + security.KV_STREAMS:
        try:
            c = (await js.stream_info(name)).cluster
        except Exception:  # no leader to answer: an election is going on
            return False
        if not (c and c.leader):
            return False
        replicas = c.replicas or []
        if not (len(replicas) == REPLICAS - 1 and all(r.current and not r.offline for r in replicas)):
            return False
    # the runners' durable consumers are raft groups of their own
    try:
        consumers = await js.consumers_info(subj.EVENTS_STREAM)
    except Exception:
        return False
    for ci in consumers:
        c = ci.cluster
        if ci.config.durable_name and not (c and c.leader and all(r.current and not r.offline for r in c.replicas or [])):
            return False
    return True
