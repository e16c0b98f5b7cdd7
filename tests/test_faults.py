"""Fault matrix: every way the upstream, the PDF host, the database or a sink misbehaves.

Most cells run ``run_once`` in-process with a fake clock whose sleep skips the wait; the
cells about exit codes and output run the CLI as its own process.
"""

from __future__ import annotations

import hashlib
import json
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest

from syncd.config import Config, load_config
from syncd.daemon import exit_code_for, run_once
from syncd.errors import PdfUnavailable, SinkUnavailable, TransientApiError
from syncd.simulator import Simulator
from syncd.store import outbox
from syncd.store.database import open_database
from tests.conftest import FastClock, Setup, read_events, run_syncd, start_syncd

ORDERS = "/api/v1/purchase_orders.php"
PDF = "/print_po.php"
CREATED = "com.inventoryarts.purchase_order.created"
UPDATED = "com.inventoryarts.purchase_order.updated"
GAP = "com.inventoryarts.sync.gap_detected"
ARCHIVED = "com.inventoryarts.purchase_order.pdf_archived"


@pytest.fixture
def configure(
    sim: Simulator, make_config: Callable[..., Setup]
) -> Callable[..., tuple[Config, Setup]]:
    def make(*, timeout: int | None = None, **kwargs: Any) -> tuple[Config, Setup]:
        setup = make_config(sim, **kwargs)
        if timeout is not None:
            setup.path.write_text(
                setup.path.read_text().replace("timeout = 5\n", f"timeout = {timeout}\n")
            )
        return load_config(setup.path, setup.env), setup

    return make


def mirror(setup: Setup) -> dict[int, tuple[Any, ...]]:
    """id -> (po_number, vendor_name, grand_total, status, items_summary, version)."""
    with sqlite3.connect(setup.state_dir / "syncd.db") as conn:
        rows = conn.execute(
            "SELECT id, po_number, vendor_name, grand_total, status, items_summary, version "
            "FROM purchase_orders"
        ).fetchall()
    return {row[0]: tuple(row[1:]) for row in rows}


def statuses(sim: Simulator, path: str = ORDERS) -> list[int]:
    return [r.status for r in sim.stats.requests if r.path == path]


def of_type(setup: Setup, event_type: str) -> list[dict[str, Any]]:
    return [e for e in read_events(setup.events_file) if e["type"] == event_type]


def record(order_id: int, **fields: Any) -> dict[str, Any]:
    """One purchase-order record as the API sends it (no pdf_url)."""
    base = {
        "id": order_id,
        "po_number": f"PO-{order_id}",
        "vendor_name": "Vendor",
        "grand_total": "10.00",
        "status": "Approved",
        "items_summary": "1x Thing",
    }
    return base | fields


# --- upstream HTTP errors --------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_is_retried_until_it_ends(
    status: int, sim: Simulator, configure: Callable[..., tuple[Config, Setup]], clock: FastClock
) -> None:
    """Two 5xx answers, then 200: the run succeeds and mirrors the whole window."""
    sim.faults.add(ORDERS, "status", status=status, times=2)
    config, setup = configure(max_attempts=3)
    assert run_once(config, sleep=clock.sleep, clock=clock) == []
    assert statuses(sim) == [status, status, 200]
    assert len(mirror(setup)) == 20
    assert len(of_type(setup, CREATED)) == 20


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_persisting_5xx_exits_4_with_the_mirror_intact(
    status: int, sim: Simulator, configure: Callable[..., tuple[Config, Setup]], clock: FastClock
) -> None:
    """A 5xx that never ends: max_attempts tries, exit 4, the previous mirror unchanged."""
    config, setup = configure(max_attempts=3)
    assert run_once(config, sleep=clock.sleep, clock=clock) == []
    before = mirror(setup)
    sim.update_order(125, status="Cancelled")
    sim.stats.clear()
    sim.faults.add(ORDERS, "status", status=status, times=None)
    errors = run_once(config, sleep=clock.sleep, clock=clock)
    assert [type(e) for e in errors] == [TransientApiError]
    assert exit_code_for(errors) == 4
    assert statuses(sim) == [status] * 3
    assert mirror(setup) == before
    assert of_type(setup, UPDATED) == []


