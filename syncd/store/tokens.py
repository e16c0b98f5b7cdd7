"""The token store: one row per connection, read and rotated under a row lock.

``locked`` gives the single-flight guarantee of DESIGN §3: SQLite's ``BEGIN IMMEDIATE``
or PostgreSQL's ``SELECT … FOR UPDATE`` is held across the refresh call, so of several
threads or processes that find the token expired, one refreshes and the others, once
they get the lock, find the fresh pair already committed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, select, update

from syncd.events import Event
from syncd.store.database import Database
from syncd.store.outbox import append_events
from syncd.store.schema import TokenRow
from syncd.store.sql import insert_ignore, upsert

TOKENS = TokenRow.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class StoredToken:
    connection: str
    access_token: str | None
    refresh_token: str | None
    expires_at: datetime | None
    needs_authorization: bool
    auth_error: str | None
    needs_authorization_since: datetime | None


def _select(connection: str) -> object:
    return select(
        TOKENS.c.connection,
        TOKENS.c.access_token,
        TOKENS.c.refresh_token,
        TOKENS.c.expires_at,
        TOKENS.c.needs_authorization,
        TOKENS.c.auth_error,
        TOKENS.c.needs_authorization_since,
    ).where(TOKENS.c.connection == connection)


def load(db: Database, connection: str) -> StoredToken | None:
    with db.read() as conn:
        row = conn.execute(_select(connection)).first()  # type: ignore[call-overload]
    return StoredToken(*row) if row else None


def load_all(db: Database) -> dict[str, StoredToken]:
    with db.read() as conn:
        rows = conn.execute(select(TOKENS.c.connection)).scalars().all()
    return {name: token for name in rows if (token := load(db, name)) is not None}


class TokenTransaction:
    """The locked token row of one connection, and the writes allowed while holding it."""

    def __init__(self, conn: Connection, connection: str, token: StoredToken | None) -> None:
        self._conn = conn
        self.connection = connection
        self.token = token

    def save_pair(
        self, access_token: str, refresh_token: str, expires_at: datetime, now: datetime
    ) -> None:
        upsert(
            self._conn,
            TOKENS,
            {
                "connection": self.connection,
                "access_token": access_token,
                "refresh_token": refresh_token,
                "expires_at": expires_at,
                "needs_authorization": False,
                "auth_error": None,
                "needs_authorization_since": None,
                "updated_at": now,
            },
            keys=["connection"],
        )

    def mark_needs_authorization(self, error: str, event: Event, now: datetime) -> None:
        """Stop using this token for good, and say so once in the outbox."""
        self._conn.execute(
            update(TOKENS)
            .where(TOKENS.c.connection == self.connection)
            .values(
                access_token=None,
                needs_authorization=True,
                auth_error=error,
                needs_authorization_since=now,
                updated_at=now,
            )
        )
        append_events(self._conn, [event], now)


@contextmanager
def locked(
    db: Database, connection: str, *, bootstrap_refresh_token: str | None, now: datetime
) -> Iterator[TokenTransaction]:
    """Lock the connection's token row for the length of the block (commit on success).

    When the store holds no token yet, the configured bootstrap refresh token is stored
    first: it is used only while the store is empty.
    """
    with db.write() as conn:
        if bootstrap_refresh_token:
            insert_ignore(
                conn,
                TOKENS,
                [
                    {
                        "connection": connection,
                        "refresh_token": bootstrap_refresh_token,
                        "needs_authorization": False,
                        "updated_at": now,
                    }
                ],
            )
        stmt = _select(connection)
        if db.is_postgresql:
            stmt = stmt.with_for_update()  # type: ignore[attr-defined]
        row = conn.execute(stmt).first()  # type: ignore[call-overload]
        yield TokenTransaction(conn, connection, StoredToken(*row) if row else None)


def store_pair(
    db: Database,
    connection: str,
    *,
    refresh_token: str,
    access_token: str | None,
    expires_at: datetime | None,
    now: datetime,
) -> None:
    """Store a pair obtained elsewhere (``auth import``); it replaces whatever was there."""
    with db.write() as conn:
        upsert(
            conn,
            TOKENS,
            {
                "connection": connection,
                "access_token": access_token,
                "refresh_token": refresh_token,
                "expires_at": expires_at,
                "needs_authorization": False,
                "auth_error": None,
                "needs_authorization_since": None,
                "updated_at": now,
            },
            keys=["connection"],
        )
