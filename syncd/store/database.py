"""Opening the database: engine, SQLite pragmas, write transactions, migrations, the
one-daemon-per-SQLite-file lock.

SQLite runs in WAL mode with a busy timeout and ``synchronous=FULL`` (a rotated refresh
token must survive a power cut, not only a kill). Write transactions start with
``BEGIN IMMEDIATE`` so that a read-then-write (diff against the mirror, token refresh)
never races another writer. On PostgreSQL the same code runs; writes that append to the
outbox take a transaction-scoped advisory lock so that outbox sequence numbers become
visible in the order they were assigned (see ``store.outbox.append_events``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, OperationalError

from syncd.errors import AlreadyRunning, ConfigError, SyncdError
from syncd.store.schema import metadata

BUSY_TIMEOUT_SECONDS = 60.0  # longer than one refresh call holding the write lock
OUTBOX_LOCK_KEY = 0x73796E6364  # "syncd": serialises outbox appends on PostgreSQL
POLL_LOCK_NAMESPACE = 0x706F6C6C  # "poll": with hashtext(connection), one poll at a time
MIGRATIONS = Path(__file__).parent / "migrations"


def database_outage(exc: BaseException) -> str | None:
    """A one-line description if ``exc`` means the database went away (a restart, a cut
    connection, a lock held too long), else None: expected, so no traceback."""
    if isinstance(exc, OperationalError | InterfaceError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    ):
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        return detail[0] if detail else type(exc).__name__
    return None


class DatabaseUnavailable(SyncdError):
    """The database cannot be opened or reached."""

    exit_code = 4


def normalize_url(url: str) -> str:
    """Accept ``postgresql://`` and ``postgres://`` for psycopg 3; leave the rest alone."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL, or None for other engines and ``:memory:``."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    if parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def make_private_dir(path: Path) -> None:
    """``mkdir -p`` in which every directory created is owner-only (0700)."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for directory in reversed(missing):
        directory.mkdir(mode=0o700, exist_ok=True)


def _create_private_file(path: Path) -> None:
    """Create the SQLite file owner-only (0600) before SQLite does: it holds the tokens.

    SQLite gives its -wal and -shm files the permissions of the database file.
    """
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _sqlite_engine(url: str) -> Engine:
    path = sqlite_path(url)
    if path is not None:
        make_private_dir(path.parent)
        _create_private_file(path)
    engine = create_engine(
        url,
        connect_args={"timeout": BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from pysqlite so BEGIN IMMEDIATE is ours to send.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = "IMMEDIATE" if conn.get_execution_options().get("syncd_write") else "DEFERRED"
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


@dataclass
class Database:
    """An open database: the engine plus the transaction helpers every store module uses."""

    engine: Engine
    url: str

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @property
    def is_postgresql(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction."""
        with self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction that holds SQLite's write lock from its first statement."""
        with self.engine.connect() as conn:
            conn = conn.execution_options(syncd_write=True)
            with conn.begin():
                yield conn

    def close(self) -> None:
        self.engine.dispose()


def lock_connection_for_poll(conn: Connection, connection: str) -> None:
    """Serialise polls of one connection until commit (SQLite's write lock already does).

    Two processes that poll the same connection at once must not both decide an order is
    new: the second waits, then diffs against what the first committed.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(
            text("SELECT pg_advisory_xact_lock(:ns, hashtext(:name))"),
            {"ns": POLL_LOCK_NAMESPACE, "name": connection},
        )


def open_database(url: str, *, migrate: bool = True) -> Database:
    """Open (and by default migrate) the database at ``url``."""
    url = normalize_url(url)
    try:
        backend = make_url(url).get_backend_name()
    except ArgumentError:
        raise ConfigError(f"[database] url: not a database URL: {url!r}") from None
    if backend == "sqlite":
        engine = _sqlite_engine(url)
    elif backend == "postgresql":
        # Bounded: poll workers (<= 20), PDF claims (one per download), the dispatcher
        # and probes share it; a thread waits for a connection rather than open more.
        engine = create_engine(
            url, pool_pre_ping=True, pool_size=10, max_overflow=20, pool_timeout=120
        )
    else:
        raise ConfigError(
            f"[database] url: unsupported database {backend!r} (sqlite or postgresql)"
        )
    db = Database(engine=engine, url=url)
    if migrate:
        try:
            upgrade(db)
        except OperationalError as exc:
            db.close()
            raise DatabaseUnavailable(f"cannot open the database: {exc.orig}") from None
    return db


def _alembic_config(conn: Connection) -> Any:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    return cfg


# The newest migration. Every command opens the database; when the schema is already
# here, it does so without importing alembic (a fifth of a one-shot run's start-up).
# tests/test_store.py checks this against alembic's own view of the head.
SCHEMA_REVISION = "0003"


def current_revision(db: Database) -> str | None:
    """The schema's revision, read directly from alembic's version table."""
    with db.engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        value = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return None if value is None else str(value)


def head_revision() -> str:
    """The newest revision as alembic's script directory says (imports alembic)."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    assert head is not None
    return head


def upgrade(db: Database) -> str:
    """Apply pending migrations (a no-op when the schema is current); return the revision."""
    if current_revision(db) == SCHEMA_REVISION:
        return SCHEMA_REVISION
    with db.engine.connect() as conn:
        conn = conn.execution_options(syncd_write=True)
        if db.is_postgresql:
            # Several processes may start at once: one migrates, the others wait.
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": OUTBOX_LOCK_KEY + 1})
        try:
            if _holds_no_syncd_table(conn):
                _create_schema(conn)
            else:
                from alembic import command

                command.upgrade(_alembic_config(conn), "head")
            conn.commit()
        finally:
            if db.is_postgresql:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": OUTBOX_LOCK_KEY + 1})
                conn.commit()
    return current_revision(db) or SCHEMA_REVISION


def _holds_no_syncd_table(conn: Connection) -> bool:
    present = set(inspect(conn).get_table_names())
    return present.isdisjoint({*metadata.tables, "alembic_version"})


def _create_schema(conn: Connection) -> None:
    """A new database gets the current schema at once, stamped with its revision, as
    alembic recommends for new databases: no migration replay, and no alembic import in
    a process that then lives for months. tests/test_store.py checks that this schema
    and the migrated one are the same."""
    metadata.create_all(conn)
    # alembic's own version table, as ``alembic stamp`` would create it.
    conn.execute(
        text(
            "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL, "
            "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))"
        )
    )
    conn.execute(
        text("INSERT INTO alembic_version (version_num) VALUES (:v)"), {"v": SCHEMA_REVISION}
    )


class InstanceLock:
    """An flock beside a SQLite file: one daemon, or any number of one-shot runs.

    The daemon takes it exclusively and one-shot runs take it shared, so a daemon and a
    ``run --once`` never poll the same SQLite file at once, while several one-shot runs
    may. The kernel drops it when the process dies, kill -9 included.
    """

    def __init__(self, handle: TextIO, path: Path) -> None:
        self._handle = handle
        self.path = path

    @classmethod
    def acquire(cls, db_file: Path, *, exclusive: bool) -> InstanceLock:
        path = db_file.with_name(db_file.name + ".lock")
        handle = open(path, "a+")  # noqa: SIM115 - held for the life of the process
        try:
            fcntl.flock(handle, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise AlreadyRunning(
                f"another syncd process (pid {holder}) is running on {db_file}; SQLite allows "
                "one daemon per database: stop it, or move to PostgreSQL to run several"
            ) from None
        if exclusive:
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
        return cls(handle, path)

    def release(self) -> None:
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()
