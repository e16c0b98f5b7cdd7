"""The tables syncd keeps (SQLModel), and the column types that keep them exact.

``purchase_orders`` is the fixed contract of DESIGN §7; the others are syncd's own.
Alembic owns the schema: a change here needs a migration in ``migrations/versions``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, Column, DateTime, Dialect, Integer, Numeric, String, Text
from sqlalchemy.types import TypeDecorator, TypeEngine
from sqlmodel import Field, SQLModel

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


def _ts(nullable: bool = False) -> Any:
    return Field(sa_column=Column(UTCDateTime(), nullable=nullable))


class PurchaseOrderRow(SQLModel, table=True):
    """The mirror (DESIGN §7): one row per (connection, order id)."""

    __tablename__ = "purchase_orders"

    connection: str = Field(primary_key=True)
    id: int = Field(sa_column_kwargs={"autoincrement": False}, primary_key=True, sa_type=BigInteger)
    po_number: str
    vendor_name: str
    grand_total: Decimal = Field(sa_column=Column(Money(), nullable=False))
    status: str | None = None
    items_summary: str | None = Field(default=None, sa_type=Text)
    version: int
    first_seen_at: datetime = _ts()
    last_seen_at: datetime = _ts()
    updated_at: datetime = _ts()


class TokenRow(SQLModel, table=True):
    """The current token pair of a connection, and whether it needs authorization."""

    __tablename__ = "tokens"

    connection: str = Field(primary_key=True)
    access_token: str | None = Field(default=None, sa_type=Text)
    refresh_token: str | None = Field(default=None, sa_type=Text)
    expires_at: datetime | None = _ts(nullable=True)
    needs_authorization: bool = False
    auth_error: str | None = Field(default=None, sa_type=Text)
    needs_authorization_since: datetime | None = _ts(nullable=True)
    # Set when a refresh was sent and its answer lost: the server may have rotated the
    # token. The next refresh is the one retry with the same token (see syncd.auth).
    refresh_in_doubt_since: datetime | None = _ts(nullable=True)
    updated_at: datetime = _ts()


class OutboxRow(SQLModel, table=True):
    """Every event ever emitted, in commit order; sinks read it through their cursor."""

    __tablename__ = "outbox"

    seq: int | None = Field(default=None, sa_column=Column(BigIntKey, primary_key=True))
    event_id: str = Field(unique=True)
    connection: str
    type: str
    subject: str
    created_at: datetime = _ts()
    payload: str = Field(sa_type=Text)


class SinkCursorRow(SQLModel, table=True):
    """How far each sink has been delivered, and how its delivery is faring."""

    __tablename__ = "sink_cursors"

    sink: str = Field(primary_key=True)
    position: int = Field(default=0, sa_type=BigInteger)
    delivered: int = Field(default=0, sa_type=BigInteger)
    last_error: str | None = Field(default=None, sa_type=Text)
    last_error_at: datetime | None = _ts(nullable=True)
    updated_at: datetime = _ts()


class DeadLetterRow(SQLModel, table=True):
    """An event a sink refused for good, kept for inspection and retry."""

    __tablename__ = "dead_letters"

    id: int | None = Field(default=None, sa_column=Column(BigIntKey, primary_key=True))
    sink: str = Field(index=True)
    seq: int = Field(sa_type=BigInteger)
    event_id: str
    error: str = Field(sa_type=Text)
    created_at: datetime = _ts()


class ConnectionStateRow(SQLModel, table=True):
    """The outcome of each connection's latest poll (one row per connection)."""

    __tablename__ = "connection_state"

    connection: str = Field(primary_key=True)
    last_poll_at: datetime | None = _ts(nullable=True)
    last_outcome: str | None = None
    last_error: str | None = Field(default=None, sa_type=Text)
    last_success_at: datetime | None = _ts(nullable=True)
    failing_since: datetime | None = _ts(nullable=True)
    gap_open: bool = False


class PdfJobRow(SQLModel, table=True):
    """One order version's PDF: its newest link, its deadline, and how archiving went."""

    __tablename__ = "pdf_jobs"

    connection: str = Field(primary_key=True)
    order_id: int = Field(
        primary_key=True, sa_type=BigInteger, sa_column_kwargs={"autoincrement": False}
    )
    version: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    state: str = "pending"  # pending | done | failed
    url: str | None = Field(default=None, sa_type=Text)  # a credential: never logged
    deadline: datetime | None = _ts(nullable=True)
    attempts: int = 0
    next_attempt_at: datetime | None = _ts(nullable=True)
    last_error: str | None = Field(default=None, sa_type=Text)
    reason: str | None = None
    sha256: str | None = None
    size: int | None = Field(default=None, sa_type=BigInteger)
    path: str | None = Field(default=None, sa_type=Text)
    retries: int = 0
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
