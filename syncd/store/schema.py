"""The tables syncd keeps, and the column types that keep them exact.

Plain SQLAlchemy Core ``Table`` objects, not SQLModel classes: syncd issues only Core
statements on them, and sqlmodel + ``sqlalchemy.orm`` cost a one-shot ``run --once``
~80 ms and ~8 MB at start-up for nothing.

``purchase_orders`` is the fixed contract of DESIGN §7; the others are syncd's own.
Alembic owns the schema: a change here needs a migration in ``migrations/versions``.
Python-side ``default=`` values fill a column an INSERT leaves out; there are no server
defaults.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
)
from sqlalchemy.types import TypeDecorator, TypeEngine

from syncd.records import format_money

# SQLite's INTEGER PRIMARY KEY is its rowid; BIGINT elsewhere.
BigIntKey = BigInteger().with_variant(Integer(), "sqlite")


class Money(TypeDecorator[Decimal]):
    """Exact decimal: NUMERIC on PostgreSQL, the decimal string as TEXT on SQLite."""

    impl = String
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(Numeric(asdecimal=True))
        return dialect.type_descriptor(Text())

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        return value if dialect.name == "postgresql" else format_money(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        return None if value is None else Decimal(str(value))


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every engine (SQLite drops the offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _ts(name: str, nullable: bool = False) -> Column[datetime]:
    return Column(name, UTCDateTime(), nullable=nullable)


metadata = MetaData()

# The mirror (DESIGN §7): one row per (connection, order id).
PURCHASE_ORDERS = Table(
    "purchase_orders",
    metadata,
    Column("connection", String(), primary_key=True),
    Column("id", BigInteger(), primary_key=True, autoincrement=False),
    Column("po_number", String(), nullable=False),
    Column("vendor_name", String(), nullable=False),
    Column("grand_total", Money(), nullable=False),
    Column("status", String(), nullable=True),
    Column("items_summary", Text(), nullable=True),
    Column("version", Integer(), nullable=False),
    _ts("first_seen_at"),
    _ts("last_seen_at"),
    _ts("updated_at"),
)

# The current token pair of a connection, and whether it needs authorization.
TOKENS = Table(
    "tokens",
    metadata,
    Column("connection", String(), primary_key=True),
    Column("access_token", Text(), nullable=True),
    Column("refresh_token", Text(), nullable=True),
    _ts("expires_at", nullable=True),
    Column("needs_authorization", Boolean(), nullable=False, default=False),
    Column("auth_error", Text(), nullable=True),
    _ts("needs_authorization_since", nullable=True),
    _ts("updated_at"),
    # Set when a refresh was sent and its answer lost: the server may have rotated the
    # token. The next refresh is the one retry with the same token (see syncd.auth).
    # Last, where migration 0003 added it: a new database has the migrated layout.
    _ts("refresh_in_doubt_since", nullable=True),
)

# Every event ever emitted, in commit order; sinks read it through their cursor.
OUTBOX = Table(
    "outbox",
    metadata,
    Column("seq", BigIntKey, primary_key=True),
    Column("event_id", String(), nullable=False, unique=True),
    Column("connection", String(), nullable=False),
    Column("type", String(), nullable=False),
    Column("subject", String(), nullable=False),
    _ts("created_at"),
    Column("payload", Text(), nullable=False),
)

# How far each sink has been delivered, and how its delivery is faring.
SINK_CURSORS = Table(
    "sink_cursors",
    metadata,
    Column("sink", String(), primary_key=True),
    Column("position", BigInteger(), nullable=False, default=0),
    Column("delivered", BigInteger(), nullable=False, default=0),
    Column("last_error", Text(), nullable=True),
    _ts("last_error_at", nullable=True),
    _ts("updated_at"),
)

# An event a sink refused for good, kept for inspection and retry.
DEAD_LETTERS = Table(
    "dead_letters",
    metadata,
    Column("id", BigIntKey, primary_key=True),
    Column("sink", String(), nullable=False, index=True),  # ix_dead_letters_sink
    Column("seq", BigInteger(), nullable=False),
    Column("event_id", String(), nullable=False),
    Column("error", Text(), nullable=False),
    _ts("created_at"),
)

# The outcome of each connection's latest poll (one row per connection).
CONNECTION_STATE = Table(
    "connection_state",
    metadata,
    Column("connection", String(), primary_key=True),
    _ts("last_poll_at", nullable=True),
    Column("last_outcome", String(), nullable=True),
    Column("last_error", Text(), nullable=True),
    _ts("last_success_at", nullable=True),
    _ts("failing_since", nullable=True),
    Column("gap_open", Boolean(), nullable=False, default=False),
)

# One order version's PDF: its newest link, its deadline, and how archiving went.
PDF_JOBS = Table(
    "pdf_jobs",
    metadata,
    Column("connection", String(), primary_key=True),
    Column("order_id", BigInteger(), primary_key=True, autoincrement=False),
    Column("version", Integer(), primary_key=True, autoincrement=False),
    Column("state", String(), nullable=False, default="pending"),  # pending | done | failed
    Column("url", Text(), nullable=True),  # a credential: never logged
    _ts("deadline", nullable=True),
    Column("attempts", Integer(), nullable=False, default=0),
    _ts("next_attempt_at", nullable=True),
    Column("last_error", Text(), nullable=True),
    Column("reason", String(), nullable=True),
    Column("sha256", String(), nullable=True),
    Column("size", BigInteger(), nullable=True),
    Column("path", Text(), nullable=True),
    Column("retries", Integer(), nullable=False, default=0),
    _ts("created_at"),
    _ts("updated_at"),
    # The archiver's question: which pending jobs are due, earliest deadline first
    # (migration 0002; the SQLModel classes never declared it).
    Index("ix_pdf_jobs_state_deadline", "state", "deadline"),
)
