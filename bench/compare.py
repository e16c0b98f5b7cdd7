"""Comparison benchmarks (not a test): syncd against floors and against dlt.

    .venv/bin/python bench/compare.py                     # every part, ~10 minutes
    .venv/bin/python bench/compare.py --parts poll,oneshot --runs 5
    SYNCD_BENCH_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test \\
        .venv/bin/python bench/compare.py --parts scale,outbox --databases sqlite,postgresql

breakdown  Start-up costs behind ``oneshot``: interpreter, imports, SSL contexts.

Parts (each prints medians; syncd and its baseline are timed alternately, side by side):

poll     Steady-state poll cycle in process: ``poll_connection`` (InventoryArtsClient +
         TokenManager as ``build_runtime`` builds them, SQLite) on 20 unchanged orders,
         against the floor: a bare httpx GET, ``json()`` and one sqlite3 transaction
         upserting the same 20 rows (WAL, synchronous=FULL, like syncd). Target <= 1.5x.
oneshot  Whole process: ``syncd run --once`` on an already-synced account (tokens valid,
         PDFs archived) against a dlt ``rest_api`` pipeline merging into SQLite on ``id``
         and against a floor script (httpx GET + sqlite3 upsert), each a subprocess.
         Targets: syncd >= 3x faster than dlt, <= 2.5x the floor. Also prints the top
         ``-X importtime`` entries of ``syncd run --once``.
scale    Steady-state poll cycle with 1,000,000 mirrored orders against 1,000 (rows
         seeded with SQL for the same connection). Target ratio <= 1.2.
outbox   Delivering the newest 100 events to a JSONL sink with 1,000,000 delivered
         events behind them (cursor at the end) against 1,000. Target ratio <= 1.2.

``scale`` and ``outbox`` run on each of ``--databases`` (sqlite, postgresql); PostgreSQL
uses a fresh schema on SYNCD_BENCH_DATABASE_URL and drops it afterwards. Needs the
``bench`` extra (``pip install -e '.[bench]'``) for dlt.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlalchemy import text

from syncd.config import load_config
from syncd.daemon import Runtime, build_runtime
from syncd.logging import configure_logging
from syncd.outbox import Channel, Dispatcher
from syncd.poller import poll_connection
from syncd.simulator import Simulator
from syncd.sinks.jsonl import JsonlSink
from syncd.store.database import Database, open_database

ORDERS_PATH = "api/v1/purchase_orders.php"
NAME = "bench"
PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"

UPSERT = """
INSERT INTO purchase_orders (connection, id, po_number, vendor_name, grand_total, status,
    items_summary, version, first_seen_at, last_seen_at, updated_at)
VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?)
ON CONFLICT (connection, id) DO UPDATE SET po_number = excluded.po_number,
    vendor_name = excluded.vendor_name, grand_total = excluded.grand_total,
    status = excluded.status, items_summary = excluded.items_summary,
    last_seen_at = excluded.last_seen_at
"""
FLOOR_SCHEMA = """
CREATE TABLE IF NOT EXISTS purchase_orders (connection TEXT, id INTEGER, po_number TEXT,
    vendor_name TEXT, grand_total TEXT, status TEXT, items_summary TEXT, version INTEGER,
    first_seen_at TEXT, last_seen_at TEXT, updated_at TEXT, PRIMARY KEY (connection, id))
