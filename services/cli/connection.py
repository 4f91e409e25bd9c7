"""Which autotune a command talks to, and how what goes wrong becomes a message and an exit code.

A command finds the stack `autotune up` started through <data dir>/up.json, else $AUTOTUNE_NATS_URL,
else --nats. `@nats_command` is the one skeleton every command that talks to autotune shares:
connect, run the coroutine, close, and turn domain errors into a line on stderr and an exit code.

Exit codes: 0 ok; 1 the thing asked for failed (task failed, query error); 2 bad input (invalid
task file, unknown task, host or experiment); 3 autotune is not reachable (no NATS / no projector).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext

    from autotune.shared.settings import Settings

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_UNREACHABLE = 0, 1, 2, 3
EXIT_INTERRUPTED = 130


class Unreachable(Exception):
    """autotune is not reachable (exit 3)."""


class Failed(Exception):
    """The command ran and what it asked for failed (exit 1)."""


def err(msg: str, code: int = EXIT_INPUT) -> int:
    sys.stderr.write(f"autotune: {msg}\n")
    return code


def stack_settings(args: argparse.Namespace) -> Settings:
    """The settings of the autotune this command talks to: --nats, else $AUTOTUNE_NATS_URL, else the
    stack `autotune up` started (as the api role when that stack is secure)."""
    from autotune.shared.settings import Settings
    from autotune.supervisor import read_stack_info

    s = Settings.from_env()
    if getattr(args, "data_dir", None):
        s.data_dir = args.data_dir
    if getattr(args, "nats", None):
        s.nats_url = args.nats
    elif not os.environ.get("AUTOTUNE_NATS_URL") and (info := read_stack_info(Path(s.data_dir))):
        s.nats_url = info["nats_url"]
        if info.get("secure"):  # the CLI acts as the api role of a secure local stack
            from autotune.shared import security

            creds = json.loads(security.credentials_path(s.data_dir).read_text())
            s.nats_url = security.nats_url(info["nats_url"], "api", creds["api"])
        s.tls_ca = info.get("tls_ca") or s.tls_ca  # a TLS-secured stack: verify its server against its CA
    return s


class Connection(NamedTuple):  # not a dataclass: `dataclasses` would be one more import for every --help
    """What a command talks to autotune through."""

    nc: Client
    js: JetStreamContext
    settings: Settings

    async def ensure_provisioned(self) -> None:
        """A stack that just started may not have created its buckets yet: create what is missing."""
        from autotune.shared.provision import provision

        try:
            await provision(self.js, self.settings)
        except Exception:  # a role that may not create them: the services will
            pass


async def open_connection(args: argparse.Namespace) -> Connection:
    from autotune.shared import bus

    s = stack_settings(args)

    async def quiet(_: Exception) -> None:  # the one message below says it better
        pass

    try:
        nc = await bus.connect(s, "cli", connect_timeout=3, max_reconnect_attempts=1, allow_reconnect=False, error_cb=quiet)
    except Exception:
        from autotune.shared.security import redacted

        raise Unreachable(f"cannot reach NATS at {redacted(s.nats_url)}; start autotune with `autotune up` (or pass --nats URL)") from None
    return Connection(nc, nc.jetstream(), s)


def lean_imports(args: argparse.Namespace) -> None:
    """nats-py imports aiohttp (for ws:// servers) whenever it is installed: half a second, most of a
    short command's time. A command talking plain NATS does not need it, so it is kept out."""
    url = getattr(args, "nats", None) or os.environ.get("AUTOTUNE_NATS_URL", "")
    if "ws://" not in url and "wss://" not in url:
        sys.modules.setdefault("aiohttp", None)  # type: ignore[arg-type]  # `import aiohttp` now raises ImportError


def run_async(coro: Awaitable[int]) -> int:
    try:
        return asyncio.run(coro)  # type: ignore[arg-type]
    except Unreachable as e:
        return err(str(e), EXIT_UNREACHABLE)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


async def _mapped(call: Awaitable[int | None]) -> int:
    """Await a command; the errors a person can act on become one line and an exit code."""
    from autotune.reads import BadRequest, NotFound
    from autotune.reads.stream import BadSubject
    from autotune.schemas.spec import SpecError
    from autotune.shared import commands
    from autotune.shared import query as q

    try:
        return await call or EXIT_OK
    except (NotFound, BadRequest, BadSubject, commands.UnknownTask, commands.UnknownHost, commands.DuplicateTask) as e:
        return err(str(e), EXIT_INPUT)
    except SpecError as e:
        return err(f"invalid task spec: {e}", EXIT_INPUT)
    except q.QueryError as e:
        unreachable = any(s in e.message for s in ("no projector is answering", "did not answer within", "is behind"))
        return err(e.message, EXIT_UNREACHABLE if unreachable else EXIT_FAILED)
    except Failed as e:
        return err(str(e), EXIT_FAILED)
    except (TimeoutError, ConnectionError) as e:
        return err(f"NATS did not answer ({type(e).__name__}); is autotune up?", EXIT_UNREACHABLE)


def nats_command(fn: Callable[..., Awaitable[int | None]] | None = None, *, connect: bool = True) -> Any:
    """Make `async def cmd(args, conn, *extra)` the command `cmd(args, *extra) -> exit code`.

    It connects (unless `connect=False`: then `cmd(args, *extra)` gets no connection), runs the
    coroutine, closes the connection and maps errors to exit codes. Heavy imports belong inside the
    coroutine: they then happen after `lean_imports`, and `autotune --help` never pays for them."""

    def decorate(fn: Callable[..., Awaitable[int | None]]) -> Callable[..., int]:
        @functools.wraps(fn)
        def command(args: argparse.Namespace, *extra: Any) -> int:
            lean_imports(args)

            async def main() -> int:
                if not connect:
                    return await _mapped(fn(args, *extra))
                conn = await open_connection(args)
                try:
                    return await _mapped(fn(args, conn, *extra))
                finally:
                    await conn.nc.close()

            return run_async(main())

        return command

    return decorate(fn) if fn is not None else decorate

