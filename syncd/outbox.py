"""The dispatcher: moves events from the outbox to each sink, on that sink's own cursor.

Every sink advances independently, so one that is down never holds back another. A
sink that fails backs off (full jitter, capped) and logs the failure once and its
recovery once. An event a sink refuses for good goes to the dead letters and delivery
goes on. The dispatcher never talks to the API.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatchcase

from syncd.backoff import full_jitter
from syncd.errors import SinkError, SinkRejected
from syncd.events import StoredEvent
from syncd.logging import get_logger
from syncd.sinks.base import Sink
from syncd.store import outbox
from syncd.store.database import Database, database_outage

BATCH_SIZE = 500
BACKOFF_BASE = 1.0
BACKOFF_MAX = 300.0


def matches(event_type: str, filters: Sequence[str]) -> bool:
    """True when a sink with these ``types`` filters wants this event (none: all)."""
    return not filters or any(fnmatchcase(event_type, pattern) for pattern in filters)


@dataclass
class Channel:
    """A sink and the state of delivery to it."""

    sink: Sink
    filters: tuple[str, ...] = ()
    failures: int = 0
    next_attempt_at: float = 0.0
    last_error: str | None = None
    opened: bool = False
    disabled: bool = False  # the sink said it is gone for good (webhook 410)
    refused_id: str | None = None  # the event the sink keeps refusing, and how often
    refusals: int = 0

    @property
    def name(self) -> str:
        return self.sink.name


@dataclass(frozen=True)
class Round:
    """What one pass over the sinks achieved."""

    delivered: int
    failing: tuple[str, ...]
    next_attempt_at: float | None  # the earliest time a failing sink may be tried again


class Dispatcher:
    def __init__(
        self,
        db: Database,
        channels: Sequence[Channel],
        *,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        batch_size: int = BATCH_SIZE,
        backoff_max: float = BACKOFF_MAX,
        max_attempts: int = 6,
    ) -> None:
        self._db = db
        self._max_attempts = max_attempts
        # Told the sink name of every failed send (the daemon counts them for /metrics),
        # and of every delivered batch with its size (progress for run --once).
        self.on_failure: Callable[[str], object] = lambda _sink: None
        self.on_delivered: Callable[[str, int], object] = lambda _sink, _count: None
        # Several processes on one PostgreSQL: only the holder of a sink's lease sends to it.
        self.may_deliver: Callable[[str], bool] = lambda _sink: True
        self.channels = list(channels)
        self._clock = clock
        self._rand = rand
        self._batch_size = batch_size
        self._backoff_max = backoff_max
        self._wake = threading.Event()

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def deliver_due(self) -> Round:
        """Deliver every pending event to every sink that is not backing off.

        Sinks take turns, one batch each, so a slow sink does not hold back the others.
        """
        delivered, failing = 0, []
        active = []
        for channel in self.channels:
            if not self.may_deliver(channel.name):
                continue
            if channel.disabled or channel.next_attempt_at > self._clock():
                failing.append(channel.name)
            else:
                active.append(channel)
        while active:
            for channel in list(active):
                count, state = self._deliver_batch(channel)
                delivered += count
                if state != "more":
                    active.remove(channel)
                if state == "failed":
                    failing.append(channel.name)
        waits = [c.next_attempt_at for c in self.channels if c.failures and not c.disabled]
        return Round(delivered, tuple(failing), min(waits) if waits else None)

    def _deliver_batch(self, channel: Channel) -> tuple[int, str]:
        """Send the next batch to one sink: ("more" | "caught_up" | "failed")."""
        position = outbox.cursor_position(self._db, channel.name)
        batch = outbox.read_after(self._db, position, self._batch_size)
        if not batch:
            return 0, "caught_up"
        wanted = [event for event in batch if matches(event.type, channel.filters)]
        try:
            if not channel.opened:
                channel.sink.open()
                channel.opened = True
            if wanted:
                channel.sink.send(wanted)
        except SinkError as exc:
            goes_on = self._failed(channel, batch, wanted, exc)
            return exc.delivered, "more" if goes_on else "failed"
        outbox.advance_cursor(self._db, channel.name, batch[-1].seq, len(wanted), self._now())
        self.on_delivered(channel.name, len(batch))
        self._succeeded(channel)
        return len(wanted), "more"

    def _failed(
        self,
        channel: Channel,
        batch: Sequence[StoredEvent],
        wanted: Sequence[StoredEvent],
        exc: SinkError,
    ) -> bool:
        """Record a failed send; True when delivery can go on (the event was dead-lettered)."""
        log = get_logger(sink=channel.name, job="deliver")
        now = self._now()
        self.on_failure(channel.name)
        if exc.delivered:
            last = wanted[exc.delivered - 1]
            outbox.advance_cursor(self._db, channel.name, last.seq, exc.delivered, now)
        if isinstance(exc, SinkRejected) and exc.delivered < len(wanted):
            refused = wanted[exc.delivered]
            if channel.refused_id != refused.event_id:
                channel.refused_id, channel.refusals = refused.event_id, 0
            channel.refusals += 1
            if channel.refusals >= self._max_attempts:
                # Events the filter skipped before the refused one are passed over with it.
                outbox.dead_letter(self._db, channel.name, refused, str(exc), now)
                log.error("event dead-lettered", event_id=refused.event_id, error=str(exc))
                channel.refused_id, channel.refusals = None, 0
                return True
        if channel.sink.disabled:
            channel.disabled = True
            log.error("sink disabled until syncd restarts; events kept", error=str(exc))
            outbox.record_sink_error(self._db, channel.name, f"disabled: {exc}", now)
            return False
        channel.failures += 1
        delay = full_jitter(channel.failures, BACKOFF_BASE, self._backoff_max, self._rand)
        channel.next_attempt_at = self._clock() + max(delay, 0.05)
        if channel.last_error is None:
            log.error("sink failing, events kept in the outbox", error=str(exc))
        channel.last_error = str(exc)
        channel.opened = False
        with contextlib.suppress(Exception):  # a broken sink may fail to close too
            channel.sink.close()
        outbox.record_sink_error(self._db, channel.name, str(exc), now)
        return False

    def _succeeded(self, channel: Channel) -> None:
        if channel.failures:
            get_logger(sink=channel.name, job="deliver").info(
                "sink recovered", failures=channel.failures
            )
        channel.failures = 0
        channel.next_attempt_at = 0.0
        channel.last_error = None

    # -- driving it --

    def wake(self) -> None:
        """New events were committed: deliver them now."""
        self._wake.set()

    def run(self, stop: threading.Event, idle: float = 30.0) -> None:
        """Deliver until ``stop`` is set: on every wake-up, and when a backoff ends."""
        log = get_logger(job="deliver")
        while not stop.is_set():
            self._wake.clear()
            timeout = idle
            try:
                result = self.deliver_due()
            except Exception as exc:  # a bug or a database outage must not end delivery
                outage = database_outage(exc)
                if outage:
                    log.error("delivery paused: database unavailable", error=outage)
                else:
                    log.exception("delivery round failed; retrying")
                timeout = min(idle, 5.0)
            else:
                if result.next_attempt_at is not None:
                    timeout = min(idle, max(0.0, result.next_attempt_at - self._clock()))
            self._wake.wait(timeout)

    def close(self) -> None:
        for channel in self.channels:
            if channel.opened:
                channel.sink.close()
                channel.opened = False