"""


def median_ms(values: list[float]) -> float:
    return 1000 * statistics.median(values)


def fmt_runs(values: list[float]) -> str:
    return ", ".join(f"{1000 * v:.2f}" for v in values)


# -- set-up shared by the in-process parts ------------------------------------------------


def write_config(
    tmp: Path, sim: Simulator, url: str, sinks: str = ""
) -> tuple[Path, dict[str, str]]:
    path = tmp / "syncd.toml"
    path.write_text(
        f'[daemon]\nstate_dir = "{tmp}/state"\nlog_level = "error"\nlisten = ""\n'
        f'[database]\nurl = "{url}"\n'
        f'[[connections]]\nname = "{NAME}"\nbase_url = "{sim.base_url}"\n'
        f'client_id = "{sim.client_id}"\nclient_secret = "${{S}}"\n'
        f'refresh_token = "${{R}}"\n' + sinks
    )
    return path, {"S": sim.client_secret, "R": str(sim.issue_tokens()["refresh_token"])}


@dataclass
class Synced:
    """An account polled once, PDFs archived: every later poll is a steady-state one."""

    sim: Simulator
    db: Database
    runtime: Runtime

    def poll(self) -> None:
        result = poll_connection(NAME, self.runtime.clients[NAME], self.db)
        assert result.created == result.updated == result.events == 0, result


@contextlib.contextmanager
def synced_account(url: str | None = None, seed: int = 7) -> Iterator[Synced]:
    with Simulator(seed=seed, orders=25).start() as sim, tempfile.TemporaryDirectory() as d:
        url = url or f"sqlite:///{d}/state/syncd.db"
        path, env = write_config(Path(d), sim, url)
        config = load_config(path, env)
        Path(d, "state").mkdir()
        db = open_database(config.database.url)
        runtime = build_runtime(config, db, channels=[])
        try:
            poll_connection(NAME, runtime.clients[NAME], db)  # creates 20, refreshes token
            assert runtime.archiver.drain(time.sleep) == []
            synced = Synced(sim, db, runtime)
            for _ in range(5):
                synced.poll()
            yield synced
        finally:
            runtime.close()
            db.close()


@contextlib.contextmanager
def pg_schema() -> Iterator[str]:
    base = os.environ.get("SYNCD_BENCH_DATABASE_URL", PG_DEFAULT)
    schema = "bench_" + uuid.uuid4().hex[:8]
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{base}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def timed(fn: Callable[[], object], n: int) -> float:
    """Mean seconds per call over n calls."""
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


# -- 1. steady-state poll against the in-process floor -------------------------------------


class Floor:
    """A bare GET, json() and one sqlite3 upsert transaction of the 20 rows."""

    def __init__(self, sim: Simulator, path: Path) -> None:
        self.url = sim.base_url + ORDERS_PATH
        self.headers = {"Authorization": f"Bearer {sim.issue_tokens()['access_token']}"}
        self.http = httpx.Client()
        self.sql = sqlite3.connect(path, isolation_level=None)
        self.sql.execute("PRAGMA journal_mode = WAL")
        self.sql.execute("PRAGMA synchronous = FULL")
        self.sql.execute(FLOOR_SCHEMA)

    def cycle(self) -> None:
        orders = self.http.get(self.url, headers=self.headers).json()
        now = datetime.now(UTC).isoformat()
        rows = [
            (
                NAME,
                o["id"],
                o["po_number"],
                o["vendor_name"],
                str(o["grand_total"]),
                o.get("status"),
                o.get("items_summary"),
                now,
                now,
                now,
            )
            for o in orders
        ]
        self.sql.execute("BEGIN IMMEDIATE")
        self.sql.executemany(UPSERT, rows)
        self.sql.execute("COMMIT")

    def close(self) -> None:
        self.http.close()
        self.sql.close()


def _bare_get(sim: Simulator) -> Callable[[], object]:
    http = httpx.Client()
    url = sim.base_url + ORDERS_PATH
    headers = {"Authorization": f"Bearer {sim.issue_tokens()['access_token']}"}
    return lambda: http.get(url, headers=headers).json()


def part_poll(runs: int, per_run: int) -> dict[str, Any]:
    with synced_account() as acct, tempfile.TemporaryDirectory() as d:
        get = _bare_get(acct.sim)
        floor = Floor(acct.sim, Path(d) / "floor.db")
        for _ in range(5):
            floor.cycle()
        s_runs, f_runs, g_runs = [], [], []
        for _ in range(runs):
            s_runs.append(timed(acct.poll, per_run))
            f_runs.append(timed(floor.cycle, per_run))
            g_runs.append(timed(get, per_run))
        floor.close()
    s, f, g = median_ms(s_runs), median_ms(f_runs), median_ms(g_runs)
    print(f"poll: steady-state cycle, 20 unchanged orders, SQLite ({runs} runs x {per_run})")
    print(f"  syncd poll_connection: {s:.2f} ms  [{fmt_runs(s_runs)}]")
    print(f"  floor (httpx+sqlite3): {f:.2f} ms  [{fmt_runs(f_runs)}]")
    print(f"  bare GET + json():     {g:.2f} ms  [{fmt_runs(g_runs)}]")
    print(
        f"  ratio {s / f:.2f}x (target <= 1.5x); beyond the GET: syncd {s - g:.2f} ms, "
        f"floor {f - g:.2f} ms",
        flush=True,
    )
    return {
        "syncd_ms": s,
        "floor_ms": f,
        "get_ms": g,
        "ratio": s / f,
        "syncd_runs_ms": [1000 * v for v in s_runs],
        "floor_runs_ms": [1000 * v for v in f_runs],
        "get_runs_ms": [1000 * v for v in g_runs],
        "target_ratio": 1.5,
    }


# -- 2. whole process: run --once, dlt, floor ---------------------------------------------

DLT_SCRIPT = """
import sys, dlt
from dlt.sources.rest_api import rest_api_source
base, token, db, pipelines = sys.argv[1:5]
source = rest_api_source({
    "client": {"base_url": base, "auth": {"type": "bearer", "token": token},
               "paginator": "single_page"},
    "resource_defaults": {"primary_key": "id", "write_disposition": "merge"},
    "resources": [{"name": "purchase_orders",
                   "endpoint": {"path": "api/v1/purchase_orders.php", "data_selector": "$"}}],
})
pipeline = dlt.pipeline(pipeline_name="bench", pipelines_dir=pipelines,
                        destination=dlt.destinations.sqlalchemy(f"sqlite:///{db}"),
                        dataset_name="main", progress="log" if False else None)
