"""Tokens against the simulator: bootstrap, proactive refresh, rotation, revocation."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import httpx
import pytest

from syncd.auth import ConnectionAuth, TokenManager
from syncd.errors import AuthError, TransientApiError
from syncd.simulator import Simulator
from syncd.store import outbox, tokens
from syncd.store.database import Database, open_database
from tests.conftest import Setup, run_syncd


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    """The token store on SQLite and, when available, on PostgreSQL."""
    database = open_database(database_url)
    yield database
    database.close()


@pytest.fixture
def manager(sim: Simulator, db: Database) -> Iterator[Callable[..., TokenManager]]:
    http = httpx.Client(timeout=5)

    def make(bootstrap: str | None = None, clock: Callable[[], float] = time.time) -> TokenManager:
        auth = ConnectionAuth(
            name="band",
            refresh_url=sim.base_url + "oauth/oauth_refresh.php",
            client_id=sim.client_id,
            client_secret=sim.client_secret,
            bootstrap_refresh_token=bootstrap,
        )
        return TokenManager(auth, db, http, clock=clock)

    yield make
    http.close()


def test_bootstrap_token_is_refreshed_and_stored(
    sim: Simulator, db: Database, manager: Callable[..., TokenManager]
) -> None:
    """The configured refresh token is used once; the rotated pair is stored."""
    bootstrap = str(sim.issue_tokens()["refresh_token"])
    access = manager(bootstrap).access_token()
    stored = tokens.load(db, "band")
    assert stored is not None
    assert stored.access_token == access
    assert stored.refresh_token not in (None, bootstrap)
    assert sim.stats.refresh_calls == 1


def test_fresh_token_is_reused(sim: Simulator, manager: Callable[..., TokenManager]) -> None:
    """A valid access token is not refreshed again."""
    tm = manager(str(sim.issue_tokens()["refresh_token"]))
    assert tm.access_token() == tm.access_token()
    assert sim.stats.refresh_calls == 1


def test_fresh_token_is_served_from_memory(
    sim: Simulator, manager: Callable[..., TokenManager], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the access token is fresh, a poll reads no token row."""
    tm = manager(str(sim.issue_tokens()["refresh_token"]))
    first = tm.access_token()
    reads: list[str] = []
    load = tokens.load
    monkeypatch.setattr(tokens, "load", lambda db, name: reads.append(name) or load(db, name))
    assert [tm.access_token() for _ in range(3)] == [first] * 3
    assert reads == []


def test_rejected_token_is_not_served_from_memory(
    sim: Simulator, manager: Callable[..., TokenManager]
) -> None:
    """After a 401 the remembered token is dropped and a new one is used."""
    tm = manager(str(sim.issue_tokens()["refresh_token"]))
    first = tm.access_token()
    second = tm.refresh_after_401(first)
    assert second != first
    assert tm.access_token() == second


def test_refresh_before_expiry(sim: Simulator, manager: Callable[..., TokenManager]) -> None:
    """Within five minutes of expiry the token is refreshed proactively."""
    now = [time.time()]
    tm = manager(str(sim.issue_tokens()["refresh_token"]), clock=lambda: now[0])
    first = tm.access_token()
    now[0] += 3600 - 299
    assert tm.access_token() != first
    assert sim.stats.refresh_calls == 2


def test_bootstrap_ignored_once_store_holds_a_token(
    sim: Simulator, db: Database, manager: Callable[..., TokenManager]
) -> None:
    """The config's refresh token is only a bootstrap: a stored pair wins."""
    pair = sim.issue_tokens()
    tokens.store_pair(
        db,
        "band",
        refresh_token=str(pair["refresh_token"]),
        access_token=None,
        expires_at=None,
        now=datetime.now(UTC),
    )
    manager("dead-bootstrap-token").access_token()
    assert sim.stats.refresh_calls == 1  # the stored refresh token worked


