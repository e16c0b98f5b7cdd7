"""PDF jobs: created and refreshed inside the poll's transaction, worked by the archiver.

A job is one order version's PDF. Every poll hands its job the newest signed link and a
deadline (fetched + one hour, less a margin); a link past its deadline, or one the PDF
host answered 403/410, is dropped and the job waits for the next poll's. A job whose
order has left the window with no usable link can never be archived: it fails with
``expired``. Completion and failure commit together with their event.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, and_, func, or_, select, update

from syncd.diff import ChangeKind, OrderChange
from syncd.events import Event, pdf_archived_event, pdf_failed_event
from syncd.records import PurchaseOrder
from syncd.store.database import Database
from syncd.store.outbox import append_events
from syncd.store.schema import PdfJobRow

JOBS = PdfJobRow.__table__  # type: ignore[attr-defined]
LINK_LIFETIME = timedelta(hours=1)  # the vendor's promise for a pdf_url
LINK_MARGIN = timedelta(minutes=5)  # stop using a link this long before it dies

PENDING, DONE, FAILED = "pending", "done", "failed"


@dataclass(frozen=True)
class PdfJob:
    connection: str
    order_id: int
    version: int
    url: str | None
    deadline: datetime | None
    attempts: int
    retries: int


def link_deadline(fetched_at: datetime) -> datetime:
    return fetched_at + LINK_LIFETIME - LINK_MARGIN


def _fail(conn: Connection, job: tuple[str, int, int, int], reason: str, now: datetime) -> Event:
    connection, order_id, version, retries = job
    conn.execute(
        update(JOBS)
        .where(
            JOBS.c.connection == connection,
            JOBS.c.order_id == order_id,
            JOBS.c.version == version,
        )
        .values(state=FAILED, reason=reason, url=None, updated_at=now)
    )
    return pdf_failed_event(connection, order_id, version, reason, retries, now)


def on_poll(
    conn: Connection,
    connection: str,
    orders: Sequence[PurchaseOrder],
    changes: Iterable[OrderChange],
    now: datetime,
) -> list[Event]:
    """Inside the poll's transaction: new jobs, fresh links, and jobs that can never finish.

    Returns the events to append (``pdf_failed`` for superseded and expired jobs).
    """
    pending = {
        (row.order_id, row.version): row
        for row in conn.execute(
            select(
                JOBS.c.order_id, JOBS.c.version, JOBS.c.url, JOBS.c.deadline, JOBS.c.retries
            ).where(JOBS.c.connection == connection, JOBS.c.state == PENDING)
        )
    }
    returned = {order.id: order for order in orders}
    events: list[Event] = []
    new_jobs = []
    deadline = link_deadline(now)
    for change in changes:
        if change.kind is ChangeKind.UNCHANGED:
            continue
        order_id = change.order.id
        # An older version's PDF can no longer be fetched: its link now serves the new one.
        for (pending_id, version), row in list(pending.items()):
            if pending_id == order_id and version < change.version:
                job = (connection, order_id, version, row.retries)
                events.append(_fail(conn, job, "superseded", now))
                del pending[(pending_id, version)]
        new_jobs.append(
            {
                "connection": connection,
                "order_id": order_id,
                "version": change.version,
                "state": PENDING,
                "url": change.order.pdf_url,
                "deadline": deadline if change.order.pdf_url else None,
                "attempts": 0,
                "retries": 0,
                "created_at": now,
                "updated_at": now,
            }
        )
    if new_jobs:
        conn.execute(JOBS.insert(), new_jobs)
    for (order_id, version), row in pending.items():
        order = returned.get(order_id)
        if order is not None and order.pdf_url:
            conn.execute(
                update(JOBS)
                .where(
                    JOBS.c.connection == connection,
                    JOBS.c.order_id == order_id,
                    JOBS.c.version == version,
                )
                .values(url=order.pdf_url, deadline=deadline, updated_at=now)
            )
        elif order is None and (row.url is None or row.deadline is None or row.deadline <= now):
            job = (connection, order_id, version, row.retries)
            events.append(_fail(conn, job, "expired", now))
    return events


def due(db: Database, now: datetime, limit: int) -> list[PdfJob]:
    """Pending jobs with a live link whose backoff is over, earliest deadline first."""
    stmt = (
        select(
            JOBS.c.connection,
            JOBS.c.order_id,
            JOBS.c.version,
            JOBS.c.url,
            JOBS.c.deadline,
            JOBS.c.attempts,
            JOBS.c.retries,
        )
        .where(
            JOBS.c.state == PENDING,
            JOBS.c.url.is_not(None),
            JOBS.c.deadline > now,
            or_(JOBS.c.next_attempt_at.is_(None), JOBS.c.next_attempt_at <= now),
        )
        .order_by(JOBS.c.deadline, JOBS.c.connection, JOBS.c.order_id, JOBS.c.version)
        .limit(limit)
    )
    with db.read() as conn:
        return [PdfJob(*row) for row in conn.execute(stmt)]


def count_live(db: Database, now: datetime) -> int:
    """Pending jobs that hold a live link (what a run can archive now or after backoff)."""
    stmt = select(func.count()).where(
        JOBS.c.state == PENDING, JOBS.c.url.is_not(None), JOBS.c.deadline > now
    )
    with db.read() as conn:
        return int(conn.execute(stmt).scalar_one())


def next_wakeup(db: Database, now: datetime) -> datetime | None:
    """When the earliest backed-off job with a live link becomes due."""
    stmt = select(func.min(JOBS.c.next_attempt_at)).where(
        JOBS.c.state == PENDING,
        JOBS.c.url.is_not(None),
        JOBS.c.deadline > now,
        JOBS.c.next_attempt_at > now,
    )
    with db.read() as conn:
        value = conn.execute(stmt).scalar()
    return value if isinstance(value, datetime) else None


def _where(job: PdfJob) -> object:
    return and_(
        JOBS.c.connection == job.connection,
        JOBS.c.order_id == job.order_id,
        JOBS.c.version == job.version,
        JOBS.c.state == PENDING,
    )


def complete(db: Database, job: PdfJob, sha256: str, size: int, path: str, now: datetime) -> bool:
    """Mark archived and emit ``pdf_archived``, once (False if another worker got there)."""
    with db.write() as conn:
        done = conn.execute(
            update(JOBS)
            .where(_where(job))  # type: ignore[arg-type]
            .values(
                state=DONE,
                sha256=sha256,
                size=size,
                path=path,
                url=None,
                last_error=None,
                updated_at=now,
            )
        ).rowcount
        if done:
            event = pdf_archived_event(
                job.connection, job.order_id, job.version, sha256, size, path, now
            )
            append_events(conn, [event], now)
    return bool(done)


def fail(db: Database, job: PdfJob, reason: str, now: datetime) -> bool:
    """Give up on a job for good and emit ``pdf_failed`` with ``reason``."""
    with db.write() as conn:
        still_pending = conn.execute(
            select(JOBS.c.order_id).where(_where(job))  # type: ignore[arg-type]
        ).first()
        if still_pending is None:
            return False
        event = _fail(conn, (job.connection, job.order_id, job.version, job.retries), reason, now)
        append_events(conn, [event], now)
    return True


def postpone(
    db: Database, job: PdfJob, error: str, next_attempt_at: datetime, now: datetime
) -> None:
    """Count a failed attempt; try again at ``next_attempt_at``."""
    with db.write() as conn:
        conn.execute(
            update(JOBS)
            .where(_where(job))  # type: ignore[arg-type]
            .values(
                attempts=JOBS.c.attempts + 1,
                next_attempt_at=next_attempt_at,
                last_error=error,
                updated_at=now,
            )
        )


def drop_link(db: Database, job: PdfJob, error: str, now: datetime) -> None:
    """The PDF host says the link is dead: wait for the next poll's link."""
    with db.write() as conn:
        conn.execute(
            update(JOBS)
            .where(_where(job))  # type: ignore[arg-type]
            .values(url=None, last_error=error, updated_at=now)
        )


