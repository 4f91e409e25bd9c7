"""NATS security: a user per role with only the subjects it needs, optional TLS, cluster configs.

Roles and what they may publish (everything else is refused by the server):

- admin      everything (provisions streams and buckets, updates their configuration)
- api        task `submitted` / `cancel_requested`, host `drain_requested` / `removed` / `deploy_*`, task names
             (KV `autotune-names`), requests on `autotune.query.sql` / `.snapshot` (the CLI uses it too);
             it lists the services' figures (KV `autotune-stats`) for /metrics
- scheduler  task dataset_fetched/started/rejected/completed/failed/cancelled, experiment planned /
             waiting / assigned.<host> / cancel_requested.<host> / failed / cancelled, host `lost`, its
             lease (KV `autotune-leases`), its own figures (KV `autotune-stats`, keys `scheduler.*`),
             replay prompts (Object Store `autotune-datasets`)
- runner-<h> its experiments' started/ready/progress/completed/failed/cancelled, log lines, host <h>
             registered / drained / returned / stopped, its own liveness key `$KV.autotune-hosts.<h>`, its
             durable consumer `runner-<h>` (create, fetch, ack); it reads replay prompts from `autotune-datasets`
- gpumon-<h> `autotune.gpu.<h>.*`
- projector  no event at all; it reads the streams (ephemeral consumers, never the runners' durables)
             and answers `autotune.query.>` (sql, snapshot, reopen), replying only to the requests it
             received (`allow_responses`); its own figures (KV `autotune-stats`, keys `projector.*`)

Every role may read (stream and consumer info, message get, ephemeral ordered consumers with their
flow-control replies): the threat model is a compromised or buggy writer, not a reader. Per-host
restrictions need a user per host, so the server configuration is generated from the host list
(`render_config`), with random passwords kept in a 0600 file (`generate_credentials`). A service gets
its credentials embedded in its NATS URL (`nats_url`), e.g. `nats://runner-gpu-1:<pw>@nats-1:4222`.

`python -m autotune.shared.security examples infra/nats` regenerates the committed example configs.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import msgspec

from autotune.schemas import subjects as subj

ROLES = ("admin", "api", "scheduler", "projector", "runner", "gpumon")
PER_HOST_ROLES = ("runner", "gpumon")
CREDENTIALS_FILE = "nats-credentials.json"
MAX_PAYLOAD = "8MB"  # = shared.provision.MAX_PAYLOAD: the events stream accepts messages that large

STREAMS = (subj.EVENTS_STREAM, subj.TELEMETRY_STREAM, subj.LOGS_STREAM)
BUCKETS = (subj.HOSTS_BUCKET, subj.LEASES_BUCKET, subj.NAMES_BUCKET, subj.STATS_BUCKET)
KV_STREAMS = tuple(f"KV_{b}" for b in BUCKETS)
STATS_KEYS = f"$KV.{subj.STATS_BUCKET}"  # + .<service>.<instance>: each service writes only its own
DATASETS_STREAM = f"OBJ_{subj.DATASETS_BUCKET}"  # the Object Store's stream (nats-py: OBJ_<bucket>)

# Read-only JetStream API, granted to every role (nats-py 2.16 subjects: js/manager.py, js/kv.py).
JS_READ = (
    "$JS.API.INFO",  # account_info
    "$JS.API.STREAM.INFO.*",  # stream_info, key_value(bucket)
    "$JS.API.STREAM.NAMES",  # find the stream of a subject
    "$JS.API.STREAM.LIST",  # streams_info
    "$JS.API.STREAM.MSG.GET.*",  # get_msg / get_last_msg (bus.last_seq, bus.messages_after)
    "$JS.API.DIRECT.GET.>",  # KV gets of buckets with allow_direct (the hosts bucket: a fleet read in one batched get)
    "$JS.API.CONSUMER.INFO.*.*",
    "$JS.API.CONSUMER.NAMES.*",
    "$JS.API.CONSUMER.LIST.*",
)
# What no role but admin may do; denied explicitly so a too-broad allow can never grant it. (The one
# exception: the projector may delete consumers, its own ephemerals, but never a runner's durable.)
JS_ADMIN_ONLY = (
    "$JS.API.STREAM.CREATE.>",
    "$JS.API.STREAM.UPDATE.>",
    "$JS.API.STREAM.DELETE.>",
    "$JS.API.STREAM.PURGE.>",
    "$JS.API.STREAM.MSG.DELETE.>",
    "$JS.API.STREAM.SNAPSHOT.>",
    "$JS.API.STREAM.RESTORE.>",
    "$JS.API.STREAM.LEADER.STEPDOWN.>",
    "$JS.API.STREAM.PEER.REMOVE.>",
    "$JS.API.CONSUMER.DELETE.>",
    "$JS.API.CONSUMER.LEADER.STEPDOWN.>",
    "$JS.API.META.>",
    "$JS.API.SERVER.>",
    "$JS.API.ACCOUNT.>",
)


def ephemeral_consumers(*streams: str) -> list[str]:
    """Ordered consumers (bus.replay, KV watch): create an ephemeral push consumer, answer its flow control.

    `CONSUMER.CREATE.<stream>` (no name token) only creates ephemerals: the server refuses a durable
    name sent on it, so it cannot be used to rewrite another role's durable consumer."""
    out: list[str] = []
    for s in streams:
        out += [f"$JS.API.CONSUMER.CREATE.{s}", f"$JS.FC.{s}.>"]
    return out


