"""End to end: ``syncd run`` as its own process against the simulator over loopback HTTP.

Each test drives the real CLI (``python -m syncd``) and checks what an operator or a
consumer would see: the SQLite/PostgreSQL mirror, the JSONL event file, exit codes and
the one line printed on failure.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from syncd.simulator import Simulator
from tests.conftest import CliResult, Setup, read_events, record_secrets, run_syncd, start_syncd

ORDERS_PATH = "/api/v1/purchase_orders.php"
CHECKIN_PATH = "/api/v1/item_checkin.php"
CREATED = "com.inventoryarts.purchase_order.created"
UPDATED = "com.inventoryarts.purchase_order.updated"
GAP = "com.inventoryarts.sync.gap_detected"
AUTH_FAILED = "com.inventoryarts.connection.auth_failed"
PDF_ARCHIVED = "com.inventoryarts.purchase_order.pdf_archived"
PO_KEYS = {"id", "po_number", "vendor_name", "grand_total", "status", "items_summary", "version"}


# --- helpers --------------------------------------------------------------------------


def db_file(setup: Setup) -> Path:
    """The default SQLite database of a setup (``state_dir/syncd.db``)."""
    return setup.state_dir / "syncd.db"


def mirror(setup: Setup) -> dict[int, dict[str, Any]]:
    """The SQLite mirror table, read directly: {id: row}."""
    conn = sqlite3.connect(db_file(setup))
    conn.row_factory = sqlite3.Row
    try:
        rows = conn.execute("SELECT * FROM purchase_orders ORDER BY id").fetchall()
    finally:
        conn.close()
    return {row["id"]: dict(row) for row in rows}


def of_type(events: list[dict[str, Any]], event_type: str) -> list[dict[str, Any]]:
    return [event for event in events if event["type"] == event_type]


def fail_lines(result: CliResult) -> list[str]:
    """The one-line error messages the CLI printed (not the structured log lines)."""
    return [line for line in result.stderr.splitlines() if line.startswith("syncd: ")]


def log_records(result: CliResult) -> list[dict[str, Any]]:
    """The structured (JSON) log lines syncd wrote to stderr."""
    records = []
    for line in result.stderr.splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    return records


def newest_ids(sim: Simulator, count: int = 20) -> list[int]:
    return sorted(int(order["id"]) for order in sim.orders[:count])


def assert_ok(result: CliResult) -> None:
    assert result.code == 0, result.output


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def synced(sim: Simulator, make_config: Callable[..., Setup]) -> Setup:
    """A setup whose first ``run --once`` has already mirrored the window."""
    setup = make_config(sim)
    assert_ok(run_syncd(setup, "run", "--once"))
    return setup


@pytest.fixture
def stop_procs() -> Iterator[list[subprocess.Popen[str]]]:
    """Background syncd processes a test started; killed if still alive at the end."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


# --- first sync, quiet re-sync, updates -----------------------------------------------


def test_first_sync_mirrors_the_window_and_publishes_created_events(
    sim: Simulator, synced: Setup
) -> None:
    """The first sync of a 25-order account mirrors the 20 newest and emits 20 created events."""
    expected = {int(o["id"]): o for o in sim.orders[:20]}
    rows = mirror(synced)
    assert sorted(rows) == sorted(expected)
    for order_id, row in rows.items():
        assert row["connection"] == "band"
        assert row["version"] == 1
        assert row["grand_total"] == expected[order_id]["grand_total"]  # exact text
        assert row["po_number"] == expected[order_id]["po_number"]
    raw = synced.events_file.read_text()
    assert "pdf_url" not in raw
    assert "print_po.php" not in raw
    all_events = read_events(synced.events_file)
    assert {e["type"] for e in all_events} <= {CREATED, PDF_ARCHIVED}
    events = of_type(all_events, CREATED)
    assert len(events) == 20
    assert sorted(int(e["subject"]) for e in events) == sorted(expected)
    for event in events:
        assert event["specversion"] == "1.0"
        assert event["source"] == "urn:syncd:band"
        po = event["data"]["purchase_order"]
        assert set(po) == PO_KEYS
        assert str(po["id"]) == event["subject"]
        assert isinstance(po["grand_total"], str)
        assert po["grand_total"] == expected[po["id"]]["grand_total"]
        assert po["version"] == 1
    assert len({e["id"] for e in events}) == 20


