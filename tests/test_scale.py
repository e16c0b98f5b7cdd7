"""Several `syncd run` processes on one PostgreSQL database (DESIGN §8).

Each test uses its own schema (the `pg_url` fixture); these tests skip without
SYNCD_TEST_DATABASE_URL.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from syncd.config import load_config
from syncd.leases import fair_share, plan
from syncd.records import PurchaseOrder
from syncd.simulator import Simulator
from syncd.store import outbox
from syncd.store.database import open_database
from syncd.store.mirror import apply_poll
from tests.conftest import (
    Setup,
    assert_delivered_in_order,
    read_events,
    run_syncd,
    start_syncd,
)

ORDERS = "/api/v1/purchase_orders.php"


# --- pure planning --------------------------------------------------------------------


def test_fair_share_rounds_up() -> None:
    """Every connection has a taker: shares round up."""
    assert [fair_share(200, n) for n in (1, 2, 3)] == [200, 100, 67]
    assert fair_share(5, 0) == 5


def test_plan_takes_up_to_the_share_and_releases_the_excess() -> None:
    """A node under its share tries more; one over it releases its least preferred."""
    names = [f"c{i}" for i in range(6)]
    step = plan("node-a", names, held=set(), members=2)
    assert (step.release, step.wanted, len(step.candidates)) == ([], 3, 6)
    step = plan("node-a", names, held=set(names), members=3)
    assert (len(step.release), step.wanted, step.candidates) == (4, 0, [])
    assert set(step.release) < set(names)


def test_plan_preferences_differ_between_nodes() -> None:
    """Two nodes do not prefer the same connections (rendezvous hashing)."""
    names = [f"c{i}" for i in range(40)]
    a = set(plan("node-a", names, set(), 2).candidates[:20])
    b = set(plan("node-b", names, set(), 2).candidates[:20])
    assert len(a & b) < 20


# --- processes ----------------------------------------------------------------------


class Cluster:
    """One config with N connections (one simulator each) on a PostgreSQL schema."""

    def __init__(self, tmp_path: Path, url: str, sims: list[Simulator], interval: str) -> None:
        self.sims = {f"c{i}": sim for i, sim in enumerate(sims)}
        self.events_file = tmp_path / "events.jsonl"
        self.procs: list[subprocess.Popen[str]] = []
        env = {}
        blocks = []
        for name, sim in self.sims.items():
            env[f"SECRET_{name}"] = sim.client_secret
            env[f"TOKEN_{name}"] = str(sim.issue_tokens()["refresh_token"])
            blocks.append(
                f"""
[[connections]]
name = "{name}"
base_url = "{sim.base_url}"
client_id = "{sim.client_id}"
client_secret = "${{SECRET_{name}}}"
refresh_token = "${{TOKEN_{name}}}"
poll_interval = "{interval}"
"""
            )
        path = tmp_path / "syncd.toml"
        path.write_text(
            f"""
[daemon]
state_dir = "{tmp_path / "state"}"
log_format = "json"
listen = ""
[database]
url = "{url}"
[http]
timeout = 5
max_attempts = 2
{"".join(blocks)}
[[sinks]]
name = "events-file"
type = "jsonl"
path = "{self.events_file}"
"""
        )
        self.setup = Setup(path, env, tmp_path / "state", self.events_file)
        self.config = load_config(path, env)

    def start(self, *args: str) -> subprocess.Popen[str]:
        proc = start_syncd(self.setup, *(args or ("run",)))
        self.procs.append(proc)
        return proc

    def polls(self) -> dict[str, int]:
        return {name: sim.stats.count(ORDERS) for name, sim in self.sims.items()}

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            proc.communicate(timeout=20)


@pytest.fixture
def cluster(pg_url: str, tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []
    started: list[Simulator] = []

    def make(connections: int, interval: str = "1s", **sim_kwargs: object) -> Cluster:
        sims = [Simulator(seed=i, **sim_kwargs).start() for i in range(connections)]  # type: ignore[arg-type]
        started.extend(sims)
        made.append(Cluster(tmp_path, pg_url, sims, interval))
        return made[-1]

    yield make
    for c in made:
        c.stop()
    for sim in started:
        sim.stop()


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def held_connections(proc: subprocess.Popen[str]) -> set[str]:
    """The connections a stopped process's log says it took and did not give back."""
    _, stderr = proc.communicate(timeout=20)
    held: set[str] = set()
    for line in stderr.splitlines():
        if '"leases changed"' in line:
            record = json.loads(line)
            held |= set(record.get("took_connections", []))
            held -= set(record.get("released", []))
    return held