def durable_consumer(stream: str, name: str) -> list[str]:
    """One named durable pull consumer: create/update it (both the 2.9+ and the legacy subject), fetch, ack."""
    return [
        f"$JS.API.CONSUMER.CREATE.{stream}.{name}",
        f"$JS.API.CONSUMER.CREATE.{stream}.{name}.>",  # with a filter subject
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{name}",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}",
        f"$JS.ACK.{stream}.{name}.>",  # ack, nak, in-progress, term
    ]


# Core subscriptions every role may hold: replies (requests, JetStream API answers, push deliveries) and
# live events (e.g. the runner follows its leased GPUs' samples). Reading is not the threat model.
SUBSCRIBE_READ = ("_INBOX.>", f"{subj.PREFIX}.task.>", f"{subj.PREFIX}.host.>", f"{subj.PREFIX}.gpu.>", f"{subj.PREFIX}.log.>")
QUERY_ALL = f"{subj.PREFIX}.query.>"  # autotune.query.sql | .snapshot | .reopen.<db>: served by the projector
QUERY_SNAPSHOT = f"{subj.PREFIX}.query.snapshot"
QUERY_REOPEN = f"{subj.PREFIX}.query.reopen.*"


class Permissions(msgspec.Struct, kw_only=True):
    publish: list[str]
    publish_deny: list[str] = []
    subscribe: list[str] = msgspec.field(default_factory=lambda: list(SUBSCRIBE_READ))
    subscribe_deny: list[str] = msgspec.field(default_factory=lambda: [QUERY_ALL])  # only the projector answers queries
    allow_responses: bool = False  # may reply to the requests it received (and nothing else)


def user_name(role: str, host: str | None = None) -> str:
    if role not in ROLES:
        raise ValueError(f"unknown role `{role}`; one of {', '.join(ROLES)}")
    if role in PER_HOST_ROLES:
        if host is None:
            raise ValueError(f"role `{role}` is per host; pass host=")
        return f"{role}-{subj.token(host, 'host')}"
    return role


def users(hosts: list[str]) -> list[str]:
    return ["admin", "api", "scheduler", "projector"] + [user_name(r, h) for h in hosts for r in PER_HOST_ROLES]


