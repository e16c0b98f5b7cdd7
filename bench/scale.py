"""Scale-out benchmark (not a test): 200 connections on 1, 2 and 3 processes.

    SYNCD_BENCH_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test \\
        .venv/bin/python bench/scale.py [--interval 30] [--window 60]

For each process count: the poll rate achieved against the expected 200/interval, and
CPU per process (user + system time over the window). Then the takeover time: with
two processes, kill -9 one and measure until every connection was polled again.
Every run uses a fresh schema and one simulator serving all 200 connections.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

from syncd.simulator import Simulator

ORDERS = "/api/v1/purchase_orders.php"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def write_config(
    tmp: Path, url: str, sim: Simulator, n: int, interval: int, listen: str = "", sinks: str = ""
) -> tuple[Path, dict[str, str]]:
    env = {"SECRET": sim.client_secret}
    blocks = []
    for i in range(n):
        env[f"T{i}"] = str(sim.issue_tokens()["refresh_token"])
        blocks.append(
            f'[[connections]]\nname = "c{i}"\nbase_url = "{sim.base_url}"\n'
            f'client_id = "{sim.client_id}"\nclient_secret = "${{SECRET}}"\n'
            f'refresh_token = "${{T{i}}}"\npoll_interval = {interval}\n'
        )
    path = tmp / "syncd.toml"
    path.write_text(
        f'[daemon]\nstate_dir = "{tmp}/state"\nlog_level = "warning"\nlisten = "{listen}"\n'
        f'[database]\nurl = "{url}"\n' + sinks + "\n".join(blocks)
    )
    return path, env


SCHEMAS: list[str] = []


def fresh_schema(base: str) -> str:
    schema = "bench_" + uuid.uuid4().hex[:8]
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    SCHEMAS.append(schema)
    return f"{base}?options=-csearch_path%3D{schema}"


def drop_schemas(base: str) -> None:
    with psycopg.connect(base, autocommit=True) as conn:
        for schema in SCHEMAS:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def start(path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "syncd", "--config", str(path), "run"],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def run_processes(base: str, processes: int, n: int, interval: int, window: int) -> None:
    with Simulator(seed=1, orders=25).start() as sim, tempfile.TemporaryDirectory() as d:
        url = fresh_schema(base)
        path, env = write_config(Path(d), url, sim, n, interval)
        procs = [start(path, env) for _ in range(processes)]
        time.sleep(interval + 5)  # first polls, first token refreshes, leases settle
        cpu0 = [cpu_seconds(p.pid) for p in procs]
        polls0, t0 = sim.stats.count(ORDERS), time.monotonic()
        time.sleep(window)
        polls1, t1 = sim.stats.count(ORDERS), time.monotonic()
        cpu1 = [cpu_seconds(p.pid) for p in procs]
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=30)
        rate = (polls1 - polls0) / (t1 - t0)
        cpu = ", ".join(
            f"{100 * (b - a) / (t1 - t0):.1f}%" for a, b in zip(cpu0, cpu1, strict=True)
        )
        print(
            f"{processes} process(es): {rate:.2f} polls/s (expected {n / interval:.2f}); "
            f"CPU per process: {cpu} of one core"
        )


def takeover(base: str, n: int, interval: int) -> None:
    with Simulator(seed=1, orders=25).start() as sim, tempfile.TemporaryDirectory() as d:
        url = fresh_schema(base)
        path, env = write_config(Path(d), url, sim, n, interval)
        procs = [start(path, env) for _ in range(2)]
        time.sleep(interval + 10)
        procs[0].send_signal(signal.SIGKILL)
        killed = time.time()
        plain = url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(plain, autocommit=True) as conn:
            while True:
                row = conn.execute("SELECT min(last_poll_at) FROM connection_state").fetchone()
                if row[0] is not None and row[0].timestamp() > killed:
                    break
                if time.time() - killed > 3 * interval:
                    print("takeover: not every connection polled within 3 intervals")
                    break
                time.sleep(0.25)
        print(
            f"takeover after kill -9 of one of 2 processes: every connection polled again "
            f"{time.time() - killed:.1f} s after the kill (poll interval {interval} s)"
        )
        procs[1].send_signal(signal.SIGTERM)
        procs[1].wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--interval", type=int, default=30)
    parser.add_argument("--window", type=int, default=60)
    args = parser.parse_args()
    base = os.environ.get("SYNCD_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    try:
        for processes in (1, 2, 3):
            run_processes(base, processes, args.connections, args.interval, args.window)
        takeover(base, args.connections, args.interval)
    finally:
        drop_schemas(base)


if __name__ == "__main__":
    main()
