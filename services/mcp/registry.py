"""The tool registry: what each tool is (name, title, annotations, whether it changes the fleet or
stops work), how it reaches autotune (`Link`), how its answer is shaped (`answer`), and how its
errors reach the agent (the CLI's messages, never a traceback).

A tool is a plain async function registered with `@tool(...)` in fleet.py, tasks.py or data.py; its
typed parameters become the input schema. Adding one is a function and a decorator.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import nats.errors
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from nats.aio.client import Client as NATS
from nats.js.errors import Error as JetStreamError

from autotune.reads import BadRequest, NotFound
from autotune.reads.secrets import known_secrets, scrub
from autotune.reads.stream import BadSubject
from autotune.schemas.spec import SpecError
from autotune.schemas.subjects import SubjectError
from autotune.shared import commands
from autotune.shared import query as q
from autotune.shared.log import get_logger
from autotune.shared.settings import Settings

log = get_logger("mcp")


class Link:
    """How the tools reach autotune: a NATS connection (`connect` may make it on first use), and the
    sequence of this server's own last write, which every read then waits for (read-your-writes)."""

    def __init__(self, connect: Callable[[], Awaitable[NATS]], settings: Settings | None = None) -> None:
        self._connect = connect
        self.settings = settings  # the stack's (NATS URL, data dir): what deploying needs besides the connection
        self.last_seq = 0

    async def nc(self) -> NATS:
        return await self._connect()

    @property
    def min_seq(self) -> int | None:
        return self.last_seq or None

    def wrote(self, seq: int) -> None:
        self.last_seq = max(self.last_seq, seq)


def link_of(ctx: Context) -> Link:
    return ctx.request_context.lifespan_context


@dataclass(frozen=True)
class ToolDef:
    fn: Callable[..., Awaitable[CallToolResult]]
    name: str
    title: str
    annotations: ToolAnnotations
    changes_fleet: bool  # changes the fleet or stops work: offered only when the server was started to allow it


TOOLS: list[ToolDef] = []


def tool(title: str, *, reads: bool = True, changes_fleet: bool = False, idempotent: bool = False, open_world: bool = False):
    """Register a tool. `reads`: it changes nothing. `changes_fleet`: it changes the fleet or stops
    work, so it is annotated destructive and offered only with --allow-fleet-changes. Anything else
    (submit, clone) adds work and destroys nothing."""

    def register(fn: Callable[..., Awaitable[CallToolResult]]) -> Callable[..., Awaitable[CallToolResult]]:
        annotations = ToolAnnotations(
            title=title, read_only_hint=reads and not changes_fleet, destructive_hint=False if reads else changes_fleet,
            idempotent_hint=True if reads else idempotent, open_world_hint=open_world,
        )  # fmt: skip
        TOOLS.append(ToolDef(fn=_clear_errors(fn), name=fn.__name__, title=title, annotations=annotations, changes_fleet=changes_fleet))
        return fn

    return register


# --- answers ----------------------------------------------------------------------------------------------

_encode = msgspec.json.Encoder()


async def answer(link: Link | None, summary: str, data: Any, *, key: str = "result") -> CallToolResult:
    """A tool's result: `data` as structured content (a list goes under `key`: MCP wants an object),
    the same as JSON text for clients that read only text, and a one-line summary an agent can quote.
    Secrets never leave: fields by name, and (with a link) every value the log holds as a secret."""
    body = msgspec.json.decode(_encode.encode(data))  # Structs, datetimes, NaN: plain JSON, as the CLI's --json prints it
    if not isinstance(body, dict):
        body = {key: body}
    secrets = await known_secrets(await link.nc(), min_seq=link.min_seq) if link is not None else frozenset()
    body = scrub(body, secrets)
    summary = scrub(summary, secrets)
    return CallToolResult(
        content=[TextContent(type="text", text=summary), TextContent(type="text", text=_encode.encode(body).decode())],
        structured_content=body,
    )


# --- errors -----------------------------------------------------------------------------------------------

UNREACHABLE = "autotune is not reachable: {}; is `autotune up` running (or the API's NATS URL right)?"


def message_of(e: BaseException) -> str:
    """The message the CLI would print for `e`."""
    if isinstance(e, NotFound | BadRequest | BadSubject | commands.UnknownTask | commands.UnknownHost | commands.DuplicateTask):
        return str(e)
    from autotune.deploy import BadInput, Refused

    if isinstance(e, BadInput | Refused):  # a deploy refused before the machine was changed
        return str(e)
    if isinstance(e, SpecError):
        return f"invalid task spec: {e}"
    if isinstance(e, SubjectError):
        return f"no such id: {e}"
    if isinstance(e, q.QueryError):
        return e.message
    if isinstance(e, nats.errors.Error | JetStreamError | TimeoutError | ConnectionError):
        return UNREACHABLE.format(f"NATS did not answer ({type(e).__name__})")
    return f"internal error ({type(e).__name__}); this is a bug in autotune, please report it with the tool call"


def _clear_errors(fn: Callable[..., Awaitable[CallToolResult]]) -> Callable[..., Awaitable[CallToolResult]]:
    """Every failure becomes a tool error (`isError`) carrying the CLI's message; what is not one of
    autotune's own errors is logged here with its traceback, and the agent gets no internals."""

    @functools.wraps(fn)
    async def run(*args: Any, **kwargs: Any) -> CallToolResult:
        try:
            return await fn(*args, **kwargs)
        except ToolError:
            raise
        except Exception as e:
            known = not message_of(e).startswith("internal error")
            if not known:
                log.error("tool failed", exc=True, tool=fn.__name__, error=repr(e))
            raise ToolError(message_of(e)) from None

    return run