def test_revoked_refresh_marks_connection_once(
    sim: Simulator, db: Database, manager: Callable[..., TokenManager]
) -> None:
    """invalid_grant: AuthError, needs authorization, one auth_failed event, no retry."""
    tm = manager(str(sim.issue_tokens()["refresh_token"]))
    current = tm.access_token()
    sim.revoke_tokens()
    with pytest.raises(AuthError, match="syncd auth import") as info:
        tm.refresh_after_401(current)
    assert info.value.exit_code == 3
    stored = tokens.load(db, "band")
    assert stored is not None
    assert stored.needs_authorization
    assert "invalid_grant" in (stored.auth_error or "")
    calls = sim.stats.refresh_calls
    with pytest.raises(AuthError, match="needs authorization since"):
        tm.access_token()
    assert sim.stats.refresh_calls == calls
    events = outbox.read_after(db, 0, 10)
    assert [e.type for e in events] == ["com.inventoryarts.connection.auth_failed"]


def test_no_token_says_how_to_authorize(manager: Callable[..., TokenManager]) -> None:
    """Without a stored or bootstrap token: AuthError naming the command."""
    with pytest.raises(AuthError, match="has no token; run 'syncd auth login --connection band'"):
        manager().access_token()


def test_401_with_already_rotated_token_does_not_refresh(
    sim: Simulator, manager: Callable[..., TokenManager]
) -> None:
    """If another caller refreshed meanwhile, the stored token is used as is."""
    tm = manager(str(sim.issue_tokens()["refresh_token"]))
    current = tm.access_token()
    assert tm.refresh_after_401("an-older-token") == current
    assert sim.stats.refresh_calls == 1


def test_concurrent_callers_refresh_once(
    sim: Simulator, manager: Callable[..., TokenManager]
) -> None:
    """Eight threads on an expired token: one refresh call, one token for all."""
    tms = [manager(str(sim.issue_tokens()["refresh_token"]))] * 8
    seen: list[str] = []
    threads = [threading.Thread(target=lambda t=tm: seen.append(t.access_token())) for tm in tms]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(seen)) == 1
    assert sim.stats.refresh_calls == 1


# --- a refresh whose answer was lost --------------------------------------------------

REFRESH = "/oauth/oauth_refresh.php"


def test_lost_refresh_is_retried_once_then_needs_authorization(
    sim: Simulator, db: Database, manager: Callable[..., TokenManager]
) -> None:
    """Answer cut off after the rotation: one retry with the same token, then a named cause."""
    tm = manager(str(sim.issue_tokens()["refresh_token"]))
    sim.faults.add(REFRESH, "reset_mid_body")
    with pytest.raises(TransientApiError, match="refresh response was lost"):
        tm.access_token()
    stored = tokens.load(db, "band")
    assert stored is not None
    assert stored.refresh_in_doubt_since is not None
    assert not stored.needs_authorization
    with pytest.raises(AuthError) as info:
        tm.access_token()
    message = str(info.value)
    assert "the refresh response was lost and the retried refresh was rejected (invalid_grant)" in (
        message
    )
    assert "the server rotated the token but syncd never received it" in message
    assert sim.stats.refresh_calls == 2
    with pytest.raises(AuthError, match="needs authorization since"):
        tm.access_token()
    assert sim.stats.refresh_calls == 2
    events = outbox.read_after(db, 0, 10)
    assert [e.type for e in events] == ["com.inventoryarts.connection.auth_failed"]
    assert "lost" in json.loads(events[0].payload)["data"]["error"]


def test_lost_refresh_that_never_rotated_recovers_on_its_retry(
    sim: Simulator, db: Database, manager: Callable[..., TokenManager]
) -> None:
    """Connection dropped before the server acted: the one retry succeeds and clears the doubt."""
    tm = manager(str(sim.issue_tokens()["refresh_token"]))
    sim.faults.add(REFRESH, "drop")
    with pytest.raises(TransientApiError, match="lost"):
        tm.access_token()
    access = tm.access_token()
    stored = tokens.load(db, "band")
    assert stored is not None
    assert stored.access_token == access
    assert stored.refresh_in_doubt_since is None
    assert sim.stats.refresh_calls == 2


