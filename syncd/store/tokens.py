"""The token store: one row per connection, read and rotated under a row lock.

``locked`` gives the single-flight guarantee of DESIGN §3: SQLite's ``BEGIN IMMEDIATE``
or PostgreSQL's ``SELECT … FOR UPDATE`` is held across the refresh call, so of several
threads or processes that find the token expired, one refreshes and the others, once
they get the lock, find the fresh pair already committed.

Secrets at rest: with a Fernet key (``$SYNCD_TOKEN_KEY``, or the systemd credential
``syncd_token_key`` in ``$CREDENTIALS_DIRECTORY``) every token is written as
``fernet:<ciphertext>``. Values without the prefix are plaintext from before a key was
set: they still read, and are encrypted on the row's next write. A key that cannot
decrypt a stored value is a :class:`~syncd.errors.ConfigError`, never a traceback.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, delete, select, update

from syncd.errors import ConfigError
from syncd.events import Event
from syncd.logging import secrets
from syncd.store.database import Database
from syncd.store.outbox import append_events
from syncd.store.schema import TOKENS
from syncd.store.sql import insert_ignore, upsert

if TYPE_CHECKING:
    from cryptography.fernet import Fernet

TOKEN_KEY_ENV = "SYNCD_TOKEN_KEY"  # noqa: S105 - the name of the variable
TOKEN_KEY_CREDENTIAL = "syncd_token_key"  # noqa: S105 - a file name
ENCRYPTED_PREFIX = "fernet:"
_NEW_KEY_HINT = (
    "generate one with: python -c 'from cryptography.fernet import Fernet; "
    "print(Fernet.generate_key().decode())'"
)


class TokenCipher:
    """Token values in and out of the database: Fernet when a key is set, else as is."""

    def __init__(self, key: str | None = None, source: str = TOKEN_KEY_ENV) -> None:
        self.source = source
        # cryptography (and its own OpenSSL) loads only when a key is configured.
        self._fernet: Fernet | None = None
        if key is not None:
            from cryptography.fernet import Fernet

            secrets.add(key)
            try:
                self._fernet = Fernet(key.encode())
            except (ValueError, TypeError):
                raise ConfigError(
                    f"{source} is not a Fernet key (32 url-safe base64-encoded bytes); "
                    + _NEW_KEY_HINT
                ) from None

    @property
    def encrypts(self) -> bool:
        return self._fernet is not None

    def encode(self, value: str | None) -> str | None:
        """The stored form of ``value``: encrypted and prefixed when a key is set."""
        if value is None or self._fernet is None:
            return value
        return ENCRYPTED_PREFIX + self._fernet.encrypt(value.encode()).decode("ascii")

    def decode(self, stored: str | None, connection: str) -> str | None:
        """The token behind a stored value; plaintext values pass through."""
        if stored is None or not stored.startswith(ENCRYPTED_PREFIX):
            return stored
        if self._fernet is None:
            raise ConfigError(
                f"the stored tokens of connection '{connection}' are encrypted and no key is "
                f"set: set {TOKEN_KEY_ENV} or the systemd credential {TOKEN_KEY_CREDENTIAL}"
            )
        from cryptography.fernet import InvalidToken

        try:
            value = self._fernet.decrypt(stored.removeprefix(ENCRYPTED_PREFIX).encode()).decode()
        except (InvalidToken, ValueError):
            raise ConfigError(
                f"cannot decrypt the stored tokens of connection '{connection}': {self.source} "
                "is not the key they were encrypted with (restore that key, or run "
                f"'syncd auth login --connection {connection}' to store new tokens)"
            ) from None
        secrets.add(value)
        return value


def token_cipher(environ: Mapping[str, str] | None = None) -> TokenCipher:
    """The cipher the environment asks for: ``$SYNCD_TOKEN_KEY``, then the credential."""
    environ = os.environ if environ is None else environ
    key = environ.get(TOKEN_KEY_ENV, "").strip()
    if key:
        return _cipher(key, TOKEN_KEY_ENV)
    directory = environ.get("CREDENTIALS_DIRECTORY", "")
    if directory:
        credential = _read_credential(Path(directory) / TOKEN_KEY_CREDENTIAL)
        if credential:
            return _cipher(credential, f"the credential {TOKEN_KEY_CREDENTIAL}")
    return _PLAIN


@functools.lru_cache(maxsize=8)
def _cipher(key: str, source: str) -> TokenCipher:
    return TokenCipher(key, source)


@functools.lru_cache(maxsize=8)
def _read_credential(path: Path) -> str | None:
    """A systemd credential's text (read once per process), or None when absent."""
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"cannot read the token key credential {path}: {reason}") from None


_PLAIN = TokenCipher()


@dataclass(frozen=True)
class StoredToken:
    connection: str
    access_token: str | None
    refresh_token: str | None
    expires_at: datetime | None
    needs_authorization: bool
    auth_error: str | None
    needs_authorization_since: datetime | None
    # A refresh was sent and its answer lost at this time: the next refresh is its retry.
    refresh_in_doubt_since: datetime | None = None


