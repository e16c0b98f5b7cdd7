"""The command line (DESIGN §4): each command as its own process against the simulator."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from syncd.simulator import Simulator
from syncd.store import tokens
from syncd.store.database import head_revision, open_database
from tests.conftest import REPO, CliResult, Setup, read_events, run_syncd, syncd_env

ORDERS_PATH = "/api/v1/purchase_orders.php"
CHECKIN_PATH = "/api/v1/item_checkin.php"
COMMANDS = ("run", "check", "status", "auth", "checkin", "db", "simulator", "demo")


def fail_lines(result: CliResult) -> list[str]:
    """The one-line error messages the CLI printed (not the structured log lines)."""
    return [line for line in result.stderr.splitlines() if line.startswith("syncd: ")]


def status_json(setup: Setup) -> dict[str, Any]:
    result = run_syncd(setup, "status", "--json")
    assert result.code == 0, result.output
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def python_m_syncd(*args: str, timeout: float = 60.0) -> CliResult:
    """``python -m syncd ARGS`` with no --config of its own."""
    proc = subprocess.run(
        [sys.executable, "-m", "syncd", *args],
        capture_output=True,
        text=True,
        env=syncd_env({}),
        cwd=REPO,
        timeout=timeout,
        check=False,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


# --- check, status ---------------------------------------------------------------------


def test_check_prints_the_connection_label(
    sim: Simulator, make_config: Callable[..., Setup]
) -> None:
    """`syncd check` calls me.php and prints "<connection>: <connection_label>"."""
    result = run_syncd(make_config(sim), "check")
    assert result.code == 0, result.output
    assert "band: jdoe - High School Band" in result.stdout.splitlines()
    assert sim.stats.count("/api/v1/me.php") == 1


def test_status_json_before_any_sync(sim: Simulator, make_config: Callable[..., Setup]) -> None:
    """Before the first poll `status --json` shows no outcome and nothing mirrored."""
    report = status_json(make_config(sim))
    [connection] = report["connections"]
    assert connection["name"] == "band"
    assert connection["last_outcome"] is None
    assert connection["last_poll_at"] is None
    assert connection["orders_mirrored"] == 0
    assert [s["name"] for s in report["sinks"]] == ["events-file"]
    assert report["sinks"][0]["pending"] == 0
    assert sim.stats.requests == []


def test_status_after_a_sync(sim: Simulator, make_config: Callable[..., Setup]) -> None:
    """After a sync, status (text and --json) shows 20 orders, outcome ok, nothing pending."""
    setup = make_config(sim)
    assert run_syncd(setup, "run", "--once").code == 0
    report = status_json(setup)
    [connection] = report["connections"]
    assert connection["orders_mirrored"] == 20
    assert connection["last_outcome"] == "ok"
    assert connection["authorization"] == "authorized"
    assert connection["last_error"] is None
    [sink] = report["sinks"]
    written = read_events(setup.events_file)
    assert len([e for e in written if e["type"].endswith(".created")]) == 20
    assert (sink["pending"], sink["delivered"], sink["dead_letters"]) == (0, len(written), 0)

    text = run_syncd(setup, "status")
    assert text.code == 0, text.output
    assert "20 mirrored" in text.stdout
    assert ": ok" in text.stdout


# --- auth -----------------------------------------------------------------------------


def test_without_any_token_the_connection_needs_authorization(
    sim: Simulator, make_config: Callable[..., Setup]
) -> None:
    """No stored and no bootstrap token: run --once and auth status exit 3, no refresh call."""
    setup = make_config(sim, refresh_token="")
    run = run_syncd(setup, "run", "--once")
    assert run.code == 3, run.output
    [line] = fail_lines(run)
    assert "syncd auth import" in line
    status = run_syncd(setup, "auth", "status")
    assert status.code == 3, status.output
    assert "band: NO TOKEN" in status.stdout
    assert sim.stats.refresh_calls == 0
    assert sim.stats.count(ORDERS_PATH) == 0


def test_auth_import_stores_a_token(sim: Simulator, make_config: Callable[..., Setup]) -> None:
    """`auth import --refresh-token T` stores it; `auth status` then lists the connection."""
    setup = make_config(sim, refresh_token="")
    token = str(sim.issue_tokens()["refresh_token"])
    imported = run_syncd(setup, "auth", "import", "--refresh-token", token)
    assert imported.code == 0, imported.output
    assert "band" in imported.stdout
    assert token not in imported.output
    status = run_syncd(setup, "auth", "status")
    assert status.code == 0, status.output
    assert status.stdout.splitlines() == ["band: refresh token stored, no access token yet"]
    assert sim.stats.requests == []


def test_auth_import_recovers_a_revoked_connection(
    sim: Simulator, make_config: Callable[..., Setup]
) -> None:
    """After a revocation, importing a newly issued token makes the next run succeed."""
    setup = make_config(sim)
    assert run_syncd(setup, "run", "--once").code == 0
    sim.revoke_tokens()
    sim.expire_access_tokens()
    assert run_syncd(setup, "run", "--once").code == 3
    token = str(sim.issue_tokens()["refresh_token"])
    assert run_syncd(setup, "auth", "import", "--refresh-token", token).code == 0
    new = sim.add_order()
    refreshes = sim.stats.refresh_calls
    again = run_syncd(setup, "run", "--once")
    assert again.code == 0, again.output
    assert sim.stats.refresh_calls == refreshes + 1
    created = [
        e
        for e in read_events(setup.events_file)
        if e["subject"] == str(new["id"]) and e["type"].endswith(".created")
    ]
    assert len(created) == 1


# --- checkin --------------------------------------------------------------------------


def test_checkin_prints_the_server_message(
    sim: Simulator, make_config: Callable[..., Setup]
) -> None:
    """checkin prints the server's message; a repeat fails with the server's refusal."""
    setup = make_config(sim)
    first = run_syncd(setup, "checkin", "500", "--type", "return_borrowed")
    assert first.code == 0, first.output
    assert first.stdout.strip() == "Borrowed item returned and removed from active inventory."
    assert next(i for i in sim.items if i["id"] == 500)["state"] == "returned"
    again = run_syncd(setup, "checkin", "500", "--type", "return_borrowed")
    assert again.code not in (0, 2), again.output
    [line] = fail_lines(again)
    assert "Item is not currently borrowed." in line
    assert "Traceback" not in again.output
    assert sim.stats.count(CHECKIN_PATH) == 2


def test_checkin_with_an_unknown_type_is_a_usage_error(
    sim: Simulator, make_config: Callable[..., Setup]
) -> None:
    """`checkin --type bogus` exits 2 before sending anything."""
    result = run_syncd(make_config(sim), "checkin", "500", "--type", "bogus")
    assert result.code == 2, result.output
    [line] = fail_lines(result)
    assert "bogus" in line
    assert sim.stats.count(CHECKIN_PATH) == 0
    assert sim.stats.requests == []


def test_checkin_timeout_after_sending_is_an_unknown_outcome_sent_once(
    sim: Simulator, make_config: Callable[..., Setup]
) -> None:
    """An answer slower than [http] timeout: "unknown outcome", exit 4, one request only."""
    setup = make_config(sim)
    setup.path.write_text(setup.path.read_text().replace("timeout = 5\n", "timeout = 0.5\n"))
    sim.faults.add(CHECKIN_PATH, "slow", delay=1.5)
    result = run_syncd(setup, "checkin", "500", "--type", "return_borrowed")
    assert result.code == 4, result.output
    [line] = fail_lines(result)
    assert "unknown outcome" in line
    assert "check the item before trying again" in line
    deadline = time.monotonic() + 5
    while sim.stats.count(CHECKIN_PATH) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)  # the simulator records the request once its slow answer is out
    time.sleep(0.3)
    assert sim.stats.count(CHECKIN_PATH) == 1


def test_checkin_refused_with_http_200_exits_non_zero_with_the_message(
    sim: Simulator, make_config: Callable[..., Setup]
) -> None:
    """`success: false` in a 200 answer is a failure carrying the server's message."""
    body = '{"success": false, "id": 500, "message": "Item is locked for audit."}'
    sim.faults.add(CHECKIN_PATH, "body", status=200, body=body)
    result = run_syncd(make_config(sim), "checkin", "500", "--type", "return_borrowed")
    assert result.code not in (0, 2), result.output
    [line] = fail_lines(result)
    assert "Item is locked for audit." in line
    assert result.stdout == ""
    assert sim.stats.count(CHECKIN_PATH) == 1


