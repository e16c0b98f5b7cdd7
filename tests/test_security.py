"""Security properties: where credentials travel, what links are fetched, where files land,
what the logs show, and the permissions of what syncd writes."""

from __future__ import annotations

import json
import re
import socket
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from syncd.config import Config
from syncd.daemon import run_once
from syncd.pdfs import DownloadFailed, download_pdf
from syncd.simulator import Simulator
from tests.conftest import FastClock, Setup, read_events, record_secrets, run_syncd

ORDERS = "/api/v1/purchase_orders.php"
PDF = "/print_po.php"
FAILED = "com.inventoryarts.purchase_order.pdf_failed"
ARCHIVED = "com.inventoryarts.purchase_order.pdf_archived"
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def of_type(setup: Setup, event_type: str) -> list[dict[str, Any]]:
    return [e for e in read_events(setup.events_file) if e["type"] == event_type]


def pdf_requests(sim: Simulator) -> list[Any]:
    return [r for r in sim.stats.requests if r.path == PDF]


# --- the bearer token stays with the API origin ----------------------------------------


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_api_redirect_to_another_origin_never_carries_the_token(
    status: int, sim: Simulator, configure: Callable[..., tuple[Config, Setup]], clock: FastClock
) -> None:
    """purchase_orders.php answering a redirect to another origin: it is not followed."""
    other = sim.serve_pdfs_from("127.0.0.2")
    sim.faults.add(
        ORDERS,
        "status",
        status=status,
        times=None,
        headers={"Location": f"{other}api/v1/purchase_orders.php"},
    )
    config, setup = configure()
    errors = run_once(config, sleep=clock.sleep, clock=clock)
    assert len(errors) == 1
    assert f"HTTP {status}" in str(errors[0])
    elsewhere = [r for r in sim.stats.requests if r.headers.get("host", "").startswith("127.0.0.2")]
    assert elsewhere == []
    api = [r for r in sim.stats.requests if r.path == ORDERS]
    assert len(api) == 1  # a redirect is not retried either
    assert read_events(setup.events_file) == []


# --- pdf_url values that must not be fetched -------------------------------------------


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A listening TCP socket that no one should connect to."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.settimeout(0.2)
        yield sock


def _nobody_connected(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except TimeoutError:
        return True
    conn.close()
    return False


@pytest.mark.parametrize("scheme", ["file", "ftp"])
def test_non_http_pdf_links_are_refused_without_a_connection(
    scheme: str,
    sim: Simulator,
    configure: Callable[..., tuple[Config, Setup]],
    clock: FastClock,
    listener: socket.socket,
) -> None:
    """pdf_url with file: or ftp: fails 'invalid_url'; no connection is ever made."""
    port = listener.getsockname()[1]
    base = "file:///etc/" if scheme == "file" else f"ftp://127.0.0.1:{port}/"
    sim._app.pdf_base_url = base
    config, setup = configure()
    assert run_once(config, sleep=clock.sleep, clock=clock) == []
    failed = of_type(setup, FAILED)
    assert len(failed) == 20
    assert {e["data"]["reason"] for e in failed} == {"invalid_url"}
    assert _nobody_connected(listener)
    assert pdf_requests(sim) == []
    assert [p for p in config.pdfs.dir.rglob("*") if p.is_file()] == []


def _recording_client(seen: list[httpx.Request]) -> httpx.Client:
    body = b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n%%EOF\n"

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=body)

    return httpx.Client(transport=httpx.MockTransport(handler), follow_redirects=False)


def test_link_local_pdf_link_is_refused(tmp_path: Path) -> None:
    """A pdf_url on 169.254.169.254 is refused before any request is sent."""
    seen: list[httpx.Request] = []
    with pytest.raises(DownloadFailed):
        download_pdf(
            _recording_client(seen),
            "http://169.254.169.254/latest/meta-data/print_po.php?po_id=1",
            tmp_path,
            "band/1",
            max_bytes=100_000,
            deadline=time.monotonic() + 10,
        )
    assert seen == []


def test_pdf_link_with_userinfo_is_refused(
    sim: Simulator, configure: Callable[..., tuple[Config, Setup]], clock: FastClock
) -> None:
    """pdf_url http://user:pass@host/...: refused, no request reaches the host."""
    sim._app.pdf_base_url = sim.base_url.replace("http://", "http://user:pass@")
    config, setup = configure()
    run_once(config, sleep=clock.sleep, clock=clock)
    assert pdf_requests(sim) == []
    assert of_type(setup, ARCHIVED) == []