def test_second_run_is_quiet(sim: Simulator, synced: Setup) -> None:
    """A second run --once with nothing changed emits nothing and keeps every version."""
    before = mirror(synced)
    events_before = read_events(synced.events_file)
    assert len(of_type(events_before, CREATED)) == 20
    result = run_syncd(synced, "run", "--once")
    assert_ok(result)
    assert read_events(synced.events_file) == events_before
    after = mirror(synced)
    assert {k: v["version"] for k, v in after.items()} == {k: 1 for k in before}
    assert sim.stats.count(ORDERS_PATH) == 2  # it did poll (and got fresh pdf_url tokens)


def test_update_emits_one_updated_event_with_the_changed_fields(
    sim: Simulator, synced: Setup
) -> None:
    """An upstream change becomes one updated event (version 2, old/new of changed fields)."""
    order_id = newest_ids(sim)[-1]
    old = next(o for o in sim.orders if o["id"] == order_id)
    new_status = "Closed" if old.get("status") != "Closed" else "Received"
    sim.update_order(order_id, status=new_status, grand_total="1200.50")
    assert_ok(run_syncd(synced, "run", "--once"))
    updated = of_type(read_events(synced.events_file), UPDATED)
    assert len(updated) == 1
    event = updated[0]
    assert event["subject"] == str(order_id)
    assert event["data"]["purchase_order"]["version"] == 2
    assert event["data"]["purchase_order"]["grand_total"] == "1200.50"
    assert event["data"]["changes"] == {
        "status": {"old": old.get("status"), "new": new_status},
        "grand_total": {"old": old["grand_total"], "new": "1200.50"},
    }
    row = mirror(synced)[order_id]
    assert (row["version"], row["grand_total"], row["status"]) == (2, "1200.50", new_status)


def test_event_ids_are_deterministic_across_a_rebuilt_database(
    sim: Simulator, synced: Setup
) -> None:
    """Rebuilding the database from scratch re-emits the created events with the same ids."""
    first = [e["id"] for e in of_type(read_events(synced.events_file), CREATED)]
    assert len(first) == 20
    for path in synced.state_dir.glob("syncd.db*"):
        path.unlink()
    # The stored (rotated) token went with the database: bootstrap from a new one.
    synced.env["SYNCD_REFRESH_TOKEN"] = str(sim.issue_tokens()["refresh_token"])
    assert_ok(run_syncd(synced, "run", "--once"))
    created = of_type(read_events(synced.events_file), CREATED)
    assert len(created) == 40
    assert [e["id"] for e in created[20:]] == first


def test_gap_detected_when_the_window_no_longer_overlaps(sim: Simulator, synced: Setup) -> None:
    """25 new orders between two polls emit one sync.gap_detected with the counts."""
    for _ in range(25):
        sim.add_order()
    assert_ok(run_syncd(synced, "run", "--once"))
    events = read_events(synced.events_file)
    gaps = of_type(events, GAP)
    assert len(gaps) == 1
    assert gaps[0]["subject"] == "band"
    assert gaps[0]["data"] == {"connection": "band", "returned": 20, "known_before": 20}
    assert len(of_type(events, CREATED)) == 40
    assert len(mirror(synced)) == 40


# --- upstream failures ----------------------------------------------------------------


def test_retry_after_503_is_waited_out(sim: Simulator, make_config: Callable[..., Setup]) -> None:
    """One 503 with Retry-After: 1 is retried after the wait and the sync succeeds."""
    setup = make_config(sim)
    sim.faults.add(ORDERS_PATH, "status", status=503, retry_after="1")
    started = time.monotonic()
    result = run_syncd(setup, "run", "--once")
    assert_ok(result)
    assert time.monotonic() - started >= 1.0
    assert sim.stats.count(ORDERS_PATH) == 2
    assert len(mirror(setup)) == 20
    assert len(of_type(read_events(setup.events_file), CREATED)) == 20


