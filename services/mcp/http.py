"""The MCP server over streamable HTTP, as an ASGI endpoint the API mounts at `/mcp` (behind its
token: the API guards the mount). The SDK's session manager runs for the app's lifetime (`running`)."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any

from mcp.server import MCPServer
from mcp.server.transport_security import TransportSecuritySettings

LOCAL_HOSTS = ["127.0.0.1:*", "localhost:*", "[::1]:*"]
LOCAL_ORIGINS = ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]


class McpEndpoint:
    """`server` as an ASGI app. Without a token, only requests addressed to this machine by name
    (Host and Origin of 127.0.0.1 / localhost) are served: a web page must not reach an open endpoint
    through DNS rebinding. With one, the token is the guard and any Host is fine."""

    def __init__(self, server: MCPServer, *, token: str | None) -> None:
        security = (
            TransportSecuritySettings(enable_dns_rebinding_protection=False) if token
            else TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=LOCAL_HOSTS, allowed_origins=LOCAL_ORIGINS)
        )  # fmt: skip
        server.streamable_http_app(streamable_http_path="/", transport_security=security)
        self.manager = server.session_manager

    def running(self) -> AbstractAsyncContextManager[None]:
        """The session manager's task group and the server's lifespan: enter once, for the app's life."""
        return self.manager.run()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.manager.handle_request(scope, receive, send)