info = pipeline.run(source)
info.raise_on_failed_jobs()
"""

FLOOR_SCRIPT = """
import sqlite3, sys
from datetime import UTC, datetime
import httpx
base, token, db = sys.argv[1:4]
orders = httpx.get(base + "api/v1/purchase_orders.php",
                   headers={"Authorization": "Bearer " + token}).json()
sql = sqlite3.connect(db, isolation_level=None)
sql.execute("PRAGMA journal_mode = WAL")
sql.execute("PRAGMA synchronous = FULL")
sql.execute('''%SCHEMA%''')
now = datetime.now(UTC).isoformat()
sql.execute("BEGIN IMMEDIATE")
sql.executemany('''%UPSERT%''', [("bench", o["id"], o["po_number"], o["vendor_name"],
    str(o["grand_total"]), o.get("status"), o.get("items_summary"), now, now, now)
    for o in orders])
sql.execute("COMMIT")
sql.close()
""".replace("%SCHEMA%", FLOOR_SCHEMA).replace("%UPSERT%", UPSERT)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a timed process. Bytecode caching stays on, as for an
    installed package (pip and the Docker image compile it): with
    PYTHONDONTWRITEBYTECODE set, syncd's editable sources would be recompiled on every
    start while dlt's and the floor's installed libraries would not."""
    env = {**os.environ, **(extra or {})}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def run_timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(
        cmd,
        env=child_env(env),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return time.perf_counter() - start


def importtime_top(
    cmd: list[str], env: dict[str, str], top: int = 12
) -> list[tuple[int, int, str]]:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *cmd],
        env=child_env(env),
        capture_output=True,
        text=True,
        check=True,
    )
    rows = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        self_us, cum_us, name = line.split(":", 1)[1].split("|")
        rows.append((int(self_us), int(cum_us), name.rstrip()))
    toplevel = [r for r in rows if not r[2].startswith("  ")]  # "| name": one space = top
    toplevel = [(s, c, n.strip()) for s, c, n in toplevel]
    return sorted(toplevel, key=lambda r: -r[1])[:top]