def test_400_is_not_retried(sim: Simulator, make_config: Callable[..., Setup]) -> None:
    """A 400 from the orders endpoint fails at once: exit 1, one request, one line."""
    setup = make_config(sim)
    sim.faults.add(ORDERS_PATH, "status", status=400, times=None)
    result = run_syncd(setup, "run", "--once")
    assert result.code == 1, result.output
    assert sim.stats.count(ORDERS_PATH) == 1
    lines = fail_lines(result)
    assert len(lines) == 1
    assert "400" in lines[0]
    assert "purchase_orders" in lines[0]
    assert "Traceback" not in result.output


def test_persistent_503_gives_up_after_max_attempts(
    sim: Simulator, make_config: Callable[..., Setup]
) -> None:
    """503 on every attempt: exit 4 after exactly max_attempts requests; the mirror stays."""
    setup = make_config(sim, max_attempts=3)
    assert_ok(run_syncd(setup, "run", "--once"))
    before = mirror(setup)
    events_before = read_events(setup.events_file)
    sim.stats.clear()
    sim.faults.add(ORDERS_PATH, "status", status=503, retry_after="0", times=None)
    result = run_syncd(setup, "run", "--once")
    assert result.code == 4, result.output
    assert sim.stats.count(ORDERS_PATH) == 3
    lines = fail_lines(result)
    assert len(lines) == 1
    assert "503" in lines[0]
    assert "Traceback" not in result.output
    assert mirror(setup) == before
    assert read_events(setup.events_file) == events_before


def test_html_maintenance_page_is_an_upstream_failure(
    sim: Simulator, make_config: Callable[..., Setup]
) -> None:
    """An HTML maintenance page instead of JSON ends in exit 4 and one line, no traceback."""
    setup = make_config(sim, max_attempts=2)
    sim.faults.add(ORDERS_PATH, "html", times=None)
    result = run_syncd(setup, "run", "--once")
    assert result.code == 4, result.output
    assert sim.stats.count(ORDERS_PATH) == 2
    [line] = fail_lines(result)
    assert "not JSON" in line
    assert "Traceback" not in result.output
    assert mirror(setup) == {}
    assert read_events(setup.events_file) == []


def test_json_object_instead_of_list_is_an_upstream_failure(
    sim: Simulator, make_config: Callable[..., Setup]
) -> None:
    """A JSON object where the order list belongs ends in exit 4, nothing mirrored."""
    setup = make_config(sim, max_attempts=2)
    sim.faults.add(ORDERS_PATH, "body", body='{"error":"x"}', times=None)
    result = run_syncd(setup, "run", "--once")
    assert result.code == 4, result.output
    [line] = fail_lines(result)
    assert "expected a JSON list" in line
    assert "Traceback" not in result.output
    assert mirror(setup) == {}


def test_malformed_record_is_skipped_and_the_rest_mirrored(
    sim: Simulator, make_config: Callable[..., Setup]
) -> None:
    """One record with a bad grand_total is skipped with its reason; the other two mirror."""
    setup = make_config(sim)
    window = [
        {"id": 901, "po_number": "PO-1", "vendor_name": "Sweetwater", "grand_total": "10.00"},
        {"id": 902, "po_number": "PO-2", "vendor_name": "Sweetwater", "grand_total": "abc"},
        {"id": 903, "po_number": "PO-3", "vendor_name": "Blick", "grand_total": "0.10"},
    ]
    sim.faults.add(ORDERS_PATH, "body", body=json.dumps(window))
    result = run_syncd(setup, "run", "--once")
    assert_ok(result)
    rows = mirror(setup)
    assert sorted(rows) == [901, 903]
    assert (rows[901]["grand_total"], rows[903]["grand_total"]) == ("10.00", "0.10")
    created = of_type(read_events(setup.events_file), CREATED)
    assert sorted(e["subject"] for e in created) == ["901", "903"]
    skipped = [log for log in log_records(result) if log.get("order_id") == 902]
    assert len(skipped) == 1
    assert skipped[0]["reason"] == "grand_total is not a decimal number"
    assert skipped[0]["level"] == "warning"


