"""Host events: the fleet (runners registering, draining, lost, returning, stopping) and deploys to it."""

from __future__ import annotations

import msgspec

from .base import Event


class GpuInfo(msgspec.Struct, frozen=True, kw_only=True):
    index: int
    uuid: str
    name: str
    memory_total_mib: float = 0.0


class HostRegistered(Event, frozen=True, kw_only=True, tag="host.registered"):
    """A runner instance started and announced its host's GPUs, runtimes and engines."""

    host: str
    instance: str
    hostname: str = ""
    gpus: list[GpuInfo] = []
    runtimes: list[str] = []
    engines: list[str] = []
    simulated: bool = False
    node: str | None = None
    version: str = ""
    engine_paths: dict[str, str] = {}  # engine → the executable this host runs it with (`--engine vllm=/opt/vllm/bin/vllm`)
    cpu_slots: int = 0  # real engines this host serves on its CPU at once (no GPU needed); 0: none
    cpu_engines: list[str] = []  # the engines it serves on CPU


class HostDrainRequested(Event, frozen=True, kw_only=True, tag="host.drain_requested"):
    """A user asked a host to take no new experiments (API/CLI)."""

    host: str
    requested_by: str = ""


class HostDrained(Event, frozen=True, kw_only=True, tag="host.drained"):
    """The runner finished its running experiments after a drain request."""

    host: str
    instance: str = ""


class HostRemoved(Event, frozen=True, kw_only=True, tag="host.removed"):
    """A user removed a host from the fleet (API/CLI)."""

    host: str
    requested_by: str = ""


class HostLost(Event, frozen=True, kw_only=True, tag="host.lost"):
    """The scheduler saw a host's liveness key expire."""

    host: str
    instance: str = ""


class HostDeployStarted(Event, frozen=True, kw_only=True, tag="host.deploy_started"):
    """`autotune deploy` / `undeploy` (CLI or API) began changing a machine: who, where, which release."""

    host: str
    deploy: str  # this operation's id; every step and the outcome carry it
    action: str  # deploy | upgrade | reconfigure (same release, new settings) | rollback | undeploy
    target: str = ""  # user@address:port (no secrets)
    machine: str = ""  # the machine's SSH host key fingerprint: what makes it the same machine
    version: str = ""
    release: str = ""  # <version>-<digest of the wheel's contents>
    previous_release: str = ""
    via: str = "direct"  # direct | ssh-tunnel
    requested_by: str = ""


class HostDeployStep(Event, frozen=True, kw_only=True, tag="host.deploy_step"):
    """One step of a deploy finished, was skipped (nothing to do) or failed, and how long it took."""

    host: str
    deploy: str
    step: str  # preflight | upload | install | credentials | drain | stop | switch | start | registered | rollback | remove | revoke
    status: str = "done"  # done | skipped | failed
    seconds: float = 0.0
    detail: str = ""


class HostDeployFinished(Event, frozen=True, kw_only=True, tag="host.deploy_finished"):
    """The outcome of a deploy, upgrade, rollback or undeploy (recorded whatever happened)."""

    host: str
    deploy: str
    action: str
    outcome: str  # succeeded | unchanged | failed | rolled_back
    target: str = ""
    machine: str = ""
    version: str = ""
    release: str = ""  # what runs on the host now ("" after an undeploy, or a first deploy that failed)
    previous_release: str = ""
    via: str = "direct"
    prefix: str = ""  # where it is installed on the host
    message: str = ""
    seconds: float = 0.0
    steps: dict[str, float] = {}  # step → seconds
    requested_by: str = ""


class HostReturned(Event, frozen=True, kw_only=True, tag="host.returned"):
    """A runner instance whose liveness key had expired (it was paused, partitioned, or declared lost)
    holds its host again, after fencing: `kept` are the attempts still its own, `fenced` those it
    found taken from it, whose engines it stopped before it took any new work. Online again (or still
    draining)."""

    host: str
    instance: str
    kept: list[str] = []  # "<task>/<n>/<attempt>"
    fenced: list[str] = []
    unaccounted: list[str] = []  # engines labelled for this host that it could not stop (their GPUs stay busy)
    draining: bool = False
    away_s: float = 0.0  # from its last confirmed renewal to the moment it held the key again


class HostStopped(Event, frozen=True, kw_only=True, tag="host.stopped"):
    """The runner stopped cleanly (asked to), after its own attempts were accounted for (each ended, or
    reported failed as `runner_restarted`); its liveness key is removed next. A stop, not a loss."""

    host: str
    instance: str
    reason: str = ""
