"""Health and metrics on ``[daemon] listen``: /healthz, /readyz and /metrics.

``/healthz`` says the process and its scheduler are alive (the scheduler's heartbeat job
ran recently). ``/readyz`` says the daemon is doing its job: the database answers and
every connection is authorized and polled successfully within three intervals.
``/metrics`` is the Prometheus text format from the maintained client: counters the
daemon updates as it works, and gauges read from the database at scrape time.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select, text

from syncd.errors import ConfigError
from syncd.store import outbox, pdf_jobs, tokens
from syncd.store.database import Database
from syncd.store.mirror import MIRROR
from syncd.store.state import load_state

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class WatchedConnection:
    name: str
    poll_interval: float


def readiness(
    db: Database, connections: Sequence[WatchedConnection], now: datetime
) -> tuple[bool, dict[str, Any]]:
    """Ready when the database answers and every connection polled fine within 3 intervals."""
    problems: dict[str, str] = {}
    try:
        with db.read() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # any database failure means not ready
        return False, {"database": f"unreachable: {type(exc).__name__}"}
    for connection in connections:
        token = tokens.load(db, connection.name)
        if token is not None and token.needs_authorization:
            problems[connection.name] = f"needs authorization: {token.auth_error}"
            continue
        state = load_state(db, connection.name) or {}
        last_success = state.get("last_success_at")
        limit = timedelta(seconds=3 * connection.poll_interval)
        if last_success is None or now - last_success > limit:
            error = state.get("last_error") or "not polled successfully yet"
            problems[connection.name] = f"no successful poll within 3 intervals: {error}"
    return not problems, {"ready": not problems, "problems": problems}


class DatabaseCollector(Collector):
    """Gauges read from the database when Prometheus scrapes."""

    def __init__(
        self,
        db: Database,
        connections: Sequence[str],
        sinks: Sequence[str],
        clock: Callable[[], float],
    ) -> None:
        self._db = db
        self._connections = connections
        self._sinks = sinks
        self._clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        now = datetime.fromtimestamp(self._clock(), UTC)
        orders = GaugeMetricFamily(
            "syncd_orders_mirrored", "Orders in the mirror", labels=["connection"]
        )
        pending_pdfs = GaugeMetricFamily(
            "syncd_pdfs_pending", "PDF jobs not archived yet", labels=["connection"]
        )
        failed_pdfs = GaugeMetricFamily(
            "syncd_pdfs_failed", "PDF jobs that failed for good", labels=["connection"]
        )
        deadline = GaugeMetricFamily(
            "syncd_pdf_deadline_seconds",
            "Seconds until the nearest pending PDF link expires",
            labels=["connection"],
        )
        expiry = GaugeMetricFamily(
            "syncd_token_expiry_seconds",
            "Seconds until the access token expires",
            labels=["connection"],
        )
        authorized = GaugeMetricFamily(
            "syncd_connection_authorized",
            "1 while the connection holds a usable token",
            labels=["connection"],
        )
        for name in self._connections:
            with self._db.read() as conn:
                count = conn.execute(
                    select(func.count()).select_from(MIRROR).where(MIRROR.c.connection == name)
                ).scalar_one()
            orders.add_metric([name], float(count))
            pdfs = pdf_jobs.status(self._db, name)
            pending_pdfs.add_metric([name], pdfs.pending)
            failed_pdfs.add_metric([name], pdfs.failed)
            if pdfs.nearest_deadline is not None:
                deadline.add_metric([name], (pdfs.nearest_deadline - now).total_seconds())
            token = tokens.load(self._db, name)
            authorized.add_metric(
                [name], 0.0 if token is None or token.needs_authorization else 1.0
            )
            if token is not None and token.expires_at is not None:
                expiry.add_metric([name], (token.expires_at - now).total_seconds())
        pending = GaugeMetricFamily(
            "syncd_events_pending", "Events not yet delivered to the sink", labels=["sink"]
        )
        delivered = CounterMetricFamily(
            "syncd_events_delivered", "Events delivered to the sink", labels=["sink"]
        )
        for sink in self._sinks:
            status = outbox.sink_status(self._db, sink)
            pending.add_metric([sink], status.pending)
            delivered.add_metric([sink], status.delivered)
        yield from (orders, pending_pdfs, failed_pdfs, deadline, expiry, authorized)
        yield from (pending, delivered)


class Metrics:
    """The daemon's metrics registry: live counters plus the database collector."""

    def __init__(
        self,
        db: Database,
        connections: Sequence[str],
        sinks: Sequence[str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = CollectorRegistry()
        self.polls = Counter(
            "syncd_polls",
            "Polls by connection and outcome",
            ["connection", "outcome"],
            registry=self.registry,
        )
        self.poll_duration = Histogram(
            "syncd_poll_duration_seconds",
            "Time one poll took, fetch to commit",
            ["connection"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=self.registry,
        )
        self.delivery_failures = Counter(
            "syncd_delivery_failures",
            "Failed sends to a sink",
            ["sink"],
            registry=self.registry,
        )
        self.registry.register(DatabaseCollector(db, connections, sinks, clock))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class HealthServer:
    """Serves /healthz, /readyz and /metrics from a background thread."""

    def __init__(
        self,
        listen: str,
        *,
        alive: Callable[[], tuple[bool, dict[str, Any]]],
        ready: Callable[[], tuple[bool, dict[str, Any]]],
        metrics: Callable[[], bytes],
    ) -> None:
        host, _, port = listen.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        routes: dict[str, Callable[[], tuple[int, str, bytes]]] = {
            "/healthz": lambda: _json_answer(*alive()),
            "/readyz": lambda: _json_answer(*ready()),
            "/metrics": lambda: (200, PROMETHEUS_CONTENT_TYPE, metrics()),
        }

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                route = routes.get(self.path.split("?")[0])
                if route is None:
                    status, ctype, body = 404, "text/plain", b"not found\n"
                else:
                    try:
                        status, ctype, body = route()
                    except Exception as exc:  # a probe gets an answer, not a reset
                        status, ctype = 500, "text/plain"
                        body = f"{type(exc).__name__}\n".encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return  # probes every few seconds are not news

        server_class = _IPv6Server if ":" in host else ThreadingHTTPServer
        try:
            self._server = server_class((host, int(port)), Handler)
        except OSError as exc:
            raise ConfigError(
                f"[daemon] listen: cannot listen on {listen}: {exc.strerror}"
            ) from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="syncd-health", daemon=True
        )

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host.decode() if isinstance(host, bytes) else host}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def _json_answer(ok: bool, body: dict[str, Any]) -> tuple[int, str, bytes]:
    return (200 if ok else 503), "application/json", (json.dumps(body) + "\n").encode()
