"""The store on SQLite and PostgreSQL: the poll transaction, money, cursors, migrations."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select, text

from syncd.errors import AlreadyRunning
from syncd.records import PurchaseOrder
from syncd.store import outbox, pdf_jobs
from syncd.store.database import (
    Database,
    InstanceLock,
    current_revision,
    head_revision,
    open_database,
    upgrade,
)
from syncd.store.mirror import ID_SLOTS, MIRROR, apply_poll, id_params
from syncd.store.state import load_state, record_failure

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def orders(ids: range, **overrides: object) -> tuple[PurchaseOrder, ...]:
    return tuple(
        replace(
            PurchaseOrder(
                id=i,
                po_number=f"PO-{i}",
                vendor_name="Sweetwater",
                grand_total=Decimal("1200.50"),
                status="Draft",
                items_summary="2x Cables",
                pdf_url=f"https://x/print_po.php?po_id={i}&token=t{i}",
            ),
            **overrides,  # type: ignore[arg-type]
        )
        for i in ids
    )


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = open_database(database_url)
    yield database
    database.close()


def mirror_rows(db: Database) -> dict[int, dict[str, object]]:
    with db.read() as conn:
        return {row["id"]: dict(row) for row in conn.execute(select(MIRROR)).mappings()}


def test_schema_revision_constant_is_alembic_head() -> None:
    """The fast-path revision constant names the newest migration."""
    from syncd.store.database import SCHEMA_REVISION

    assert head_revision() == SCHEMA_REVISION


def test_migrations_reach_head_and_are_idempotent(database_url: str) -> None:
    """Opening twice leaves the schema at head."""
    open_database(database_url).close()
    again = open_database(database_url)
    assert current_revision(again) == head_revision()
    again.close()


def schema_of(db: Database) -> list[tuple[object, ...]]:
    """Tables, columns, indexes and constraints as the database itself describes them."""
    with db.engine.connect() as conn:
        if db.is_sqlite:
            rows = conn.execute(
                text(
                    "SELECT type, name, tbl_name, sql FROM sqlite_master "
                    "WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name"
                )
            )
            return [(*row[:3], "".join(str(row[3]).split())) for row in rows]
        queries = [
            "SELECT table_name, column_name, ordinal_position, data_type, is_nullable, "
            "column_default, character_maximum_length FROM information_schema.columns "
            "WHERE table_schema = current_schema() ORDER BY 1, 3",
            "SELECT tablename, indexname, indexdef FROM pg_indexes "
            "WHERE schemaname = current_schema() ORDER BY 1, 2",
            "SELECT table_name, constraint_name, constraint_type "
            "FROM information_schema.table_constraints "
            "WHERE table_schema = current_schema() AND constraint_type <> 'CHECK' ORDER BY 1, 2",
        ]
        return [tuple(row) for query in queries for row in conn.execute(text(query))]


def test_new_database_gets_the_migrated_schema(database_url: str) -> None:
    """A new database created from the tables equals one built by replaying migrations."""
    from alembic import command

    from syncd.store.database import _alembic_config
    from syncd.store.schema import metadata

    db = open_database(database_url, migrate=False)
    try:
        with db.engine.connect() as conn:
            command.upgrade(_alembic_config(conn), "head")
            conn.commit()
        migrated = schema_of(db)
        with db.engine.connect() as conn:
            metadata.drop_all(conn)
            conn.execute(text("DROP TABLE alembic_version"))
            conn.commit()
        assert schema_of(db) == []
        upgrade(db)
        assert schema_of(db) == migrated
        assert current_revision(db) == head_revision()
    finally:
        db.close()


def test_first_poll_creates_every_order(db: Database) -> None:
    """20 new orders: 20 rows at version 1 and 20 created events, oldest id first."""
    result = apply_poll(db, "band", orders(range(120, 100, -1)), T0)
    assert (result.created, result.updated, result.events) == (20, 0, 20)
    rows = mirror_rows(db)
    assert sorted(rows) == list(range(101, 121))
    assert {r["version"] for r in rows.values()} == {1}
    events = outbox.read_after(db, 0, 100)
    assert [int(e.subject) for e in events] == list(range(101, 121))
    assert [e.seq for e in events] == sorted(e.seq for e in events)


def test_repeated_poll_is_quiet(db: Database) -> None:
    """The same window again: no events, only last_seen_at moves."""
    apply_poll(db, "band", orders(range(1, 4)), T0)
    result = apply_poll(db, "band", orders(range(1, 4)), T0 + timedelta(minutes=1))
    assert (result.created, result.updated, result.events) == (0, 0, 0)
    row = mirror_rows(db)[1]
    assert row["last_seen_at"] == T0 + timedelta(minutes=1)
    assert row["first_seen_at"] == T0
    assert row["updated_at"] == T0
    assert len(outbox.read_after(db, 0, 100)) == 3


def test_window_larger_than_the_id_slots_is_diffed_whole(db: Database) -> None:
    """More ids than one statement takes: every order is found and marked seen."""
    window = orders(range(1, 2 * ID_SLOTS + 6))
    apply_poll(db, "band", window, T0)
    result = apply_poll(db, "band", window, T0 + timedelta(minutes=1))
    assert (result.created, result.updated, result.gap_detected) == (0, 0, False)
    seen = {row["last_seen_at"] for row in mirror_rows(db).values()}
    assert seen == {T0 + timedelta(minutes=1)}


def test_id_params_pad_the_last_set_with_its_last_id() -> None:
    """Ids go out in fixed-size parameter sets; the short one repeats its last id."""
    params = id_params(list(range(1, ID_SLOTS + 3)))
    assert [sorted(set(p.values())) for p in params] == [
        list(range(1, ID_SLOTS + 1)),
        [ID_SLOTS + 1, ID_SLOTS + 2],
    ]
    assert all(len(p) == ID_SLOTS for p in params)
    assert id_params([]) == []


def test_change_is_an_update_with_version_2(db: Database) -> None:
    """A changed total bumps the version and emits old and new values."""
    apply_poll(db, "band", orders(range(1, 3)), T0)
    changed = orders(range(1, 2), grand_total=Decimal("99.90")) + orders(range(2, 3))
    result = apply_poll(db, "band", changed, T0 + timedelta(minutes=1))
    assert result.updated == 1
    assert mirror_rows(db)[1]["version"] == 2
    last = outbox.read_after(db, 0, 100)[-1]
    body = json.loads(last.payload)
    assert body["type"] == "com.inventoryarts.purchase_order.updated"
    assert body["data"]["changes"] == {"grand_total": {"old": "1200.50", "new": "99.90"}}


def test_money_is_exact_in_the_mirror(db: Database) -> None:
    """Totals come back as the exact Decimal, scale included."""
    apply_poll(db, "band", orders(range(1, 2), grand_total=Decimal("1234567890.10")), T0)
    assert mirror_rows(db)[1]["grand_total"] == Decimal("1234567890.10")
    assert str(mirror_rows(db)[1]["grand_total"]) == "1234567890.10"


def test_connections_are_kept_apart(db: Database) -> None:
    """The same order id under two connections is two rows."""
    apply_poll(db, "band", orders(range(1, 2)), T0)
    result = apply_poll(db, "choir", orders(range(1, 2)), T0)
    assert result.created == 1
    with db.read() as conn:
        assert conn.execute(text("SELECT count(*) FROM purchase_orders")).scalar() == 2


def test_gap_detected_when_window_does_not_overlap(db: Database) -> None:
    """A window of only unknown ids after a first sync emits gap_detected."""
    apply_poll(db, "band", orders(range(1, 21)), T0)
    result = apply_poll(db, "band", orders(range(41, 61)), T0)
    assert result.gap_detected
    gap = json.loads(outbox.read_after(db, 0, 100)[-1].payload)
    assert gap["type"] == "com.inventoryarts.sync.gap_detected"
    assert gap["data"] == {"connection": "band", "returned": 20, "known_before": 20}
    assert load_state(db, "band")["gap_open"] is True  # type: ignore[index]


def test_poll_is_one_transaction(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """If writing the events fails, the mirror change is rolled back with them."""
    import syncd.store.mirror as mirror

    def boom(*_: object) -> None:
        raise RuntimeError("disk gone")

    monkeypatch.setattr(mirror, "append_events", boom)
    with pytest.raises(RuntimeError):
        apply_poll(db, "band", orders(range(1, 4)), T0)
    assert mirror_rows(db) == {}
    assert load_state(db, "band") is None


def test_failure_then_recovery_is_recorded(db: Database) -> None:
    """A failed poll is stored with its error; the next good poll reports what it was."""
    assert record_failure(db, "band", "failed", "HTTP 503", T0) is None
    assert record_failure(db, "band", "failed", "HTTP 503", T0) == "failed"
    state = load_state(db, "band")
    assert state is not None
    assert state["failing_since"] == T0
    result = apply_poll(db, "band", orders(range(1, 2)), T0 + timedelta(minutes=1))
    assert result.previous_outcome == "failed"
    assert load_state(db, "band")["failing_since"] is None  # type: ignore[index]


def test_success_after_success_updates_the_poll_times(db: Database) -> None:
    """A quiet poll after a good one reports "ok" before it and moves both poll times."""
    assert apply_poll(db, "band", orders(range(1, 3)), T0).previous_outcome is None
    later = T0 + timedelta(minutes=1)
    assert apply_poll(db, "band", orders(range(1, 3)), later).previous_outcome == "ok"
    state = load_state(db, "band")
    assert state is not None
    assert (state["last_poll_at"], state["last_success_at"]) == (later, later)
    assert (state["last_outcome"], state["last_error"], state["gap_open"]) == ("ok", None, False)


def test_any_due_sees_jobs_with_live_links_only(db: Database) -> None:
    """A job is due while its link lives; none is due before a poll or after the link dies."""
    assert not pdf_jobs.any_due(db, T0)
    apply_poll(db, "band", orders(range(1, 3)), T0)
    assert pdf_jobs.any_due(db, T0)
    assert not pdf_jobs.any_due(db, T0 + timedelta(hours=1))


def test_cursor_never_moves_back(db: Database) -> None:
    """Advancing to an older position keeps the newer one."""
    outbox.advance_cursor(db, "s", 10, 10, T0)
    outbox.advance_cursor(db, "s", 5, 0, T0)
    assert outbox.cursor_position(db, "s") == 10


def test_sink_status_counts_pending(db: Database) -> None:
    """Pending is what lies beyond the cursor."""
    apply_poll(db, "band", orders(range(1, 6)), T0)
    events = outbox.read_after(db, 0, 10)
    outbox.advance_cursor(db, "s", events[1].seq, 2, T0)
    status = outbox.sink_status(db, "s")
    assert (status.pending, status.delivered, status.dead_letters) == (3, 2, 0)


def test_instance_lock_excludes_a_second_daemon(tmp_path: Path) -> None:
    """A daemon's exclusive lock refuses another daemon and a one-shot run."""
    db_file = tmp_path / "syncd.db"
    held = InstanceLock.acquire(db_file, exclusive=True)
    try:
        with pytest.raises(AlreadyRunning, match="another syncd process"):
            InstanceLock.acquire(db_file, exclusive=True)
        with pytest.raises(AlreadyRunning):
            InstanceLock.acquire(db_file, exclusive=False)
    finally:
        held.release()


def test_one_shot_runs_share_the_lock(tmp_path: Path) -> None:
    """Several run --once may hold the lock together; a daemon then may not."""
    db_file = tmp_path / "syncd.db"
    first = InstanceLock.acquire(db_file, exclusive=False)
    second = InstanceLock.acquire(db_file, exclusive=False)
    try:
        with pytest.raises(AlreadyRunning):
            InstanceLock.acquire(db_file, exclusive=True)
    finally:
        first.release()
        second.release()


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    """SQLite uses WAL, a busy timeout and full sync."""
    db = open_database(f"sqlite:///{tmp_path / 'x.db'}")
    with db.read() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 60000
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2
    db.close()
