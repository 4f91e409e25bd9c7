"""What the operator typed, checked before anything connects: the SSH target, the host name, the options."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import msgspec

from autotune.schemas import subjects as subj

USER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")  # POSIX login names
ADDRESS = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$|^[0-9.]+$|^[0-9A-Fa-f:]+$")
# paths that go into a systemd unit and into argv: no spaces, quotes or `%` (systemd specifiers)
SAFE_PATH = re.compile(r"^/[A-Za-z0-9/._+-]*$")
VIAS = ("direct", "ssh-tunnel")


class BadInput(ValueError):
    """Refused before anything happened; the message says what was wrong and what to do."""


class Target(msgspec.Struct, frozen=True, kw_only=True):
    user: str
    address: str
    port: int = 22

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.user}@{host}:{self.port}"

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"ssh://{self.user}@{host}:{self.port}"


def parse_target(text: str) -> Target:
    """`ssh://user@host[:port]` (user@host[:port] is accepted too)."""
    raw = text.strip()
    if "://" not in raw:
        raw = "ssh://" + raw
    try:
        parts = urlsplit(raw)
        port = parts.port or 22
    except ValueError as e:
        raise BadInput(f"`{text}` is not an SSH target ({e}); write ssh://user@host[:port], e.g. ssh://root@10.0.0.5:22") from None
    if parts.scheme != "ssh":
        raise BadInput(f"`{text}`: only ssh:// targets are supported; write ssh://user@host[:port]")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise BadInput(f"`{text}`: an SSH target has no path or query; write ssh://user@host[:port]")
    if parts.password is not None:
        raise BadInput(f"`{text}`: no password in the target; deploy logs in with a key (--identity KEY or your SSH agent)")
    user, address = parts.username, parts.hostname
    if not user:
        raise BadInput(f"`{text}` names no user; write ssh://user@host[:port], e.g. ssh://root@{address or '10.0.0.5'}")
    if not USER.match(user):
        raise BadInput(f"`{user}` is not a login name (letters, digits, `_.-`, starting with a letter or `_`)")
    if not address or not ADDRESS.match(address):
        raise BadInput(f"`{text}` names no valid host; write ssh://user@host[:port]")
    if not 1 <= port <= 65535:
        raise BadInput(f"port {port} is out of range (1-65535)")
    return Target(user=user, address=address, port=port)


def check_host_name(name: str) -> str:
    try:
        return subj.token(name, "host name")
    except subj.SubjectError as e:
        raise BadInput(f"--host: {e}") from None


def check_prefix(path: str) -> str:
    if not SAFE_PATH.match(path) or "/../" in f"{path}/" or path.rstrip("/") in ("", "/usr", "/etc", "/var", "/opt", "/home", "/root"):
        raise BadInput(f"--prefix `{path}`: give an absolute directory of its own, e.g. /opt/autotune (letters, digits, `/._+-`)")
    return path.rstrip("/")


def check_via(via: str) -> str:
    if via not in VIAS:
        raise BadInput(f"--via `{via}`: one of {', '.join(VIAS)}")
    return via
