"""The PDF archive against the simulator over loopback, and its pure decisions."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from syncd import pdfs
from syncd.config import Config
from syncd.daemon import run_once
from syncd.errors import PdfUnavailable
from syncd.pdfs import (
    WRITEBACK_WINDOW,
    DownloadFailed,
    after_failure,
    download_pdf,
    remove_stale_temporaries,
)
from syncd.simulator import Simulator
from tests.conftest import FastClock, Setup, read_events, start_syncd


def pdf_files(config: Config) -> dict[str, bytes]:
    root = config.pdfs.dir
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def events_of(setup: Setup, suffix: str) -> list[dict[str, object]]:
    return [e for e in read_events(setup.events_file) if str(e["type"]).endswith(suffix)]


# --- pure decisions -------------------------------------------------------------------


def test_dead_link_waits_for_the_next_poll() -> None:
    """403/410 means the link expired: wait, do not count it as a failure."""
    failure = DownloadFailed("x", reason="expired", kind="link_dead")
    assert after_failure(failure, 1, max_attempts=3, retry_after_max=60, rand=lambda: 1).action == (
        "wait_for_link"
    )


def test_not_pdf_fails_after_max_attempts() -> None:
    """A body that is not a PDF is retried, then fails with reason not_pdf."""
    failure = DownloadFailed("x", reason="not_pdf", kind="retry")
    kwargs = {"max_attempts": 3, "retry_after_max": 60.0, "rand": lambda: 1.0}
    assert after_failure(failure, 2, **kwargs).action == "retry"  # type: ignore[arg-type]
    decision = after_failure(failure, 3, **kwargs)  # type: ignore[arg-type]
    assert (decision.action, decision.reason) == ("fail", "not_pdf")


def test_transient_failures_back_off_and_honour_retry_after() -> None:
    """5xx backs off with jitter; Retry-After raises the wait, capped."""
    failure = DownloadFailed("x", reason="http_503", kind="retry", retry_after=30)
    assert after_failure(failure, 1, max_attempts=3, retry_after_max=60, rand=lambda: 1).delay == 30
    assert after_failure(failure, 1, max_attempts=3, retry_after_max=10, rand=lambda: 1).delay == 10
    plain = DownloadFailed("x", reason="http_503", kind="retry")
    assert after_failure(plain, 9, max_attempts=3, retry_after_max=60, rand=lambda: 1).action == (
        "retry"
    )


# --- download_pdf with a fake transport -------------------------------------------------


def _client(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(handler), follow_redirects=False)


def test_cap_holds_whatever_content_length_claims(tmp_path: Path) -> None:
    """A body larger than max_bytes is cut off even when Content-Length claims it is small."""
    body = b"%PDF-1.4\n" + b"x" * 200_000 + b"\n%%EOF\n"

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Length": "100"}, content=iter([body]))

    with pytest.raises(DownloadFailed) as info:
        download_pdf(
            _client(handler),
            "http://pdf.test/a.pdf",
            tmp_path,
            "c/1",
            max_bytes=100_000,
            deadline=time.monotonic() + 10,
        )
    assert info.value.reason == "too_large"
    assert list(tmp_path.rglob("*")) == []


def test_redirect_to_another_origin_is_refused(tmp_path: Path) -> None:
    """A redirect away from the link's origin is not followed."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url.host))
        return httpx.Response(302, headers={"Location": "https://elsewhere.test/x.pdf"})

    with pytest.raises(DownloadFailed, match="another origin"):
        download_pdf(
            _client(handler),
            "http://pdf.test/a.pdf",
            tmp_path,
            "c/1",
            max_bytes=1000,
            deadline=time.monotonic() + 10,
        )
    assert seen == ["pdf.test"]


def test_only_http_links(tmp_path: Path) -> None:
    """file:// and friends are never fetched."""
    with pytest.raises(DownloadFailed) as info:
        download_pdf(
            _client(lambda r: httpx.Response(200)),
            "file:///etc/passwd",
            tmp_path,
            "c/1",
            max_bytes=1000,
            deadline=time.monotonic() + 10,
        )
    assert info.value.reason == "invalid_url"


def test_truncated_pdf_is_not_archived(tmp_path: Path) -> None:
    """A body without its %%EOF trailer is not a whole PDF."""
    handler = lambda r: httpx.Response(200, content=iter([b"%PDF-1.4\n1 0 obj"]))  # noqa: E731
    with pytest.raises(DownloadFailed) as info:
        download_pdf(
            _client(handler),
            "http://pdf.test/a.pdf",
            tmp_path,
            "c/1",
            max_bytes=1000,
            deadline=time.monotonic() + 10,
        )
    assert info.value.reason == "not_pdf"
    assert list(tmp_path.rglob("*")) == []