def test_lost_retry_also_ends_in_needs_authorization(
    sim: Simulator, db: Database, manager: Callable[..., TokenManager]
) -> None:
    """If the retry's answer is lost too, no third attempt: the connection needs authorization."""
    tm = manager(str(sim.issue_tokens()["refresh_token"]))
    sim.faults.add(REFRESH, "reset_mid_body", times=2)
    with pytest.raises(TransientApiError):
        tm.access_token()
    with pytest.raises(AuthError, match="so was the answer to its one retry"):
        tm.access_token()
    with pytest.raises(AuthError):
        tm.access_token()
    assert sim.stats.refresh_calls == 2


def test_refresh_in_doubt_survives_a_restart(
    sim: Simulator, db: Database, manager: Callable[..., TokenManager]
) -> None:
    """The doubt is in the token row: a new manager (a restarted process) makes the one retry."""
    sim.faults.add(REFRESH, "reset_mid_body")
    with pytest.raises(TransientApiError):
        manager(str(sim.issue_tokens()["refresh_token"])).access_token()
    restarted = manager()
    with pytest.raises(AuthError, match="retried refresh was rejected"):
        restarted.access_token()
    assert sim.stats.refresh_calls == 2


def test_retry_that_cannot_connect_keeps_the_doubt(
    sim: Simulator, db: Database, manager: Callable[..., TokenManager]
) -> None:
    """A retry that never reached the server is not the retry: the doubt stays for the next."""
    sim.faults.add(REFRESH, "drop")
    with pytest.raises(TransientApiError):
        manager(str(sim.issue_tokens()["refresh_token"])).access_token()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/oauth/oauth_refresh.php"
    unreachable = TokenManager(
        ConnectionAuth("band", dead, sim.client_id, sim.client_secret), db, httpx.Client()
    )
    with pytest.raises(TransientApiError, match="cannot connect"):
        unreachable.access_token()
    stored = tokens.load(db, "band")
    assert stored is not None
    assert stored.refresh_in_doubt_since is not None
    assert not stored.needs_authorization
    manager().access_token()  # the retry, now that the server is reachable again
    assert sim.stats.refresh_calls == 2


def test_refresh_answered_with_5xx_is_not_in_doubt(
    sim: Simulator, db: Database, manager: Callable[..., TokenManager]
) -> None:
    """An HTTP 503 from the refresh endpoint is an answer: no doubt, an ordinary retry later."""
    refresh = str(sim.issue_tokens()["refresh_token"])
    now = datetime.now(UTC)
    tokens.store_pair(
        db, "band", refresh_token=refresh, access_token=None, expires_at=None, now=now
    )
    tm = manager()
    sim.faults.add(REFRESH, "status", status=503)
    with pytest.raises(TransientApiError, match="HTTP 503"):
        tm.access_token()
    stored = tokens.load(db, "band")
    assert stored is not None
    assert stored.refresh_in_doubt_since is None
    tm.access_token()
    assert sim.stats.refresh_calls == 2


def test_lost_refresh_across_process_restarts(
    sim: Simulator, make_config: Callable[..., Setup]
) -> None:
    """`run --once` twice: the lost answer exits 4, the next process retries once and exits 3."""
    setup = make_config(sim)
    sim.faults.add(REFRESH, "reset_mid_body")
    first = run_syncd(setup, "run", "--once")
    assert first.code == 4, first.output
    assert "refresh response was lost" in first.stderr
    between = run_syncd(setup, "auth", "status")
    assert "REFRESH IN DOUBT since" in between.stdout, between.output
    second = run_syncd(setup, "run", "--once")
    assert second.code == 3, second.output
    [line] = [x for x in second.stderr.splitlines() if x.startswith("syncd: ")]
    assert "the refresh response was lost and the retried refresh was rejected" in line
    assert sim.stats.refresh_calls == 2