@pytest.mark.postgres
@pytest.mark.parametrize("processes", [2, 3])
def test_each_connection_polled_once_per_interval(
    cluster: Callable[..., Cluster], processes: int
) -> None:
    """N processes split 6 connections: each is polled about once per interval, not N times."""
    c = cluster(6, interval="1s")
    for _ in range(processes):
        c.start()
    wait_for(lambda: all(n >= 2 for n in c.polls().values()))
    time.sleep(2)  # let the last joiner get its share
    before = c.polls()
    time.sleep(5)
    after = c.polls()
    for name in c.sims:
        assert 3 <= after[name] - before[name] <= 7, (name, before, after)
    c.stop()
    shares = [held_connections(p) for p in c.procs]
    assert set().union(*shares) == set(c.sims)
    assert sum(len(s) for s in shares) == 6  # nobody holds a connection twice
    assert all(shares)  # every process got work


def stored_event_ids(url: str) -> list[str]:
    """Every event id in the outbox, in commit order."""
    db = open_database(url)
    try:
        return [e.event_id for e in outbox.read_after(db, 0, 100_000)]
    finally:
        db.close()


@pytest.mark.postgres
def test_kill_moves_the_connection_within_one_interval(cluster: Callable[..., Cluster]) -> None:
    """kill -9 of a process: its connections are polled by the other within one interval,
    and every event reaches the sink once (after deduplication on id), in order."""
    c = cluster(2, interval="2s", new_order_every=0.5)
    first = c.start()
    wait_for(lambda: all(n >= 1 for n in c.polls().values()))
    second = c.start()
    wait_for(lambda: c.events_file.exists() and len(read_events(c.events_file)) >= 40)
    time.sleep(3)  # the second process takes its share
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    killed_at = time.monotonic()
    counts = c.polls()
    wait_for(lambda: all(n > counts[k] for k, n in c.polls().items()), timeout=10)
    assert time.monotonic() - killed_at <= 2.0 + 1.0  # one interval, plus scheduling slack
    time.sleep(2)
    second.send_signal(signal.SIGTERM)
    second.wait(timeout=20)
    assert run_syncd(c.setup, "run", "--once").code == 0  # flush what is pending
    stored = stored_event_ids(c.config.database.url)
    delivered = read_events(c.events_file)
    assert_delivered_in_order(delivered, stored)


@pytest.mark.postgres
def test_three_processes_fetch_each_pdf_once(cluster: Callable[..., Cluster]) -> None:
    """1,000 PDF jobs, three `run --once` at once: all archived, no PDF fetched twice."""
    c = cluster(1, orders=1000)
    sim = c.sims["c0"]
    orders = tuple(
        PurchaseOrder(
            o["id"],
            o["po_number"],
            o["vendor_name"],
            Decimal(o["grand_total"]),
            o.get("status"),
            o["items_summary"],
            sim.pdf_url(o["id"]),
        )
        for o in sim.orders
    )
    db = open_database(c.config.database.url)
    try:
        apply_poll(db, "c0", orders, datetime.now(UTC))
    finally:
        db.close()
    procs = [c.start("run", "--once") for _ in range(3)]
    for proc in procs:
        proc.communicate(timeout=120)  # drain the pipes: a full one would stall the process
    assert [p.returncode for p in procs] == [0, 0, 0]
    fetched: dict[str, int] = {}
    for record in sim.stats.requests:
        if record.path == "/print_po.php":
            fetched[record.query["po_id"]] = fetched.get(record.query["po_id"], 0) + 1
    assert len(fetched) == 1000
    assert max(fetched.values()) == 1
    assert len(list((c.setup.state_dir / "pdfs").rglob("*.pdf"))) == 1000