def test_numeric_grand_total_is_mirrored_exactly(make_config: Callable[..., Setup]) -> None:
    """grand_total sent as a JSON number is stored and published as the exact decimal."""
    with Simulator(seed=1, orders=3, numeric_totals=True).start() as numeric:
        order = numeric.add_order(grand_total="1200.50")
        setup = make_config(numeric)
        assert_ok(run_syncd(setup, "run", "--once"))
    assert mirror(setup)[order["id"]]["grand_total"] == "1200.50"
    published = {
        e["data"]["purchase_order"]["id"]: e["data"]["purchase_order"]["grand_total"]
        for e in of_type(read_events(setup.events_file), CREATED)
    }
    assert published == {int(o["id"]): o["grand_total"] for o in numeric.orders}
    assert published[order["id"]] == "1200.50"


# --- authorization --------------------------------------------------------------------


def test_revoked_refresh_token_stops_the_connection(sim: Simulator, synced: Setup) -> None:
    """A revoked refresh token: exit 3, one hint, one auth_failed event, no further refresh."""
    sim.revoke_tokens()
    sim.expire_access_tokens()
    before = sim.stats.refresh_calls
    first = run_syncd(synced, "run", "--once")
    assert first.code == 3, first.output
    lines = fail_lines(first)
    assert len(lines) == 1
    assert "syncd auth import" in lines[0]
    assert "Traceback" not in first.output
    failed = of_type(read_events(synced.events_file), AUTH_FAILED)
    assert len(failed) == 1
    assert failed[0]["subject"] == "band"
    assert failed[0]["data"]["connection"] == "band"
    refreshes = sim.stats.refresh_calls
    assert refreshes - before == 1  # the one rejected refresh

    second = run_syncd(synced, "run", "--once")
    assert second.code == 3, second.output
    assert sim.stats.refresh_calls == refreshes
    assert len(of_type(read_events(synced.events_file), AUTH_FAILED)) == 1


