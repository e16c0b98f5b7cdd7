"""Crash suite for token refresh: syncd killed with SIGKILL at the three moments of a
refresh (``tests/killpoint.py`` places each kill exactly), then restarted.

Refresh tokens rotate, so only the kill between the server's answer and the commit can
cost the authorization; the connection then says so once and stops refreshing, and an
imported token brings it back. Each test runs on SQLite and, when
``SYNCD_TEST_DATABASE_URL`` is set, on PostgreSQL.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from syncd.simulator import Simulator
from syncd.store import tokens
from syncd.store.database import open_database, sqlite_path
from tests.conftest import (
    REPO,
    CliResult,
    Setup,
    read_events,
    run_syncd,
    start_syncd,
    syncd_env,
)

CREATED = "com.inventoryarts.purchase_order.created"
AUTH_FAILED = "com.inventoryarts.connection.auth_failed"
POLL_EVENTS = {"poll failed", "poll still failing", "orders synced", "poll quiet"}


# --- helpers --------------------------------------------------------------------------


def run_killed(setup: Setup, moment: str, *args: str) -> CliResult:
    """Run ``syncd --config <setup> ARGS`` through the kill-point launcher."""
    proc = subprocess.run(
        [sys.executable, "-m", "tests.killpoint", moment, "--config", str(setup.path), *args],
        capture_output=True,
        text=True,
        env=syncd_env(setup.env),
        timeout=60,
        cwd=REPO,
        check=False,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def kill_at(setup: Setup, moment: str, *args: str) -> None:
    """Run syncd until the kill at ``moment``; it must die of SIGKILL there."""
    result = run_killed(setup, moment, *args)
    assert result.code == -signal.SIGKILL, result.output
    assert "Traceback" not in result.output


def check_store(url: str) -> tokens.StoredToken | None:
    """The database after a kill: intact, its token row not left locked; that row."""
    path = sqlite_path(url)
    if path is not None:
        with closing(sqlite3.connect(path)) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db = open_database(url, migrate=False)
    try:
        # SQLite: BEGIN IMMEDIATE must get the write lock; PostgreSQL: the row lock.
        with db.write() as conn:
            if db.is_postgresql:
                conn.execute(text("SET LOCAL lock_timeout = '5s'"))
                conn.execute(text("SELECT connection FROM tokens FOR UPDATE"))
        return tokens.load(db, "band")
    finally:
        db.close()


def outbox_types(url: str) -> list[str]:
    """The type of every event stored in the outbox, oldest first."""
    db = open_database(url, migrate=False)
    try:
        with db.read() as conn:
            return list(conn.execute(text("SELECT type FROM outbox ORDER BY seq")).scalars())
    finally:
        db.close()


def mirrored(url: str) -> int:
    """How many orders of the connection the mirror holds."""
    db = open_database(url, migrate=False)
    try:
        with db.read() as conn:
            query = text("SELECT count(*) FROM purchase_orders WHERE connection = 'band'")
            return int(conn.execute(query).scalar_one())
    finally:
        db.close()


def of_type(setup: Setup, event_type: str) -> list[dict[str, Any]]:
    """The events of one type the JSONL sink received."""
    return [e for e in read_events(setup.events_file) if e["type"] == event_type]


def fail_lines(result: CliResult) -> list[str]:
    """The one-line error messages the CLI printed (not the structured log lines)."""
    return [line for line in result.stderr.splitlines() if line.startswith("syncd: ")]


def assert_authorized(setup: Setup) -> None:
    """``syncd auth status`` says the connection is authorized."""
    status = run_syncd(setup, "auth", "status")
    assert status.code == 0, status.output
    assert status.stdout.startswith("band: authorized"), status.output


def run_daemon_for_polls(setup: Setup, polls: int, timeout: float = 20.0) -> list[dict[str, Any]]:
    """``syncd --debug run`` until it has polled ``polls`` times, then SIGTERM: its log."""
    proc = start_syncd(setup, "--debug", "run")
    assert proc.stderr is not None
    records: list[dict[str, Any]] = []
    done = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            records.append(json.loads(line) if line.startswith("{") else {"raw": line})
            if sum(r.get("event") in POLL_EVENTS for r in records) >= polls:
                done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert done.wait(timeout), records
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=20)
        reader.join(timeout=5)
        assert proc.stdout is not None
        proc.stdout.close()
        proc.stderr.close()
    assert code == 0, records
    assert [r for r in records if "raw" in r] == []  # only log records: no traceback
    return records


def loud(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(level, event) of the log records at warning level and above."""
    return [(r["level"], r["event"]) for r in records if r.get("level") in ("warning", "error")]


# --- the three moments ----------------------------------------------------------------


@dataclass
class Before:
    """The state just before a refresh that is about to be killed."""

    setup: Setup
    url: str
    token: tokens.StoredToken | None  # the stored token row
    refresh_token: str  # the refresh token the coming refresh sends


