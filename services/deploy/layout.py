"""Where a node lives on its host, what its configuration says, and its systemd unit (all pure).

Everything autotune puts on a host is under one prefix (root: /opt/autotune; another user:
~/.local/share/autotune-node), plus the systemd unit when systemd runs:

    <prefix>/.autotune-node          marker: this directory is autotune's (undeploy removes only such a prefix)
    <prefix>/releases/<id>/          one release: its wheel, requirements.txt, venv/, release.json (written last)
    <prefix>/current -> releases/<id>  switched with one rename
    <prefix>/wheels/                 the --offline wheelhouse, shared by releases
    <prefix>/etc/node.json           the node's configuration (no secrets)
    <prefix>/etc/nats.json           its NATS URLs with credentials (0600)
    <prefix>/etc/nats-ca.pem         the CA it verifies NATS against (a TLS-secured NATS)
    <prefix>/state.json              host name, current and previous release, how it runs
    <prefix>/log/                    node.log, runner.log, gpumon.log
    <prefix>/run/node.pid            the daemon's pid (where systemd does not run)
    <prefix>/data/                   the runner's data directory
"""

from __future__ import annotations

import msgspec

from autotune.deploy.probe import Facts

SERVICE = "autotune-node.service"
MARKER = ".autotune-node"


class Layout(msgspec.Struct, frozen=True, kw_only=True):
    prefix: str
    root: bool = True  # installed by root: a system unit; else a user unit
    home: str = ""

    def _p(self, *parts: str) -> str:
        return "/".join([self.prefix, *parts])

    @property
    def marker(self) -> str:
        return self._p(MARKER)

    @property
    def releases(self) -> str:
        return self._p("releases")

    @property
    def current(self) -> str:
        return self._p("current")

    @property
    def wheels(self) -> str:
        return self._p("wheels")

    @property
    def etc(self) -> str:
        return self._p("etc")

    @property
    def node_config(self) -> str:
        return self._p("etc", "node.json")

    @property
    def credentials(self) -> str:
        return self._p("etc", "nats.json")

    @property
    def nats_ca(self) -> str:
        return self._p("etc", "nats-ca.pem")

    @property
    def state(self) -> str:
        return self._p("state.json")

    @property
    def log_dir(self) -> str:
        return self._p("log")

    @property
    def node_log(self) -> str:
        return self._p("log", "node.log")

    @property
    def run_dir(self) -> str:
        return self._p("run")

    @property
    def pidfile(self) -> str:
        return self._p("run", "node.pid")

    @property
    def data(self) -> str:
        return self._p("data")

    def release(self, rid: str) -> str:
        return self._p("releases", rid)

    def python(self, rid: str | None = None) -> str:
        """The release's interpreter (`current`'s when rid is None)."""
        return f"{self.release(rid) if rid else self.current}/venv/bin/python"

    @property
    def unit_dir(self) -> str:
        return "/etc/systemd/system" if self.root else f"{self.home}/.config/systemd/user"

    @property
    def unit(self) -> str:
        return f"{self.unit_dir}/{SERVICE}"

    @property
    def dirs(self) -> list[str]:
        return [self.prefix, self.releases, self.wheels, self.etc, self.log_dir, self.run_dir, self.data]


def layout_for(facts: Facts) -> Layout:
    return Layout(prefix=facts.prefix, root=facts.root, home=facts.home)


class NodeConfig(msgspec.Struct, frozen=True, kw_only=True):
    """What `autotune node --config` runs: <prefix>/etc/node.json. The credentials stay in their own 0600 file."""

    host: str
    simulate: str | None = None
    time_scale: float | None = None
    data_dir: str
    log_dir: str
    pidfile: str
    credentials: str  # {"runner": url, "gpumon": url}
    nats_url: str  # where it connects (no credentials): shown to people
    via: str = "direct"
    env: dict[str, str] = {}  # extra AUTOTUNE_* settings for the runner and the GPU monitor
    nats_ca: str | None = None  # NATS over TLS: the CA file the runner and the GPU monitor verify it against


class Credentials(msgspec.Struct, frozen=True, kw_only=True):
    """<prefix>/etc/nats.json (0600): each service's NATS URL, its user and password inside."""

    runner: str
    gpumon: str


class State(msgspec.Struct, kw_only=True):
    """<prefix>/state.json: what deploy knows about this machine between runs."""

    host: str
    current: str = ""
    previous: str = ""
    mode: str = "daemon"  # systemd | daemon
    linger_enabled: bool = False  # deploy turned lingering on (undeploy turns it off again)
    machine: str = ""
    controller: str = ""  # who deployed it (user@machine)


def render_unit(layout: Layout, host: str) -> str:
    """The systemd unit: `Restart=always`; SIGTERM to the node alone, which stops its children in order
    (KillMode=mixed), then SIGKILL for whatever is left after TimeoutStopSec."""
    target = "multi-user.target" if layout.root else "default.target"
    return (
        "# written by `autotune deploy`; `autotune undeploy` removes it\n"
        "[Unit]\n"
        f"Description=autotune node {host} (runner and GPU monitor)\n"
        "After=network-online.target\n"
        "Wants=network-online.target\n"
        "StartLimitIntervalSec=0\n"
        "\n"
        "[Service]\n"
        "Type=exec\n"
        f"ExecStart={layout.python()} -m autotune.cli node --config {layout.node_config}\n"
        f"WorkingDirectory={layout.prefix}\n"
        "Environment=PYTHONUNBUFFERED=1\n"
        "Restart=always\n"
        "RestartSec=3\n"
        "KillMode=mixed\n"
        "TimeoutStopSec=90\n"
        f"StandardOutput=append:{layout.node_log}\n"
        f"StandardError=append:{layout.node_log}\n"
        "\n"
        "[Install]\n"
        f"WantedBy={target}\n"
    )
