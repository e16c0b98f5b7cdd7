"""Dialect-specific statements shared by the store modules (upserts).

Statements are built once per dialect, table and column set, then reused: building an
``INSERT ... ON CONFLICT`` and its ``excluded`` collection costs more than executing it
on a quiet poll. The dialect modules are imported on first use, so a SQLite process
never loads PostgreSQL's.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy.sql.dml import Insert


def _insert(dialect: str, table: Table) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table)
    from sqlalchemy.dialects import sqlite

    return sqlite.insert(table)


@functools.cache
def _insert_ignore(dialect: str, table: Table) -> Insert:
    statement: Insert = _insert(dialect, table).on_conflict_do_nothing()
    return statement


@functools.cache
def _upsert(dialect: str, table: Table, columns: tuple[str, ...], keys: tuple[str, ...]) -> Insert:
    insert = _insert(dialect, table)
    updates = {name: insert.excluded[name] for name in columns if name not in keys}
    statement: Insert = insert.on_conflict_do_update(index_elements=list(keys), set_=updates)
    return statement


def insert_ignore(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """INSERT rows, skipping those whose unique key already exists."""
    if not rows:
        return
    conn.execute(_insert_ignore(conn.dialect.name, table), list(rows))


def upsert(conn: Connection, table: Table, row: Mapping[str, Any], keys: Sequence[str]) -> None:
    """INSERT a row, or UPDATE its non-key columns when the key exists."""
    statement = _upsert(conn.dialect.name, table, tuple(row), tuple(keys))
    conn.execute(statement, dict(row))