def retry_failed(db: Database, connection: str | None, now: datetime) -> int:
    """Put failed jobs back to pending; each waits for its order's next fresh link."""
    condition = JOBS.c.state == FAILED
    if connection is not None:
        condition = and_(condition, JOBS.c.connection == connection)
    with db.write() as conn:
        return int(
            conn.execute(
                update(JOBS)
                .where(condition)
                .values(
                    state=PENDING,
                    url=None,
                    deadline=None,
                    attempts=0,
                    next_attempt_at=None,
                    reason=None,
                    retries=JOBS.c.retries + 1,
                    updated_at=now,
                )
            ).rowcount
        )


@dataclass(frozen=True)
class PdfStatus:
    pending: int
    archived: int
    failed: int
    nearest_deadline: datetime | None


def status(db: Database, connection: str) -> PdfStatus:
    with db.read() as conn:
        counts: dict[str, int] = dict(
            conn.execute(
                select(JOBS.c.state, func.count())
                .where(JOBS.c.connection == connection)
                .group_by(JOBS.c.state)
            ).all()
        )
        nearest = conn.execute(
            select(func.min(JOBS.c.deadline)).where(
                JOBS.c.connection == connection, JOBS.c.state == PENDING
            )
        ).scalar()
    return PdfStatus(
        pending=int(counts.get(PENDING, 0)),
        archived=int(counts.get(DONE, 0)),
        failed=int(counts.get(FAILED, 0)),
        nearest_deadline=nearest,
    )