def test_auth_logout_deletes_the_tokens(sim: Simulator, make_config: Callable[..., Setup]) -> None:
    """`auth logout` deletes the stored tokens and says so; a second logout finds none."""
    setup = make_config(sim, refresh_token="")
    db = open_database(f"sqlite:///{setup.state_dir / 'syncd.db'}")
    try:
        now = datetime.now(UTC)
        tokens.store_pair(
            db, "band", refresh_token="r" * 20, access_token=None, expires_at=None, now=now
        )
        result = run_syncd(setup, "auth", "logout", "--connection", "band")
        assert result.code == 0, result.output
        assert result.stdout.splitlines() == ["deleted the stored tokens of connection band"]
        assert tokens.load(db, "band") is None
    finally:
        db.close()
    again = run_syncd(setup, "auth", "logout")
    assert again.code == 0, again.output
    assert again.stdout.splitlines() == ["connection band held no stored tokens"]


# --- db -------------------------------------------------------------------------------


def test_db_upgrade_is_idempotent(sim: Simulator, make_config: Callable[..., Setup]) -> None:
    """`db upgrade` prints the head revision and exits 0, the second time too."""
    setup = make_config(sim)
    first = run_syncd(setup, "db", "upgrade")
    second = run_syncd(setup, "db", "upgrade")
    assert (first.code, second.code) == (0, 0), first.output + second.output
    assert first.stdout == f"database at revision {head_revision()}\n"
    assert second.stdout == first.stdout
    assert (setup.state_dir / "syncd.db").exists()