def part_oneshot(runs: int) -> dict[str, Any]:
    with Simulator(seed=7, orders=25).start() as sim, tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        path, env = write_config(tmp, sim, f"sqlite:///{d}/state/syncd.db")
        syncd_cmd = [sys.executable, "-m", "syncd", "--config", str(path), "run", "--once"]
        token = str(sim.issue_tokens()["access_token"])
        (tmp / "dlt_job.py").write_text(DLT_SCRIPT)
        (tmp / "floor_job.py").write_text(FLOOR_SCRIPT)
        dlt_cmd = [
            sys.executable,
            str(tmp / "dlt_job.py"),
            sim.base_url,
            token,
            str(tmp / "dlt.db"),
            str(tmp / "pipelines"),
        ]
        floor_cmd = [
            sys.executable,
            str(tmp / "floor_job.py"),
            sim.base_url,
            token,
            str(tmp / "floor.db"),
        ]
        dlt_env = {"RUNTIME__DLTHUB_TELEMETRY": "false", "DLT_DATA_DIR": str(tmp / "dltdata")}
        # Warm state: first sync (token refresh, 20 PDFs, tables), then one quiet run each.
        for _ in range(2):
            run_timed(syncd_cmd, env)
            run_timed(dlt_cmd, dlt_env)
            run_timed(floor_cmd)
        with contextlib.closing(sqlite3.connect(tmp / "dlt.db")) as c:
            dlt_rows = c.execute("SELECT count(*) FROM purchase_orders").fetchone()[0]
        assert dlt_rows == 20, dlt_rows  # merged on id, not appended
        s_runs, d_runs, f_runs = [], [], []
        for _ in range(runs):
            s_runs.append(run_timed(syncd_cmd, env))
            d_runs.append(run_timed(dlt_cmd, dlt_env))
            f_runs.append(run_timed(floor_cmd))
        top = importtime_top(["-m", "syncd", "--config", str(path), "run", "--once"], env)
        bare = [run_timed([sys.executable, "-c", "pass"]) for _ in range(runs)]
    s, dl, f, b = (median_ms(x) for x in (s_runs, d_runs, f_runs, bare))
    print(f"oneshot: whole process, nothing new, warm tokens ({runs} runs, wall clock)")
    print(f"  syncd run --once: {s:.0f} ms  [{fmt_runs(s_runs)}]")
    print(f"  dlt rest_api merge into SQLite: {dl:.0f} ms  [{fmt_runs(d_runs)}]")
    print(f"  floor script (httpx + sqlite3): {f:.0f} ms  [{fmt_runs(f_runs)}]")
    print(f"  bare `python -c pass`: {b:.0f} ms")
    print(
        f"  dlt / syncd = {dl / s:.2f}x (target >= 3x); syncd / floor = {s / f:.2f}x "
        f"(target <= 2.5x)"
    )
    print("  -X importtime, top-level imports of `syncd run --once` by cumulative time:")
    for _self_us, cum_us, name in top:
        print(f"    {cum_us / 1000:7.1f} ms  {name}")
    sys.stdout.flush()
    return {
        "syncd_ms": s,
        "dlt_ms": dl,
        "floor_ms": f,
        "bare_ms": b,
        "dlt_over_syncd": dl / s,
        "syncd_over_floor": s / f,
        "importtime": top,
        "syncd_runs_ms": [1000 * v for v in s_runs],
        "dlt_runs_ms": [1000 * v for v in d_runs],
        "floor_runs_ms": [1000 * v for v in f_runs],
        "target_dlt_over_syncd": 3.0,
        "target_syncd_over_floor": 2.5,
    }


BREAKDOWN = {
    "python -c pass": "pass",
    "import httpx, sqlite3 (the floor's imports)": "import httpx, sqlite3",
    "import sqlalchemy": "import sqlalchemy",
    "import typer._adapters (pydantic TypeAdapters)": "import typer._adapters",
    "import apscheduler, prometheus_client, cryptography.fernet": (
        "import apscheduler.schedulers.background, prometheus_client, cryptography.fernet"
    ),
    "import syncd.cli, syncd.daemon": "import syncd.cli, syncd.daemon",
    "import httpx, then 3 x httpx.Client() (an SSL context each)": (
        "import httpx; [httpx.Client() for _ in range(3)]"
    ),
}


def part_breakdown(runs: int) -> dict[str, float]:
    """Where a `run --once` process spends its time: imports, measured as processes."""
    results = {}
    print(f"breakdown: wall clock of `python -c ...` processes (median of {runs})")
    for label, code in BREAKDOWN.items():
        results[label] = median_ms([run_timed([sys.executable, "-c", code]) for _ in range(runs)])
        print(f"  {results[label]:7.0f} ms  {label}", flush=True)
    return results


