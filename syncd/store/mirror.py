"""The one transaction that applies a poll: mirror rows, PDF jobs, events, the outcome.

Either the mirror change, its events and the connection's new state all commit, or
none of them does; a kill -9 at any point leaves the previous poll's state whole, and
the next poll recomputes the same changes with the same event ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import BindParameter, Connection, bindparam, func, select, update

from syncd.diff import ChangeKind, MirroredOrder, OrderChange, detect_gap, diff_window
from syncd.events import gap_event, order_events
from syncd.records import PurchaseOrder
from syncd.store import pdf_jobs
from syncd.store.database import Database, lock_connection_for_poll
from syncd.store.outbox import append_events
from syncd.store.schema import PURCHASE_ORDERS
from syncd.store.state import record_success

MIRROR = PURCHASE_ORDERS

# The endpoint returns at most 20 orders. The statements below take the ids as exactly
# this many parameters (a shorter list repeats its last id), so each compiles once; an
# expanding IN would render new SQL on every execution.
ID_SLOTS = 20
_IDS: list[BindParameter[int]] = [bindparam(f"b_id{n}") for n in range(ID_SLOTS)]


def id_params(ids: list[int]) -> list[dict[str, int]]:
    """``ids`` as parameter sets of ``ID_SLOTS`` ids each, the last one padded."""
    chunks = []
    for start in range(0, len(ids), ID_SLOTS):
        chunk = ids[start : start + ID_SLOTS]
        chunk += chunk[-1:] * (ID_SLOTS - len(chunk))
        chunks.append({f"b_id{n}": order_id for n, order_id in enumerate(chunk)})
    return chunks


# One statement, built once, marks the returned orders seen and reads what the mirror
# holds of them: a quiet poll needs nothing else from this table. Orders that changed
# are rewritten after the diff.
_SEEN_RETURNING = (
    update(MIRROR)
    .where(MIRROR.c.connection == bindparam("b_connection"), MIRROR.c.id.in_(_IDS))
    .values(last_seen_at=bindparam("b_now"))
    .returning(
        MIRROR.c.id,
        MIRROR.c.po_number,
        MIRROR.c.vendor_name,
        MIRROR.c.grand_total,
        MIRROR.c.status,
        MIRROR.c.items_summary,
        MIRROR.c.version,
    )
)


@dataclass(frozen=True)
class PollOutcome:
    """What one applied poll did."""

    returned: int
    created: int
    updated: int
    gap_detected: bool
    events: int
    previous_outcome: str | None


def _mark_seen(
    conn: Connection, connection: str, ids: list[int], now: datetime
) -> dict[int, MirroredOrder]:
    """Mark the mirrored orders among ``ids`` as seen at ``now``; return what they hold."""
    mirrored = {}
    for params in id_params(ids):
        rows = conn.execute(_SEEN_RETURNING, {"b_connection": connection, "b_now": now, **params})
        for row in rows:
            mirrored[row.id] = MirroredOrder(*row)
    return mirrored


def _mirror_empty(conn: Connection, connection: str) -> bool:
    found = conn.execute(select(MIRROR.c.id).where(MIRROR.c.connection == connection).limit(1))
    return found.first() is None


def _business_row(order: PurchaseOrder, version: int, now: datetime) -> dict[str, object]:
    return {
        "po_number": order.po_number,
        "vendor_name": order.vendor_name,
        "grand_total": order.grand_total,
        "status": order.status,
        "items_summary": order.items_summary,
        "version": version,
        "last_seen_at": now,
        "updated_at": now,
    }


def _write_changes(
    conn: Connection, connection: str, changes: list[OrderChange], now: datetime
) -> None:
    created = [
        {"connection": connection, "id": c.order.id, "first_seen_at": now}
        | _business_row(c.order, c.version, now)
        for c in changes
        if c.kind is ChangeKind.CREATED
    ]
    if created:
        conn.execute(MIRROR.insert(), created)
    for change in changes:
        if change.kind is ChangeKind.UPDATED:
            conn.execute(
                update(MIRROR)
                .where(MIRROR.c.connection == connection, MIRROR.c.id == change.order.id)
                .values(**_business_row(change.order, change.version, now))
            )


def apply_poll(
    db: Database, connection: str, orders: tuple[PurchaseOrder, ...], now: datetime
) -> PollOutcome:
    """Diff the returned window against the mirror and commit it with its events."""
    ids = [order.id for order in orders]
    with db.write() as conn:
        lock_connection_for_poll(conn, connection)
        mirrored = _mark_seen(conn, connection, ids, now)
        mirror_empty = not mirrored and _mirror_empty(conn, connection)
        # Events of a poll go out oldest order first.
        changes = sorted(diff_window(orders, mirrored), key=lambda c: c.order.id)
        gap = detect_gap(ids, mirrored, mirror_empty)
        # A superseded version's pdf_failed goes out before the update that superseded it.
        events = pdf_jobs.on_poll(conn, connection, orders, changes, now)
        events += order_events(connection, changes, now)
        if gap:
            known_before = conn.execute(
                select(func.count()).select_from(MIRROR).where(MIRROR.c.connection == connection)
            ).scalar_one()
            events.append(gap_event(connection, ids, int(known_before), now))
        _write_changes(conn, connection, changes, now)
        append_events(conn, events, now)
        previous = record_success(conn, connection, now, gap)
    return PollOutcome(
        returned=len(orders),
        created=sum(c.kind is ChangeKind.CREATED for c in changes),
        updated=sum(c.kind is ChangeKind.UPDATED for c in changes),
        gap_detected=gap,
        events=len(events),
        previous_outcome=previous,
    )