# --- configuration and usage errors ---------------------------------------------------


@pytest.mark.parametrize(
    ("options", "env_drop", "expected"),
    [
        pytest.param(
            {"connection_extra": 'colour = "red"'},
            None,
            ("colour", "connections"),
            id="unknown-key",
        ),
        pytest.param({"extra": "[bogus]\nx = 1"}, None, ("[bogus]",), id="unknown-table"),
        pytest.param(
            {},
            "SYNCD_CLIENT_SECRET",
            ("SYNCD_CLIENT_SECRET", "connections", "client_secret"),
            id="missing-var",
        ),
    ],
)
def test_config_errors_exit_2_with_one_line(
    sim: Simulator,
    make_config: Callable[..., Setup],
    options: dict[str, str],
    env_drop: str | None,
    expected: tuple[str, ...],
) -> None:
    """A config error exits 2 with exactly one line naming the key and its table."""
    setup = make_config(sim, **options)
    if env_drop:
        del setup.env[env_drop]
    result = run_syncd(setup, "run", "--once")
    assert result.code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("syncd: ")
    for word in expected:
        assert word in lines[0]
    assert sim.stats.requests == []


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    """--config naming a file that does not exist exits 2 with one line naming it."""
    missing = tmp_path / "nope.toml"
    result = python_m_syncd("--config", str(missing), "status")
    assert result.code == 2, result.output
    assert result.stderr.splitlines() == [line for line in fail_lines(result)]
    [line] = fail_lines(result)
    assert str(missing) in line


def test_unknown_connection_name_exits_2(sim: Simulator, make_config: Callable[..., Setup]) -> None:
    """--connection naming no configured connection is a usage error (exit 2)."""
    setup = make_config(sim)
    result = run_syncd(setup, "checkin", "500", "--type", "return_borrowed", "--connection", "x")
    assert result.code == 2, result.output
    [line] = fail_lines(result)
    assert "'x'" in line
    assert "band" in line
    assert sim.stats.requests == []


def test_help_lists_every_command() -> None:
    """`python -m syncd --help` exits 0 and lists every command of the contract."""
    result = python_m_syncd("--help")
    assert result.code == 0, result.output
    listed = {line.split()[0] for line in result.stdout.splitlines() if line.startswith("  ")}
    assert set(COMMANDS) <= listed


def test_demo_shows_orders_flowing(tmp_path: Path) -> None:
    """`syncd demo --seconds 6` exits 0 after printing at least 20 created lines."""
    result = python_m_syncd("demo", "--seconds", "6", "--dir", str(tmp_path / "demo"), timeout=40)
    assert result.code == 0, result.output
    created = [line for line in result.stdout.splitlines() if line.startswith("created ")]
    assert len(created) >= 20
    assert "Traceback" not in result.output


def test_status_shows_a_refresh_in_doubt(sim: Simulator, make_config: Callable[..., Setup]) -> None:
    """A refresh whose answer was lost shows in `status` and `status --json`."""
    setup = make_config(sim)
    assert run_syncd(setup, "run", "--once").code == 0
    sim.expire_access_tokens()
    sim.faults.add("/oauth/oauth_refresh.php", "reset_mid_body", times=1)
    assert run_syncd(setup, "run", "--once").code == 4
    assert status_json(setup)["connections"][0]["refresh_in_doubt_since"] is not None
    assert "REFRESH IN DOUBT since" in run_syncd(setup, "status").stdout