def test_persisting_503_cli_exits_4_in_one_line(
    sim: Simulator, make_config: Callable[..., Setup]
) -> None:
    """run --once against a dead API: exit 4, one error line, no traceback."""
    sim.faults.add(ORDERS, "status", status=503, retry_after="0", times=None)
    setup = make_config(sim, max_attempts=2)
    result = run_syncd(setup, "run", "--once")
    assert result.code == 4, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("syncd: ")]
    assert lines == ["syncd: purchase_orders.php: upstream error (HTTP 503): server_error"]
    assert statuses(sim) == [503, 503]


def test_429_retry_after_seconds_is_waited_out(
    sim: Simulator, configure: Callable[..., tuple[Config, Setup]], clock: FastClock
) -> None:
    """429 with Retry-After: 7 -> the client sleeps exactly 7 s, then succeeds."""
    sim.faults.add(ORDERS, "status", status=429, retry_after="7", times=1)
    config, setup = configure()
    assert run_once(config, sleep=clock.sleep, clock=clock) == []
    assert statuses(sim) == [429, 200]
    assert 7.0 in clock.sleeps
    assert len(mirror(setup)) == 20


def test_429_retry_after_http_date_is_waited_out(
    sim: Simulator, configure: Callable[..., tuple[Config, Setup]], clock: FastClock
) -> None:
    """429 with Retry-After as an HTTP date 20 s ahead -> a sleep of about 20 s."""
    when = datetime.now(UTC) + timedelta(seconds=20)
    sim.faults.add(ORDERS, "status", status=429, retry_after=format_datetime(when, True), times=1)
    config, setup = configure()
    assert run_once(config, sleep=clock.sleep, clock=clock) == []
    assert statuses(sim) == [429, 200]
    assert any(17.0 <= s <= 21.0 for s in clock.sleeps), clock.sleeps
    assert len(mirror(setup)) == 20


def test_retry_after_beyond_the_cap_gives_up_without_hammering(
    sim: Simulator, configure: Callable[..., tuple[Config, Setup]], clock: FastClock
) -> None:
    """Retry-After above retry_after_max: one request, no early retry, exit 4."""
    sim.faults.add(ORDERS, "status", status=429, retry_after="3600", times=None)
    config, _ = configure(retry_after_max=30)
    errors = run_once(config, sleep=clock.sleep, clock=clock)
    assert exit_code_for(errors) == 4
    assert statuses(sim) == [429]


# --- the network -----------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_connection_refused_exits_4_in_one_line(
    sim: Simulator, make_config: Callable[..., Setup]
) -> None:
    """A base_url on a closed port: exit 4, one clear error line, no traceback."""
    setup = make_config(sim)
    port = _closed_port()
    setup.path.write_text(setup.path.read_text().replace(sim.base_url, f"http://127.0.0.1:{port}/"))
    result = run_syncd(setup, "run", "--once")
    assert result.code == 4, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("syncd: ")]
    assert lines == ["syncd: oauth_refresh.php: cannot connect ([Errno 111] Connection refused)"]
    assert sim.stats.requests == []


@pytest.mark.parametrize("kind", ["drop", "reset_mid_body"])
def test_broken_connection_is_retried(
    kind: str, sim: Simulator, configure: Callable[..., tuple[Config, Setup]], clock: FastClock
) -> None:
    """Connection closed before any byte (drop) or mid-body (body cut below Content-Length)."""
    sim.faults.add(ORDERS, kind, times=1)  # type: ignore[arg-type]
    config, setup = configure()
    assert run_once(config, sleep=clock.sleep, clock=clock) == []
    assert statuses(sim) == [0 if kind == "drop" else 200, 200]
    assert len(mirror(setup)) == 20
    assert len(of_type(setup, CREATED)) == 20


def test_truncated_body_that_persists_never_reaches_the_mirror(
    sim: Simulator, configure: Callable[..., tuple[Config, Setup]], clock: FastClock
) -> None:
    """Every answer cut short: exit 4 after max_attempts, nothing mirrored."""
    sim.faults.add(ORDERS, "reset_mid_body", times=None)
    config, setup = configure(max_attempts=2)
    errors = run_once(config, sleep=clock.sleep, clock=clock)
    assert [type(e) for e in errors] == [TransientApiError]
    assert statuses(sim) == [200, 200]
    assert mirror(setup) == {}
    assert read_events(setup.events_file) == []


