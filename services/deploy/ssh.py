"""SSH to a host (asyncssh): connect with checked host keys, run argv lists, move files over SFTP.

Host keys: a key in known_hosts (default ~/.ssh/known_hosts) must match; a host that has no entry
is refused unless `accept_new` (OpenSSH's StrictHostKeyChecking=accept-new: trusted on first use
and written to known_hosts); a changed key is always refused. Commands are argv lists; SSH carries
a command as one string that the login shell splits, so each is quoted with shlex.join, and no
shell string is ever built from the operator's input. Secrets travel only as SFTP file contents
(created 0600 before anything is written), never in a command line.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import warnings
from pathlib import Path

import msgspec

from autotune.deploy.target import Target

with warnings.catch_warnings():  # asyncssh imports cryptography's DSA (deprecated there); we never offer DSA
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*DSA.*")
    import asyncssh


class SshError(RuntimeError):
    """The machine could not be reached or refused us; the message says which and what to do."""


class Result(msgspec.Struct, frozen=True):
    argv: list[str]
    code: int
    stdout: str
    stderr: str

    def tail(self, n: int = 20) -> str:
        lines = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return "\n".join(lines[-n:])


def default_known_hosts() -> Path:
    return Path(os.path.expanduser("~/.ssh/known_hosts"))


def fingerprint(key: asyncssh.SSHKey) -> str:
    return key.get_fingerprint("sha256")


def _known_entry(t: Target, key: asyncssh.SSHKey) -> str:
    name = t.address if t.port == 22 else f"[{t.address}]:{t.port}"
    return f"{name} {key.export_public_key('openssh').decode().strip()}\n"


def _known(path: Path, t: Target) -> bool:
    """Whether known_hosts has any key for this host (then it must match)."""
    if not path.is_file():
        return False
    try:
        known = asyncssh.read_known_hosts(str(path))
    except (OSError, ValueError, asyncssh.KeyImportError):
        return False
    host_keys, ca_keys, *_ = known.match(t.address, t.address, t.port)
    return bool(host_keys or ca_keys)


class Connection:
    """One SSH connection to a host, with the host key it presented."""

    def __init__(self, conn: asyncssh.SSHClientConnection, target: Target, *, new_key: bool) -> None:
        self.conn = conn
        self.target = target
        key = conn.get_server_host_key()
        self.machine = fingerprint(key) if key else ""
        self.new_key = new_key  # trusted on first use in this connection
        self._sftp: asyncssh.SFTPClient | None = None

    @property
    def local_address(self) -> str:
        """This controller's address on the route to the host (what the host can reach us at)."""
        sock = self.conn.get_extra_info("sockname")
        return sock[0] if sock else ""

    async def run(self, argv: list[str], *, timeout: float = 600, env: dict[str, str] | None = None) -> Result:
        cmd = shlex.join(argv)
        if env:  # `env K=V argv...`: values are quoted like every other word
            cmd = shlex.join(["env", *(f"{k}={v}" for k, v in env.items()), *argv])
        try:
            r = await self.conn.run(cmd, check=False, timeout=timeout, stdin=asyncssh.DEVNULL)
        except asyncssh.TimeoutError as e:
            return Result(argv, 124, str(e.stdout or ""), f"timed out after {timeout:.0f}s: {e.stderr or ''}")
        except (asyncssh.Error, OSError) as e:
            raise SshError(f"{self.target}: the connection failed while running {argv[0]}: {e}") from None
        code = r.exit_status if r.exit_status is not None else 255
        return Result(argv, code, str(r.stdout or ""), str(r.stderr or ""))

    async def check(self, argv: list[str], *, timeout: float = 600, what: str = "", env: dict[str, str] | None = None) -> Result:
        r = await self.run(argv, timeout=timeout, env=env)
        if r.code != 0:
            raise RemoteFailed(f"{what or shlex.join(argv)} failed on {self.target} (exit {r.code}):\n{r.tail()}")
        return r

    async def sftp(self) -> asyncssh.SFTPClient:
        if self._sftp is None:
            self._sftp = await self.conn.start_sftp_client()
        return self._sftp

    async def write_file(self, path: str, data: bytes, *, mode: int = 0o644) -> None:
        """Write `path` atomically (a temporary file renamed over it), created with `mode` before any byte is written."""
        sftp = await self.sftp()
        tmp = f"{path}.tmp-{os.urandom(4).hex()}"
        async with sftp.open(tmp, "wb", attrs=asyncssh.SFTPAttrs(permissions=mode)) as f:
            await sftp.chmod(tmp, mode)  # the remote umask may have widened nothing, but be sure before the data
            await f.write(data)
        await sftp.posix_rename(tmp, path)

    async def read_file(self, path: str, *, limit: int = 1 << 20) -> bytes | None:
        sftp = await self.sftp()
        try:
            async with sftp.open(path, "rb") as f:
                size = (await f.stat()).size or 0
                if size > limit:
                    await f.seek(size - limit)
                return await f.read(limit)
        except (asyncssh.SFTPNoSuchFile, asyncssh.SFTPFailure, asyncssh.SFTPPermissionDenied):
            return None

    async def put(self, local: list[str], remote_dir: str) -> None:
        sftp = await self.sftp()
        await sftp.put(local, remote_dir, preserve=False)

    async def listdir(self, path: str) -> list[str]:
        sftp = await self.sftp()
        try:
            return [n for n in await sftp.listdir(path) if n not in (".", "..")]
        except (asyncssh.SFTPNoSuchFile, asyncssh.SFTPFailure):
            return []

    async def exists(self, path: str) -> bool:
        return await (await self.sftp()).exists(path)

    async def symlink_atomic(self, target: str, link: str) -> None:
        """Point `link` at `target` in one rename: a reader sees the old target or the new one, never none."""
        sftp = await self.sftp()
        tmp = f"{link}.tmp-{os.urandom(4).hex()}"
        await sftp.symlink(target, tmp)
        await sftp.posix_rename(tmp, link)

    async def close(self) -> None:
        if self._sftp is not None:
            self._sftp.exit()
        self.conn.close()
        with contextlib.suppress(Exception):
            await self.conn.wait_closed()


