"""Running in production: sd_notify, health and metrics over HTTP, SIGTERM, `syncd health`."""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from syncd.config import load_config
from syncd.daemon import Daemon, opened
from syncd.simulator import Simulator
from syncd.systemd import Notifier
from tests.conftest import Setup, run_syncd, seed_outbox, start_syncd


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


class NotifySocket:
    """A fake systemd: a datagram socket that records what the service tells it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                return self.messages


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    fake = NotifySocket(tmp_path / "notify.sock")
    yield fake
    fake.sock.close()


def test_notifier_is_silent_outside_systemd() -> None:
    """Without NOTIFY_SOCKET nothing is sent and nothing fails."""
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.ready() is False


def test_notify_ready_watchdog_stopping_in_order(
    sim: Simulator, make_config: Callable[..., Setup], notify_socket: NotifySocket
) -> None:
    """READY after start, WATCHDOG from the scheduler's heartbeat, STOPPING on shutdown."""
    setup = make_config(sim)
    config = load_config(setup.path, setup.env)
    notifier = Notifier({"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "400000"})
    with opened(config, daemon=True) as db:
        daemon = Daemon(config, db, notifier=notifier)
        daemon.start()
        wait_for(lambda: notify_socket.drain().count("WATCHDOG=1") >= 3)
        daemon.shutdown()
    messages = notify_socket.drain()
    kinds = [m.split("\n")[0] for m in messages]
    assert kinds[0] == "READY=1"
    assert kinds[-1] == "STOPPING=1"
    assert set(kinds[1:-1]) == {"WATCHDOG=1"}


def test_stalled_scheduler_stops_the_watchdog(
    sim: Simulator, make_config: Callable[..., Setup], notify_socket: NotifySocket
) -> None:
    """When the scheduler stops running jobs, WATCHDOG stops, so systemd restarts us."""
    setup = make_config(sim)
    config = load_config(setup.path, setup.env)
    notifier = Notifier({"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "200000"})
    with opened(config, daemon=True) as db:
        daemon = Daemon(config, db, notifier=notifier)
        daemon.start()
        try:
            wait_for(lambda: "WATCHDOG=1" in notify_socket.drain())
            daemon.scheduler.pause()  # the scheduler loop no longer runs anything
            time.sleep(0.3)
            before = len(notify_socket.drain())
            time.sleep(1.0)
            assert len(notify_socket.drain()) == before
            assert daemon.alive()[0] is False
        finally:
            daemon.shutdown()


@pytest.fixture
def served(sim: Simulator, make_config: Callable[..., Setup]) -> Iterator[tuple[Setup, str]]:
    """A `syncd run` process with its health endpoint on a free loopback port."""
    port = free_port()
    setup = make_config(sim, listen=f"127.0.0.1:{port}")
    proc = start_syncd(setup, "run")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _get(base + "/readyz") == 200, timeout=20)
        yield setup, base
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)


def _get(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0


def test_healthz_and_readyz_over_http(served: tuple[Setup, str]) -> None:
    """A synced daemon is alive and ready, and says so as JSON."""
    _, base = served
    alive = httpx.get(base + "/healthz")
    assert alive.status_code == 200
    assert alive.json()["alive"] is True
    assert httpx.get(base + "/readyz").json() == {"ready": True, "problems": {}}


def test_metrics_over_http(served: tuple[Setup, str]) -> None:
    """/metrics is Prometheus text with the syncd_ series."""
    _, base = served
    wait_for(
        lambda: 'syncd_events_pending{sink="events-file"} 0.0' in httpx.get(base + "/metrics").text
    )
    text = httpx.get(base + "/metrics").text
    for line in (
        'syncd_orders_mirrored{connection="band"} 20.0',
        'syncd_polls_total{connection="band",outcome="ok"}',
        'syncd_poll_duration_seconds_bucket{connection="band",le="0.5"}',
        'syncd_pdfs_pending{connection="band"}',
        'syncd_pdfs_failed{connection="band"} 0.0',
        'syncd_token_expiry_seconds{connection="band"}',
        'syncd_connection_authorized{connection="band"} 1.0',
        'syncd_events_delivered_total{sink="events-file"}',
    ):
        assert line in text, line


def test_readyz_turns_503_when_the_token_is_revoked(
    sim: Simulator, served: tuple[Setup, str]
) -> None:
    """A revoked refresh token makes the daemon unready, naming the connection."""
    _, base = served
    sim.revoke_tokens()
    sim.expire_access_tokens()
    wait_for(lambda: _get(base + "/readyz") == 503)
    body = httpx.get(base + "/readyz").json()
    assert "needs authorization" in body["problems"]["band"]
    assert httpx.get(base + "/healthz").status_code == 200  # alive, just not ready


def test_readyz_turns_503_when_the_upstream_fails(
    sim: Simulator, served: tuple[Setup, str]
) -> None:
    """No successful poll within three intervals: 503 with the last error."""
    _, base = served
    sim.faults.add("/api/v1/purchase_orders.php", "status", status=500, times=None)
    wait_for(lambda: _get(base + "/readyz") == 503, timeout=20)
    # The failing poll records its error once its own retries are spent.
    wait_for(lambda: "HTTP 500" in httpx.get(base + "/readyz").text, timeout=20)
    assert httpx.get(base + "/readyz").status_code == 503


def test_health_command(served: tuple[Setup, str]) -> None:
    """`syncd health` asks the daemon: exit 0 and its JSON answer."""
    setup, _ = served
    result = run_syncd(setup, "health")
    assert result.code == 0, result.output
    assert json.loads(result.stdout)["alive"] is True


def test_health_command_without_a_daemon(sim: Simulator, make_config: Callable[..., Setup]) -> None:
    """No daemon listening: exit 1 with one line."""
    setup = make_config(sim, listen=f"127.0.0.1:{free_port()}")
    result = run_syncd(setup, "health")
    assert result.code == 1
    assert "daemon not answering" in result.stderr


def test_sigterm_during_a_large_download_exits_0_fast(
    sim: Simulator, make_config: Callable[..., Setup]
) -> None:
    """SIGTERM while 50 MB PDFs stream in slowly: exit 0 within 10 s, no partial file."""
    sim.pdf_size = 50_000_000
    sim.faults.add("/print_po.php", "slow", delay=0.5, times=None)
    setup = make_config(sim, extra="[pdfs]\nmax_bytes = 100000000\n")
    proc = start_syncd(setup, "run")
    pdf_dir = setup.state_dir / "pdfs"
    wait_for(lambda: any(pdf_dir.glob(".tmp-*")), timeout=30)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=12) == 0
    assert time.monotonic() - started < 10
    assert list(pdf_dir.glob(".tmp-*")) == []
    for path in pdf_dir.rglob("*.pdf"):
        assert path.stat().st_size >= 50_000_000


def test_sigterm_during_delivery_exits_0_fast(
    sim: Simulator, make_config: Callable[..., Setup]
) -> None:
    """SIGTERM while 20,000 events are delivered: exit 0 within 10 s, every line whole."""
    setup = make_config(sim)
    seed_outbox(setup, 20_000)
    proc = start_syncd(setup, "run")
    wait_for(lambda: setup.events_file.exists() and setup.events_file.stat().st_size > 0)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=12) == 0
    assert time.monotonic() - started < 10
    for line in setup.events_file.read_text().splitlines():
        json.loads(line)


def test_health_server_listens_on_ipv6_loopback() -> None:
    """listen = "[::1]:PORT" serves over IPv6."""
    from syncd.health import HealthServer

    server = HealthServer(
        "[::1]:0",
        alive=lambda: (True, {"alive": True}),
        ready=lambda: (True, {}),
        metrics=lambda: b"",
    )
    server.start()
    try:
        port = server.address.rsplit(":", 1)[1]
        assert httpx.get(f"http://[::1]:{port}/healthz").json() == {"alive": True}
    finally:
        server.stop()


def test_health_command_needs_no_secrets(sim: Simulator, make_config: Callable[..., Setup]) -> None:
    """`syncd health` reads only [daemon] listen: unset secret variables do not matter."""
    setup = make_config(sim, listen=f"127.0.0.1:{free_port()}")
    setup.env.pop("SYNCD_CLIENT_SECRET")
    result = run_syncd(setup, "health")
    assert result.code == 1  # nothing listens; but not 2 (a config error)
    assert "daemon not answering" in result.stderr


def test_check_runs_beside_a_daemon(sim: Simulator, make_config: Callable[..., Setup]) -> None:
    """`syncd check` and `status` work while the daemon holds the SQLite database."""
    setup = make_config(sim)
    proc = start_syncd(setup, "run")
    try:
        wait_for(lambda: setup.events_file.exists())
        assert run_syncd(setup, "check").code == 0
        assert run_syncd(setup, "status").code == 0
        assert run_syncd(setup, "run", "--once").code == 2  # polling beside it is refused
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