def _fetch(body: list[bytes], pdf_dir: Path, relative_dir: str = "c/1") -> pdfs.StoredPdf:
    return download_pdf(
        _client(lambda r: httpx.Response(200, content=iter(body))),
        "http://pdf.test/a.pdf",
        pdf_dir,
        relative_dir,
        max_bytes=10 * 1024 * 1024,
        deadline=time.monotonic() + 10,
    )


def test_magic_and_trailer_split_across_chunks(tmp_path: Path) -> None:
    """%PDF- and %%EOF are found however the body is cut into chunks."""
    body = [b"%P", b"D", b"F-1.4\n" + b"x" * 5000 + b"%%E", b"O", b"F\n"]
    stored = _fetch(body, tmp_path)
    data = b"".join(body)
    assert (tmp_path / stored.path).read_bytes() == data
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert stored.size == len(data)
    with pytest.raises(DownloadFailed) as info:
        _fetch([b"%P", b"DX-1.4\n%%EOF"], tmp_path)
    assert info.value.reason == "not_pdf"
    trailer_too_early = [b"%PDF-1.4\n%%EOF\n", b"x" * 2000]
    with pytest.raises(DownloadFailed) as info:
        _fetch(trailer_too_early, tmp_path)
    assert info.value.reason == "not_pdf"
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [Path(stored.path).name]


def test_new_directories_and_the_rename_are_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before download_pdf returns (and the job commits), the file's directory is
    fsynced, and so is the parent of every directory created for it."""
    synced: list[Path] = []
    monkeypatch.setattr(pdfs, "_fsync_dir", synced.append)
    body = [b"%PDF-1.4\n", b"1\n%%EOF\n"]
    _fetch(body, tmp_path, "c/1")
    assert sorted(synced) == sorted([tmp_path / "c" / "1", tmp_path / "c", tmp_path])
    synced.clear()
    _fetch([b"%PDF-1.4\n", b"2\n%%EOF\n"], tmp_path, "c/2")
    assert sorted(synced) == sorted([tmp_path / "c" / "2", tmp_path / "c"])
    synced.clear()
    _fetch(body, tmp_path, "c/1")  # already stored: its entry is made durable all the same
    assert synced == [tmp_path / "c" / "1"]
    assert oct((tmp_path / "c").stat().st_mode & 0o777) == oct(0o700)


def test_writeback_starts_while_the_body_arrives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every WRITEBACK_WINDOW bytes the disk write is started, the file stays exact."""
    started: list[int] = []
    real = pdfs._start_writeback

    def start_writeback(fd: int, offset: int) -> None:
        started.append(offset)
        real(fd, offset)

    monkeypatch.setattr(pdfs, "_start_writeback", start_writeback)
    body = [b"%PDF-1.4\n"] + [bytes([i % 251]) * 65536 for i in range(50)] + [b"\n%%EOF\n"]
    stored = _fetch(body, tmp_path)
    data = b"".join(body)
    assert (tmp_path / stored.path).read_bytes() == data
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert len(started) == len(data) // WRITEBACK_WINDOW
    # Each call reaches back to the window before (its pages are clean by now: dropped).
    assert started[:2] == [0, 0]
    assert all(b - a >= WRITEBACK_WINDOW for a, b in itertools.pairwise(started[1:]))


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path: Path) -> None:
    """A temporary named for a dead pid on this host goes; a live process's stays."""
    import socket

    host = socket.gethostname()
    dead = tmp_path / f".tmp-{host}-999999999-abc.part"
    alive = tmp_path / f".tmp-{host}-{os.getpid()}-def.part"
    dead.write_bytes(b"partial")
    alive.write_bytes(b"partial")
    assert remove_stale_temporaries(tmp_path, older_than=3600) == 1
    assert not dead.exists()
    assert alive.exists()


# --- against the simulator ------------------------------------------------------------


def test_every_pdf_archived_with_exact_bytes_and_hash(
    sim: Simulator, configure: Callable[..., tuple[Config, Setup]], clock: FastClock
) -> None:
    """Each order's PDF is on disk byte for byte, named by its hash, announced once."""
    config, setup = configure()
    assert run_once(config, sleep=clock.sleep, clock=clock) == []
    files = pdf_files(config)
    archived = events_of(setup, "pdf_archived")
    assert len(archived) == 20
    for event in archived:
        data = event["data"]
        assert isinstance(data, dict)
        body = files[data["path"]]
        assert body == sim.pdf_bytes(data["purchase_order_id"])
        assert hashlib.sha256(body).hexdigest() == data["sha256"]
        assert data["path"] == f"band/{data['purchase_order_id']}/{data['sha256']}.pdf"
        assert data["size"] == len(body)
        assert data["version"] == 1
    assert len(files) == 20