@pytest.fixture(params=["first", "later"])
def before(
    request: pytest.FixtureRequest,
    sim: Simulator,
    make_config: Callable[..., Setup],
    database_url: str,
) -> Before:
    """Where the killed refresh starts: "first", an empty store whose bootstrap token is
    refreshed at once; "later", a stored pair whose access token the server has expired
    (the first request gets a 401, then the refresh)."""
    setup = make_config(sim, database_url=database_url)
    if request.param == "first":
        return Before(setup, database_url, None, setup.env["SYNCD_REFRESH_TOKEN"])
    pair = sim.issue_tokens()
    now = datetime.now(UTC)
    db = open_database(database_url)
    try:
        tokens.store_pair(
            db,
            "band",
            refresh_token=pair["refresh_token"],
            access_token=pair["access_token"],
            expires_at=now + timedelta(seconds=pair["expires_in"]),
            now=now,
        )
    finally:
        db.close()
    sim.expire_access_tokens()
    return Before(setup, database_url, check_store(database_url), pair["refresh_token"])


def test_kill_before_request_costs_nothing(sim: Simulator, before: Before) -> None:
    """Killed with the token row locked and nothing sent: nothing written; the restart
    refreshes once and syncs."""
    setup = before.setup
    kill_at(setup, "before_request", "run", "--once")
    assert sim.stats.refresh_calls == 0
    assert check_store(before.url) == before.token

    result = run_syncd(setup, "run", "--once")
    assert result.code == 0, result.output
    assert sim.stats.refresh_calls == 1
    assert len(of_type(setup, CREATED)) == 20
    assert mirrored(before.url) == 20
    assert_authorized(setup)


def test_kill_after_response_needs_authorization_once(sim: Simulator, before: Before) -> None:
    """Killed after the server rotated, before the commit: exit 3 with one line, no second
    refresh on the next run, one auth_failed event; an imported token recovers it."""
    setup = before.setup
    kill_at(setup, "after_response", "run", "--once")
    assert sim.stats.refresh_calls == 1  # the sent token is dead now
    assert check_store(before.url) == before.token  # the new pair was never committed

    first = run_syncd(setup, "run", "--once")
    assert first.code == 3, first.output
    assert "Traceback" not in first.output
    [line] = fail_lines(first)
    assert "connection 'band' needs authorization" in line
    assert "syncd auth login --connection band" in line
    assert sim.stats.refresh_calls == 2  # the one rejected retry

    second = run_syncd(setup, "run", "--once")
    assert second.code == 3, second.output
    [line] = fail_lines(second)
    assert "connection 'band' needs authorization since" in line
    assert sim.stats.refresh_calls == 2  # no loop

    assert outbox_types(before.url).count(AUTH_FAILED) == 1
    [failed] = of_type(setup, AUTH_FAILED)
    assert failed["data"]["connection"] == "band"
    assert of_type(setup, CREATED) == []  # nothing synced without authorization

    fresh = str(sim.issue_tokens()["refresh_token"])
    imported = run_syncd(setup, "auth", "import", "--connection", "band", "--refresh-token", fresh)
    assert imported.code == 0, imported.output
    recovered = run_syncd(setup, "run", "--once")
    assert recovered.code == 0, recovered.output
    assert sim.stats.refresh_calls == 3
    assert len(of_type(setup, CREATED)) == 20


def test_kill_after_commit_uses_the_committed_token(sim: Simulator, before: Before) -> None:
    """Killed right after the new pair committed: the restart uses it, no refresh call."""
    setup = before.setup
    kill_at(setup, "after_commit", "run", "--once")
    assert sim.stats.refresh_calls == 1
    token = check_store(before.url)
    assert token is not None
    assert token.refresh_token not in (None, before.refresh_token)
    assert token.access_token not in (None, before.token and before.token.access_token)

    result = run_syncd(setup, "run", "--once")
    assert result.code == 0, result.output
    assert sim.stats.refresh_calls == 1
    assert len(of_type(setup, CREATED)) == 20
    assert mirrored(before.url) == 20


# --- the daemon -----------------------------------------------------------------------


def test_daemon_killed_after_response_says_so_once(
    sim: Simulator, make_config: Callable[..., Setup], database_url: str
) -> None:
    """`syncd run` killed after the rotation, then restarted: one rejected refresh, one
    error and one warning, then quiet polls without a refresh; one auth_failed event,
    delivered at once; a later start warns once."""
    setup = make_config(sim, database_url=database_url, poll_interval="1s")
    kill_at(setup, "after_response", "run")
    assert sim.stats.refresh_calls == 1
    assert check_store(database_url) is None

    records = run_daemon_for_polls(setup, polls=3)
    assert sim.stats.refresh_calls == 2
    assert loud(records) == [("error", "authorization lost"), ("warning", "poll failed")]
    lost = next(r for r in records if r["event"] == "authorization lost")
    assert "connection 'band' needs authorization" in lost["error"]
    assert "syncd auth login --connection band" in lost["error"]
    assert sum(r["event"] == "poll still failing" for r in records) >= 2
    assert outbox_types(database_url).count(AUTH_FAILED) == 1
    assert len(of_type(setup, AUTH_FAILED)) == 1  # delivered at once, not at the idle round
    # Started again on the blocked connection: one warning, and still no refresh.
    records = run_daemon_for_polls(setup, polls=2)
    assert loud(records) == [("warning", "connection needs authorization")]
    assert sim.stats.refresh_calls == 2
    assert len(of_type(setup, AUTH_FAILED)) == 1