def test_stall_longer_than_the_timeout_is_retried(
    sim: Simulator, configure: Callable[..., tuple[Config, Setup]], clock: FastClock
) -> None:
    """An answer 2 s late with [http] timeout = 1: timed out, retried, then success."""
    sim.faults.add(ORDERS, "slow", delay=2.0, times=1)
    config, setup = configure(timeout=1)
    assert config.http.timeout == 1
    assert run_once(config, sleep=clock.sleep, clock=clock) == []
    deadline = time.monotonic() + 5  # the stalled answer is recorded once it is written
    while sim.stats.count(ORDERS) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sim.stats.count(ORDERS) == 2
    assert len(mirror(setup)) == 20


def test_stall_that_persists_is_a_timeout_error(
    sim: Simulator, configure: Callable[..., tuple[Config, Setup]], clock: FastClock
) -> None:
    """Every answer later than the timeout, max_attempts = 1: exit 4 'timed out'."""
    sim.faults.add(ORDERS, "slow", delay=2.0, times=None)
    config, setup = configure(timeout=1, max_attempts=1)
    errors = run_once(config, sleep=clock.sleep, clock=clock)
    assert [str(e) for e in errors] == ["purchase_orders.php: timed out"]
    assert exit_code_for(errors) == 4
    assert mirror(setup) == {}


# --- bodies that are not what the document promises -----------------------------------


def test_malformed_json_is_an_upstream_error(
    sim: Simulator, configure: Callable[..., tuple[Config, Setup]], clock: FastClock
) -> None:
    """A body that is not JSON: retried, then exit 4; the previous mirror stays."""
    config, setup = configure(max_attempts=2)
    run_once(config, sleep=clock.sleep, clock=clock)
    before = mirror(setup)
    sim.stats.clear()
    sim.faults.add(ORDERS, "body", body='[{"id": 125, "po_number": ', times=None)
    errors = run_once(config, sleep=clock.sleep, clock=clock)
    assert [type(e) for e in errors] == [TransientApiError]
    assert "not JSON" in str(errors[0])
    assert exit_code_for(errors) == 4
    assert statuses(sim) == [200, 200]
    assert mirror(setup) == before


def test_json_object_instead_of_a_list_is_refused(
    sim: Simulator, configure: Callable[..., tuple[Config, Setup]], clock: FastClock
) -> None:
    """{"orders": [...]} instead of a list: exit 4, 'expected a JSON list', nothing mirrored."""
    sim.faults.add(ORDERS, "body", body='{"orders": []}', times=None)
    config, setup = configure()
    errors = run_once(config, sleep=clock.sleep, clock=clock)
    assert [str(e) for e in errors] == [
        "purchase_orders.php: expected a JSON list, got a JSON dict"
    ]
    assert exit_code_for(errors) == 4
    assert mirror(setup) == {}


def test_duplicate_ids_keep_the_first_and_are_logged(
    sim: Simulator, make_config: Callable[..., Setup]
) -> None:
    """Two records with id 125: the first is mirrored, the duplicate is logged, exit 0."""
    body = [
        record(125, po_number="FIRST", pdf_url=sim.pdf_url(125)),
        record(125, po_number="SECOND", pdf_url=sim.pdf_url(125)),
        record(124, pdf_url=sim.pdf_url(124)),
    ]
    sim.faults.add(ORDERS, "body", body=json.dumps(body), times=None)
    setup = make_config(sim)
    result = run_syncd(setup, "run", "--once")
    assert result.code == 0, result.output
    assert "Traceback" not in result.output
    assert "duplicate ids in one response" in result.stderr
    rows = mirror(setup)
    assert sorted(rows) == [124, 125]
    assert rows[125][0] == "FIRST"
    created = of_type(setup, CREATED)
    assert sorted(e["subject"] for e in created) == ["124", "125"]