def runner_consumers(hosts: list[str] | tuple[str, ...]) -> list[str]:
    """Every API subject that touches the runners' durable consumers (denied to the projector, whose
    ephemeral pull consumers have random names and so need wildcards)."""
    out = []
    for h in hosts:
        name = f"runner-{subj.token(h, 'host')}"
        out += [f"$JS.API.CONSUMER.{op}.{subj.EVENTS_STREAM}.{name}" for op in ("MSG.NEXT", "DELETE", "CREATE")]
        out += [f"$JS.API.CONSUMER.CREATE.{subj.EVENTS_STREAM}.{name}.>", f"$JS.ACK.{subj.EVENTS_STREAM}.{name}.>"]
    return out


def role_permissions(role: str, host: str | None = None, *, hosts: list[str] | tuple[str, ...] = ()) -> Permissions:
    """What one role (one host's runner or gpumon) may do. Derived from the subject builders in schemas.

    `hosts` (every host of the fleet) only matters to the projector: it may not touch the runners' consumers."""
    t = f"{subj.PREFIX}.task.*"
    x = f"{t}.exp.*"
    if role == "admin":
        return Permissions(publish=[">"], subscribe=[">"], subscribe_deny=[], allow_responses=True)
    deny = list(JS_ADMIN_ONLY)
    if role == "api":
        return Permissions(
            publish=[
                f"{t}.submitted", f"{t}.cancel_requested",
                f"{subj.PREFIX}.host.*.drain_requested", f"{subj.PREFIX}.host.*.removed",
                *(f"{subj.PREFIX}.host.*.{e}" for e in subj.DEPLOY_EVENTS),  # `autotune deploy` records what it does
                f"$KV.{subj.NAMES_BUCKET}.>",
                subj.QUERY_SQL, QUERY_SNAPSHOT,  # requests to the projector (the CLI uses this role too)
                *JS_READ,
                *ephemeral_consumers(*STREAMS),  # live views (SSE) replay from any sequence
                *ephemeral_consumers(f"KV_{subj.STATS_BUCKET}"),  # /metrics lists the services' figures
            ],
            publish_deny=deny,
        )
    if role == "scheduler":
        return Permissions(
            publish=[
                *(f"{t}.{e}" for e in ("dataset_fetched", "started", "rejected", "completed", "failed", "cancelled")),
                *(f"{x}.{e}" for e in ("planned", "waiting", "failed", "cancelled")),
                f"{x}.assigned.*", f"{x}.cancel_requested.*",
                f"{subj.PREFIX}.host.*.lost",
                f"$KV.{subj.LEASES_BUCKET}.>",
                f"{STATS_KEYS}.scheduler.>",
                f"$O.{subj.DATASETS_BUCKET}.>",  # stores replay prompts (chunks and meta; never purges)
                *JS_READ,
                *ephemeral_consumers(*STREAMS, *KV_STREAMS, DATASETS_STREAM),  # replays the log, watches liveness
            ],
            publish_deny=deny,
        )
    if role == "projector":
        # Ephemeral pull consumers (random names) on every stream: create, pull, drop when re-created.
        pull = [f"$JS.API.CONSUMER.{op}.{s}.*" for s in STREAMS for op in ("MSG.NEXT", "DELETE")]
        return Permissions(
            publish=[*JS_READ, *ephemeral_consumers(*STREAMS, *KV_STREAMS), *pull, QUERY_REOPEN, f"{STATS_KEYS}.projector.>"],
            publish_deny=[d for d in deny if d != "$JS.API.CONSUMER.DELETE.>"] + runner_consumers(hosts) + [
                f"{subj.PREFIX}.task.>", f"{subj.PREFIX}.host.>", f"{subj.PREFIX}.gpu.>", f"{subj.PREFIX}.log.>",
                *(f"$KV.{b}.>" for b in BUCKETS if b != subj.STATS_BUCKET), "$O.>",
            ],
            subscribe=[*SUBSCRIBE_READ, QUERY_ALL],
            subscribe_deny=[],
            allow_responses=True,  # answers queries: exactly one reply to each request it received
        )
    if role == "runner":
        h = subj.token(host or "", "host")
        return Permissions(
            publish=[
                *(f"{x}.{e}" for e in ("started", "ready", "progress", "completed", "failed", "cancelled")),
                f"{subj.PREFIX}.log.*.*",
                *(subj.host(h, e) for e in ("registered", "drained", "returned", "stopped")),
                f"$KV.{subj.HOSTS_BUCKET}.{h}",
                *JS_READ,
                *durable_consumer(subj.EVENTS_STREAM, f"runner-{h}"),
                *ephemeral_consumers(subj.EVENTS_STREAM, DATASETS_STREAM),  # DATASETS: reads an object's chunks
            ],
            publish_deny=deny,
        )
    if role == "gpumon":
        h = subj.token(host or "", "host")
        return Permissions(publish=[f"{subj.PREFIX}.gpu.{h}.*", *JS_READ], publish_deny=deny)
    raise ValueError(f"unknown role `{role}`; one of {', '.join(ROLES)}")


