"""The dispatcher and the JSONL sink: order, cursors, backoff, dead letters, torn lines."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from syncd.daemon import deliver_all
from syncd.errors import SinkRejected, SinkUnavailable
from syncd.events import StoredEvent
from syncd.outbox import Channel, Dispatcher, matches
from syncd.records import PurchaseOrder
from syncd.sinks.base import Sink, installed_types, sink_class
from syncd.sinks.jsonl import JsonlSink
from syncd.store import outbox
from syncd.store.database import Database, open_database
from syncd.store.mirror import apply_poll

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


class FakeSink(Sink):
    """Records what it is sent; can be told to fail."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.received: list[str] = []
        self.failures_left = 0
        self.reject_ids: set[str] = set()

    @classmethod
    def from_config(cls, config: object) -> FakeSink:
        raise NotImplementedError

    def send(self, events: Sequence[StoredEvent]) -> None:
        if self.failures_left:
            self.failures_left -= 1
            raise SinkUnavailable(f"{self.name} down")
        for index, event in enumerate(events):
            if event.event_id in self.reject_ids:
                raise SinkRejected(f"{self.name} refuses", delivered=index)
            self.received.append(event.event_id)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = open_database(f"sqlite:///{tmp_path / 'syncd.db'}")
    yield database
    database.close()


def seed(db: Database, count: int) -> list[StoredEvent]:
    orders = tuple(
        PurchaseOrder(i, f"PO-{i}", "V", Decimal("1.00"), None, None, None)
        for i in range(1, count + 1)
    )
    apply_poll(db, "band", orders, T0)
    return outbox.read_after(db, 0, 1000)


def test_matches_filters() -> None:
    """No filters: everything; otherwise fnmatch on the type."""
    assert matches("com.inventoryarts.sync.gap_detected", ())
    assert matches(
        "com.inventoryarts.purchase_order.created", ("com.inventoryarts.purchase_order.*",)
    )
    assert not matches("com.inventoryarts.sync.gap_detected", ("*.purchase_order.*",))


def test_delivers_everything_in_order(db: Database) -> None:
    """Every event reaches the sink once, in seq order, and the cursor ends at the last."""
    events = seed(db, 7)
    sink = FakeSink("a")
    result = Dispatcher(db, [Channel(sink)], batch_size=3).deliver_due()
    assert result.delivered == 7
    assert sink.received == [e.event_id for e in events]
    assert outbox.cursor_position(db, "a") == events[-1].seq


def test_failing_sink_does_not_hold_back_another(db: Database) -> None:
    """One sink down: the other still gets everything; the failing one backs off."""
    events = seed(db, 3)
    down, up = FakeSink("down"), FakeSink("up")
    down.failures_left = 1
    clock = Clock()
    dispatcher = Dispatcher(db, [Channel(down), Channel(up)], clock=clock, rand=lambda: 1.0)
    result = dispatcher.deliver_due()
    assert result.failing == ("down",)
    assert up.received == [e.event_id for e in events]
    assert result.next_attempt_at == clock.now + 1.0
    assert outbox.sink_status(db, "down").last_error == "down down"
    assert dispatcher.deliver_due().failing == ("down",)  # still backing off: not tried
    clock.sleep(1.0)
    assert dispatcher.deliver_due().failing == ()
    assert down.received == [e.event_id for e in events]
    assert outbox.sink_status(db, "down").last_error is None


def test_backoff_grows_and_caps(db: Database) -> None:
    """Consecutive failures double the backoff up to the cap."""
    seed(db, 1)
    sink = FakeSink("s")
    sink.failures_left = 10
    clock = Clock()
    dispatcher = Dispatcher(db, [Channel(sink)], clock=clock, rand=lambda: 1.0, backoff_max=4)
    waits = []
    for _ in range(5):
        result = dispatcher.deliver_due()
        assert result.next_attempt_at is not None
        waits.append(result.next_attempt_at - clock.now)
        clock.now = result.next_attempt_at
    assert waits == [1, 2, 4, 4, 4]


def test_type_filter_skips_but_advances(db: Database) -> None:
    """Filtered-out events are not sent, and the cursor moves past them."""
    events = seed(db, 2)
    sink = FakeSink("s")
    Dispatcher(db, [Channel(sink, ("*.sync.*",))]).deliver_due()
    assert sink.received == []
    assert outbox.cursor_position(db, "s") == events[-1].seq


