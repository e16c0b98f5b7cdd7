"""``syncd db copy``: move a mirror from one database to another (SQLite to PostgreSQL).

Every table syncd owns is copied row for row, keys included (outbox sequence numbers
too, so sink cursors stay valid), in batches, each batch one transaction. The target
must be empty: copying into a live mirror would mix two histories.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Table, func, select, tuple_

from syncd.errors import ConfigError
from syncd.store.database import Database
from syncd.store.schema import metadata

BATCH = 2000
# Tables whose integer key comes from a sequence on PostgreSQL.
SEQUENCES = {"outbox": "seq", "dead_letters": "id"}


def _tables() -> list[Table]:
    return list(metadata.sorted_tables)


def copy_database(
    source: Database, target: Database, on_table: Callable[[str, int], object] = lambda *_: None
) -> dict[str, int]:
    """Copy every syncd table from ``source`` into the empty ``target``; rows per table."""
    with target.read() as conn:
        for table in _tables():
            if conn.execute(select(func.count()).select_from(table)).scalar_one():
                raise ConfigError(
                    f"the target database already holds syncd data (table {table.name}); "
                    "db copy only fills an empty database"
                )
    copied: dict[str, int] = {}
    for table in _tables():
        key = list(table.primary_key.columns)
        count = 0
        last: tuple[object, ...] | None = None
        while True:
            stmt = select(table).order_by(*key).limit(BATCH)
            if last is not None:
                stmt = stmt.where(tuple_(*key) > tuple_(*last))
            with source.read() as conn:
                rows = [dict(row) for row in conn.execute(stmt).mappings()]
            if not rows:
                break
            with target.write() as conn:
                conn.execute(table.insert(), rows)
            count += len(rows)
            last = tuple(rows[-1][column.name] for column in key)
        if target.is_postgresql and table.name in SEQUENCES and count:
            column = SEQUENCES[table.name]
            highest = select(func.max(table.c[column])).scalar_subquery()
            with target.write() as conn:
                conn.execute(
                    select(func.setval(func.pg_get_serial_sequence(table.name, column), highest))
                )
        copied[table.name] = count
        on_table(table.name, count)
    return copied
