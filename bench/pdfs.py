"""PDF archive benchmark (not a test): burst time and memory while archiving.

    .venv/bin/python bench/pdfs.py [--runs N] [--server thread|process|both] [--no-memory]
        [--json FILE]

1. Burst: 20 new orders with 5 MB PDFs. syncd is timed from the start of the poll to
   the commit of the last ``pdf_archived`` event (the poll's fetch and commit, then the
   archiver's drain, in process). The database is opened and migrated, the runtime
   built and the access token fetched before the clock starts: the raw baselines have
   no such start-up either. Against:

   - raw: parallel httpx downloads of the same 20 files (one GET of the order list,
     then each file streamed to disk), at the same concurrency;
   - raw + integrity: the same, also hashing each file with sha256, fsyncing it, renaming
     it into place and fsyncing its directory (the work syncd must do per PDF).

   Runs alternate (syncd, raw, raw + integrity), each with a fresh simulator and
   directory; medians of ``--runs`` (7), every run listed. The simulator serves either
   from threads of this process (``thread``: it competes with the client for the GIL,
   as in earlier figures) or from a child process (``process``: like a real PDF host);
   ``both`` (the default) prints the two. For reference also the whole in-process
   ``run --once`` (start-up and delivery included), median of 3.
2. Memory: peak RSS of a ``syncd run --once`` process archiving one 200 MB PDF, versus
   the same run archiving a 1 KB PDF (the growth is what archiving costs).

``--json FILE`` also writes the printed figures (medians, every run, ratios, targets).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from syncd.auth import TokenManager
from syncd.config import Config, load_config
from syncd.daemon import build_runtime, connection_auth, opened, run_once
from syncd.logging import configure_logging
from syncd.pdfs import Outcome
from syncd.poller import poll_connection
from syncd.simulator import Simulator

MB = 1024 * 1024
CONCURRENCY = 4
ORDERS = 20
PDF_SIZE = 5 * MB
CHUNK = 1 << 16
TARGET_RATIO = 1.3  # syncd's burst against the raw downloads
TARGET_GROWTH_MB = 30.0  # peak RSS growth archiving one 200 MB PDF


@dataclass(frozen=True)
class Upstream:
    """A running simulator and the credentials to use it."""

    base_url: str
    client_id: str
    client_secret: str
    refresh_token: str
    access_token: str


_CHILD = """
import json, sys
from syncd.simulator import Simulator
seed, orders, pdf_size = (int(a) for a in sys.argv[1:4])
with Simulator(seed=seed, orders=orders, pdf_size=pdf_size).start() as sim:
    tokens = sim.issue_tokens()
    print(json.dumps({
        "base_url": sim.base_url, "client_id": sim.client_id,
        "client_secret": sim.client_secret, "refresh_token": tokens["refresh_token"],
        "access_token": tokens["access_token"],
    }), flush=True)
    sys.stdin.read()  # until the parent closes it
"""


@contextmanager
def upstream(seed: int, orders: int, pdf_size: int, *, process: bool) -> Iterator[Upstream]:
    """A fresh simulator, in this process's threads or in a child process."""
    if not process:
        with Simulator(seed=seed, orders=orders, pdf_size=pdf_size).start() as sim:
            tokens = sim.issue_tokens()
            yield Upstream(
                sim.base_url,
                sim.client_id,
                sim.client_secret,
                str(tokens["refresh_token"]),
                str(tokens["access_token"]),
            )
        return
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(seed), str(orders), str(pdf_size)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None
    assert child.stdout is not None
    try:
        yield Upstream(**json.loads(child.stdout.readline()))
    finally:
        child.stdin.close()
        child.wait(timeout=30)


def write_config(tmp: Path, up: Upstream, max_bytes: int) -> tuple[Path, dict[str, str]]:
    path = tmp / "syncd.toml"
    path.write_text(
        f"""
[daemon]
state_dir = "{tmp}/state"
log_level = "error"
listen = ""
[pdfs]
concurrency = {CONCURRENCY}
max_bytes = {max_bytes}
[[connections]]
name = "bench"
base_url = "{up.base_url}"
client_id = "{up.client_id}"
client_secret = "${{S}}"
refresh_token = "${{R}}"
"""
    )
    return path, {"S": up.client_secret, "R": up.refresh_token}


