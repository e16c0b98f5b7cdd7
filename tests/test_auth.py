"""Tokens against the simulator: bootstrap, proactive refresh, rotation, revocation."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from syncd.auth import ConnectionAuth, TokenManager
from syncd.errors import AuthError
from syncd.simulator import Simulator
from syncd.store import outbox, tokens
from syncd.store.database import Database, open_database


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = open_database(f"sqlite:///{tmp_path / 'syncd.db'}")
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
    with pytest.raises(AuthError, match="has no token; run 'syncd auth import"):
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
