"""Idle-cost benchmark (not a test): what a quiet `syncd run` costs between polls.

    .venv/bin/python bench/idle.py                       # both parts, ~16 minutes
    .venv/bin/python bench/idle.py --part one --window 600
    SYNCD_BENCH_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test \\
        .venv/bin/python bench/idle.py --part scale --warmup 120 --window 120

1. One connection, poll interval 60 s, SQLite, a JSONL sink and the health server on:
   after a warm-up (start-up, first poll, first PDFs), RSS (VmRSS, sampled every 5 s,
   peak and last) and CPU (user + system from /proc/PID/stat) over the window, as a
   share of one core. Targets: RSS <= 80 MB, CPU <= 0.1 %.
2. Scale point: 200 connections at 60 s in one process (PostgreSQL, fresh schema, as
   bench/scale.py), CPU over a window that starts after the first burst (4,000 PDFs)
   has settled. Target: <= 25 % of one core.

``--json FILE`` also writes the printed figures (and the targets) after each part.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

# Run as a script from bench/: its sibling holds the shared pieces.
from scale import ORDERS, cpu_seconds, drop_schemas, fresh_schema, start, write_config

from syncd.simulator import Simulator

# Issue #9's targets: one connection (RSS, CPU) and the 200-connection point (CPU).
TARGETS_ONE = {"target_rss_mb": 80.0, "target_cpu_pct": 0.1}
TARGETS_SCALE = {"target_cpu_pct": 25.0}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(
    url: str, n: int, interval: int, warmup: float, window: float, label: str
) -> dict[str, float]:
    with Simulator(seed=1, orders=25).start() as sim, tempfile.TemporaryDirectory() as d:
        listen = f"127.0.0.1:{free_port()}"
        sink = f'[[sinks]]\nname = "file"\ntype = "jsonl"\npath = "{d}/events.jsonl"\n'
        path, env = write_config(
            Path(d), url or f"sqlite:///{d}/state/syncd.db", sim, n, interval, listen, sink
        )
        proc = start(path, env)
        try:
            time.sleep(warmup)
            if proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {proc.returncode}")
            cpu0, polls0, t0 = cpu_seconds(proc.pid), sim.stats.count(ORDERS), time.monotonic()
            peak = rss_mb(proc.pid)
            while time.monotonic() - t0 < window:
                time.sleep(min(5.0, window - (time.monotonic() - t0)) or 0.01)
                peak = max(peak, rss_mb(proc.pid))
            cpu1, polls1, t1 = cpu_seconds(proc.pid), sim.stats.count(ORDERS), time.monotonic()
            last = rss_mb(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        elapsed = t1 - t0
        result = {
            "cpu_pct": 100 * (cpu1 - cpu0) / elapsed,
            "cpu_s": cpu1 - cpu0,
            "rss_peak_mb": peak,
            "rss_last_mb": last,
            "polls": polls1 - polls0,
            "window_s": elapsed,
        }
        print(
            f"{label}: {n} connection(s) at {interval} s, window {elapsed:.0f} s after "
            f"{warmup:.0f} s warm-up: CPU {result['cpu_pct']:.3f}% of one core "
            f"({result['cpu_s']:.2f} s), RSS peak {peak:.1f} MB, last {last:.1f} MB, "
            f"polls in window {result['polls']} (expected ~{n * elapsed / interval:.0f})",
            flush=True,
        )
        return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", choices=["one", "scale", "both"], default="both")
    parser.add_argument("--interval", type=int, default=60)
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds before the window (default 15 for one, 150 for scale)",
    )
    parser.add_argument(
        "--window",
        type=float,
        default=None,
        help="window in seconds (default 600 for one, 180 for scale)",
    )
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    results: dict[str, Any] = {}

    def record(part: str, figures: dict[str, float], **extra: Any) -> None:
        results[part] = {**figures, "interval_s": args.interval, **extra}
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))

    if args.part in ("one", "both"):
        warmup = args.warmup or 15
        figures = measure("", 1, args.interval, warmup, args.window or 600, "idle")
        record("one", figures, connections=1, warmup_s=warmup, database="sqlite", **TARGETS_ONE)
    if args.part in ("scale", "both"):
        base = os.environ.get(
            "SYNCD_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
        )
        url = fresh_schema(base)
        try:
            figures = measure(
                url,
                args.connections,
                args.interval,
                args.warmup or 150,
                args.window or 180,
                "scale",
            )
        finally:
            drop_schemas(base)
        record(
            "scale",
            figures,
            connections=args.connections,
            warmup_s=args.warmup or 150,
            database="postgresql",
            **TARGETS_SCALE,
        )


if __name__ == "__main__":
    main()