@pytest.mark.postgres
def test_db_copy_moves_a_sqlite_mirror_to_postgresql(
    sim: Simulator, make_config: Callable[..., Setup], pg_url: str
) -> None:
    """db copy fills an empty PostgreSQL with everything; syncd goes on there quietly."""
    setup = make_config(sim)
    assert run_syncd(setup, "run", "--once").code == 0
    copied = run_syncd(setup, "db", "copy", "--to", pg_url)
    assert copied.code == 0, copied.output
    assert "purchase_orders    20 rows" in copied.stdout
    again = run_syncd(setup, "db", "copy", "--to", pg_url)
    assert again.code == 2
    assert "already holds syncd data" in again.stderr
    text = setup.path.read_text().replace("[http]", f'[database]\nurl = "{pg_url}"\n\n[http]', 1)
    setup.path.write_text(text)
    before = len(read_events(setup.events_file))
    assert run_syncd(setup, "run", "--once").code == 0
    assert len(read_events(setup.events_file)) == before  # same cursors: nothing resent
    sim.add_order()
    assert run_syncd(setup, "run", "--once").code == 0
    assert read_events(setup.events_file)[before]["type"].endswith("purchase_order.created")


@pytest.mark.postgres
def test_sink_order_holds_while_processes_are_killed_and_restarted(
    cluster: Callable[..., Cluster],
) -> None:
    """Orders keep changing while processes are killed (-9) and restarted: the sink ends
    with every event (after deduplication on id), each order's events in order."""
    c = cluster(2, interval="1s", new_order_every=0.4, change_every=0.3)
    running = [c.start(), c.start()]
    wait_for(lambda: c.events_file.exists() and len(read_events(c.events_file)) >= 40)
    for round_ in range(3):
        time.sleep(1.5)
        victim = running.pop(round_ % len(running))
        victim.send_signal(signal.SIGKILL)
        victim.communicate(timeout=10)
        running.append(c.start())
    time.sleep(2)
    c.stop()
    # Deliver what is still pending. Orders keep changing, so a PDF link may die between
    # poll and download (exit 4, the job waits for the next link): events are what counts.
    assert run_syncd(c.setup, "run", "--once").code in (0, 4)
    stored = stored_event_ids(c.config.database.url)
    delivered = read_events(c.events_file)
    assert any(e["type"].endswith("purchase_order.updated") for e in delivered)
    assert_delivered_in_order(delivered, stored)


@pytest.mark.postgres
def test_one_shot_run_leaves_a_daemons_sink_alone(cluster: Callable[..., Cluster]) -> None:
    """`run --once` beside a daemon on PostgreSQL polls, but sends nothing to the sink the
    daemon holds: one sender per sink keeps each order's events in order."""
    c = cluster(1, interval="1s")
    daemon = c.start()
    wait_for(lambda: c.events_file.exists() and len(read_events(c.events_file)) >= 20)
    time.sleep(1)
    delivered = len(read_events(c.events_file))
    daemon.send_signal(signal.SIGSTOP)  # the daemon keeps its leases but sends nothing
    try:
        c.sims["c0"].add_order()
        result = run_syncd(c.setup, "run", "--once")
        assert result.code == 0, result.output
        assert len(read_events(c.events_file)) == delivered
    finally:
        daemon.send_signal(signal.SIGCONT)
    wait_for(lambda: len(read_events(c.events_file)) > delivered)