# -- 3. mirror size and outbox size -------------------------------------------------------

TS = "2026-01-01 00:00:00.000000"


def seed_mirror(db: Database, rows: int) -> None:
    with db.write() as conn:
        if db.is_sqlite:
            conn.execute(
                text(
                    "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n "
                    "WHERE x < :rows) INSERT INTO purchase_orders SELECT :c, 100000000 + x, "
                    "'PO-' || x, 'Vendor ' || (x % 500), '1200.50', 'open', 'Item A, Item B', 1, "
                    ":ts, :ts, :ts FROM n"
                ),
                {"rows": rows, "c": NAME, "ts": TS},
            )
        else:
            conn.execute(
                text(
                    "INSERT INTO purchase_orders SELECT :c, 100000000 + g, 'PO-' || g, "
                    "'Vendor ' || (g % 500), 1200.50, 'open', 'Item A, Item B', 1, "
                    "now(), now(), now() "
                    "FROM generate_series(1, :rows) g"
                ),
                {"rows": rows, "c": NAME},
            )
    with db.engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
        conn.commit()


def size_figures(
    title: str, label: str, small: int, big: int, small_runs: list[float], big_runs: list[float]
) -> dict[str, Any]:
    """Print a big-against-small comparison (scale, outbox) and return its JSON."""
    s, b = median_ms(small_runs), median_ms(big_runs)
    print(title)
    print(f"  {small:,} {label}: {s:.2f} ms  [{fmt_runs(small_runs)}]")
    print(f"  {big:,} {label}: {b:.2f} ms  [{fmt_runs(big_runs)}]")
    print(f"  ratio {b / s:.2f}x (target <= 1.2x)", flush=True)
    return {
        "small_ms": s,
        "big_ms": b,
        "ratio": b / s,
        "small_rows": small,
        "big_rows": big,
        "small_runs_ms": [1000 * v for v in small_runs],
        "big_runs_ms": [1000 * v for v in big_runs],
        "target_ratio": 1.2,
    }


def part_scale(kind: str, runs: int, per_run: int, big: int, small: int) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        urls = (
            [stack.enter_context(pg_schema()), stack.enter_context(pg_schema())]
            if kind == "postgresql"
            else [None, None]
        )
        accounts = []
        for url, rows in zip(urls, (small, big), strict=True):
            acct = stack.enter_context(synced_account(url))
            t0 = time.perf_counter()
            seed_mirror(acct.db, rows - 20)
            print(
                f"  seeded {rows - 20} rows on {kind} in {time.perf_counter() - t0:.1f} s",
                flush=True,
            )
            for _ in range(5):
                acct.poll()
            accounts.append(acct)
        small_runs, big_runs = [], []
        for _ in range(runs):
            small_runs.append(timed(accounts[0].poll, per_run))
            big_runs.append(timed(accounts[1].poll, per_run))
    title = f"scale ({kind}): steady-state poll cycle, {runs} runs x {per_run}"
    return size_figures(title, "mirrored", small, big, small_runs, big_runs)


PAYLOAD = json.dumps(
    {
        "specversion": "1.0",
        "id": "x",
        "source": "urn:syncd:bench",
        "type": "com.inventoryarts.purchase_order.created",
        "subject": "1",
        "time": "2026-01-01T00:00:00Z",
        "datacontenttype": "application/json",
        "data": {
            "purchase_order": {
                "id": 1,
                "po_number": "PO-2026-0001",
                "vendor_name": "Music & Arts Center",
                "grand_total": "1200.50",
                "status": "open",
                "items_summary": "Clarinet x2, reeds x10",
                "version": 1,
            }
        },
    }
)