def test_lower_ids_overlapping_the_known_ones_are_no_gap(
    sim: Simulator, configure: Callable[..., tuple[Config, Setup]], clock: FastClock
) -> None:
    """A window 96..110 after 106..125: 96..105 created, no gap, known ones unchanged."""
    config, setup = configure()
    assert run_once(config, sleep=clock.sleep, clock=clock) == []
    known = mirror(setup)
    window = [
        {k: v for k, v in o.items()} | {"pdf_url": sim.pdf_url(o["id"])}
        for o in sim.orders
        if 106 <= o["id"] <= 110
    ] + [record(i) for i in range(96, 106)]
    sim.faults.add(ORDERS, "body", body=json.dumps(window), times=1)
    assert run_once(config, sleep=clock.sleep, clock=clock) == []
    rows = mirror(setup)
    assert sorted(rows) == list(range(96, 126))
    assert {i: rows[i] for i in known} == known
    assert of_type(setup, GAP) == []
    assert sorted(int(e["subject"]) for e in of_type(setup, CREATED)) == list(range(96, 126))
    assert of_type(setup, UPDATED) == []


def test_disjoint_lower_ids_report_one_gap_and_no_crash(
    sim: Simulator, configure: Callable[..., tuple[Config, Setup]], clock: FastClock
) -> None:
    """A window 1..5 after 106..125: none known -> one gap_detected, 5 created, exit 0."""
    config, setup = configure()
    assert run_once(config, sleep=clock.sleep, clock=clock) == []
    sim.faults.add(ORDERS, "body", body=json.dumps([record(i) for i in range(1, 6)]), times=1)
    assert run_once(config, sleep=clock.sleep, clock=clock) == []
    gaps = of_type(setup, GAP)
    assert [g["data"] for g in gaps] == [{"connection": "band", "returned": 5, "known_before": 20}]
    assert len(mirror(setup)) == 25
    assert len(of_type(setup, CREATED)) == 25


def test_100kb_items_summary_is_mirrored_exactly(
    sim: Simulator, configure: Callable[..., tuple[Config, Setup]], clock: FastClock
) -> None:
    """items_summary of 100 KB (non-ASCII too) arrives byte for byte in mirror and event."""
    text = ("12x Großtrommel-Fell ✓ «Remo», " * 5000)[:100_000]
    sim.update_order(125, items_summary=text)
    config, setup = configure()
    assert run_once(config, sleep=clock.sleep, clock=clock) == []
    assert mirror(setup)[125][4] == text
    (event,) = [e for e in of_type(setup, CREATED) if e["subject"] == "125"]
    assert event["data"]["purchase_order"]["items_summary"] == text


# --- the PDF host ----------------------------------------------------------------------


def test_pdf_host_down_keeps_jobs_for_a_later_run(
    sim: Simulator, configure: Callable[..., tuple[Config, Setup]], clock: FastClock
) -> None:
    """503 from print_po.php: exit 4, nothing on disk; the next run archives all 20."""
    sim.faults.add(PDF, "status", status=503, times=None)
    config, setup = configure(max_attempts=2)
    errors = run_once(config, sleep=clock.sleep, clock=clock)
    assert [type(e) for e in errors] == [PdfUnavailable]
    assert exit_code_for(errors) == 4
    assert [p for p in config.pdfs.dir.rglob("*") if p.is_file()] == []
    assert of_type(setup, ARCHIVED) == []
    assert len(mirror(setup)) == 20
    sim.faults.clear()
    clock.offset += 600  # past every backoff
    assert run_once(config, sleep=clock.sleep, clock=clock) == []
    assert len(of_type(setup, ARCHIVED)) == 20
    assert len(list(config.pdfs.dir.rglob("*.pdf"))) == 20


def test_truncated_pdf_is_retried_and_never_kept_partial(
    sim: Simulator, configure: Callable[..., tuple[Config, Setup]], clock: FastClock
) -> None:
    """Five PDF bodies cut mid-way: retried; only whole files, each matching its hash."""
    sim.faults.add(PDF, "reset_mid_body", times=5)
    config, setup = configure()
    assert run_once(config, sleep=clock.sleep, clock=clock) == []
    assert sim.stats.count(PDF) == 25
    files = [p for p in config.pdfs.dir.rglob("*") if p.is_file()]
    assert len(files) == 20
    for path in files:
        body = path.read_bytes()
        assert hashlib.sha256(body).hexdigest() == path.stem
        assert body == sim.pdf_bytes(int(path.parent.name))
    assert len(of_type(setup, ARCHIVED)) == 20


# --- the database ----------------------------------------------------------------------