def test_changed_order_archives_its_new_pdf(
    sim: Simulator, configure: Callable[..., tuple[Config, Setup]], clock: FastClock
) -> None:
    """Version 2 gets its own PDF; version 1's file stays."""
    config, setup = configure()
    run_once(config, sleep=clock.sleep, clock=clock)
    sim.update_order(125, status="Received")
    assert run_once(config, sleep=clock.sleep, clock=clock) == []
    v2 = [e["data"] for e in events_of(setup, "pdf_archived") if e["data"]["version"] == 2]  # type: ignore[index]
    assert len(v2) == 1
    assert pdf_files(config)[v2[0]["path"]] == sim.pdf_bytes(125)  # type: ignore[index]
    assert len([p for p in pdf_files(config) if p.startswith("band/125/")]) == 2


def test_pdf_host_never_sees_the_bearer_token(
    sim: Simulator, configure: Callable[..., tuple[Config, Setup]], clock: FastClock
) -> None:
    """PDFs served from another origin (127.0.0.2) get no Authorization header."""
    pdf_origin = sim.serve_pdfs_from("127.0.0.2")
    config, _ = configure()
    assert run_once(config, sleep=clock.sleep, clock=clock) == []
    pdf_requests = [r for r in sim.stats.requests if r.path == "/print_po.php"]
    assert len(pdf_requests) == 20
    assert all("authorization" not in r.headers for r in pdf_requests)
    assert all(r.headers["host"] == pdf_origin.split("/")[2] for r in pdf_requests)
    api_requests = [r for r in sim.stats.requests if r.path.startswith("/api/")]
    assert all(r.headers["authorization"].startswith("Bearer ") for r in api_requests)


def test_pdf_requests_ask_for_an_uncompressed_body(
    sim: Simulator, configure: Callable[..., tuple[Config, Setup]], clock: FastClock
) -> None:
    """PDF downloads send Accept-Encoding: identity, so max_bytes counts what arrives."""
    config, _ = configure()
    assert run_once(config, sleep=clock.sleep, clock=clock) == []
    pdf_requests = [r for r in sim.stats.requests if r.path == "/print_po.php"]
    assert len(pdf_requests) == 20
    assert {r.headers["accept-encoding"] for r in pdf_requests} == {"identity"}


def test_html_body_is_never_archived(
    sim: Simulator, configure: Callable[..., tuple[Config, Setup]], clock: FastClock
) -> None:
    """A 200 login page is retried, then fails not_pdf; nothing lands on disk."""
    sim.faults.add("/print_po.php", "html", times=None)
    config, setup = configure(max_attempts=2)
    assert run_once(config, sleep=clock.sleep, clock=clock) == []
    assert pdf_files(config) == {}
    failed = events_of(setup, "pdf_failed")
    assert len(failed) == 20
    assert {e["data"]["reason"] for e in failed} == {"not_pdf"}  # type: ignore[index]


def test_links_expired_in_an_outage_are_renewed_and_archived(
    sim: Simulator, configure: Callable[..., tuple[Config, Setup]], clock: FastClock
) -> None:
    """PDF host down past the deadline: exit 4; after an hour the next poll's links work."""
    sim.faults.add("/print_po.php", "status", status=503, times=None)
    config, setup = configure(max_attempts=2)
    errors = run_once(config, sleep=clock.sleep, clock=clock)
    assert [type(e) for e in errors] == [PdfUnavailable]
    assert pdf_files(config) == {}
    sim.faults.clear()
    clock.offset += 3600  # every stored link is past its deadline now
    assert run_once(config, sleep=clock.sleep, clock=clock) == []
    assert len(events_of(setup, "pdf_archived")) == 20


def test_dead_link_answer_waits_for_the_next_poll(
    sim: Simulator, configure: Callable[..., tuple[Config, Setup]], clock: FastClock
) -> None:
    """A 403 from the PDF host drops the link; the next run's poll renews it."""
    sim.faults.add("/print_po.php", "status", status=403, times=1)
    config, setup = configure()
    errors = run_once(config, sleep=clock.sleep, clock=clock)
    assert [type(e) for e in errors] == [PdfUnavailable]
    assert len(events_of(setup, "pdf_archived")) == 19
    assert run_once(config, sleep=clock.sleep, clock=clock) == []
    assert len(events_of(setup, "pdf_archived")) == 20


