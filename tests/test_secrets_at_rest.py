"""Secrets at rest: encrypted tokens, owner-only files, client_secret_file."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select

from syncd.config import load_config
from syncd.errors import ConfigError
from syncd.pdfs import Archiver
from syncd.simulator import Simulator
from syncd.store import tokens
from syncd.store.database import Database, open_database
from tests.conftest import Setup, run_syncd

NOW = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    """The token store on SQLite and, when available, on PostgreSQL."""
    database = open_database(database_url)
    yield database
    database.close()


def raw_row(db: Database, connection: str = "band") -> tuple[str | None, str | None]:
    """The token columns exactly as the database holds them."""
    with db.read() as conn:
        row = conn.execute(
            select(tokens.TOKENS.c.access_token, tokens.TOKENS.c.refresh_token).where(
                tokens.TOKENS.c.connection == connection
            )
        ).one()
    return row[0], row[1]


def store(db: Database, refresh: str = "refresh-token-1", access: str = "access-token-1") -> None:
    tokens.store_pair(
        db, "band", refresh_token=refresh, access_token=access, expires_at=NOW, now=NOW
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- encryption -----------------------------------------------------------------------


def test_tokens_are_encrypted_with_a_key(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """With SYNCD_TOKEN_KEY set, the rows hold fernet: ciphertext and read back as tokens."""
    monkeypatch.setenv("SYNCD_TOKEN_KEY", Fernet.generate_key().decode())
    store(db)
    access, refresh = raw_row(db)
    assert access is not None
    assert access.startswith("fernet:")
    assert refresh is not None
    assert refresh.startswith("fernet:")
    assert "access-token-1" not in access
    assert "refresh-token-1" not in refresh
    loaded = tokens.load(db, "band")
    assert loaded is not None
    assert (loaded.access_token, loaded.refresh_token) == ("access-token-1", "refresh-token-1")


def test_without_a_key_tokens_are_stored_as_they_are(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No key: the values are written in clear (the file's permissions protect them)."""
    monkeypatch.delenv("SYNCD_TOKEN_KEY", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    store(db)
    assert raw_row(db) == ("access-token-1", "refresh-token-1")


def test_plaintext_rows_still_read_and_are_encrypted_on_the_next_write(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row written before the key was set reads as is; its next write is encrypted."""
    monkeypatch.delenv("SYNCD_TOKEN_KEY", raising=False)
    store(db)
    monkeypatch.setenv("SYNCD_TOKEN_KEY", Fernet.generate_key().decode())
    loaded = tokens.load(db, "band")
    assert loaded is not None
    assert loaded.refresh_token == "refresh-token-1"
    with tokens.locked(db, "band", bootstrap_refresh_token=None, now=NOW) as txn:
        txn.mark_refresh_in_doubt(NOW)  # any write of the row
    access, refresh = raw_row(db)
    assert access == "access-token-1"  # untouched by that write
    assert refresh is not None
    assert refresh.startswith("fernet:")
    store(db, refresh="refresh-token-2", access="access-token-2")
    assert all(value and value.startswith("fernet:") for value in raw_row(db))


def test_key_from_a_systemd_credential(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$CREDENTIALS_DIRECTORY/syncd_token_key is the key when SYNCD_TOKEN_KEY is unset."""
    key = Fernet.generate_key()
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "syncd_token_key").write_bytes(key + b"\n")
    monkeypatch.delenv("SYNCD_TOKEN_KEY", raising=False)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    store(db)
    _, refresh = raw_row(db)
    assert refresh is not None
    decrypted = Fernet(key).decrypt(refresh.removeprefix("fernet:").encode())
    assert decrypted == b"refresh-token-1"


def test_wrong_key_is_one_line_exit_2(
    sim: Simulator, make_config: Callable[..., Setup], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tokens encrypted with one key, read with another: exit 2, one line, no key, no trace."""
    setup = make_config(sim, refresh_token="")
    monkeypatch.setenv("SYNCD_TOKEN_KEY", Fernet.generate_key().decode())
    token = str(sim.issue_tokens()["refresh_token"])
    database = open_database(f"sqlite:///{setup.state_dir / 'syncd.db'}")
    try:
        tokens.store_pair(
            database, "band", refresh_token=token, access_token=None, expires_at=None, now=NOW
        )
    finally:
        database.close()
    wrong = Fernet.generate_key().decode()
    setup.env["SYNCD_TOKEN_KEY"] = wrong
    for command in (("auth", "status"), ("run", "--once")):
        result = run_syncd(setup, *command)
        assert result.code == 2, result.output
        assert result.stdout == ""
        [line] = result.stderr.splitlines()
        assert line.startswith("syncd: cannot decrypt the stored tokens of connection 'band'")
        assert "SYNCD_TOKEN_KEY" in line
        assert wrong not in result.output
        assert token not in result.output
    assert sim.stats.requests == []


def test_encrypted_tokens_without_a_key_is_a_config_error(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An encrypted row with no key configured says which key is missing (exit 2)."""
    monkeypatch.setenv("SYNCD_TOKEN_KEY", Fernet.generate_key().decode())
    store(db)
    monkeypatch.delenv("SYNCD_TOKEN_KEY")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(ConfigError, match="encrypted and no key is set: set SYNCD_TOKEN_KEY"):
        tokens.load(db, "band")


def test_a_malformed_key_is_a_config_error(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SYNCD_TOKEN_KEY that is no Fernet key is exit 2, and the message does not quote it."""
    monkeypatch.setenv("SYNCD_TOKEN_KEY", "not-a-fernet-key-at-all")
    with pytest.raises(ConfigError, match="SYNCD_TOKEN_KEY is not a Fernet key") as info:
        store(db)
    assert info.value.exit_code == 2
    assert "not-a-fernet-key-at-all" not in str(info.value)


# --- file permissions -----------------------------------------------------------------


def test_sqlite_files_and_state_dirs_are_owner_only(tmp_path: Path) -> None:
    """The SQLite file and its -wal/-shm are 0600; the state and pdf dirs 0700."""
    old = os.umask(0o022)
    try:
        state_dir = tmp_path / "state"
        db = open_database(f"sqlite:///{state_dir / 'syncd.db'}")
        try:
            store(db)
            archiver = Archiver(db, state_dir / "pdfs")
            archiver.close()
            files = [state_dir / name for name in ("syncd.db", "syncd.db-wal", "syncd.db-shm")]
            assert {path.name: mode(path) for path in files} == {p.name: 0o600 for p in files}
        finally:
            db.close()
    finally:
        os.umask(old)
    assert mode(state_dir) == 0o700
    assert mode(state_dir / "pdfs") == 0o700


def test_pdf_dir_creates_missing_parents_owner_only(tmp_path: Path, db: Database) -> None:
    """A pdf dir whose parents do not exist yet (PostgreSQL: no db file) makes them 0700."""
    old = os.umask(0o022)
    try:
        Archiver(db, tmp_path / "state" / "deep" / "pdfs").close()
    finally:
        os.umask(old)
    for path in (tmp_path / "state", tmp_path / "state" / "deep", tmp_path / "state/deep/pdfs"):
        assert mode(path) == 0o700, path


# --- client_secret_file ---------------------------------------------------------------


def connection_toml(tmp_path: Path, lines: str) -> Path:
    path = tmp_path / "syncd.toml"
    path.write_text(
        "[[connections]]\n"
        'name = "band"\n'
        'base_url = "https://inventoryarts.com/"\n'
        'client_id = "id"\n' + lines
    )
    return path


def test_client_secret_file_is_read_relative_to_the_config(tmp_path: Path) -> None:
    """client_secret_file: relative to the config file, read at load, trailing newline dropped."""
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "client").write_text("s3cret-from-file\n")
    config = load_config(connection_toml(tmp_path, 'client_secret_file = "secrets/client"\n'), {})
    assert config.connection(None).client_secret.get_secret_value() == "s3cret-from-file"


def test_client_secret_and_client_secret_file_exclude_each_other(tmp_path: Path) -> None:
    """Both keys at once is a config error naming them."""
    (tmp_path / "client").write_text("x\n")
    path = connection_toml(tmp_path, 'client_secret = "a"\nclient_secret_file = "client"\n')
    with pytest.raises(ConfigError, match="client_secret or client_secret_file, not both"):
        load_config(path, {})


def test_unreadable_client_secret_file_names_the_key(tmp_path: Path) -> None:
    """A missing file is one ConfigError line naming the table, the key and the path."""
    path = connection_toml(tmp_path, 'client_secret_file = "missing"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    message = str(info.value)
    assert '[[connections]] "band"' in message
    assert "client_secret_file" in message
    assert str(tmp_path / "missing") in message
    assert "\n" not in message
