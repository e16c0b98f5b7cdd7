"""Each connection's latest poll outcome: what ``status`` shows and what logs compare to."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, select, update

from syncd.store.database import Database
from syncd.store.schema import CONNECTION_STATE
from syncd.store.sql import upsert

STATE = CONNECTION_STATE


OK = "ok"

_LAST_OUTCOME = select(STATE.c.last_outcome).where(STATE.c.connection == bindparam("b_connection"))
# A success after a success: error and failing_since are already clear.
_OK_AGAIN = (
    update(STATE)
    .where(STATE.c.connection == bindparam("b_connection"), STATE.c.last_outcome == OK)
    .values(
        last_poll_at=bindparam("b_now"),
        last_success_at=bindparam("b_now"),
        gap_open=bindparam("b_gap"),
    )
)


def save_state(conn: Connection, connection: str, values: Mapping[str, Any]) -> None:
    row = {"connection": connection, "gap_open": False, **values}
    upsert(conn, STATE, row, keys=["connection"])


def record_success(conn: Connection, connection: str, now: datetime, gap: bool) -> str | None:
    """Store a successful poll; return the outcome before it (to log "recovered" once).

    The steady state, a success after a success, is one UPDATE."""
    params = {"b_connection": connection, "b_now": now, "b_gap": gap}
    if conn.execute(_OK_AGAIN, params).rowcount == 1:
        return OK
    value = conn.execute(_LAST_OUTCOME, params).scalar()
    save_state(
        conn,
        connection,
        {
            "last_poll_at": now,
            "last_outcome": OK,
            "last_error": None,
            "last_success_at": now,
            "failing_since": None,
            "gap_open": gap,
        },
    )
    return None if value is None else str(value)


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
