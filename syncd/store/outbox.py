"""The outbox: events appended in the poll's own transaction, read by sinks in order.

Each sink keeps a cursor (the last delivered ``seq``); delivery is at-least-once and in
``seq`` order, which keeps the events of one order in the order they happened.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, func, select, text, update

from syncd.events import Event, StoredEvent
from syncd.store.database import OUTBOX_LOCK_KEY, Database
from syncd.store.schema import DEAD_LETTERS, OUTBOX, SINK_CURSORS
from syncd.store.sql import insert_ignore

CURSORS = SINK_CURSORS


def append_events(conn: Connection, events: Sequence[Event], now: datetime) -> None:
    """Append events inside the caller's transaction; an id already stored is skipped.

    On PostgreSQL a transaction-scoped advisory lock, held until commit, makes sequence
    numbers commit in the order they are drawn, so a reader that has seen ``seq`` N
    never later finds a smaller one appear.
    """
    if not events:
        return
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": OUTBOX_LOCK_KEY})
    insert_ignore(
        conn,
        OUTBOX,
        [
            {
                "event_id": ev.id,
                "connection": ev.source.removeprefix("urn:syncd:"),
                "type": ev.type,
                "subject": ev.subject,
                "created_at": now,
                "payload": ev.to_json(),
            }
            for ev in events
        ],
    )


def read_after(db: Database, seq: int, limit: int) -> list[StoredEvent]:
    """Up to ``limit`` events after ``seq``, oldest first."""
    stmt = (
        select(OUTBOX.c.seq, OUTBOX.c.event_id, OUTBOX.c.type, OUTBOX.c.subject)
        .add_columns(OUTBOX.c.connection, OUTBOX.c.payload)
        .where(OUTBOX.c.seq > seq)
        .order_by(OUTBOX.c.seq)
        .limit(limit)
    )
    with db.read() as conn:
        return [StoredEvent(*row) for row in conn.execute(stmt)]


def cursor_position(db: Database, sink: str) -> int:
    with db.read() as conn:
        value = conn.execute(select(CURSORS.c.position).where(CURSORS.c.sink == sink)).scalar()
    return int(value or 0)


def advance_cursor(db: Database, sink: str, position: int, delivered: int, now: datetime) -> None:
    """Move a sink's cursor forward (never back) and clear its last error."""
    with db.write() as conn:
        _advance(conn, sink, position, delivered, now)


def _advance(conn: Connection, sink: str, position: int, delivered: int, now: datetime) -> None:
    _ensure_cursor(conn, sink, now)
    greatest = func.max if conn.dialect.name == "sqlite" else func.greatest
    conn.execute(
        update(CURSORS)
        .where(CURSORS.c.sink == sink)
        .values(
            position=greatest(CURSORS.c.position, position),
            delivered=CURSORS.c.delivered + delivered,
            last_error=None,
            last_error_at=None,
            updated_at=now,
        )
    )


def record_sink_error(db: Database, sink: str, error: str, now: datetime) -> None:
    with db.write() as conn:
        _ensure_cursor(conn, sink, now)
        conn.execute(
            update(CURSORS)
            .where(CURSORS.c.sink == sink)
            .values(last_error=error, last_error_at=now, updated_at=now)
        )


def dead_letter(db: Database, sink: str, event: StoredEvent, error: str, now: datetime) -> None:
    """Park an event the sink refused for good and move the cursor past it, together."""
    with db.write() as conn:
        conn.execute(
            DEAD_LETTERS.insert().values(
                sink=sink, seq=event.seq, event_id=event.event_id, error=error, created_at=now
            )
        )
        _advance(conn, sink, event.seq, 0, now)


def _ensure_cursor(conn: Connection, sink: str, now: datetime) -> None:
    insert_ignore(
        conn,
        CURSORS,
        [{"sink": sink, "position": 0, "delivered": 0, "updated_at": now}],
    )


@dataclass(frozen=True)
class SinkStatus:
    sink: str
    position: int
    pending: int
    delivered: int
    dead_letters: int
    last_error: str | None
    last_error_at: datetime | None


def sink_status(db: Database, sink: str) -> SinkStatus:
    with db.read() as conn:
        row = conn.execute(select(CURSORS).where(CURSORS.c.sink == sink)).mappings().first()
        position = int(row["position"]) if row else 0
        pending = conn.execute(
            select(func.count()).select_from(OUTBOX).where(OUTBOX.c.seq > position)
        ).scalar_one()
        dead = conn.execute(
            select(func.count()).select_from(DEAD_LETTERS).where(DEAD_LETTERS.c.sink == sink)
        ).scalar_one()
    return SinkStatus(
        sink=sink,
        position=position,
        pending=int(pending),
        delivered=int(row["delivered"]) if row else 0,
        dead_letters=int(dead),
        last_error=row["last_error"] if row else None,
        last_error_at=row["last_error_at"] if row else None,
    )


def reset_cursor(db: Database, sink: str, position: int, now: datetime) -> None:
    """Set a sink's cursor, backwards included (``events replay``)."""
    with db.write() as conn:
        _ensure_cursor(conn, sink, now)
        conn.execute(
            update(CURSORS).where(CURSORS.c.sink == sink).values(position=position, updated_at=now)
        )


@dataclass(frozen=True)
class DeadLetter:
    id: int
    sink: str
    seq: int
    event_id: str
    error: str
    created_at: datetime


def dead_letters(db: Database, sink: str | None = None) -> list[DeadLetter]:
    stmt = select(
        DEAD_LETTERS.c.id,
        DEAD_LETTERS.c.sink,
        DEAD_LETTERS.c.seq,
        DEAD_LETTERS.c.event_id,
        DEAD_LETTERS.c.error,
        DEAD_LETTERS.c.created_at,
    ).order_by(DEAD_LETTERS.c.id)
    if sink is not None:
        stmt = stmt.where(DEAD_LETTERS.c.sink == sink)
    with db.read() as conn:
        return [DeadLetter(*row) for row in conn.execute(stmt)]


def event_at(db: Database, seq: int) -> StoredEvent | None:
    found = read_after(db, seq - 1, 1)
    return found[0] if found and found[0].seq == seq else None


def forget_dead_letter(db: Database, letter_id: int) -> None:
    with db.write() as conn:
        conn.execute(DEAD_LETTERS.delete().where(DEAD_LETTERS.c.id == letter_id))
