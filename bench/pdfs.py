"""PDF archive benchmark (not a test): burst time and memory while archiving.

    .venv/bin/python bench/pdfs.py

1. Burst: 20 new orders with 5 MB PDFs, from the poll to the last pdf_archived event
   (``run --once`` in process), versus raw parallel httpx downloads of the same 20 files
   at the same concurrency. Median of 3 runs each, side by side.
2. Memory: peak RSS of a ``syncd run --once`` process archiving one 200 MB PDF, versus
   the same run archiving a 1 KB PDF (the growth is what archiving costs).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from syncd.config import load_config
from syncd.daemon import run_once
from syncd.logging import configure_logging
from syncd.simulator import Simulator

MB = 1024 * 1024
CONCURRENCY = 4


def write_config(tmp: Path, sim: Simulator, max_bytes: int) -> tuple[Path, dict[str, str]]:
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
base_url = "{sim.base_url}"
client_id = "{sim.client_id}"
client_secret = "${{S}}"
refresh_token = "${{R}}"
"""
    )
    return path, {"S": sim.client_secret, "R": str(sim.issue_tokens()["refresh_token"])}


def burst_syncd() -> float:
    with (
        Simulator(seed=3, orders=20, pdf_size=5 * MB).start() as sim,
        tempfile.TemporaryDirectory() as d,
    ):
        path, env = write_config(Path(d), sim, 64 * MB)
        config = load_config(path, env)
        start = time.perf_counter()
        errors = run_once(config)
        elapsed = time.perf_counter() - start
        assert errors == [], errors
        assert len(list((Path(d) / "state" / "pdfs").rglob("*.pdf"))) == 20
        return elapsed


def burst_raw() -> float:
    with (
        Simulator(seed=3, orders=20, pdf_size=5 * MB).start() as sim,
        tempfile.TemporaryDirectory() as d,
    ):
        token = sim.issue_tokens()["access_token"]
        with httpx.Client(limits=httpx.Limits(max_connections=CONCURRENCY)) as http:
            start = time.perf_counter()
            orders = http.get(
                sim.base_url + "api/v1/purchase_orders.php",
                headers={"Authorization": f"Bearer {token}"},
            ).json()

            def fetch(order: dict[str, object]) -> None:
                with (
                    http.stream("GET", str(order["pdf_url"])) as r,
                    open(Path(d) / f"{order['id']}.pdf", "wb") as out,
                ):
                    for chunk in r.iter_bytes(1 << 16):
                        out.write(chunk)

            with ThreadPoolExecutor(CONCURRENCY) as pool:
                list(pool.map(fetch, orders))
            return time.perf_counter() - start


def peak_rss_mb(pdf_size: int) -> float:
    """Peak RSS of a separate `syncd run --once` archiving one PDF of pdf_size bytes."""
    with (
        Simulator(seed=5, orders=1, pdf_size=pdf_size).start() as sim,
        tempfile.TemporaryDirectory() as d,
    ):
        path, env = write_config(Path(d), sim, 400 * MB)
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


def main() -> None:
    configure_logging("error", "json")
    syncd_times, raw_times = [], []
    for _ in range(3):
        syncd_times.append(burst_syncd())
        raw_times.append(burst_raw())
    s, r = statistics.median(syncd_times), statistics.median(raw_times)
    print(f"burst: 20 orders x 5 MB PDFs, concurrency {CONCURRENCY}")
    print(f"  syncd run --once (poll -> last pdf_archived): {s:.3f} s (median of 3)")
    print(f"  raw parallel httpx downloads:                 {r:.3f} s (median of 3)")
    print(f"  ratio: {s / r:.2f}x")
    small = statistics.median(peak_rss_mb(1024) for _ in range(2))
    large = statistics.median(peak_rss_mb(200 * MB) for _ in range(2))
    print("memory: peak RSS of `syncd run --once`")
    print(f"  one 1 KB PDF:   {small:.1f} MB")
    print(f"  one 200 MB PDF: {large:.1f} MB (growth {large - small:.1f} MB)")


if __name__ == "__main__":
    main()
