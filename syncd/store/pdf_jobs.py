"""PDF jobs: created and refreshed inside the poll's transaction, worked by the archiver.

A job is one order version's PDF. Every poll hands its job the newest signed link and a
deadline (fetched + one hour, less a margin); a link past its deadline, or one the PDF
host answered 403/410, is dropped and the job waits for the next poll's. A job whose
order has left the window with no usable link can never be archived: it fails with
``expired``. Completion and failure commit together with their event.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, and_, bindparam, func, or_, select, update

from syncd.diff import ChangeKind, OrderChange
from syncd.events import Event, pdf_archived_event, pdf_failed_event
from syncd.records import PurchaseOrder
from syncd.store.database import Database
from syncd.store.outbox import append_events
from syncd.store.schema import PDF_JOBS

JOBS = PDF_JOBS
LINK_LIFETIME = timedelta(hours=1)  # the vendor's promise for a pdf_url
LINK_MARGIN = timedelta(minutes=5)  # stop using a link this long before it dies

PENDING, DONE, FAILED = "pending", "done", "failed"

# Every poll reads its connection's pending jobs: built once.
_PENDING_JOBS = select(
    JOBS.c.order_id, JOBS.c.version, JOBS.c.url, JOBS.c.deadline, JOBS.c.retries
).where(JOBS.c.connection == bindparam("b_connection"), JOBS.c.state == PENDING)
# A job being downloaded is locked by its archiver: leave it to that archiver rather
# than wait for the download to end.
_PENDING_JOBS_SKIP_LOCKED = _PENDING_JOBS.with_for_update(skip_locked=True)
# Each poll hands pending jobs of returned orders their fresh link.
_FRESH_LINK = (
    update(JOBS)
    .where(
        JOBS.c.connection == bindparam("b_connection"),
        JOBS.c.order_id == bindparam("b_order_id"),
        JOBS.c.version == bindparam("b_version"),
    )
    .values(url=bindparam("b_url"), deadline=bindparam("b_deadline"), updated_at=bindparam("b_now"))
)


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
    stmt = _PENDING_JOBS_SKIP_LOCKED if conn.dialect.name == "postgresql" else _PENDING_JOBS
    rows = conn.execute(stmt, {"b_connection": connection})
    pending = {(row.order_id, row.version): row for row in rows}
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
    fresh_links = []
    for (order_id, version), row in pending.items():
        order = returned.get(order_id)
        if order is not None and order.pdf_url:
            fresh_links.append(
                {"b_order_id": order_id, "b_version": version, "b_url": order.pdf_url}
            )
        elif order is None and (row.url is None or row.deadline is None or row.deadline <= now):
            job = (connection, order_id, version, row.retries)
            events.append(_fail(conn, job, "expired", now))
    if fresh_links:
        common = {"b_connection": connection, "b_deadline": deadline, "b_now": now}
        conn.execute(_FRESH_LINK, [common | link for link in fresh_links])
    return events


# Due: pending, with a live link, and not backing off.
_DUE = and_(
    JOBS.c.state == PENDING,
    JOBS.c.url.is_not(None),
    JOBS.c.deadline > bindparam("b_now"),
    or_(JOBS.c.next_attempt_at.is_(None), JOBS.c.next_attempt_at <= bindparam("b_now")),
)


_JOB_COLUMNS = (
    JOBS.c.connection,
    JOBS.c.order_id,
    JOBS.c.version,
    JOBS.c.url,
    JOBS.c.deadline,
    JOBS.c.attempts,
    JOBS.c.retries,
)


def count_live(db: Database, now: datetime) -> int:
    """Pending jobs that hold a live link (what a run can archive now or after backoff)."""
    stmt = select(func.count()).where(
        JOBS.c.state == PENDING, JOBS.c.url.is_not(None), JOBS.c.deadline > now
    )
    with db.read() as conn:
        return int(conn.execute(stmt).scalar_one())


# Run for every PDF: built once.
_NEXT_DUE = (
    select(*_JOB_COLUMNS)
    .where(_DUE)
    .order_by(JOBS.c.deadline, JOBS.c.connection, JOBS.c.order_id, JOBS.c.version)
)
_NEXT_DUE_LOOKAHEAD = _NEXT_DUE.limit(bindparam("b_limit"))
_NEXT_DUE_SKIP_LOCKED = _NEXT_DUE.limit(1).with_for_update(skip_locked=True)
_ANY_DUE = select(JOBS.c.order_id).where(_DUE).limit(1)
_STILL_PENDING = and_(
    JOBS.c.connection == bindparam("b_connection"),
    JOBS.c.order_id == bindparam("b_order_id"),
    JOBS.c.version == bindparam("b_version"),
    JOBS.c.state == PENDING,
)
_COMPLETE = (
    update(JOBS)
    .where(_STILL_PENDING)
    .values(
        state=DONE,
        sha256=bindparam("b_sha256"),
        size=bindparam("b_size"),
        path=bindparam("b_path"),
        url=None,
        next_attempt_at=None,
        last_error=None,
        updated_at=bindparam("b_now"),
    )
)


def any_due(db: Database, now: datetime) -> bool:
    """True when some job can be worked now."""
    with db.read() as conn:
        return conn.execute(_ANY_DUE, {"b_now": now}).first() is not None


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


def _key(job: PdfJob) -> dict[str, object]:
    return {"b_connection": job.connection, "b_order_id": job.order_id, "b_version": job.version}


class Claim:
    """One job taken for work, and the writes that record how the work went.

    On PostgreSQL the job's row stays locked (``FOR UPDATE SKIP LOCKED``) in the claim's
    own transaction until the outcome commits: no other process takes it meanwhile, and
    if this process dies the lock dies with its session and the job is free again at
    once. On SQLite a single daemon owns the file; the archiver keeps its own threads
    from taking the same job, and each outcome is a short write transaction.
    """

    def __init__(self, db: Database, job: PdfJob, conn: Connection | None) -> None:
        self._db = db
        self.job = job
        self._conn = conn

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        if self._conn is not None:
            yield self._conn
        else:
            with self._db.write() as conn:
                yield conn

    def _update(self, conn: Connection, **values: object) -> int:
        stmt = update(JOBS).where(_STILL_PENDING).values(**values)
        return int(conn.execute(stmt, _key(self.job)).rowcount)

    def complete(self, sha256: str, size: int, path: str, now: datetime) -> bool:
        """Mark archived and emit ``pdf_archived``, once (False if it was no longer pending)."""
        job = self.job
        params = {"b_sha256": sha256, "b_size": size, "b_path": path, "b_now": now}
        with self._write() as conn:
            done = conn.execute(_COMPLETE, _key(job) | params).rowcount
            if done:
                event = pdf_archived_event(
                    job.connection, job.order_id, job.version, sha256, size, path, now
                )
                append_events(conn, [event], now)
        return bool(done)

    def fail(self, reason: str, now: datetime) -> bool:
        """Give up on the job for good and emit ``pdf_failed`` with ``reason``."""
        job = self.job
        with self._write() as conn:
            pending = conn.execute(select(JOBS.c.order_id).where(_STILL_PENDING), _key(job)).first()
            if pending is None:
                return False
            key = (job.connection, job.order_id, job.version, job.retries)
            append_events(conn, [_fail(conn, key, reason, now)], now)
        return True

    def postpone(self, error: str, next_attempt_at: datetime, now: datetime) -> None:
        """Count a failed attempt; try again at ``next_attempt_at``."""
        with self._write() as conn:
            self._update(
                conn,
                attempts=JOBS.c.attempts + 1,
                next_attempt_at=next_attempt_at,
                last_error=error,
                updated_at=now,
            )

    def drop_link(self, error: str, now: datetime) -> None:
        """The PDF host says the link is dead: wait for the next poll's link."""
        with self._write() as conn:
            self._update(conn, url=None, last_error=error, updated_at=now)


JobKey = tuple[str, int, int]


@contextmanager
def claim_next(
    db: Database, now: datetime, reserve: Callable[[JobKey], bool], lookahead: int
) -> Iterator[Claim | None]:
    """The due job with the earliest deadline, claimed for the length of the block.

    ``reserve(key)`` is this process's own bookkeeping: it returns False for a job one of
    its threads already took (SQLite has no row locks to say so).
    """
    if db.is_postgresql:
        with db.write() as conn:
            row = conn.execute(_NEXT_DUE_SKIP_LOCKED, {"b_now": now}).first()
            job = PdfJob(*row) if row else None
            yield Claim(db, job, conn) if job and reserve(job_key(job)) else None
        return
    with db.read() as conn:
        rows = conn.execute(_NEXT_DUE_LOOKAHEAD, {"b_now": now, "b_limit": lookahead}).all()
    job = next((PdfJob(*r) for r in rows if reserve((r[0], r[1], r[2]))), None)
    yield Claim(db, job, None) if job else None


def job_key(job: PdfJob) -> JobKey:
    return (job.connection, job.order_id, job.version)


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