def test_secrets_never_reach_the_output(
    sim: Simulator, make_config: Callable[..., Setup], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No client secret, token or pdf_url token shows in output, events or status --json."""
    planted = record_secrets(sim, monkeypatch)

    setup = make_config(sim)
    outputs = [run_syncd(setup, "run", "--once")]
    sim.expire_access_tokens()
    outputs.append(run_syncd(setup, "--debug", "run", "--once"))  # forced refresh
    outputs.append(run_syncd(setup, "checkin", "510", "--type", "checkin_loaned"))
    sim.faults.add(ORDERS_PATH, "status", status=503, retry_after="0", times=None)
    outputs.append(run_syncd(setup, "run", "--once"))
    outputs.append(run_syncd(setup, "status", "--json"))
    assert [r.code for r in outputs] == [0, 0, 0, 4, 0], [r.output for r in outputs]
    assert sim.stats.refresh_calls == 2  # the bootstrap one, then the forced one

    bearer = {
        r.headers["authorization"].partition(" ")[2]
        for r in sim.stats.requests
        if "authorization" in r.headers
    }
    pdf_tokens = set(planted.link_tokens)
    secrets = {
        sim.client_secret,
        setup.env["SYNCD_REFRESH_TOKEN"],
        *planted.issued,
        *bearer,
        *pdf_tokens,
    }
    assert len(planted.issued) == 6
    assert len(bearer) == 2
    assert len(pdf_tokens) >= 20
    texts = [r.output for r in outputs] + [setup.events_file.read_text()]
    for text in texts:
        for secret in secrets:
            assert secret not in text


def test_concurrent_runs_refresh_the_token_once(
    sim: Simulator, synced: Setup, stop_procs: list[subprocess.Popen[str]]
) -> None:
    """Three run --once at once with an expired access token make exactly one refresh call."""
    sim.expire_access_tokens()
    before = sim.stats.refresh_calls
    stop_procs.extend(start_syncd(synced, "run", "--once") for _ in range(3))
    outputs = [proc.communicate(timeout=60) for proc in stop_procs]
    assert [proc.returncode for proc in stop_procs] == [0, 0, 0], outputs
    assert sim.stats.refresh_calls - before == 1
    assert len(of_type(read_events(synced.events_file), CREATED)) == 20


# --- the daemon -----------------------------------------------------------------------


def test_daemon_syncs_new_orders_refuses_a_second_instance_and_stops_on_sigterm(
    sim: Simulator, make_config: Callable[..., Setup], stop_procs: list[subprocess.Popen[str]]
) -> None:
    """`syncd run` follows new orders, locks out other runs on its SQLite file, exits 0 on TERM."""
    setup = make_config(sim)
    daemon = start_syncd(setup, "run")
    stop_procs.append(daemon)
    wait_for(
        lambda: len(of_type(read_events(setup.events_file), CREATED)) >= 20,
        15,
        "the first 20 created events",
    )
    assert len(of_type(read_events(setup.events_file), CREATED)) == 20

    new = sim.add_order()
    wait_for(
        lambda: any(e["subject"] == str(new["id"]) for e in read_events(setup.events_file)),
        15,
        "the new order's created event",
    )
    created = [e for e in read_events(setup.events_file) if e["subject"] == str(new["id"])]
    assert [e["type"] for e in created if e["type"] != PDF_ARCHIVED] == [CREATED]
    assert len(of_type(read_events(setup.events_file), CREATED)) == 21

    second = run_syncd(setup, "run", timeout=20)
    assert second.code == 2, second.output
    assert any("another syncd process" in line for line in fail_lines(second))
    once = run_syncd(setup, "run", "--once", timeout=20)
    assert once.code == 2, once.output
    assert any("another syncd process" in line for line in fail_lines(once))
    assert daemon.poll() is None

    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=10) == 0
    _, stderr = daemon.communicate()
    assert "Traceback" not in stderr


def test_daemon_log_stays_json_lines_while_a_poll_is_slow(
    sim: Simulator, make_config: Callable[..., Setup], stop_procs: list[subprocess.Popen[str]]
) -> None:
    """With log_format = "json" every stderr line of the daemon is a JSON log record."""
    setup = make_config(sim)
    sim.faults.add(ORDERS_PATH, "slow", delay=1.8)  # longer than the 1 s poll interval
    daemon = start_syncd(setup, "run")
    stop_procs.append(daemon)
    wait_for(
        lambda: len(of_type(read_events(setup.events_file), CREATED)) == 20,
        15,
        "the first 20 created events",
    )
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=10) == 0
    _, stderr = daemon.communicate()
    lines = stderr.splitlines()
    assert any('"orders synced"' in line for line in lines)
    not_json = [line for line in lines if not line.startswith("{")]
    assert not_json == []


# --- PostgreSQL -----------------------------------------------------------------------


def test_postgresql_mirror_holds_exact_numeric_and_versions(
    sim: Simulator, make_config: Callable[..., Setup], pg_url: str
) -> None:
    """On PostgreSQL the first sync and an update mirror NUMERIC totals exactly, version 2."""
    import psycopg

    setup = make_config(sim, database_url=pg_url)
    assert_ok(run_syncd(setup, "run", "--once"))
    order_id = newest_ids(sim)[0]
    sim.update_order(order_id, grand_total="1200.50")
    assert_ok(run_syncd(setup, "run", "--once"))

    plain = pg_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain) as conn:
        rows = conn.execute(
            "SELECT id, grand_total, version FROM purchase_orders WHERE connection = 'band'"
        ).fetchall()
    by_id = {row[0]: (row[1], row[2]) for row in rows}
    expected = {int(o["id"]): o["grand_total"] for o in sim.orders[:20]}
    assert sorted(by_id) == sorted(expected)
    assert by_id[order_id] == (Decimal("1200.50"), 2)
    assert str(by_id[order_id][0]) == "1200.50"
    for other, total in expected.items():
        if other != order_id:
            assert by_id[other] == (Decimal(total), 1)
            assert str(by_id[other][0]) == total
    events = read_events(setup.events_file)
    assert len(of_type(events, CREATED)) == 20
    updated = of_type(events, UPDATED)
    assert len(updated) == 1
    assert updated[0]["data"]["purchase_order"]["version"] == 2