def test_sqlite_locked_by_another_writer_is_waited_for(
    sim: Simulator, make_config: Callable[..., Setup]
) -> None:
    """Another writer holds the database 3 s: run --once waits, then succeeds (exit 0)."""
    setup = make_config(sim)
    assert run_syncd(setup, "run", "--once").code == 0
    sim.add_order(po_number="PO-LOCKED")
    held, release = threading.Event(), threading.Event()

    def writer() -> None:
        conn = sqlite3.connect(setup.state_dir / "syncd.db", isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        held.set()
        release.wait(3)
        conn.execute("COMMIT")
        conn.close()

    thread = threading.Thread(target=writer)
    thread.start()
    assert held.wait(5)
    started = time.monotonic()
    result = run_syncd(setup, "run", "--once")
    elapsed = time.monotonic() - started
    thread.join()
    assert result.code == 0, result.output
    assert "Traceback" not in result.output
    assert elapsed >= 2.0  # it really waited for the lock
    assert mirror(setup)[126][0] == "PO-LOCKED"
    assert len(of_type(setup, CREATED)) == 21


# --- sinks -----------------------------------------------------------------------------


def test_sink_down_for_the_whole_run_keeps_events_then_delivers_once(
    sim: Simulator, make_config: Callable[..., Setup], tmp_path: Path, clock: FastClock
) -> None:
    """A jsonl path under a regular file: exit 4, events kept; fixed -> each delivered once."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    good = tmp_path / "out" / "events.jsonl"
    good.parent.mkdir()
    sink = '[[sinks]]\nname = "events-file"\ntype = "jsonl"\npath = "{}"\n'
    setup = make_config(sim, sinks=sink.format(blocker / "events.jsonl"), max_attempts=2)
    config = load_config(setup.path, setup.env)
    errors = run_once(config, sleep=clock.sleep, clock=clock)
    assert [type(e) for e in errors] == [SinkUnavailable]
    assert exit_code_for(errors) == 4
    assert blocker.read_text() == "not a directory"
    assert len(mirror(setup)) == 20
    setup.path.write_text(setup.path.read_text().replace(str(blocker / "events.jsonl"), str(good)))
    config = load_config(setup.path, setup.env)
    clock.offset += 3600
    assert run_once(config, sleep=clock.sleep, clock=clock) == []
    events = read_events(good)
    ids = [e["id"] for e in events]
    assert len(ids) == len(set(ids)) == 40
    assert sum(e["type"] == CREATED for e in events) == 20
    assert sum(e["type"] == ARCHIVED for e in events) == 20


# --- PostgreSQL ------------------------------------------------------------------------


def test_postgresql_connections_killed_mid_run_recover(
    sim: Simulator, make_config: Callable[..., Setup], pg_url: str
) -> None:
    """pg_terminate_backend on the daemon's sessions: later polls work, no event lost or doubled."""
    import psycopg

    from tests.conftest import PG_URL

    app = f"syncd_faults_{uuid.uuid4().hex[:8]}"
    url = f"{pg_url}&application_name={app}"
    setup = make_config(sim, database_url=url, poll_interval="1s")
    proc = start_syncd(setup, "run")
    plain = PG_URL.replace("postgresql+psycopg://", "postgresql://")
    try:

        def wait_for(count: int) -> list[dict[str, Any]]:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                created = of_type(setup, CREATED)
                if len(created) >= count:
                    return created
                time.sleep(0.2)
            raise AssertionError(f"only {len(of_type(setup, CREATED))} created events")

        wait_for(20)
        # Kill once the sink's cursor has caught up: a kill between a sink's write and its
        # cursor's commit redelivers that batch (at-least-once, same ids), which is not
        # what this test is about.
        db = open_database(pg_url, migrate=False)
        try:
            deadline = time.monotonic() + 30
            while outbox.sink_status(db, "events-file").pending and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            db.close()
        with psycopg.connect(plain, autocommit=True) as conn:
            killed = conn.execute(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s) AS t",
                (app,),
            ).fetchone()
        assert killed is not None
        assert killed[0] >= 1
        sim.add_order(po_number="PO-AFTER-KILL")
        wait_for(21)
        time.sleep(2)  # a few more polls
        assert proc.poll() is None
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=30)
    created = of_type(setup, CREATED)
    ids = [e["id"] for e in created]
    assert len(ids) == len(set(ids)) == 21
    assert "Traceback" not in err