def _pdf_files(config: Config) -> list[Path]:
    return list(config.pdfs.dir.rglob("*.pdf"))


def burst_syncd(process: bool) -> tuple[float, float]:
    """(poll -> last pdf_archived, of which the poll) in seconds."""
    with (
        upstream(3, ORDERS, PDF_SIZE, process=process) as up,
        tempfile.TemporaryDirectory() as d,
    ):
        path, env = write_config(Path(d), up, 64 * MB)
        config = load_config(path, env)
        with opened(config, daemon=False) as db:
            runtime = build_runtime(config, db, channels=[])
            try:
                # The token refresh is start-up too: the poll finds a fresh access token.
                with httpx.Client() as http:
                    for connection in config.connections:
                        TokenManager(connection_auth(connection), db, http).access_token()
                last_archived = [0.0]

                def on_outcome(outcome: Outcome) -> None:
                    if outcome.kind == "archived":
                        last_archived[0] = time.perf_counter()

                runtime.archiver.on_outcome = on_outcome
                start = time.perf_counter()
                for name, client in runtime.clients.items():
                    poll_connection(name, client, db)
                polled = time.perf_counter()
                unarchived = runtime.archiver.drain(time.sleep)
            finally:
                runtime.close()
        assert unarchived == [], unarchived
        assert len(_pdf_files(config)) == ORDERS
        return last_archived[0] - start, polled - start


def burst_raw(integrity: bool, process: bool) -> float:
    with (
        upstream(3, ORDERS, PDF_SIZE, process=process) as up,
        tempfile.TemporaryDirectory() as d,
    ):
        with httpx.Client(limits=httpx.Limits(max_connections=CONCURRENCY)) as http:
            start = time.perf_counter()
            orders = http.get(
                up.base_url + "api/v1/purchase_orders.php",
                headers={"Authorization": f"Bearer {up.access_token}"},
            ).json()

            def fetch(order: dict[str, object]) -> None:
                if not integrity:
                    with (
                        http.stream("GET", str(order["pdf_url"])) as r,
                        open(Path(d) / f"{order['id']}.pdf", "wb") as out,
                    ):
                        for chunk in r.iter_bytes(CHUNK):
                            out.write(chunk)
                    return
                folder = Path(d) / str(order["id"])
                folder.mkdir()
                temp = Path(d) / f".{order['id']}.part"
                digest = hashlib.sha256()
                with http.stream("GET", str(order["pdf_url"])) as r, open(temp, "wb") as out:
                    for chunk in r.iter_bytes(CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temp, folder / f"{digest.hexdigest()}.pdf")
                for directory in (folder, Path(d)):  # the new entry, the new folder
                    fd = os.open(directory, os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)

            with ThreadPoolExecutor(CONCURRENCY) as pool:
                list(pool.map(fetch, orders))
            elapsed = time.perf_counter() - start
        assert len(list(Path(d).rglob("*.pdf"))) == ORDERS
        return elapsed


def whole_run_once() -> float:
    with (
        upstream(3, ORDERS, PDF_SIZE, process=False) as up,
        tempfile.TemporaryDirectory() as d,
    ):
        path, env = write_config(Path(d), up, 64 * MB)
        config = load_config(path, env)
        start = time.perf_counter()
        errors = run_once(config)
        elapsed = time.perf_counter() - start
        assert errors == [], errors
        assert len(_pdf_files(config)) == ORDERS
        return elapsed


def peak_rss_mb(pdf_size: int) -> float:
    """Peak RSS of a separate `syncd run --once` archiving one PDF of pdf_size bytes."""
    with (
        upstream(5, 1, pdf_size, process=False) as up,
        tempfile.TemporaryDirectory() as d,
    ):
        path, env = write_config(Path(d), up, 400 * MB)
        code = (
            "import resource, sys\n"
            "from syncd.cli import main\n"
            "try:\n    main(sys.argv[1:])\n"
            "except SystemExit as e:\n"
            "    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
            "    assert e.code == 0, e.code\n"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code, "--config", str(path), "run", "--once"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=True,
        )
        files = list((Path(d) / "state" / "pdfs").rglob("*.pdf"))
        assert len(files) == 1
        assert files[0].stat().st_size >= pdf_size
        return int(proc.stderr.strip().splitlines()[-1]) / 1024


