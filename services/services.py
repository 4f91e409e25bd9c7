"""The services autotune runs, by name, and how one of them is started (`autotune run NAME`; every child
of `autotune up` is one). Each service is imported only when asked for: a runner host need not load the
API's web framework, nor the API the runtimes; and `autotune --help` imports nothing of them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from autotune.shared.settings import Settings

SERVICES = ("scheduler", "runner", "projector", "api", "gpumon")


class CannotStart(Exception):
    """A service refused to start for a reason its operator must fix (another runner serves its host)."""


def service_main(
    name: str, *, host: str | None = None, simulate: str | None = None, time_scale: float | None = None, takeover: bool = False,
    bind: str = "127.0.0.1", port: int = 8080, runner_options: dict | None = None,
) -> Callable[[Settings, asyncio.Event], Awaitable[None]]:
    """`main(settings, stop)` of the service called `name`, with its options bound (host, simulate,
    time_scale and takeover are the runner's and gpumon's; bind and port the API's; runner_options more
    RunnerSettings of the runner: engines, engine_env, cpu_slots, models_dir). Raises ValueError for
    runner options it cannot use (an engine that is not an executable file)."""
    if name == "scheduler":
        from autotune.scheduler.service import run as scheduler_run

        return lambda settings, stop: scheduler_run(settings, stop=stop)
    if name == "projector":
        from autotune.projector.service import run as projector_run

        return lambda settings, stop: projector_run(settings, stop=stop)
    if name == "api":
        from autotune.api.service import run as api_run

        return lambda settings, stop: api_run(settings, stop=stop, host=bind, port=port)
    if name == "runner":
        from autotune.runner.service import HostTaken, RunnerSettings
        from autotune.runner.service import run as runner_run

        rs = RunnerSettings.from_env(simulate=simulate, time_scale=time_scale, takeover=takeover or None, **(runner_options or {}))
        if host:
            rs.host = host

        async def runner_main(settings: Settings, stop: asyncio.Event) -> None:
            try:
                await runner_run(settings, stop=stop, runner=rs)
            except HostTaken as e:
                raise CannotStart(str(e)) from None

        return runner_main
    if name == "gpumon":
        from autotune.gpumon.service import run as gpumon_run
        from autotune.runner.settings import default_host_id

        return lambda settings, stop: gpumon_run(settings, stop=stop, host=host or default_host_id(), simulate=simulate)
    raise ValueError(f"unknown service `{name}`; one of {', '.join(SERVICES)}")
