"""Each connection's latest poll outcome: what ``status`` shows and what logs compare to."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from syncd.store.database import Database
from syncd.store.schema import ConnectionStateRow
from syncd.store.sql import upsert

STATE = ConnectionStateRow.__table__  # type: ignore[attr-defined]


def previous_outcome(conn: Connection, connection: str) -> str | None:
    value = conn.execute(
        select(STATE.c.last_outcome).where(STATE.c.connection == connection)
    ).scalar()
    return None if value is None else str(value)


def save_state(conn: Connection, connection: str, values: Mapping[str, Any]) -> None:
    row = {"connection": connection, "gap_open": False, **values}
    upsert(conn, STATE, row, keys=["connection"])


def record_failure(
    db: Database, connection: str, outcome: str, error: str, now: datetime
) -> str | None:
    """Store a failed poll; return the outcome before it (to log changes of state only)."""
    with db.write() as conn:
        row = conn.execute(
            select(STATE.c.last_outcome, STATE.c.failing_since, STATE.c.gap_open).where(
                STATE.c.connection == connection
            )
        ).first()
        previous = row.last_outcome if row else None
        failing_since = row.failing_since if row and row.failing_since else now
        save_state(
            conn,
            connection,
            {
                "last_poll_at": now,
                "last_outcome": outcome,
                "last_error": error,
                "failing_since": failing_since,
                "gap_open": bool(row.gap_open) if row else False,
            },
        )
    return previous


def load_state(db: Database, connection: str) -> dict[str, Any] | None:
    with db.read() as conn:
        row = conn.execute(select(STATE).where(STATE.c.connection == connection)).mappings().first()
    return dict(row) if row else None
