"""A secured NATS learns a deployed host's users without a restart, and forgets them on undeploy.

The users are those `shared/security.py` defines (`runner-<host>`, `gpumon-<host>`, each allowed only
that host's subjects); their passwords live in `<data>/secrets/nats-credentials.json` (0600). The
server (`autotune up --secure`) includes its users from `<data>/nats/auth.conf`; adding or revoking a
host rewrites that file from the credentials and signals the server to reload it (SIGHUP to the pid
in `<data>/nats/nats.pid`), then checks that the change took: the new user can log in, or the
revoked one no longer can. An open NATS (no auth.conf) has no users: the node connects without.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import ssl
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from autotune.deploy.layout import Credentials
from autotune.shared import security
from autotune.supervisor import AUTH_FILE, NATS_PID_FILE


class AuthorityError(RuntimeError):
    pass


strip_credentials = security.redacted


class Authority:
    """The NATS server's users, as files on this (the controller's) machine."""

    def __init__(self, data_dir: str | os.PathLike[str], nats_url: str, tls_ca: str | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.tls_ca = tls_ca  # NATS over TLS: logins are checked through it too
        self.auth_file = self.data_dir / "nats" / AUTH_FILE
        self.pid_file = self.data_dir / "nats" / NATS_PID_FILE
        self.credentials = security.credentials_path(self.data_dir)
        self.nats_url = strip_credentials(nats_url)

    @property
    def secured(self) -> bool:
        return self.auth_file.is_file()

    def users(self, host: str) -> list[str]:
        return [security.user_name(r, host) for r in security.PER_HOST_ROLES]

    def _read(self) -> dict[str, str]:
        try:
            return json.loads(self.credentials.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise AuthorityError(f"cannot read the NATS credentials {self.credentials}: {e}") from None

    def passwords(self, host: str) -> dict[str, str] | None:
        """The host's users and passwords, if it has them already."""
        creds = self._read()
        got = {u: creds[u] for u in self.users(host) if u in creds}
        return got if len(got) == len(security.PER_HOST_ROLES) else None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.credentials.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.credentials.parent / ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _render(self, creds: dict[str, str]) -> None:
        hosts = security.credential_hosts(creds)
        security.write_private(self.auth_file, security.render_authorization(hosts, creds))

    def _reload(self) -> None:
        try:
            pid = int(self.pid_file.read_text().strip())
            os.kill(pid, signal.SIGHUP)
        except (OSError, ValueError) as e:
            raise AuthorityError(
                f"cannot signal nats-server to reload its users ({self.pid_file}: {e}); is the `autotune up --secure` stack running?"
            ) from None

    async def add_host(self, host: str) -> dict[str, str]:
        """Give `host` its users (existing passwords are kept) and make the server know them."""
        with self._locked():
            creds = self._read()
            hosts = sorted(set(security.credential_hosts(creds)) | {host})
            creds = security.generate_credentials(self.data_dir, hosts)
            self._render(creds)
            self._reload()
        out = {u: creds[u] for u in self.users(host)}
        user = self.users(host)[0]
        if not await self._can_login(user, out[user], want=True):
            raise AuthorityError(f"nats-server did not accept the new user {user} after a reload; see its log")
        return out

    async def revoke_host(self, host: str) -> bool:
        """Remove `host`'s users; True if it had any. The server drops their connections on reload."""
        with self._locked():
            creds = self._read()
            gone = [u for u in self.users(host) if u in creds]
            if not gone:
                return False
            old = {u: creds[u] for u in gone}
            for u in gone:
                del creds[u]
            security.write_private(self.credentials, json.dumps(creds, indent=2, sort_keys=True))
            self._render(creds)
            self._reload()
        user = gone[0]
        if not await self._can_login(user, old[user], want=False):
            raise AuthorityError(f"nats-server still accepts {user} after a reload; see its log")
        return True

    async def _can_login(self, user: str, password: str, *, want: bool, timeout: float = 10.0) -> bool:
        """Poll until logging in as `user` succeeds (want=True) or fails (want=False)."""
        from nats.aio.client import Client

        url = security.nats_url(self.nats_url.split(",")[0], user, password)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout

        async def quiet(_: Exception) -> None:
            pass

        while True:
            nc = Client()  # made here so that a refused login is closed too (nats.connect would leak its socket)
            try:
                tls = {"tls": ssl.create_default_context(cafile=self.tls_ca)} if self.tls_ca else {}
                await nc.connect(url, connect_timeout=2, max_reconnect_attempts=0, allow_reconnect=False, error_cb=quiet, **tls)
                await nc.flush(2)
                ok = True
            except Exception:
                ok = False
            finally:
                with contextlib.suppress(Exception):
                    await nc.close()
            if ok == want:
                return True
            if loop.time() > deadline:
                return False
            await asyncio.sleep(0.2)


def node_credentials(url: str, passwords: dict[str, str] | None, host: str) -> Credentials:
    if passwords is None:
        return Credentials(runner=url, gpumon=url)
    return Credentials(
        runner=security.nats_url(url, security.user_name("runner", host), passwords[security.user_name("runner", host)]),
        gpumon=security.nats_url(url, security.user_name("gpumon", host), passwords[security.user_name("gpumon", host)]),
    )


def node_ca(tls_ca: str | None, url: str) -> bytes | None:
    """The CA a node needs to verify a TLS-secured NATS, after checking that the server's certificate
    names the address the node dials (else the node could never connect: say so now)."""
    if not tls_ca:
        return None
    from autotune.deploy.record import Refused
    from autotune.shared import tls

    ca = Path(tls_ca)
    try:
        pem = ca.read_bytes()
        named = tls.names(ca.parent / tls.CERT) if (ca.parent / tls.CERT).exists() else None
    except (OSError, ValueError) as e:
        raise Refused(f"cannot read the NATS TLS files beside {ca}: {e}") from None
    dialled = [urlsplit(u).hostname or "" for u in url.split(",")]
    if named is not None and (missing := [h for h in dialled if h not in named]):
        raise Refused(
            f"the NATS server's TLS certificate does not name {', '.join(missing)}, the address this host would connect to "
            f"(it names {', '.join(sorted(named))}): start `autotune up --secure --nats-bind {missing[0]}`, or give --node-nats with a name it has"
        )
    return pem
