"""The web dashboard: the fleet, tasks and results at a glance, live.

Pages rendered on the server (Jinja2 templates) from the same read side the JSON API answers from
(`autotune.reads`), so the two cannot drift; live updates come from the API's own SSE streams
(the page re-renders a section when an event says it changed, charts append points). Mutating
buttons call the JSON API with the bearer token. The API process mounts it at `/`:

    Litestar(route_handlers=[..., *dashboard.route_handlers()], template_config=dashboard.template_config())

Third-party JavaScript and CSS are vendored under static/vendor/ (manifest.json: name, version,
license, sha256; `just vendor-ui` fetches exactly those again). No Node.js is needed.
"""

from __future__ import annotations

from autotune.dashboard.app import route_handlers, template_config

__all__ = ["route_handlers", "template_config"]