def permissions(hosts: list[str]) -> dict[str, Permissions]:
    """User name → permissions, for every role and every host."""
    out = {r: role_permissions(r, hosts=hosts) for r in ("admin", "api", "scheduler", "projector")}
    for h in hosts:
        for r in PER_HOST_ROLES:
            out[user_name(r, h)] = role_permissions(r, h, hosts=hosts)
    return out


# --- credentials --------------------------------------------------------------------------------------


def credentials_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / "secrets" / CREDENTIALS_FILE


def credential_hosts(passwords: dict[str, str]) -> list[str]:
    """The hosts that have users in a credentials mapping (`runner-<host>`), sorted."""
    prefix = "runner-"
    return sorted(u[len(prefix):] for u in passwords if u.startswith(prefix))


def write_private(path: Path, text: str) -> None:
    """Write `path` atomically, readable by this user only (0600 from creation on)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def generate_credentials(data_dir: str | os.PathLike[str], hosts: list[str]) -> dict[str, str]:
    """User → password for every role and host, kept in `<data_dir>/secrets/nats-credentials.json` (0600).

    Existing passwords are kept (a restart must not lock out running services); users for new hosts
    are added. Passwords are URL-safe, so they can be embedded in a NATS URL as they are."""
    path = credentials_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        current: dict[str, str] = json.loads(path.read_text())
    except FileNotFoundError:
        current = {}
    out = {u: current.get(u) or secrets.token_urlsafe(24) for u in users(hosts)}
    out = {**current, **out}
    if out != current:
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(out, f, indent=2, sort_keys=True)
        os.replace(tmp, path)
    os.chmod(path, 0o600)
    return out


def redacted(urls: str) -> str:
    """NATS URLs (comma-separated) with any `user:password@` taken out: what may be shown or logged."""
    out = []
    for u in urls.split(","):
        parts = urlsplit(u.strip())
        out.append(urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[-1], parts.path, "", "")) if parts.scheme else u.strip())
    return ",".join(out)


def nats_url(urls: str, user: str, password: str) -> str:
    """`urls` (comma-separated) with `user:password@` in each: what a service gets as `--nats`."""
    out = []
    for u in urls.split(","):
        parts = urlsplit(u.strip())
        host = parts.netloc.rsplit("@", 1)[-1]
        out.append(urlunsplit((parts.scheme, f"{quote(user, safe='')}:{quote(password, safe='')}@{host}", parts.path, "", "")))
    return ",".join(out)


# --- rendering ----------------------------------------------------------------------------------------


class TlsFiles(msgspec.Struct, frozen=True, kw_only=True):
    """PEM files for the server's `tls {}` block. `verify`: require client certificates (mutual TLS)."""

    cert: str
    key: str
    ca: str | None = None
    verify: bool = False