class RemoteFailed(RuntimeError):
    """A command on the host exited non-zero."""


async def connect(
    t: Target, *, identity: str | None = None, known_hosts: str | None = None, accept_new: bool = False, record_new: bool = True,
    timeout: float = 15.0, keepalive_s: float = 0,
) -> Connection:
    """Log in to `t`. `record_new=False` (a dry run) trusts a new key for this connection only."""
    path = Path(known_hosts) if known_hosts else default_known_hosts()
    keys = None
    if identity:
        try:
            keys = [asyncssh.read_private_key(identity)]
        except (OSError, asyncssh.KeyImportError) as e:
            raise SshError(f"--identity {identity}: cannot read the key ({e}); give a private key file without a passphrase, or use your SSH agent") from None
    known = _known(path, t)
    if not known and not accept_new:
        key = await _host_key(t, timeout)
        raise SshError(
            f"{t}: its host key is not known ({key.get_algorithm() if key else '?'} {fingerprint(key) if key else '?'}, not in {path}); "
            "check it with the machine's owner, then pass --accept-new-host-key (or add it to known_hosts)"
        )
    options: dict = dict(
        username=t.user, port=t.port, client_keys=keys, known_hosts=str(path) if known else None, connect_timeout=timeout,
        keepalive_interval=keepalive_s or 0, keepalive_count_max=3, config=None, preferred_auth="publickey",
    )
    if identity:
        options["agent_path"] = None  # exactly this key: not whatever the agent offers first
        options["ignore_encrypted"] = True
    try:
        conn = await asyncssh.connect(t.address, **options)
    except asyncssh.HostKeyNotVerifiable as e:
        raise SshError(
            f"{t}: its host key does not match {path} ({e.reason}); the machine was reinstalled, or someone is in between. "
            f"Check it; if it is right, remove the old entry (`ssh-keygen -R {t.address}`) and deploy again"
        ) from None
    except asyncssh.PermissionDenied:
        how = f"key {identity}" if identity else "your SSH agent and ~/.ssh keys"
        raise SshError(f"{t}: permission denied for user `{t.user}` with {how}; check the user and pass --identity KEY") from None
    except (asyncssh.Error, OSError) as e:
        raise SshError(f"cannot reach {t}: {e.strerror if isinstance(e, OSError) and e.strerror else e}; check the address, the port and that sshd runs") from None
    c = Connection(conn, t, new_key=not known)
    if not known and record_new:
        key = conn.get_server_host_key()
        if key is not None:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with path.open("a") as f:
                f.write(_known_entry(t, key))
    return c


async def _host_key(t: Target, timeout: float):
    import asyncio

    with contextlib.suppress(Exception):
        return await asyncio.wait_for(asyncssh.get_server_host_key(t.address, t.port, config=None), timeout)
    return None