def test_rejected_event_is_dead_lettered_after_max_attempts(db: Database) -> None:
    """A refused event is retried, then dead-lettered; the events around it are delivered."""
    events = seed(db, 3)
    sink = FakeSink("s")
    sink.reject_ids = {events[1].event_id}
    clock = Clock()
    dispatcher = Dispatcher(db, [Channel(sink)], clock=clock, rand=lambda: 1.0, max_attempts=3)
    for _ in range(2):
        result = dispatcher.deliver_due()
        assert result.failing == ("s",)
        assert result.next_attempt_at is not None
        clock.now = result.next_attempt_at
    assert outbox.sink_status(db, "s").dead_letters == 0
    assert dispatcher.deliver_due().failing == ()
    assert sink.received == [events[0].event_id, events[2].event_id]
    status = outbox.sink_status(db, "s")
    assert (status.dead_letters, status.pending) == (1, 0)


def test_sink_that_is_gone_is_disabled(db: Database) -> None:
    """A sink that sets disabled is not tried again; its events stay pending."""
    seed(db, 2)

    class GoneSink(FakeSink):
        def send(self, batch: Sequence[StoredEvent]) -> None:
            self.received.append("tried")
            self.disabled = True
            raise SinkUnavailable("endpoint gone (HTTP 410)")

    sink = GoneSink("gone")
    dispatcher = Dispatcher(db, [Channel(sink)], clock=Clock())
    assert dispatcher.deliver_due().failing == ("gone",)
    result = dispatcher.deliver_due()
    assert (result.failing, result.next_attempt_at) == (("gone",), None)
    assert sink.received == ["tried"]
    status = outbox.sink_status(db, "gone")
    assert status.pending == 2
    assert (status.last_error or "").startswith("disabled:")


def test_partial_batch_advances_only_what_was_taken(db: Database) -> None:
    """delivered=N moves the cursor to the N-th event, not past the batch."""
    events = seed(db, 3)

    class HalfSink(FakeSink):
        def send(self, batch: Sequence[StoredEvent]) -> None:
            self.received.append(batch[0].event_id)
            raise SinkUnavailable("broke after one", delivered=1)

    Dispatcher(db, [Channel(HalfSink("s"))]).deliver_due()
    assert outbox.cursor_position(db, "s") == events[0].seq


def test_deliver_all_gives_up_after_attempts(db: Database) -> None:
    """A sink down for good: max_attempts tries, then SinkUnavailable (exit 4), events kept."""
    seed(db, 2)
    sink = FakeSink("s")
    sink.failures_left = 100
    clock = Clock()
    dispatcher = Dispatcher(db, [Channel(sink)], clock=clock, rand=lambda: 1.0)
    errors = deliver_all(dispatcher, 3, clock.sleep, clock)
    assert [type(e) for e in errors] == [SinkUnavailable]
    assert errors[0].exit_code == 4
    assert sink.failures_left == 97
    assert outbox.sink_status(db, "s").pending == 2


def test_jsonl_appends_one_event_per_line(db: Database, tmp_path: Path) -> None:
    """The file holds each stored payload on its own line."""
    events = seed(db, 3)
    path = tmp_path / "out" / "events.jsonl"
    sink = JsonlSink("file", path)
    Dispatcher(db, [Channel(sink)]).deliver_due()
    sink.close()
    lines = path.read_text().splitlines()
    assert lines == [e.payload for e in events]
    assert all(json.loads(line)["specversion"] == "1.0" for line in lines)


def test_jsonl_cuts_a_torn_last_line(tmp_path: Path) -> None:
    """A line a crash left half-written is removed when the sink opens."""
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"id":"1"}\n{"id":"2"}\n{"id":"3", "da')
    sink = JsonlSink("file", path)
    sink.open()
    sink.close()
    assert path.read_bytes() == b'{"id":"1"}\n{"id":"2"}\n'


def test_jsonl_unwritable_path_is_unavailable(tmp_path: Path) -> None:
    """A path that cannot be opened is SinkUnavailable, not a crash."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SinkUnavailable, match="cannot open"):
        JsonlSink("file", blocker / "events.jsonl").open()


def test_registry_finds_builtin_sinks() -> None:
    """jsonl and stdout are registered as syncd.sinks entry points."""
    assert {"jsonl", "stdout"} <= set(installed_types())
    assert sink_class("jsonl") is JsonlSink


def test_registry_names_missing_type() -> None:
    """An unknown type is a config error (exit 2) that names it."""
    with pytest.raises(Exception, match="'kafka' is not installed") as info:
        sink_class("kafka")
    assert getattr(info.value, "exit_code", None) == 2


def test_file_mode_is_not_world_readable(tmp_path: Path) -> None:
    """The events file is created 0640 (events are business data)."""
    path = tmp_path / "events.jsonl"
    old = os.umask(0)
    sink = JsonlSink("f", path)
    try:
        sink.open()
        sink.close()
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o640