class ClusterPeer(msgspec.Struct, frozen=True, kw_only=True):
    name: str  # server_name, unique in the cluster
    host: str  # where the others reach it
    client_port: int = 4222
    cluster_port: int = 6222


def _q(s: str) -> str:
    return json.dumps(s)  # NATS config strings: `$` would start a variable reference unquoted


def _conf(value: object, indent: str = "") -> str:
    """A dict/list/str/bool/int as NATS configuration syntax (strings always quoted)."""
    inner = indent + "  "
    if isinstance(value, dict):
        body = "".join(f"{inner}{k}: {_conf(v, inner)}\n" for k, v in value.items())
        return f"{{\n{body}{indent}}}"
    if isinstance(value, list):
        if not value:
            return "[]"
        body = "".join(f"{inner}{_conf(v, inner)}\n" for v in value)
        return f"[\n{body}{indent}]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return _q(str(value))


def _user_entry(user: str, password: str, p: Permissions) -> dict[str, object]:
    publish: dict[str, object] = {"allow": p.publish}
    if p.publish_deny:
        publish["deny"] = p.publish_deny
    subscribe: dict[str, object] = {"allow": p.subscribe}
    if p.subscribe_deny:
        subscribe["deny"] = p.subscribe_deny
    perms: dict[str, object] = {"publish": publish, "subscribe": subscribe}
    if p.allow_responses:
        perms["allow_responses"] = True
    return {"user": user, "password": password, "permissions": perms}


def render_authorization(hosts: list[str], passwords: dict[str, str] | None = None) -> str:
    entries = [
        _user_entry(user, (passwords or {}).get(user) or f"change-me-{user}", p) for user, p in permissions(hosts).items()
    ]
    return "authorization " + _conf({"users": entries}) + "\n"


def render_config(
    *,
    port: int,
    store_dir: str,
    hosts: list[str] | None = None,
    passwords: dict[str, str] | None = None,
    tls: TlsFiles | None = None,
    host: str = "127.0.0.1",
    server_name: str = "autotune",
    sync_always: bool = False,
    monitor_port: int | None = None,
    cluster: str = "",
    authorization_file: str | None = None,
    pid_file: str | None = None,
) -> str:
    """A nats-server configuration: JetStream, and with `hosts` a user per role (see module doc).

    `hosts=None` renders an open server (no authorization); `passwords=None` renders placeholders.
    `port=-1` lets the server pick a free port (tests). `cluster` is a rendered `cluster {}` block.
    `authorization_file` includes the users from that file (`render_authorization`) instead: a host
    added by `autotune deploy` rewrites only that file and reloads the server (`pid_file`: where
    the server writes its pid, so it can be signalled).
    """
    out = [
        "# autotune nats-server configuration (generated by autotune.shared.security; see infra/nats/README.md)",
        f"server_name: {_q(server_name)}",
        f"listen: {_q(f'{host}:{port}')}",
        f"max_payload: {MAX_PAYLOAD}",
    ]
    if pid_file:
        out.append(f"pid_file: {_q(pid_file)}")
    if monitor_port is not None:
        out.append(f"http: {_q(f'{host}:{monitor_port}')}")
    js = [f"  store_dir: {_q(store_dir)}"]
    if sync_always:
        # fsync every write before acknowledging it (server-wide: every stream on this server).
        js.append("  sync_interval: always")
    out.append("jetstream {\n" + "\n".join(js) + "\n}")
    if tls is not None:
        t = [f"  cert_file: {_q(tls.cert)}", f"  key_file: {_q(tls.key)}"]
        if tls.ca:
            t.append(f"  ca_file: {_q(tls.ca)}")
        t += [f"  verify: {'true' if tls.verify else 'false'}", "  timeout: 2"]
        out.append("tls {\n" + "\n".join(t) + "\n}")
    if cluster:
        out.append(cluster.rstrip("\n"))
    if authorization_file:
        out.append(f"include {_q(authorization_file)}")
    elif hosts is not None:
        out.append(render_authorization(hosts, passwords).rstrip("\n"))
    return "\n".join(out) + "\n"