def test_expired_link_outside_the_window_fails(
    sim: Simulator, configure: Callable[..., tuple[Config, Setup]], clock: FastClock
) -> None:
    """An order that left the window with a dead link ends in pdf_failed 'expired'."""
    sim.faults.add("/print_po.php", "status", status=503, times=None)
    config, setup = configure(max_attempts=1)
    run_once(config, sleep=clock.sleep, clock=clock)
    sim.faults.clear()
    for _ in range(20):
        sim.add_order()
    clock.offset += 3600
    run_once(config, sleep=clock.sleep, clock=clock)
    failed = events_of(setup, "pdf_failed")
    assert len(failed) == 20
    assert {e["data"]["reason"] for e in failed} == {"expired"}  # type: ignore[index]
    assert len(events_of(setup, "pdf_archived")) == 20  # the 20 new orders


def test_size_cap_fails_too_large(
    sim: Simulator, configure: Callable[..., tuple[Config, Setup]], clock: FastClock
) -> None:
    """A PDF over [pdfs] max_bytes ends as pdf_failed 'too_large', nothing kept."""
    sim.pdf_size = 300_000
    config, setup = configure(extra="[pdfs]\nmax_bytes = 100000\n")
    run_once(config, sleep=clock.sleep, clock=clock)
    assert {e["data"]["reason"] for e in events_of(setup, "pdf_failed")} == {"too_large"}  # type: ignore[index]
    assert pdf_files(config) == {}


def test_failed_pdfs_can_be_retried(
    sim: Simulator, configure: Callable[..., tuple[Config, Setup]], clock: FastClock
) -> None:
    """pdfs retry re-queues failed jobs; the next poll's link archives them."""
    from syncd.store import pdf_jobs
    from syncd.store.database import open_database

    sim.pdf_size = 300_000
    config, setup = configure(extra="[pdfs]\nmax_bytes = 100000\n")
    run_once(config, sleep=clock.sleep, clock=clock)
    sim.pdf_size = None
    db = open_database(config.database.url)
    try:
        assert pdf_jobs.retry_failed(db, "band", datetime.now(UTC)) == 20
    finally:
        db.close()
    assert run_once(config, sleep=clock.sleep, clock=clock) == []
    assert len(events_of(setup, "pdf_archived")) == 20


def test_kill_during_large_downloads_leaves_only_whole_files(
    sim: Simulator, make_config: Callable[..., Setup]
) -> None:
    """kill -9 mid-download, three times: no temporaries, every file matches its hash."""
    sim.pdf_size = 3_000_000
    setup = make_config(sim, extra="[pdfs]\nconcurrency = 2\n")
    pdf_dir = setup.state_dir / "pdfs"
    for delay in (1.2, 1.6, 2.0):
        proc = start_syncd(setup, "run", "--once")
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    proc = start_syncd(setup, "run", "--once")  # the next run finishes the job
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert list(pdf_dir.glob(".tmp-*")) == []
    files = list(pdf_dir.rglob("*.pdf"))
    assert len(files) == 20
    for path in files:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.stem
    archived = {json.dumps(e["data"], sort_keys=True) for e in events_of(setup, "pdf_archived")}
    assert len(archived) == 20


def test_no_pdf_is_fetched_twice_in_one_run(
    sim: Simulator, configure: Callable[..., tuple[Config, Setup]], clock: FastClock
) -> None:
    """Four workers, 20 jobs, several runs: every PDF is requested exactly once."""
    for _ in range(3):
        sim.stats.clear()
        for _ in range(20):
            sim.add_order()
        config, _ = configure()
        assert run_once(config, sleep=clock.sleep, clock=clock) == []
        fetched = [r.query["po_id"] for r in sim.stats.requests if r.path == "/print_po.php"]
        assert len(fetched) == len(set(fetched)) == 20


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("https://cdn.example.org/print_po.php?po_id=1", False),
        ("http://127.0.0.2:8080/print_po.php", False),
        ("ftp://example.org/a.pdf", True),
        ("file:///etc/passwd", True),
        ("http://user:pass@example.org/a.pdf", True),
        ("http://169.254.169.254/latest/meta-data", True),
        ("http://[fe80::1]/a.pdf", True),
        ("http://0.0.0.0/a.pdf", True),
        ("http:///a.pdf", True),
    ],
)
def test_link_refusal(url: str, refused: bool) -> None:
    """Only http(s) links without credentials to a routable address are fetched."""
    from syncd.pdfs import link_refusal

    assert (link_refusal(url) is not None) is refused