def _select(connection: str) -> object:
    return select(
        TOKENS.c.connection,
        TOKENS.c.access_token,
        TOKENS.c.refresh_token,
        TOKENS.c.expires_at,
        TOKENS.c.needs_authorization,
        TOKENS.c.auth_error,
        TOKENS.c.needs_authorization_since,
        TOKENS.c.refresh_in_doubt_since,
    ).where(TOKENS.c.connection == connection)


def _decoded(row: Any, cipher: TokenCipher) -> StoredToken:
    token = StoredToken(*row)
    return StoredToken(
        token.connection,
        cipher.decode(token.access_token, token.connection),
        cipher.decode(token.refresh_token, token.connection),
        token.expires_at,
        token.needs_authorization,
        token.auth_error,
        token.needs_authorization_since,
        token.refresh_in_doubt_since,
    )


def load(db: Database, connection: str) -> StoredToken | None:
    with db.read() as conn:
        row = conn.execute(_select(connection)).first()  # type: ignore[call-overload]
    return _decoded(row, token_cipher()) if row else None


def load_all(db: Database) -> dict[str, StoredToken]:
    with db.read() as conn:
        rows = conn.execute(select(TOKENS.c.connection)).scalars().all()
    return {name: token for name in rows if (token := load(db, name)) is not None}


class TokenTransaction:
    """The locked token row of one connection, and the writes allowed while holding it."""

    def __init__(
        self,
        conn: Connection,
        connection: str,
        token: StoredToken | None,
        cipher: TokenCipher = _PLAIN,
    ) -> None:
        self._conn = conn
        self.connection = connection
        self.token = token
        self._cipher = cipher

    def save_pair(
        self, access_token: str, refresh_token: str, expires_at: datetime, now: datetime
    ) -> None:
        _upsert_pair(
            self._conn, self._cipher, self.connection, access_token, refresh_token, expires_at, now
        )

    def _update(self, **values: Any) -> None:
        # Every write re-encodes the refresh token: plaintext from before a key was set
        # is encrypted on the row's next write.
        refresh = self.token.refresh_token if self.token else None
        self._conn.execute(
            update(TOKENS)
            .where(TOKENS.c.connection == self.connection)
            .values(refresh_token=self._cipher.encode(refresh), **values)
        )

    def mark_refresh_in_doubt(self, now: datetime) -> None:
        """A refresh was sent and its answer lost: the next refresh is its one retry."""
        self._update(refresh_in_doubt_since=now, updated_at=now)

    def mark_needs_authorization(self, error: str, event: Event, now: datetime) -> None:
        """Stop using this token for good, and say so once in the outbox."""
        self._update(
            access_token=None,
            needs_authorization=True,
            auth_error=error,
            needs_authorization_since=now,
            refresh_in_doubt_since=None,
            updated_at=now,
        )
        append_events(self._conn, [event], now)


def _upsert_pair(
    conn: Connection,
    cipher: TokenCipher,
    connection: str,
    access_token: str | None,
    refresh_token: str,
    expires_at: datetime | None,
    now: datetime,
) -> None:
    """Replace the connection's row with a working pair (clearing every failure state)."""
    upsert(
        conn,
        TOKENS,
        {
            "connection": connection,
            "access_token": cipher.encode(access_token),
            "refresh_token": cipher.encode(refresh_token),
            "expires_at": expires_at,
            "needs_authorization": False,
            "auth_error": None,
            "needs_authorization_since": None,
            "refresh_in_doubt_since": None,
            "updated_at": now,
        },
        keys=["connection"],
    )


@contextmanager
def locked(
    db: Database, connection: str, *, bootstrap_refresh_token: str | None, now: datetime
) -> Iterator[TokenTransaction]:
    """Lock the connection's token row for the length of the block (commit on success).

    When the store holds no token yet, the configured bootstrap refresh token is stored
    first: it is used only while the store is empty.
    """
    cipher = token_cipher()
    with db.write() as conn:
        if bootstrap_refresh_token:
            insert_ignore(
                conn,
                TOKENS,
                [
                    {
                        "connection": connection,
                        "refresh_token": cipher.encode(bootstrap_refresh_token),
                        "needs_authorization": False,
                        "updated_at": now,
                    }
                ],
            )
        stmt = _select(connection)
        if db.is_postgresql:
            stmt = stmt.with_for_update()  # type: ignore[attr-defined]
        row = conn.execute(stmt).first()  # type: ignore[call-overload]
        token = _decoded(row, cipher) if row else None
        yield TokenTransaction(conn, connection, token, cipher)


def store_pair(
    db: Database,
    connection: str,
    *,
    refresh_token: str,
    access_token: str | None,
    expires_at: datetime | None,
    now: datetime,
) -> None:
    """Store a pair obtained elsewhere (``auth import``, ``auth login``); it replaces
    whatever was there, a needs-authorization state included."""
    cipher = token_cipher()
    with db.write() as conn:
        _upsert_pair(conn, cipher, connection, access_token, refresh_token, expires_at, now)


def forget(db: Database, connection: str) -> bool:
    """Delete the connection's tokens (``auth logout``); False when there were none."""
    with db.write() as conn:
        result = conn.execute(delete(TOKENS).where(TOKENS.c.connection == connection))
    return bool(result.rowcount)