def _runs(values: list[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)


def burst(runs: int, process: bool) -> dict[str, Any]:
    burst_syncd(process)  # warm-up (imports, first migration), not counted
    syncd_times: list[float] = []
    poll_times: list[float] = []
    raw_times: list[float] = []
    full_times: list[float] = []
    for _ in range(runs):
        total, poll = burst_syncd(process)
        syncd_times.append(total)
        poll_times.append(poll)
        raw_times.append(burst_raw(integrity=False, process=process))
        full_times.append(burst_raw(integrity=True, process=process))
    s = statistics.median(syncd_times)
    r = statistics.median(raw_times)
    f = statistics.median(full_times)
    where = "a child process" if process else "threads of this process"
    print(f"burst: {ORDERS} orders x {PDF_SIZE // MB} MB PDFs, concurrency {CONCURRENCY},")
    print(f"  simulator in {where}; medians of {runs} (runs in order)")
    print(f"  syncd, poll -> last pdf_archived: {s:.3f} s ({_runs(syncd_times)})")
    print(f"    of which the poll:             {statistics.median(poll_times):.3f} s")
    print(f"  raw httpx downloads:             {r:.3f} s ({_runs(raw_times)})")
    print(f"  raw + sha256 + fsync + rename:   {f:.3f} s ({_runs(full_times)})")
    print(f"  ratio against raw: {s / r:.2f}x; against raw + integrity: {s / f:.2f}x")
    # Each syncd run against the baselines run right after it: robust to load drifting.
    paired_raw = statistics.median(a / b for a, b in zip(syncd_times, raw_times, strict=True))
    paired_full = statistics.median(a / b for a, b in zip(syncd_times, full_times, strict=True))
    print(f"  median of per-run ratios: {paired_raw:.2f}x and {paired_full:.2f}x")
    return {
        "server": "process" if process else "thread",
        "orders": ORDERS,
        "pdf_mb": PDF_SIZE // MB,
        "concurrency": CONCURRENCY,
        "runs": runs,
        "syncd_s": s,
        "syncd_runs_s": syncd_times,
        "poll_s": statistics.median(poll_times),
        "poll_runs_s": poll_times,
        "raw_s": r,
        "raw_runs_s": raw_times,
        "integrity_s": f,
        "integrity_runs_s": full_times,
        "ratio_raw": s / r,
        "ratio_integrity": s / f,
        "paired_ratio_raw": paired_raw,
        "paired_ratio_integrity": paired_full,
        "target_ratio_raw": TARGET_RATIO,
    }


def write_json(path: Path | None, results: dict[str, Any]) -> None:
    """Written after every part, so a later failure keeps what was measured."""
    if path is not None:
        path.write_text(json.dumps(results, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--server", choices=["thread", "process", "both"], default="both")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    configure_logging("error", "json")
    results: dict[str, Any] = {}
    for process in (False, True):
        if args.server in ("both", "process" if process else "thread"):
            part = burst(args.runs, process)
            results[f"burst_{part['server']}"] = part
            write_json(args.json, results)
    once = [whole_run_once() for _ in range(3)]
    print(f"whole run --once, start-up and delivery included: {statistics.median(once):.3f} s")
    results["whole_run_once"] = {"median_s": statistics.median(once), "runs_s": once}
    write_json(args.json, results)
    if args.no_memory:
        return
    smalls = [peak_rss_mb(1024) for _ in range(2)]
    larges = [peak_rss_mb(200 * MB) for _ in range(2)]
    small = statistics.median(smalls)
    large = statistics.median(larges)
    print("memory: peak RSS of `syncd run --once`")
    print(f"  one 1 KB PDF:   {small:.1f} MB")
    print(f"  one 200 MB PDF: {large:.1f} MB (growth {large - small:.1f} MB)")
    results["memory"] = {
        "small_pdf_bytes": 1024,
        "large_pdf_bytes": 200 * MB,
        "small_mb": small,
        "small_runs_mb": smalls,
        "large_mb": large,
        "large_runs_mb": larges,
        "growth_mb": large - small,
        "target_growth_mb": TARGET_GROWTH_MB,
    }
    write_json(args.json, results)


if __name__ == "__main__":
    main()
