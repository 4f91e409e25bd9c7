"""A task's search space against the live fleet: the configurations no live host could ever run.

`autotune submit` asks before it submits and warns (it never refuses: a host that fits may join);
the same rule (shared/fit.py) makes the scheduler say why an experiment waits and fail the ones no
host can run as `unplaceable`.
"""

from __future__ import annotations

from autotune.reads import models as m
from autotune.reads.common import rows
from autotune.reads.hosts import live_hosts
from autotune.schemas.spec import TaskSpec
from autotune.schemas.status import HostLifecycle
from autotune.shared.expand import experiment_space
from autotune.shared.fit import unfit_configurations

GONE = (HostLifecycle.REMOVED, HostLifecycle.DRAINING, HostLifecycle.DRAINED)


async def fleet_fit(nc, js, spec: TaskSpec, *, simulate: bool = False) -> m.FleetFit:
    known = await rows(nc, "SELECT host, status FROM hosts")
    live = await live_hosts(js, [r["host"] for r in known if r.get("status") not in GONE])
    hosts = {h: v for h, v in live.items() if not v.draining}
    size, unfit = unfit_configurations(
        experiment_space(spec), hosts, engine=spec.engine, deployment_mode=spec.deployment_mode, gpu_type=spec.gpu_type, simulate=simulate,
    )
    groups = [m.UnfitGroup(gpus=u.gpus, configurations=u.configurations, examples=list(u.examples), reason=u.reason) for u in unfit]
    return m.FleetFit(hosts=len(hosts), space_size=size, unfit=groups)


async def fleet_fit_or_none(nc, js, spec: TaskSpec, *, simulate: bool = False) -> m.FleetFit | None:
    """fleet_fit for a warning at submit: None when the fleet cannot be read (no projector yet), so that
    a courtesy never stops a submit."""
    try:
        return await fleet_fit(nc, js, spec, simulate=simulate)
    except Exception:
        return None
