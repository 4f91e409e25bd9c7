"""A host's lifecycle in the projector's views and on the read side (issue 19): online, lost, back
online, stopped — and a late word of a replaced runner instance changes nothing. No NATS here (the
scheduler's side: tests/test_scheduler_core.py; with real processes: tests/test_fencing.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from autotune.projector import schema as sc
from autotune.projector.view_state import Message, ViewState
from autotune.projector.views import apply
from autotune.reads.hosts import _host_status
from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from autotune.schemas.liveness import LiveHost
from autotune.schemas.status import HostStatus

T0 = datetime(2026, 11, 22, tzinfo=UTC)


# --- the projector's views and the read side ------------------------------------------------------


def test_the_hosts_view_follows_loss_return_and_clean_stop():
    state, seq = ViewState(), iter(range(1, 100))

    def at() -> datetime:
        return T0 + timedelta(seconds=next(seq))

    def status_after(*events: ev.Event) -> str:
        apply(state, [Message(subj.EVENTS_STREAM, next(seq), f"autotune.host.h1.{ev.tag_of(type(e)).split('.')[1]}", ev.encode(e), 0) for e in events])
        return state.rows[sc.HOSTS.name][("h1",)]["status"]

    assert status_after(ev.HostRegistered(id="r1", at=at(), host="h1", instance="i1")) == "online"
    assert status_after(ev.HostLost(id="l1", at=at(), host="h1", instance="i1")) == "lost"
    assert status_after(ev.HostReturned(id="b1", at=at(), host="h1", instance="i1", fenced=["t/0/0"])) == "online"
    row = state.rows[sc.HOSTS.name][("h1",)]
    assert row["returned_at"] is not None and row["lost_at"] is not None
    assert status_after(ev.HostStopped(id="s1", at=at(), host="h1", instance="i1")) == "stopped"
    assert status_after(ev.HostRegistered(id="r2", at=at(), host="h1", instance="i2")) == "online"
    # late words of the replaced instance change nothing
    assert status_after(ev.HostLost(id="l0", at=at(), host="h1", instance="i1"), ev.HostStopped(id="s0", at=at(), host="h1", instance="i1")) == "online"
    assert status_after(ev.HostDrainRequested(id="d", at=at(), host="h1"), ev.HostLost(id="l2", at=at(), host="h1", instance="i2")) == "lost"
    assert status_after(ev.HostReturned(id="b2", at=at(), host="h1", instance="i2", draining=True)) == "draining"
    assert status_after(ev.HostRemoved(id="x", at=at(), host="h1"), ev.HostStopped(id="s2", at=at(), host="h1", instance="i2")) == "removed"


def test_the_read_side_says_why_a_host_without_a_key_is_gone():
    live = LiveHost(host="h", instance="i", running=["t/0/0"])
    assert _host_status({"status": "lost"}, None) == HostStatus.LOST
    assert _host_status({"status": "stopped"}, None) == HostStatus.STOPPED
    assert _host_status({"status": "removed"}, None) == HostStatus.REMOVED
    assert _host_status({"status": "online"}, None) == HostStatus.OFFLINE  # its key is gone, the log does not say why yet
    assert _host_status({"status": "lost"}, live) == HostStatus.BUSY  # its key is back: it answers, before host.returned lands
