"""Several connections in one daemon: each on its own schedule, failing on its own, and
resuming on its own once it is authorized again."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import structlog

from syncd.cli import main
from syncd.config import load_config
from syncd.daemon import Daemon, opened, run_once
from syncd.login import login
from syncd.simulator import Simulator
from syncd.store import tokens
from syncd.store.database import open_database
from tests.conftest import Setup, run_syncd, start_syncd
from tests.test_login import Browser

ORDERS = "/api/v1/purchase_orders.php"


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def other() -> Iterator[Simulator]:
    """A second InventoryArts account, on a simulator of its own."""
    with Simulator(seed=2, orders=5).start() as simulator:
        yield simulator


def connection_entry(name: str, sim: Simulator, env: dict[str, str]) -> str:
    """A [[connections]] entry for ``sim`` (polled every second); fills its variables."""
    variable = name.upper()
    env[f"SYNCD_{variable}_SECRET"] = sim.client_secret
    env[f"SYNCD_{variable}_REFRESH"] = str(sim.issue_tokens()["refresh_token"])
    return f"""
[[connections]]
name = "{name}"
base_url = "{sim.base_url}"
client_id = "{sim.client_id}"
client_secret = "${{SYNCD_{variable}_SECRET}}"
refresh_token = "${{SYNCD_{variable}_REFRESH:-}}"
poll_interval = "1s"
"""


def two_connections(
    make_config: Callable[..., Setup], sim: Simulator, other: Simulator, **options: str
) -> Setup:
    """`band` on ``sim`` and `choir` on ``other``, both polled every second."""
    env: dict[str, str] = {}
    setup = make_config(sim, extra=connection_entry("choir", other, env), **options)
    setup.env.update(env)
    return setup


def test_failing_connections_never_slow_a_healthy_one(
    sim: Simulator, make_config: Callable[..., Setup]
) -> None:
    """While its neighbours are revoked, down (503) or rate limited, `band` polls every second."""
    env: dict[str, str] = {}
    with (
        Simulator(seed=2, orders=5).start() as revoked,
        Simulator(seed=3, orders=5).start() as down,
        Simulator(seed=4, orders=5).start() as limited,
    ):
        entries = [
            connection_entry("revoked", revoked, env),
            connection_entry("down", down, env),
            connection_entry("limited", limited, env),
        ]
        setup = make_config(sim, extra="".join(entries))
        setup.env.update(env)
        revoked.revoke_tokens()
        down.faults.add(ORDERS, "status", status=503, times=None)
        limited.faults.add(ORDERS, "status", status=429, retry_after="3600", times=None)
        config = load_config(setup.path, setup.env)
        with opened(config, daemon=True) as db:
            daemon = Daemon(config, db)
            daemon.start()
            try:
                neighbours = (revoked, down, limited)
                wait_for(lambda: all(len(s.stats.requests) >= 1 for s in (sim, *neighbours)))
                before = sim.stats.count(ORDERS)
                time.sleep(3.5)
                polls = sim.stats.count(ORDERS) - before
                revoked_token = tokens.load(db, "revoked")
            finally:
                daemon.shutdown()
        assert polls >= 3, f"band polled {polls} times in 3.5 s with a 1 s interval"
        # Each neighbour failed in its own way, on its own schedule.
        assert revoked_token is not None
        assert revoked_token.needs_authorization
        assert (revoked.stats.refresh_calls, revoked.stats.count(ORDERS)) == (1, 0)
        assert down.stats.count(ORDERS) >= 2  # still tried, with backoff, every interval
        assert limited.stats.count(ORDERS) == 1  # Retry-After: 3600 is honoured


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """The in-process CLI configures logging onto capsys' stream: put it back afterwards."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)


def cli(monkeypatch: pytest.MonkeyPatch, setup: Setup, *args: str) -> int:
    """Run the CLI in this process (its output goes to capsys)."""
    for name, value in setup.env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as info:
        main(["--config", str(setup.path), *args])
    return int(info.value.code or 0)


def test_status_commands_show_every_connection(
    sim: Simulator,
    other: Simulator,
    make_config: Callable[..., Setup],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    restore_logging: None,
) -> None:
    """`auth status` and `status` show the authorized and the revoked connection side by side."""
    setup = two_connections(make_config, sim, other)
    other.revoke_tokens()
    run_once(load_config(setup.path, setup.env))
    capsys.readouterr()

    assert cli(monkeypatch, setup, "auth", "status") == 3
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("band: authorized, access token expires in ")
    assert lines[1].startswith("choir: NEEDS AUTHORIZATION since ")
    assert "invalid_grant" in lines[1]

    assert cli(monkeypatch, setup, "status", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    band, choir = report["connections"]
    assert (band["name"], band["authorization"], band["last_outcome"]) == (
        "band",
        "authorized",
        "ok",
    )
    assert band["token_expires_at"] is not None
    assert (choir["name"], choir["authorization"]) == ("choir", "needs authorization")
    assert choir["needs_authorization_since"] is not None
    assert "invalid_grant" in choir["auth_error"]
    assert choir["last_outcome"] == "needs_authorization"
    assert "invalid_grant" in choir["last_error"]


def login_choir(setup: Setup, other: Simulator) -> None:
    config = load_config(setup.path, setup.env)
    db = open_database(config.database.url)
    try:
        with httpx.Client(timeout=5) as http:
            login(config.connection("choir"), db, http, browser=Browser(), say=lambda _: None)
    finally:
        db.close()


def import_choir(setup: Setup, other: Simulator) -> None:
    token = str(other.issue_tokens()["refresh_token"])
    result = run_syncd(setup, "auth", "import", "--connection", "choir", "--refresh-token", token)
    assert result.code == 0, result.output


@pytest.mark.parametrize(
    "authorize",
    [pytest.param(login_choir, id="auth-login"), pytest.param(import_choir, id="auth-import")],
)
def test_running_daemon_resumes_a_connection_once_it_is_authorized(
    sim: Simulator,
    other: Simulator,
    make_config: Callable[..., Setup],
    authorize: Callable[[Setup, Simulator], None],
) -> None:
    """A revoked connection: /readyz names it; new tokens resume it with no restart."""
    port = free_port()
    setup = two_connections(make_config, sim, other, listen=f"127.0.0.1:{port}")
    other.revoke_tokens()
    daemon = start_syncd(setup, "run")
    readyz = f"http://127.0.0.1:{port}/readyz"

    def ready() -> httpx.Response | None:
        try:
            return httpx.get(readyz, timeout=2)
        except httpx.HTTPError:
            return None

    try:
        wait_for(
            lambda: (
                (r := ready()) is not None
                and "needs authorization" in r.json()["problems"].get("choir", "")
            )
        )
        wait_for(lambda: (r := ready()) is not None and "band" not in r.json()["problems"])
        answer = ready()
        assert answer is not None
        assert answer.status_code == 503
        assert list(answer.json()["problems"]) == ["choir"]
        assert other.stats.count(ORDERS) == 0

        authorize(setup, other)

        wait_for(lambda: other.stats.count(ORDERS) >= 1)
        wait_for(lambda: (r := ready()) is not None and r.status_code == 200)
        assert daemon.poll() is None  # the same process, never restarted
    finally:
        daemon.terminate()
        try:
            daemon.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.communicate()
    assert daemon.returncode == 0