class OutboxSetup:
    def __init__(self, db: Database, rows: int, path: Path) -> None:
        self.db = db
        self.counter = 0
        with db.write() as conn:
            if db.is_sqlite:
                conn.execute(
                    text(
                        "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n "
                        "WHERE x < :rows) INSERT INTO outbox (event_id, connection, type, subject, "
                        "created_at, payload) SELECT 'old-' || x, :c, "
                        "'com.inventoryarts.purchase_order.created', x, :ts, :p FROM n"
                    ),
                    {"rows": rows, "c": NAME, "ts": TS, "p": PAYLOAD},
                )
            else:
                conn.execute(
                    text(
                        "INSERT INTO outbox (event_id, connection, type, subject, created_at, "
                        "payload) SELECT 'old-' || g, :c, "
                        "'com.inventoryarts.purchase_order.created', g::text, now(), :p "
                        "FROM generate_series(1, :rows) g"
                    ),
                    {"rows": rows, "c": NAME, "p": PAYLOAD},
                )
            last = conn.execute(text("SELECT max(seq) FROM outbox")).scalar_one()
            conn.execute(
                text(
                    "INSERT INTO sink_cursors (sink, position, delivered, updated_at) "
                    "VALUES ('file', :p, :p, :ts)"
                ),
                {"p": last, "ts": datetime.now(UTC)},
            )
        with db.engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()
        self.dispatcher = Dispatcher(db, [Channel(JsonlSink("file", path), ())])

    def add_new(self, n: int = 100) -> None:
        with self.db.write() as conn:
            conn.execute(
                text(
                    "INSERT INTO outbox (event_id, connection, type, subject, created_at, payload) "
                    "VALUES (:e, :c, 'com.inventoryarts.purchase_order.created', :s, :ts, :p)"
                ),
                [
                    {
                        "e": f"new-{self.counter + i}",
                        "c": NAME,
                        "s": str(i),
                        "ts": datetime.now(UTC),
                        "p": PAYLOAD,
                    }
                    for i in range(n)
                ],
            )
        self.counter += n

    def deliver(self) -> float:
        self.add_new()
        start = time.perf_counter()
        result = self.dispatcher.deliver_due()
        elapsed = time.perf_counter() - start
        assert result.delivered == 100, result
        assert not result.failing, result
        return elapsed


def part_outbox(kind: str, runs: int, big: int, small: int) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        d = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        setups = []
        for i, rows in enumerate((small, big)):
            url = (
                stack.enter_context(pg_schema())
                if kind == "postgresql"
                else f"sqlite:///{d}/o{i}.db"
            )
            db = open_database(url)
            stack.callback(db.close)
            t0 = time.perf_counter()
            setup = OutboxSetup(db, rows, d / f"events{i}.jsonl")
            print(
                f"  seeded {rows} delivered events on {kind} in {time.perf_counter() - t0:.1f} s",
                flush=True,
            )
            stack.callback(setup.dispatcher.close)
            for _ in range(3):
                setup.deliver()
            setups.append(setup)
        small_runs, big_runs = [], []
        for _ in range(runs):
            small_runs.append(setups[0].deliver())
            big_runs.append(setups[1].deliver())
    title = f"outbox ({kind}): deliver the newest 100 events to JSONL, {runs} runs"
    return size_figures(title, "delivered behind", small, big, small_runs, big_runs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--parts", default="poll,oneshot,breakdown,scale,outbox")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--per-run", type=int, default=50, help="polls per timed run")
    parser.add_argument("--big", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    configure_logging("error", "json")
    parts = args.parts.split(",")
    results: dict[str, Any] = {
        "params": {"runs": args.runs, "per_run": args.per_run, "big": args.big, "small": args.small}
    }

    def record(key: str, figures: Any) -> None:
        """Written after every part, so a later failure keeps what was measured."""
        results[key] = figures
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, default=str))

    if "poll" in parts:
        record("poll", part_poll(args.runs, args.per_run))
    if "oneshot" in parts:
        record("oneshot", part_oneshot(args.runs))
    if "breakdown" in parts:
        record("breakdown", part_breakdown(args.runs))
    for kind in args.databases.split(","):
        if "scale" in parts:
            record(f"scale_{kind}", part_scale(kind, args.runs, args.per_run, args.big, args.small))
        if "outbox" in parts:
            record(f"outbox_{kind}", part_outbox(kind, args.runs, args.big, args.small))


if __name__ == "__main__":
    main()
