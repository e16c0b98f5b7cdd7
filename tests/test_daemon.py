"""The daemon in-process: scheduling, gap catch-up, clean stop; exit-code precedence."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from syncd.config import load_config
from syncd.daemon import Daemon, exit_code_for, opened, run_once
from syncd.errors import AuthError, PermanentApiError, SinkUnavailable, TransientApiError
from syncd.simulator import Simulator
from syncd.store import outbox
from syncd.store.database import Database
from tests.conftest import Setup


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def created_ids(db: Database) -> set[int]:
    events = outbox.read_after(db, 0, 1000)
    return {int(e.subject) for e in events if e.type.endswith("purchase_order.created")}


def test_exit_code_precedence() -> None:
    """Authorization beats unavailability, which beats other failures."""
    assert exit_code_for([]) == 0
    assert exit_code_for([PermanentApiError("x"), TransientApiError("y")]) == 4
    assert exit_code_for([SinkUnavailable("s"), AuthError("a")]) == 3
    assert exit_code_for([PermanentApiError("x")]) == 1


def test_daemon_polls_and_delivers_then_stops(
    sim: Simulator, make_config: Callable[..., Setup]
) -> None:
    """Started daemon mirrors the window, delivers it, and stops cleanly on request."""
    setup = make_config(sim)
    config = load_config(setup.path, setup.env)
    with opened(config, daemon=True) as db:
        daemon = Daemon(config, db)
        daemon.start()
        try:
            wait_for(lambda: created_ids(db) == set(range(106, 126)))
            new_id = sim.add_order()["id"]
            wait_for(lambda: new_id in created_ids(db))
            wait_for(lambda: outbox.sink_status(db, "events-file").pending == 0)
        finally:
            started = time.monotonic()
            assert daemon.shutdown() is True
        assert time.monotonic() - started < 5


def test_gap_makes_the_next_poll_sooner(sim: Simulator, make_config: Callable[..., Setup]) -> None:
    """After a gap the connection is polled again within a sixth of its interval."""
    setup = make_config(sim, poll_interval="60s")
    config = load_config(setup.path, setup.env)
    assert run_once(config) == []
    for _ in range(25):
        sim.add_order()
    with opened(config, daemon=True) as db:
        daemon = Daemon(config, db)
        daemon.start()
        try:
            wait_for(
                lambda: any(e.type.endswith("gap_detected") for e in outbox.read_after(db, 0, 100))
            )
            job = daemon.scheduler.get_job("poll:band")
            wait_for(lambda: job.next_run_time < datetime.now(UTC) + timedelta(seconds=15))
        finally:
            daemon.shutdown()
