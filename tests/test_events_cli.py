"""Event delivery from the command line: list, replay, dead letters, and kill -9."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime

from syncd.config import load_config
from syncd.simulator import Simulator
from syncd.store import outbox
from syncd.store.database import open_database
from tests.conftest import (
    Setup,
    assert_delivered_in_order,
    read_events,
    run_syncd,
    seed_outbox,
    start_syncd,
)


def synced(sim: Simulator, make_config: Callable[..., Setup]) -> Setup:
    setup = make_config(sim)
    result = run_syncd(setup, "run", "--once")
    assert result.code == 0, result.output
    return setup


def test_events_list_shows_the_outbox(sim: Simulator, make_config: Callable[..., Setup]) -> None:
    """events list prints one line per event; --type filters; --json prints CloudEvents."""
    setup = synced(sim, make_config)
    plain = run_syncd(setup, "events", "list", "--limit", "100")
    assert plain.code == 0, plain.output
    assert len(plain.stdout.splitlines()) == 40  # 20 created + 20 pdf_archived
    created = run_syncd(setup, "events", "list", "--type", "*.created", "--json")
    bodies = [json.loads(line) for line in created.stdout.splitlines()]
    assert len(bodies) == 20
    assert {b["type"] for b in bodies} == {"com.inventoryarts.purchase_order.created"}


def test_replay_resends_the_same_ids(sim: Simulator, make_config: Callable[..., Setup]) -> None:
    """events replay re-delivers every event to the sink with its original id."""
    setup = synced(sim, make_config)
    first = [e["id"] for e in read_events(setup.events_file)]
    result = run_syncd(setup, "events", "replay", "--sink", "events-file")
    assert result.code == 0, result.output
    assert [e["id"] for e in read_events(setup.events_file)] == first + first


def test_replay_from_seq(sim: Simulator, make_config: Callable[..., Setup]) -> None:
    """--from-seq N re-delivers only events N and later."""
    setup = synced(sim, make_config)
    before = read_events(setup.events_file)
    result = run_syncd(setup, "events", "replay", "--sink", "events-file", "--from-seq", "31")
    assert result.code == 0, result.output
    assert [e["id"] for e in read_events(setup.events_file)[40:]] == [e["id"] for e in before[30:]]


def test_replay_unknown_sink_is_a_usage_error(
    sim: Simulator, make_config: Callable[..., Setup]
) -> None:
    """An unconfigured sink name exits 2 naming the sinks that exist."""
    result = run_syncd(make_config(sim), "events", "replay", "--sink", "nope")
    assert result.code == 2
    assert "no sink named 'nope' (configured: events-file)" in result.stderr


def test_dead_letters_listed_and_retried(sim: Simulator, make_config: Callable[..., Setup]) -> None:
    """A dead letter is listed, and --retry delivers it and forgets it."""
    setup = synced(sim, make_config)
    config = load_config(setup.path, setup.env)
    db = open_database(config.database.url)
    try:
        event = outbox.read_after(db, 0, 1)[0]
        outbox.dead_letter(db, "events-file", event, "refused: HTTP 422", datetime.now(UTC))
    finally:
        db.close()
    listed = run_syncd(setup, "events", "dead-letters")
    assert listed.code == 0
    assert event.event_id in listed.stdout
    assert "refused: HTTP 422" in listed.stdout
    retried = run_syncd(setup, "events", "dead-letters", "--retry")
    assert retried.code == 0, retried.output
    assert read_events(setup.events_file)[-1]["id"] == event.event_id
    assert run_syncd(setup, "events", "dead-letters").stdout.strip() == "no dead letters"


def _lines(setup: Setup) -> int:
    return setup.events_file.read_bytes().count(b"\n") if setup.events_file.exists() else 0


def test_kill_during_delivery_loses_nothing(
    sim: Simulator, make_config: Callable[..., Setup]
) -> None:
    """kill -9 while 20,000 events are delivered: after a restart every event is in the
    file, each line whole, each order's events in order."""
    setup = make_config(sim)
    seed_outbox(setup, 20_000)
    for _ in range(2):
        before = _lines(setup)
        proc = start_syncd(setup, "run", "--once")
        deadline = time.monotonic() + 30
        while _lines(setup) == before and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)  # delivery has started and is far from done
        proc.wait(timeout=10)
        assert before < _lines(setup) < 20_000
    result = run_syncd(setup, "run", "--once", timeout=120)
    assert result.code == 0, result.output
    lines = setup.events_file.read_text().splitlines()
    events = [json.loads(line) for line in lines]  # every line is whole JSON
    db = open_database(load_config(setup.path, setup.env).database.url)
    try:
        stored: list[str] = []
        after = 0
        while batch := outbox.read_after(db, after, 5000):
            stored += [e.event_id for e in batch]
            after = batch[-1].seq
    finally:
        db.close()
    assert_delivered_in_order(events, stored)
