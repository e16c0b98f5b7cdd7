"""Shared fixtures: the simulator over loopback, config files, databases, the CLI.

PostgreSQL tests run when ``SYNCD_TEST_DATABASE_URL`` names a server (``.ci/run`` sets
it); each test gets its own schema there, dropped afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from syncd.logging import secrets
from syncd.simulator import Simulator

PG_URL = os.environ.get("SYNCD_TEST_DATABASE_URL", "")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _forget_secrets() -> Iterator[None]:
    """Each test starts with an empty secret registry."""
    yield
    secrets.clear()


class FastClock:
    """Real time plus an offset that the injected sleep advances (tests skip waits);
    records every sleep."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return time.time() + self.offset

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.offset += seconds


@pytest.fixture
def clock() -> FastClock:
    """A clock for in-process runs whose waits are skipped, not slept."""
    return FastClock()


@pytest.fixture
def sim() -> Iterator[Simulator]:
    """A fresh simulator with 25 orders, serving on a free loopback port."""
    with Simulator(seed=1, orders=25).start() as simulator:
        yield simulator


def _pg_schema_url(base: str, schema: str) -> str:
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{schema}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a new, empty schema (dropped afterwards)."""
    if not PG_URL:
        pytest.skip("SYNCD_TEST_DATABASE_URL is not set: no PostgreSQL to test against")
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    plain = PG_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield _pg_schema_url(PG_URL, schema)
    finally:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store test runs on SQLite and, when available, on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'syncd.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@dataclass
class Setup:
    """A config file pointing at the simulator, and the environment that fills it."""

    path: Path
    env: dict[str, str]
    state_dir: Path
    events_file: Path


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Setup]:
    """Factory: write a syncd.toml for ``sim`` (one connection, a JSONL sink)."""

    def make(
        sim: Simulator,
        *,
        refresh_token: str | None = None,
        database_url: str | None = None,
        extra: str = "",
        connection_extra: str = "",
        name: str = "band",
        max_attempts: int = 3,
        retry_after_max: int = 30,
        sinks: str | None = None,
        poll_interval: str = "1s",
        listen: str = "",
    ) -> Setup:
        if refresh_token is None:
            refresh_token = str(sim.issue_tokens()["refresh_token"])
        state_dir = tmp_path / "state"
        events_file = state_dir / "events.jsonl"
        database = f'[database]\nurl = "{database_url}"\n' if database_url else ""
        sink_text = (
            sinks
            if sinks is not None
            else f'[[sinks]]\nname = "events-file"\ntype = "jsonl"\npath = "{events_file}"\n'
        )
        text = f"""
[daemon]
state_dir = "{state_dir}"
log_level = "info"
log_format = "json"
listen = "{listen}"

{database}
[http]
timeout = 5
max_attempts = {max_attempts}
retry_after_max = {retry_after_max}

[[connections]]
name = "{name}"
base_url = "{sim.base_url}"
client_id = "{sim.client_id}"
client_secret = "${{SYNCD_CLIENT_SECRET}}"
refresh_token = "${{SYNCD_REFRESH_TOKEN:-}}"
poll_interval = "{poll_interval}"
{connection_extra}

{sink_text}
{extra}
"""
        path = tmp_path / "syncd.toml"
        path.write_text(text)
        env = {
            "SYNCD_CLIENT_SECRET": sim.client_secret,
            "SYNCD_REFRESH_TOKEN": refresh_token,
        }
        return Setup(path=path, env=env, state_dir=state_dir, events_file=events_file)

    return make


@pytest.fixture
def configure(
    sim: Simulator, make_config: Callable[..., Setup]
) -> Callable[..., tuple[Any, Setup]]:
    """Factory: a config for ``sim`` (``make_config`` options), loaded, and its Setup."""
    from syncd.config import load_config

    def make(**kwargs: Any) -> tuple[Any, Setup]:
        setup = make_config(sim, **kwargs)
        return load_config(setup.path, setup.env), setup

    return make


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def syncd_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
    env.update(extra)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_syncd(setup: Setup, *args: str, timeout: float = 60.0) -> CliResult:
    """Run ``python -m syncd --config <setup> ARGS`` as its own process."""
    proc = subprocess.run(
        [sys.executable, "-m", "syncd", "--config", str(setup.path), *args],
        capture_output=True,
        text=True,
        env=syncd_env(setup.env),
        timeout=timeout,
        cwd=REPO,
        check=False,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def start_syncd(setup: Setup, *args: str, **popen: Any) -> subprocess.Popen[str]:
    """Start ``syncd --config <setup> ARGS`` in the background (the caller stops it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "syncd", "--config", str(setup.path), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=syncd_env(setup.env),
        cwd=REPO,
        **popen,
    )


def read_events(path: Path) -> list[dict[str, Any]]:
    import json

    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def assert_delivered_in_order(delivered: list[dict[str, Any]], stored_ids: list[str]) -> None:
    """The sink got every stored event (after deduplication on id), and each order's
    events first arrived in the order they were stored (per-order order)."""
    assert {event["id"] for event in delivered} == set(stored_ids)
    position = {event_id: index for index, event_id in enumerate(stored_ids)}
    per_order: dict[tuple[str, str], list[int]] = {}
    for event in delivered:
        per_order.setdefault((event["source"], event["subject"]), []).append(position[event["id"]])
    for positions in per_order.values():
        first_arrivals = list(dict.fromkeys(positions))
        assert first_arrivals == sorted(first_arrivals)


def seed_outbox(setup: Setup, count: int) -> None:
    """Put ``count`` created events (connection "seeded") in ``setup``'s outbox."""
    from datetime import UTC, datetime
    from decimal import Decimal

    from syncd.config import load_config
    from syncd.records import PurchaseOrder
    from syncd.store.database import open_database
    from syncd.store.mirror import apply_poll

    config = load_config(setup.path, setup.env)
    db = open_database(config.database.url)
    try:
        orders = tuple(
            PurchaseOrder(i, f"PO-{i}", "Vendor", Decimal("1.00"), None, "x" * 200, None)
            for i in range(10_000, 10_000 + count)
        )
        apply_poll(db, "seeded", orders, datetime.now(UTC))
    finally:
        db.close()


@dataclass
class PlantedSecrets:
    """What the simulator handed out: every token issued, every signed link token."""

    issued: list[str]
    link_tokens: list[str]


def record_secrets(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> PlantedSecrets:
    """Record every token and pdf_url token ``sim`` issues from now on."""
    import re

    planted = PlantedSecrets([], [])
    state = sim._state
    real_issue, real_query = state.issue_tokens, state.pdf_query

    def record_issue() -> Any:
        pair = real_issue()
        planted.issued.extend([pair.access_token, pair.refresh_token])
        return pair

    def record_query(order: Any) -> str:
        query = real_query(order)
        token = re.search(r"token=([^&]+)", query)
        assert token is not None
        planted.link_tokens.append(token.group(1))
        return query

    monkeypatch.setattr(state, "issue_tokens", record_issue)
    monkeypatch.setattr(state, "pdf_query", record_query)
    return planted