def render_cluster_config(
    node: int,
    peers: list[ClusterPeer],
    *,
    store_dir: str,
    cluster_name: str = "autotune",
    listen_host: str | None = None,
    hosts: list[str] | None = None,
    passwords: dict[str, str] | None = None,
    route_password: str | None = None,
    tls: TlsFiles | None = None,
    monitor_port: int | None = None,
) -> str:
    """Configuration of cluster node `node` (1-based index into `peers`): JetStream, routes to the others,
    `sync_interval: always`. Clients are given every node's URL; `no_advertise` keeps the server from
    adding discovered URLs, which would lack the credentials embedded in the configured ones."""
    if not 1 <= node <= len(peers):
        raise ValueError(f"node {node} is not in 1..{len(peers)}")
    me = peers[node - 1]
    bind = listen_host or me.host
    cred = f"route:{quote(route_password, safe='')}@" if route_password is not None else ""
    block: dict[str, object] = {
        "name": cluster_name,
        "listen": f"{bind}:{me.cluster_port}",
        "no_advertise": True,
        "routes": [f"nats-route://{cred}{p.host}:{p.cluster_port}" for p in peers if p is not me],
    }
    if route_password is not None:
        block["authorization"] = {"user": "route", "password": route_password, "timeout": 2}
    return render_config(
        port=me.client_port, store_dir=store_dir, hosts=hosts, passwords=passwords, tls=tls, host=bind,
        server_name=me.name, sync_always=True, monitor_port=monitor_port, cluster="cluster " + _conf(block),
    )


# --- committed examples -------------------------------------------------------------------------------

EXAMPLE_HOSTS = ["gpu-1", "gpu-2"]
EXAMPLE_PEERS = [ClusterPeer(name=f"nats-{i}", host=f"nats-{i}") for i in (1, 2, 3)]


def examples() -> dict[str, str]:
    """The example configurations committed in infra/nats (a test checks they are current)."""
    out = {
        "single.conf": render_config(port=4222, store_dir="/var/lib/autotune/nats"),
        "secure.conf": render_config(port=4222, store_dir="/var/lib/autotune/nats", hosts=EXAMPLE_HOSTS),
    }
    for i in (1, 2, 3):
        out[f"cluster-{i}.conf"] = render_cluster_config(
            i, EXAMPLE_PEERS, store_dir="/var/lib/autotune/nats", listen_host="0.0.0.0", hosts=EXAMPLE_HOSTS,
            route_password="change-me-route", monitor_port=8222,
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m autotune.shared.security", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("examples", help="write the example configs (single, secure, cluster-1..3) into a directory")
    p.add_argument("dir")
    p = sub.add_parser("render", help="print a server configuration with a user per role for these hosts")
    p.add_argument("--hosts", required=True, help="comma-separated host ids, e.g. gpu-1,gpu-2")
    p.add_argument("--port", type=int, default=4222)
    p.add_argument("--store-dir", required=True)
    p.add_argument("--data-dir", help="take (and create) the passwords from <data-dir>/secrets; default: placeholders")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--tls-ca")
    a = ap.parse_args(argv)
    if a.cmd == "examples":
        for name, text in examples().items():
            (Path(a.dir) / name).write_text(text)
        return 0
    hosts = [h for h in a.hosts.split(",") if h]
    pw = generate_credentials(a.data_dir, hosts) if a.data_dir else None
    tls = TlsFiles(cert=a.tls_cert, key=a.tls_key, ca=a.tls_ca) if a.tls_cert and a.tls_key else None
    sys.stdout.write(render_config(port=a.port, store_dir=a.store_dir, hosts=hosts, passwords=pw, tls=tls))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
