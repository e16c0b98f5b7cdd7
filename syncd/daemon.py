"""The composition root: builds syncd from its configuration and runs it.

``run_once`` is one full cycle (poll every connection, deliver every pending event);
``run_daemon`` is the long-lived service: an APScheduler job per connection (one
instance at a time, coalesced), a dispatcher thread woken by every commit that added
events, and a clean stop on SIGTERM/SIGINT. Only this module and the CLI see the whole
configuration; everything below gets small typed pieces of it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx

from syncd.api import InventoryArtsClient, RetryPolicy, api_http_client, tls_context
from syncd.auth import REFRESH_PATH, ConnectionAuth, TokenManager, reauthorize_hint
from syncd.config import Config, ConnectionConfig
from syncd.diff import next_poll_delay
from syncd.errors import ApiError, AuthError, PdfUnavailable, SinkUnavailable, SyncdError
from syncd.leases import CONNECTION, SINK, LocalLeases, PostgresLeases, leases_for
from syncd.logging import get_logger, secrets
from syncd.outbox import Channel, Dispatcher
from syncd.pdfs import Archiver
from syncd.poller import outcome_of, poll_connection
from syncd.progress import RunProgress
from syncd.sinks.base import Sink, sink_class
from syncd.store import outbox, pdf_jobs, tokens
from syncd.store.database import (
    Database,
    InstanceLock,
    database_outage,
    open_database,
    sqlite_path,
)
from syncd.store.state import load_state
from syncd.systemd import Notifier

if TYPE_CHECKING:
    from syncd.health import HealthServer

SHUTDOWN_GRACE_SECONDS = 5.0  # in-flight work may finish this long after SIGTERM
SHUTDOWN_CANCEL_SECONDS = 2.0  # then downloads are cancelled and get this long to clean up
HEARTBEAT_SECONDS = 5.0  # scheduler heartbeat (/healthz), faster when systemd asks
LEASE_SECONDS = 5.0  # lease rounds at least this often (and twice per poll interval)
START_SPREAD_SECONDS = 5.0  # polls spread over at least this window, not all at once


class ShuttingDown(Exception):
    """Raised from an interrupted sleep when the daemon is stopping."""


def poll_workers(config: Config) -> int:
    """Threads that poll at once: enough for many connections, bounded for the database."""
    return max(2, min(20, len(config.connections)))


def build_sinks(config: Config) -> list[Channel]:
    """The configured sinks, each behind a delivery channel (ConfigError if one is missing)."""
    channels = []
    for sink_config in config.sinks:
        sink: Sink = sink_class(sink_config.type).from_config(sink_config)
        secret = getattr(sink_config, "secret", None)
        if secret is not None:
            secrets.add(secret.get_secret_value())
        channels.append(Channel(sink, tuple(sink_config.types)))
    return channels


def connection_auth(connection: ConnectionConfig) -> ConnectionAuth:
    bootstrap = connection.refresh_token
    return ConnectionAuth(
        name=connection.name,
        refresh_url=connection.base_url + REFRESH_PATH,
        client_id=connection.client_id,
        client_secret=connection.client_secret.get_secret_value(),
        bootstrap_refresh_token=bootstrap.get_secret_value() if bootstrap else None,
    )


@dataclass
class Runtime:
    """Everything a run needs, built once from the configuration."""

    config: Config
    db: Database
    clients: dict[str, InventoryArtsClient]
    dispatcher: Dispatcher
    archiver: Archiver
    _closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for close in reversed(self._closers):
            close()


def build_runtime(
    config: Config,
    db: Database,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
    channels: list[Channel] | None = None,
) -> Runtime:
    refresh_http = httpx.Client(
        verify=tls_context(), timeout=config.http.timeout, follow_redirects=False
    )
    policy = RetryPolicy(
        max_attempts=config.http.max_attempts, retry_after_max=config.http.retry_after_max
    )
    # One bounded pool for every connection's API calls (hundreds of connections share a
    # handful of sockets; at most one poll per worker thread runs at a time).
    api_http = api_http_client(max_connections=poll_workers(config))
    clients = {}
    for connection in config.connections:
        tokens = TokenManager(connection_auth(connection), db, refresh_http, clock=clock)
        clients[connection.name] = InventoryArtsClient(
            connection.base_url,
            tokens,
            timeout=config.http.timeout,
            policy=policy,
            sleep=sleep,
            clock=clock,
            log=get_logger(connection=connection.name, job="poll"),
            http=api_http,
        )
    dispatcher = Dispatcher(
        db,
        channels if channels is not None else build_sinks(config),
        clock=clock,
        max_attempts=config.http.max_attempts,
    )
    archiver = Archiver(
        db,
        config.pdfs.dir,
        concurrency=config.pdfs.concurrency,
        max_bytes=config.pdfs.max_bytes,
        timeout=config.http.timeout,
        max_attempts=config.http.max_attempts,
        retry_after_max=config.http.retry_after_max,
        clock=clock,
    )
    closers: list[Callable[[], None]] = [refresh_http.close, api_http.close]
    closers += [client.close for client in clients.values()]
    closers += [dispatcher.close, archiver.close]
    return Runtime(config, db, clients, dispatcher, archiver, closers)


@contextmanager
def opened(config: Config, *, daemon: bool) -> Iterator[Database]:
    """The database, migrated, with the SQLite instance lock held for the block."""
    lock = None
    db_file = sqlite_path(config.database.url)
    if db_file is not None:
        db_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = InstanceLock.acquire(db_file, exclusive=daemon)
    try:
        db = open_database(config.database.url)
        try:
            yield db
        finally:
            db.close()
    finally:
        if lock is not None:
            lock.release()


def exit_code_for(errors: list[SyncdError]) -> int:
    """One exit code for a run that met several failures: authorization first."""
    if not errors:
        return 0
    if any(isinstance(e, AuthError) for e in errors):
        return 3
    if any(e.exit_code == 4 for e in errors):
        return 4
    return max(e.exit_code for e in errors)


def run_once(
    config: Config,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
    channels: list[Channel] | None = None,
) -> list[SyncdError]:
    """One full cycle; returns the failures met (empty: success). Work is kept either way."""
    errors: list[SyncdError] = []
    channels = channels if channels is not None else build_sinks(config)
    with opened(config, daemon=False) as db:
        runtime = build_runtime(config, db, sleep=sleep, clock=clock, channels=channels)
        try:
            for name, client in runtime.clients.items():
                try:
                    poll_connection(name, client, db, clock=clock)
                except ApiError as exc:
                    errors.append(exc)
            # Beside daemons on PostgreSQL, deliver only to sinks no daemon holds: one
            # sender per sink keeps each order's events in order.
            sinks = [c.name for c in runtime.dispatcher.channels]
            leases = (
                PostgresLeases(db.url, [], sinks, member=False)
                if db.is_postgresql
                else LocalLeases()
            )
            leases.rebalance()
            runtime.dispatcher.may_deliver = lambda sink: leases.holds(SINK, sink)
            progress = RunProgress.for_terminal()
            try:
                errors += _archive_and_deliver(runtime, progress, sleep, clock)
            finally:
                leases.close()
                if progress is not None:
                    progress.close()
        finally:
            runtime.close()
    return errors


def _archive_and_deliver(
    runtime: Runtime,
    progress: RunProgress | None,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
) -> list[SyncdError]:
    errors: list[SyncdError] = []
    if progress is not None:
        now = datetime.fromtimestamp(clock(), UTC)
        progress.begin("pdfs", "archiving PDFs", pdf_jobs.count_live(runtime.db, now))
        runtime.archiver.on_outcome = lambda outcome: (
            progress.advance("pdfs") if outcome.kind in ("archived", "failed") else None
        )
    unarchived = runtime.archiver.drain(sleep)
    if unarchived:
        errors.append(
            PdfUnavailable(
                f"{len(unarchived)} PDF(s) not archived yet, kept for the next run: "
                + "; ".join(unarchived[:3])
            )
        )
    if progress is not None:
        for channel in runtime.dispatcher.channels:
            pending = outbox.sink_status(runtime.db, channel.name).pending
            progress.begin(channel.name, f"delivering to {channel.name}", pending)
        runtime.dispatcher.on_delivered = lambda sink, count: progress.advance(sink, count)
    errors += deliver_all(runtime.dispatcher, runtime.config.http.max_attempts, sleep, clock)
    return errors


def deliver_all(
    dispatcher: Dispatcher,
    max_attempts: int,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
) -> list[SyncdError]:
    """Deliver every pending event, giving a failing sink ``max_attempts`` tries."""
    for attempt in range(1, max_attempts + 1):
        result = dispatcher.deliver_due()
        if not result.failing:
            return []
        if attempt < max_attempts and result.next_attempt_at is not None:
            sleep(max(0.0, result.next_attempt_at - clock()))
    failing = [c for c in dispatcher.channels if c.failures or c.disabled]
    return [
        SinkUnavailable(
            f"sink {c.name!r} unavailable, events kept for the next run: {c.last_error}"
        )
        for c in failing
    ]


class Daemon:
    """The long-running service."""

    def __init__(
        self,
        config: Config,
        db: Database,
        *,
        clock: Callable[[], float] = time.time,
        channels: list[Channel] | None = None,
        notifier: Notifier | None = None,
    ):
        # Daemon-only libraries are imported here, off the `run --once` start-up path.
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.schedulers.background import BackgroundScheduler

        from syncd.health import Metrics

        self.config = config
        self.db = db
        self.stop_event = threading.Event()
        self._clock = clock
        self._running = 0
        self._running_changed = threading.Condition()
        self.runtime = build_runtime(config, db, sleep=self._sleep, clock=clock, channels=channels)
        self.notifier = notifier or Notifier()
        workers = poll_workers(config)
        self.scheduler = BackgroundScheduler(
            # The heartbeat has a thread of its own: slow polls must not starve it, but a
            # stuck scheduler loop must (systemd's watchdog then restarts us).
            executors={
                "default": ThreadPoolExecutor(max_workers=workers),
                "heartbeat": ThreadPoolExecutor(max_workers=1),
                "leases": ThreadPoolExecutor(max_workers=1),
            },
            timezone=UTC,
        )
        self.last_heartbeat = time.monotonic()
        self.metrics = Metrics(
            db,
            [c.name for c in config.connections],
            [c.name for c in self.runtime.dispatcher.channels],
            clock,
        )
        self.runtime.dispatcher.on_failure = lambda sink: self.metrics.delivery_failures.labels(
            sink
        ).inc()
        self.health: HealthServer | None = None
        self.leases = leases_for(
            db.url,
            [c.name for c in config.connections],
            [c.name for c in self.runtime.dispatcher.channels],
            is_postgresql=db.is_postgresql,
        )
        self.runtime.dispatcher.may_deliver = lambda sink: self.leases.holds(SINK, sink)
        # Each archived or failed PDF is an event: deliver it now.
        self.runtime.archiver.on_outcome = lambda outcome: (
            self.runtime.dispatcher.wake() if outcome.kind in ("archived", "failed") else None
        )
        self._log = get_logger(job="daemon")

    def _sleep(self, seconds: float) -> None:
        if self.stop_event.wait(seconds):
            raise ShuttingDown

    def _tracked(self, fn: Callable[..., None]) -> Callable[..., None]:
        def run(*args: Any) -> None:
            with self._running_changed:
                self._running += 1
            try:
                fn(*args)
            finally:
                with self._running_changed:
                    self._running -= 1
                    self._running_changed.notify_all()

        return run

    # -- jobs --

    def heartbeat(self) -> None:
        self.last_heartbeat = time.monotonic()
        self.notifier.watchdog()

    def heartbeat_interval(self) -> float:
        watchdog = self.notifier.watchdog_interval
        return max(0.1, min(HEARTBEAT_SECONDS, watchdog / 2 if watchdog else HEARTBEAT_SECONDS))

    def lease_job(self) -> None:
        channels = self.runtime.dispatcher.channels
        sinks_before = {c.name for c in channels if self.leases.holds(SINK, c.name)}
        taken = self.leases.rebalance()
        if any(self.leases.holds(SINK, c.name) for c in channels if c.name not in sinks_before):
            self.runtime.dispatcher.wake()  # a sink just became ours
        for name in taken:
            self._poll_soon(name)

    def _poll_soon(self, name: str) -> None:
        """A connection just taken over is polled when its interval since the last poll
        (by whichever process) is up, not a whole interval from now."""
        connection = next(c for c in self.config.connections if c.name == name)
        state = load_state(self.db, name) or {}
        last = state.get("last_poll_at")
        when = datetime.now(UTC)
        if last is not None:
            when = max(when, last + timedelta(seconds=connection.poll_interval))
        self._reschedule_poll(name, when)

    def _reschedule_poll(self, name: str, when: datetime) -> None:
        from apscheduler.jobstores.base import JobLookupError

        with contextlib.suppress(JobLookupError):  # removed by a concurrent shutdown
            self.scheduler.modify_job(f"poll:{name}", next_run_time=when)

    def poll_job(self, connection: ConnectionConfig) -> None:
        if self.stop_event.is_set() or not self.leases.holds(CONNECTION, connection.name):
            return
        client = self.runtime.clients[connection.name]
        log = get_logger(connection=connection.name, job="poll")
        delay: float | None = None
        started = time.monotonic()
        outcome = "ok"
        try:
            result = poll_connection(connection.name, client, self.db, clock=self._clock)
        except ShuttingDown:
            log.debug("poll abandoned: shutting down")
            return
        except ApiError as exc:
            outcome = outcome_of(exc)
            if isinstance(exc, AuthError):
                self.runtime.dispatcher.wake()  # connection.auth_failed may have been written
            if exc.retry_after is not None and exc.retry_after > connection.poll_interval:
                delay = exc.retry_after  # the server asked us to stay away that long
        except Exception as exc:  # the daemon outlives a failed poll; the next one retries
            outage = database_outage(exc)
            outcome = "database_unavailable" if outage else "crashed"
            if outage:
                log.error("poll failed: database unavailable", error=outage)
            else:
                log.exception("poll crashed")
        else:
            self.runtime.archiver.wake()  # new jobs, or fresh links for waiting ones
            if result.events:
                self.runtime.dispatcher.wake()
            if result.gap_detected:
                delay = next_poll_delay(connection.poll_interval, gap_detected=True)
        self.metrics.polls.labels(connection.name, outcome).inc()
        self.metrics.poll_duration.labels(connection.name).observe(time.monotonic() - started)
        if delay is not None and not self.stop_event.is_set():
            self._reschedule_poll(connection.name, datetime.now(UTC) + timedelta(seconds=delay))

    # -- health --

    def alive(self) -> tuple[bool, dict[str, Any]]:
        age = time.monotonic() - self.last_heartbeat
        ok = self.scheduler.running and age < 3 * self.heartbeat_interval() + 1
        return ok, {"alive": ok, "heartbeat_age_seconds": round(age, 3)}

    def ready(self) -> tuple[bool, dict[str, Any]]:
        from syncd.health import WatchedConnection, readiness

        watched = [WatchedConnection(c.name, c.poll_interval) for c in self.config.connections]
        return readiness(self.db, watched, datetime.fromtimestamp(self._clock(), UTC))

    # -- lifecycle --

    def start(self) -> None:
        now = datetime.now(UTC)
        listen = self.config.daemon.listen
        if listen:
            from syncd.health import HealthServer

            self.health = HealthServer(
                listen, alive=self.alive, ready=self.ready, metrics=self.metrics.render
            )
        self.leases.rebalance()
        self._warn_unauthorized()
        # A stable offset per connection spreads polls over the interval, so many
        # connections (and restarts) do not all poll at the same instant.
        spread_window = max(START_SPREAD_SECONDS, 0.25 * len(self.config.connections))
        for connection in self.config.connections:
            spread = min(spread_window, connection.poll_interval)
            offset = (zlib.crc32(connection.name.encode()) % 1000) / 1000 * spread
            self.scheduler.add_job(
                self._tracked(self.poll_job),
                "interval",
                seconds=connection.poll_interval,
                args=[connection],
                id=f"poll:{connection.name}",
                name=f"poll {connection.name}",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=max(1, int(connection.poll_interval)),
                next_run_time=now + timedelta(seconds=offset),
            )
        shortest = min(c.poll_interval for c in self.config.connections)
        self.scheduler.add_job(
            self.lease_job,
            # Twice per poll interval: a dead process's connections move within one.
            "interval",
            seconds=max(0.25, min(LEASE_SECONDS, shortest / 2)),
            id="leases",
            executor="leases",
            max_instances=1,
            coalesce=True,
        )
        self.scheduler.add_job(
            self.heartbeat,
            "interval",
            seconds=self.heartbeat_interval(),
            id="heartbeat",
            executor="heartbeat",
            max_instances=1,
            coalesce=True,
        )
        self.scheduler.start()
        # The database is open and migrated and the scheduler runs: tell systemd.
        self.notifier.ready(f"polling {len(self.config.connections)} connection(s)")
        # On PostgreSQL other processes append events too (polls of the connections they
        # hold) without waking this dispatcher: look at the outbox every second.
        dispatch_idle = 1.0 if self.db.is_postgresql else 30.0
        self._threads = [
            threading.Thread(
                target=self._tracked(
                    lambda: self.runtime.dispatcher.run(self.stop_event, idle=dispatch_idle)
                ),
                name="syncd-dispatcher",
                daemon=True,
            ),
            threading.Thread(
                target=self._tracked(lambda: self.runtime.archiver.run(self.stop_event)),
                name="syncd-archiver",
                daemon=True,
            ),
        ]
        for thread in self._threads:
            thread.start()
        if self.health is not None:
            self.health.start()
        self._log.info(
            "syncd started",
            connections=[c.name for c in self.config.connections],
            sinks=[c.name for c in self.runtime.dispatcher.channels],
            listen=self.health.address if self.health else None,
        )

    def _warn_unauthorized(self) -> None:
        """Polls repeat a known failure at debug level only: say it once per start."""
        for connection in self.config.connections:
            token = tokens.load(self.db, connection.name)
            if token is not None and token.needs_authorization:
                get_logger(connection=connection.name, job="auth").warning(
                    "connection needs authorization",
                    error=token.auth_error,
                    hint=reauthorize_hint(connection.name),
                )

    def request_stop(self, *_: object) -> None:
        self.stop_event.set()
        self.runtime.dispatcher.wake()
        self.runtime.archiver.wake()

    def wait(self) -> None:
        self.stop_event.wait()

    def _wait_idle(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        with self._running_changed:
            while self._running and time.monotonic() < deadline:
                self._running_changed.wait(deadline - time.monotonic())
            return self._running == 0

    def shutdown(self) -> bool:
        """Stop taking work; let in-flight work finish up to a deadline, then cancel it.

        Returns False when something had to be abandoned (a request that would not end).
        """
        self._log.info("stopping")
        self.notifier.stopping()
        self.request_stop()
        self.scheduler.shutdown(wait=False)
        clean = self._wait_idle(SHUTDOWN_GRACE_SECONDS)
        if not clean:
            # Downloads still running are cut off; their temporary files are removed.
            self.runtime.archiver.stop()
            clean = self._wait_idle(SHUTDOWN_CANCEL_SECONDS)
        if self.health is not None:
            self.health.stop()
        if clean:
            self.runtime.close()
            self.leases.close()  # after the work: a lease must outlive its last poll
        self._log.info("stopped" if clean else "stopped, abandoning in-flight requests")
        return clean


def run_daemon(config: Config) -> int:
    """``syncd run``: serve until SIGTERM or SIGINT, then exit 0."""
    with opened(config, daemon=True) as db:
        daemon = Daemon(config, db)
        previous = {
            sig: signal.signal(sig, daemon.request_stop) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            daemon.start()
            daemon.wait()
        finally:
            clean = daemon.shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if not clean:
            # A request still in flight holds a worker thread; its transaction never
            # began, so leaving now loses nothing.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
    return 0