# --- no write outside the state directory ----------------------------------------------


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_hostile_records_never_write_outside_the_pdf_dir(
    sim: Simulator, configure: Callable[..., tuple[Config, Setup]], clock: FastClock, tmp_path: Path
) -> None:
    """po_number '../..', an id of 10**18: files land only under state_dir/pdfs/band/<id>/."""
    hostile = [
        {
            "id": 10**18,
            "po_number": "../../../../../../tmp/evil",
            "vendor_name": "../..",
            "grand_total": "1.00",
            "pdf_url": sim.pdf_url(125),
        },
        {
            "id": 124,
            "po_number": "/etc/passwd",
            "vendor_name": "..\\..\\x",
            "grand_total": "2.00",
            "pdf_url": sim.pdf_url(124),
        },
    ]
    sim.faults.add(ORDERS, "body", body=json.dumps(hostile), times=None)
    config, setup = configure()
    before = _files(tmp_path)
    assert run_once(config, sleep=clock.sleep, clock=clock) == []
    new = _files(tmp_path) - before
    assert all(setup.state_dir in p.parents for p in new), new
    pdfs = {str(p.relative_to(config.pdfs.dir)) for p in _files(config.pdfs.dir)}
    assert {p.rsplit("/", 1)[0] for p in pdfs} == {"band/124", f"band/{10**18}"}
    assert all(re.fullmatch(r"band/\d+/[0-9a-f]{64}\.pdf", p) for p in pdfs), pdfs
    assert not Path("/tmp/evil").exists()
    assert len(of_type(setup, ARCHIVED)) == 2


def test_id_beyond_64_bits_is_rejected_cleanly(
    sim: Simulator, make_config: Callable[..., Setup]
) -> None:
    """An id of 10**19 (no SQL integer holds it): no traceback, the other orders mirrored."""
    body = [
        {"id": 10**19, "po_number": "X", "vendor_name": "V", "grand_total": "1.00"},
        {"id": 124, "po_number": "Y", "vendor_name": "V", "grand_total": "2.00"},
    ]
    sim.faults.add(ORDERS, "body", body=json.dumps(body), times=None)
    setup = make_config(sim)
    result = run_syncd(setup, "run", "--once")
    assert "Traceback" not in result.output
    assert result.code == 0, result.output
    created = [e for e in read_events(setup.events_file) if e["type"].endswith(".created")]
    assert [e["subject"] for e in created] == ["124"]


# --- secrets in the output at DEBUG level ----------------------------------------------


def test_debug_run_prints_no_token_secret_or_link_token(
    sim: Simulator, make_config: Callable[..., Setup], monkeypatch: pytest.MonkeyPatch
) -> None:
    """log_level = debug, a refresh, PDFs: no issued token, client secret or link token shows."""
    planted = record_secrets(sim, monkeypatch)
    setup = make_config(sim, max_attempts=2)
    text = setup.path.read_text().replace('log_level = "info"', 'log_level = "debug"')
    setup.path.write_text(text)
    outputs = [run_syncd(setup, "run", "--once")]
    sim.expire_access_tokens()
    sim.update_order(125, status="Received")
    outputs.append(run_syncd(setup, "run", "--once"))
    outputs.append(run_syncd(setup, "run", "--once"))  # nothing new: a debug "poll quiet"
    sim.faults.add(PDF, "status", status=503, retry_after="0", times=None)
    sim.update_order(124, status="Received")
    outputs.append(run_syncd(setup, "run", "--once"))
    assert [r.code for r in outputs] == [0, 0, 0, 4], [r.output for r in outputs]
    assert any('"level": "debug"' in r.output for r in outputs)  # debug really was on
    assert len(planted.issued) == 6  # the fixture's pair, the bootstrap refresh, the forced one
    assert len(planted.link_tokens) >= 80
    secrets = {
        sim.client_secret,
        setup.env["SYNCD_REFRESH_TOKEN"],
        *planted.issued,
        *planted.link_tokens,
    }
    for result in outputs:
        assert "Traceback" not in result.output
        for secret in secrets:
            assert secret not in result.output
    events = setup.events_file.read_text()
    for secret in secrets:
        assert secret not in events


# --- permissions -----------------------------------------------------------------------


def test_database_is_0600_and_pdf_dir_0700(
    sim: Simulator, configure: Callable[..., tuple[Config, Setup]], clock: FastClock
) -> None:
    """The SQLite file (it holds tokens) is owner-only; so is the PDF directory."""
    config, setup = configure()
    assert run_once(config, sleep=clock.sleep, clock=clock) == []
    db = setup.state_dir / "syncd.db"
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.pdfs.dir.stat().st_mode) == 0o700
    for extra in (db.with_name("syncd.db-wal"), db.with_name("syncd.db-shm")):
        if extra.exists():
            assert stat.S_IMODE(extra.stat().st_mode) == 0o600


# --- status never shows a sink's secret ------------------------------------------------


@pytest.mark.parametrize("args", [("status",), ("status", "--json")])
def test_webhook_secret_never_in_status(
    args: tuple[str, ...], sim: Simulator, make_config: Callable[..., Setup]
) -> None:
    """syncd status / status --json name the webhook sink but never show its secret."""
    sink = (
        '[[sinks]]\nname = "erp"\ntype = "webhook"\n'
        'url = "http://127.0.0.1:9/hook"\nsecret = "${SYNCD_WEBHOOK_SECRET}"\n'
    )
    setup = make_config(sim, sinks=sink)
    setup.env["SYNCD_WEBHOOK_SECRET"] = WEBHOOK_SECRET
    result = run_syncd(setup, *args)
    assert result.code == 0, result.output
    assert "erp" in result.stdout
    assert WEBHOOK_SECRET not in result.output
    assert WEBHOOK_SECRET.removeprefix("whsec_") not in result.output
