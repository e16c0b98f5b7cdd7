"""The one benchmark command (issue #9): every figure, in one run, on this machine.

    make bench                                     # ~35-40 minutes
    .venv/bin/python bench/run.py                  # the same, once the bench extra is in
    .venv/bin/python bench/run.py --quick --no-write   # a few minutes: checks the plumbing
    .venv/bin/python bench/run.py --only poll,oneshot

Runs ``compare.py``, ``pdfs.py``, ``sinks.py`` and ``idle.py`` one after another (never
in parallel: the figures would spoil each other), each as a subprocess whose output is
streamed here, and collects the figures each writes with ``--json``. Then renders one
table of every figure against its target into ``docs/performance.md`` (between
``<!-- bench:begin -->`` and ``<!-- bench:end -->``) and saves the raw figures to
``bench/results/latest.json``. A missed target does not fail the command; a script that
fails does (exit status 1, after the table is rendered with what was measured).

Not part of the test suite. ``bench/scale.py`` (several processes) is not an issue #9
figure and is not run here.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
DOC = ROOT / "docs" / "performance.md"
LATEST = BENCH / "results" / "latest.json"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"

# The environment every script gets unless already set (as .ci/run sets it for the tests).
ENV_DEFAULTS = {
    "SYNCD_BENCH_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/test",
    "SYNCD_TEST_REDIS_URL": "redis://127.0.0.1:6379/15",
    "SYNCD_TEST_NATS_URL": "nats://127.0.0.1:4222",
    "SYNCD_TEST_MQTT_URL": "mqtt://127.0.0.1:1883",
    "SYNCD_TEST_AMQP_URL": "amqp://guest:guest@127.0.0.1:5672/",
}

# What --only selects: a unit is one part of one script.
UNITS = [
    "poll",
    "oneshot",
    "breakdown",
    "scale",
    "outbox",
    "pdfs",
    "sinks",
    "idle-one",
    "idle-scale",
]
ALIASES = {
    "compare": ["poll", "oneshot", "breakdown", "scale", "outbox"],
    "idle": ["idle-one", "idle-scale"],
    "1": ["poll"],
    "2": ["oneshot", "breakdown"],
    "3": ["scale", "outbox"],
    "4": ["pdfs"],
    "5": ["sinks"],
    "6": ["idle-one", "idle-scale"],
}
SCRIPTS = ["compare", "pdfs", "sinks", "idle"]
COMPARE_PARTS = ["poll", "oneshot", "breakdown", "scale", "outbox"]


def script_args(script: str, units: list[str], quick: bool) -> list[str]:
    """The command line of one script (without --json) for the selected units."""
    if script == "compare":
        parts = ",".join(u for u in COMPARE_PARTS if u in units)
        args = ["--parts", parts, "--databases", "sqlite,postgresql"]
        return args + (
            ["--runs", "1", "--per-run", "5", "--big", "20000", "--small", "1000"]
            if quick
            else ["--runs", "7"]
        )
    if script == "pdfs":
        return ["--runs", "1" if quick else "7", "--server", "both"]
    if script == "sinks":
        return (
            ["--events", "2000", "--runs", "1"] if quick else ["--events", "100000", "--runs", "3"]
        )
    assert script == "idle"
    one, scale = "idle-one" in units, "idle-scale" in units
    args = ["--part", "both" if one and scale else ("one" if one else "scale")]
    if quick:  # one short window for both parts; 20 connections instead of 200
        return [*args, "--interval", "10", "--warmup", "10", "--window", "15"] + (
            ["--connections", "20"] if scale else []
        )
    return [*args, "--interval", "60"]


def units_of(script: str, units: list[str]) -> list[str]:
    if script == "compare":
        return [u for u in COMPARE_PARTS if u in units]
    if script == "idle":
        return [u for u in ("idle-one", "idle-scale") if u in units]
    return [script] if script in units else []


# -- running -------------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    """As compare.py's child_env: no PYTHONDONTWRITEBYTECODE, so syncd's editable sources
    are not recompiled on every start of a timed process (an installed package is not)."""
    env = {**ENV_DEFAULTS, **os.environ}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def port_open(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 2
        ):
            return True
    except OSError:
        return False


def preflight(units: list[str], env: dict[str, str]) -> None:
    """Warn (only) about what a selected part will need and cannot find."""
    needs: list[tuple[str, str, int]] = []
    if {"scale", "outbox", "idle-scale"} & set(units):
        needs.append(("PostgreSQL", env["SYNCD_BENCH_DATABASE_URL"], 5432))
    if "sinks" in units:
        needs += [
            ("Redis", env["SYNCD_TEST_REDIS_URL"], 6379),
            ("NATS", env["SYNCD_TEST_NATS_URL"], 4222),
            ("MQTT", env["SYNCD_TEST_MQTT_URL"], 1883),
            ("AMQP", env["SYNCD_TEST_AMQP_URL"], 5672),
        ]
    for name, url, port in needs:
        if not port_open(url, port):
            print(f"warning: {name} is not reachable at {urlsplit(url).netloc}", flush=True)
    if "oneshot" in units and importlib.util.find_spec("dlt") is None:
        print("warning: dlt is not installed: pip install -e '.[bench]'", flush=True)


def run_script(script: str, args: list[str], work: Path, env: dict[str, str]) -> int:
    """Run one script, its output streamed here and kept in work/SCRIPT.log."""
    cmd = [sys.executable, "-u", str(BENCH / f"{script}.py"), *args]
    cmd += ["--json", str(work / f"{script}.json")]
    print(f"\n== bench/{script}.py {' '.join(args)}", flush=True)
    with (
        open(work / f"{script}.log", "wb") as log,
        subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        ) as proc,
    ):
        assert proc.stdout is not None
        for line in iter(proc.stdout.readline, b""):
            sys.stdout.buffer.write(line)
            sys.stdout.flush()
            log.write(line)
        return proc.wait()


# -- the table -----------------------------------------------------------------------------


def ms(v: float, whole: bool = False) -> str:
    return f"{v:,.0f} ms" if whole or v >= 100 else f"{v:.2f} ms"


def runs_of(n: int) -> str:
    return f"{n} run" if n == 1 else f"{n} runs"


def sec(v: float) -> str:
    return f"{v:.3f} s"


def x(v: float) -> str:
    return f"{v:.2f}x"


@dataclass
class Row:
    num: str
    figure: str
    target: str = "—"
    syncd: str = "—"
    baseline: str = "—"
    value: str = "—"
    ok: bool | None = None  # None: no target
    missing: str = ""  # why there is no figure

    def cells(self) -> list[str]:
        if self.missing:
            return [self.num, self.figure, self.target, "—", "—", "—", self.missing]
        result = "—" if self.ok is None else ("pass" if self.ok else "**miss**")
        return [self.num, self.figure, self.target, self.syncd, self.baseline, self.value, result]


class Figures:
    """The scripts' JSON, and why a figure is absent (not run, or its script failed)."""

    def __init__(self, data: dict[str, Any], meta: dict[str, Any]) -> None:
        self.data = data
        self.meta = meta

    def get(self, script: str, *keys: str) -> Any:
        node: Any = self.data.get(script)
        for key in keys:
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        return node

    def why_missing(self, script: str) -> str:
        code = self.meta.get("exit_codes", {}).get(script)
        if code not in (None, 0):
            return f"failed (exit {code})"
        return "not run"


def rows_compare(f: Figures) -> list[Row]:
    rows: list[Row] = []
    params = f.get("compare", "params") or {}
    runs, per_run = params.get("runs"), params.get("per_run")
    detail = f" ({runs_of(runs)} x {per_run} polls)" if runs else ""
    missing = f.why_missing("compare")

    p = f.get("compare", "poll")
    row = Row(
        "1",
        "steady-state poll, 20 unchanged orders, in process (SQLite), vs floor: httpx GET + "
        f"json + one sqlite3 upsert transaction{detail}",
        "≤ 1.5x",
    )
    if p:
        row.syncd, row.value, row.ok = ms(p["syncd_ms"]), x(p["ratio"]), p["ratio"] <= 1.5
        row.baseline = f"{ms(p['floor_ms'])} (bare GET {ms(p['get_ms'])})"
    else:
        row.missing = missing
    rows.append(row)

    o = f.get("compare", "oneshot")
    detail = f" ({runs_of(runs)} each)" if runs else ""
    a = Row(
        "2a",
        "`syncd run --once`, nothing new, warm tokens, whole process, vs dlt `rest_api` "
        f"merge into SQLite{detail}",
        "dlt ≥ 3x slower",
    )
    b = Row(
        "2b",
        "same, vs floor script (httpx GET + sqlite3 upsert, a subprocess)",
        "≤ 2.5x",
    )
    if o:
        a.syncd = b.syncd = ms(o["syncd_ms"], whole=True)
        a.baseline = f"dlt {ms(o['dlt_ms'], whole=True)}"
        a.value, a.ok = f"dlt / syncd {x(o['dlt_over_syncd'])}", o["dlt_over_syncd"] >= 3
        floor, bare = ms(o["floor_ms"], whole=True), ms(o["bare_ms"], whole=True)
        b.baseline = f"floor {floor} (`python -c pass` {bare})"
        b.value, b.ok = x(o["syncd_over_floor"]), o["syncd_over_floor"] <= 2.5
    else:
        a.missing = b.missing = missing
    rows += [a, b]

    for num, key, what in (
        ("3a", "scale_sqlite", "poll cycle, {big} vs {small} mirrored orders, SQLite"),
        ("3b", "scale_postgresql", "poll cycle, {big} vs {small} mirrored orders, PostgreSQL"),
        (
            "3c",
            "outbox_sqlite",
            "deliver the newest 100 events to JSONL, {big} vs {small} delivered behind, SQLite",
        ),
        (
            "3d",
            "outbox_postgresql",
            "deliver the newest 100 events to JSONL, {big} vs {small} delivered behind, PostgreSQL",
        ),
    ):
        s = f.get("compare", key) or {}
        big = s.get("big_rows", params.get("big", 1_000_000))
        small = s.get("small_rows", params.get("small", 1_000))
        row = Row(num, what.format(big=f"{big:,}", small=f"{small:,}"), "≤ 1.2x")
        if s:
            row.syncd = f"{ms(s['big_ms'])} ({big:,})"
            row.baseline = f"{ms(s['small_ms'])} ({small:,})"
            row.value, row.ok = x(s["ratio"]), s["ratio"] <= 1.2
        else:
            row.missing = missing
        rows.append(row)
    return rows


def rows_pdfs(f: Figures) -> list[Row]:
    rows: list[Row] = []
    missing = f.why_missing("pdfs")
    letters = iter("abcdefgh")
    for server in ("process", "thread"):
        b = f.get("pdfs", f"burst_{server}")
        if b is None and server == "thread":
            continue  # an extra; listed only when measured
        runs = f", {runs_of(b['runs'])}" if b else ""
        if server == "process":
            size = f"{b['orders']} x {b['pdf_mb']} MB" if b else "20 x 5 MB"
            conc = b["concurrency"] if b else 4
            what = (
                f"PDF burst, {size}: poll → last `pdf_archived` (start-up outside the "
                f"timing), vs raw parallel httpx downloads at concurrency {conc}; simulator "
                f"in a child process, like a real PDF host{runs}"
            )
        else:
            what = (
                "same burst, simulator in threads of the benchmark process (sharing its GIL), "
                f"vs raw downloads{runs}"
            )
        raw = Row(f"4{next(letters)}", what, "≤ 1.3x")
        full = Row(
            f"4{next(letters)}",
            "same, vs raw downloads + sha256 + fsync + rename (the integrity work syncd does)",
        )
        if b:
            raw.syncd = full.syncd = sec(b["syncd_s"])
            raw.baseline = f"raw {sec(b['raw_s'])}"
            raw.value = f"{x(b['ratio_raw'])} (per-run {x(b['paired_ratio_raw'])})"
            raw.ok = b["ratio_raw"] <= b.get("target_ratio_raw", 1.3)
            full.baseline = f"raw + integrity {sec(b['integrity_s'])}"
            full.value = f"{x(b['ratio_integrity'])} (per-run {x(b['paired_ratio_integrity'])})"
        else:
            raw.missing = full.missing = missing
        rows += [raw, full]
    once = f.get("pdfs", "whole_run_once")
    if once:
        rows.append(
            Row(
                f"4{next(letters)}",
                "for reference: the same burst as a whole in-process `run --once` "
                "(start-up and event delivery included)",
                syncd=sec(once["median_s"]),
                value=sec(once["median_s"]),
            )
        )
    m = f.get("pdfs", "memory")
    row = Row(
        f"4{next(letters)}",
        "peak RSS of `syncd run --once` archiving one 200 MB PDF vs one 1 KB PDF: growth",
        "≤ 30 MB",
    )
    if m:
        row.syncd = f"{m['large_mb']:.1f} MB"
        row.baseline = f"{m['small_mb']:.1f} MB (1 KB PDF)"
        row.value = f"+{m['growth_mb']:.1f} MB"
        row.ok = m["growth_mb"] <= m.get("target_growth_mb", 30)
    else:
        row.missing = missing
    rows.append(row)
    return rows


SINKS = {
    "jsonl": "JSONL (append + fsync per batch)",
    "webhook": "webhook (one POST per event)",
    "webhook-batch": "webhook (`batch_size` = {batch})",
    "redis": "Redis (pipelined XADD)",
    "nats": "NATS JetStream (pipelined acks)",
    "nats-core": "NATS core (`jetstream = false`)",
    "mqtt": "MQTT QoS 1",
    "mqtt-qos0": "MQTT QoS 0",
    "amqp": "AMQP (publisher confirms, persistent)",
}
SINK_TARGETS = {"jsonl": 20_000, "webhook": 1_000, "redis": 10_000, "nats": 10_000}


def rows_sinks(f: Figures) -> list[Row]:
    rows: list[Row] = []
    measured = f.get("sinks", "sinks") or {}
    events, batch = f.get("sinks", "events"), f.get("sinks", "batch")
    letters = iter("abcdefghijklmnop")
    first = True
    failed = f.why_missing("sinks") != "not run"
    for name, label in SINKS.items():
        s = measured.get(name)
        target = s.get("target_per_s") if s else SINK_TARGETS.get(name)
        if s is None and target is None and not failed:
            continue  # no target: listed only when measured (or when sinks.py failed)
        what = "sink throughput, " + label.format(batch=batch or 500)
        if first and events:
            what += f": {events:,} events through `send()` in batches of {batch}"
        first = False
        row = Row(f"5{next(letters)}", what, f"≥ {target:,}/s" if target else "—")
        if s:
            row.syncd = f"{s['median_per_s']:,.0f}/s (median of {len(s['runs_per_s'])})"
            row.value = f"{s['median_per_s']:,.0f}/s"
            row.ok = None if target is None else s["median_per_s"] >= target
        else:
            row.missing = f.why_missing("sinks")
        rows.append(row)
    return rows


def rows_idle(f: Figures) -> list[Row]:
    missing = f.why_missing("idle")
    one, scale = f.get("idle", "one"), f.get("idle", "scale")
    cpu = Row("6a", "idle daemon, 1 connection at 60 s, SQLite, 10-minute window: CPU")
    cpu.target = "≤ 0.1% of one core"
    rss = Row("6b", "same: RSS (peak over the window)", "≤ 80 MB")
    if one:
        cpu.figure = (
            f"idle daemon, 1 connection at {one['interval_s']} s, SQLite, JSONL sink, "
            f"health server; {one['window_s']:.0f} s window after {one['warmup_s']:.0f} s "
            "warm-up: CPU"
        )
        cpu.syncd = f"{one['cpu_pct']:.3f}% ({one['cpu_s']:.2f} s CPU, {one['polls']} polls)"
        cpu.value = f"{one['cpu_pct']:.3f}%"
        cpu.ok = one["cpu_pct"] <= one.get("target_cpu_pct", 0.1)
        rss.syncd = f"peak {one['rss_peak_mb']:.1f} MB, last {one['rss_last_mb']:.1f} MB"
        rss.value = f"{one['rss_peak_mb']:.1f} MB"
        rss.ok = one["rss_peak_mb"] <= one.get("target_rss_mb", 80)
    else:
        cpu.missing = rss.missing = missing
    many = Row("6c", "200 connections at 60 s, one process, PostgreSQL: CPU", "≤ 25% of one core")
    if scale:
        many.figure = (
            f"{scale['connections']} connections at {scale['interval_s']} s, one process, "
            f"PostgreSQL; {scale['window_s']:.0f} s window after {scale['warmup_s']:.0f} s "
            "warm-up: CPU"
        )
        many.syncd = (
            f"{scale['cpu_pct']:.1f}% ({scale['polls']} polls; RSS peak "
            f"{scale['rss_peak_mb']:.0f} MB)"
        )
        many.value = f"{scale['cpu_pct']:.1f}%"
        many.ok = scale["cpu_pct"] <= scale.get("target_cpu_pct", 25)
    else:
        many.missing = missing
    return [cpu, rss, many]


def header(meta: dict[str, Any]) -> str:
    if not meta.get("started"):
        return (
            f"Rendered from `{meta.get('source', '?')}` (no run record: date and parameters "
            f"unknown); rendering machine: nproc {nproc()}, Python {platform.python_version()}."
        )
    start = datetime.fromisoformat(meta["started"])
    end = datetime.fromisoformat(meta.get("finished") or meta["started"])
    commands = "; ".join(f"`{c}`" for c in meta["commands"].values())
    text = (
        f"Measured by `bench/run.py` on {start:%Y-%m-%d}, {start:%H:%M}-{end:%H:%M} UTC: "
        f"nproc {meta['nproc']}, Python {meta['python']}, load average "
        f"{meta['loadavg'][0]:.2f} at the start; {commands}."
    )
    if meta.get("only"):
        text += f" Subset: `--only {','.join(meta['only'])}`; other rows were not run."
    if meta.get("quick"):
        text = (
            "**Quick run (`--quick`): one run each, small data, short windows, to check the "
            "plumbing. These are not figures to quote or judge.** " + text
        )
    return text


def render(f: Figures) -> str:
    rows = rows_compare(f) + rows_pdfs(f) + rows_sinks(f) + rows_idle(f)
    lines = [
        header(f.meta),
        "",
        "| # | figure | target | syncd | baseline | ratio/value | result |",
        "|---|---|---|---|---|---:|---|",
    ]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    lines += [
        "",
        "Medians of several runs; syncd and its baseline are timed alternately, run by run, in "
        "one process or from one parent, so each ratio is measured side by side (ratio: syncd "
        "over baseline unless stated; per-run: the median of each run's own ratio). Every "
        "run's values: `bench/results/latest.json`.",
    ]
    return "\n".join(lines)


def write_doc(table: str) -> None:
    block = f"{BEGIN}\n{table}\n{END}"
    text = DOC.read_text() if DOC.exists() else "# Performance\n"
    if BEGIN in text and END in text.split(BEGIN, 1)[1]:
        before, rest = text.split(BEGIN, 1)
        DOC.write_text(before + block + rest.split(END, 1)[1])
        return
    # No markers yet: after the first paragraph that follows the `# Performance` title.
    lines = text.split("\n")
    title = next((i for i, line in enumerate(lines) if line.startswith("# ")), -1)
    i = title + 1
    while i < len(lines) and not lines[i].strip():
        i += 1
    while i < len(lines) and lines[i].strip():
        i += 1
    at_end = i >= len(lines)
    lead = [""] if i > 0 and lines[i - 1].strip() else []  # one blank line before the block
    lines[i:i] = [*lead, *block.split("\n")]
    DOC.write_text("\n".join(lines) + ("\n" if at_end else ""))


# -- main ----------------------------------------------------------------------------------


def nproc() -> int:
    return len(os.sched_getaffinity(0))


def select(only: str | None) -> list[str]:
    if not only:
        return list(UNITS)
    chosen: set[str] = set()
    for name in (n.strip() for n in only.split(",") if n.strip()):
        if name in ALIASES:
            chosen.update(ALIASES[name])
        elif name in UNITS:
            chosen.add(name)
        else:
            raise SystemExit(
                f"--only: unknown {name!r}; choose from {', '.join(UNITS)}, "
                f"{', '.join(k for k in ALIASES if not k.isdigit())} or figure numbers 1-6"
            )
    return [u for u in UNITS if u in chosen]


def load(directory: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    data = {}
    for script in SCRIPTS:
        path = directory / f"{script}.json"
        if path.exists():
            data[script] = json.loads(path.read_text())
    meta_path = directory / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {"source": str(directory)}
    return data, meta


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Run every issue #9 benchmark, then render the table into "
        "docs/performance.md and bench/results/latest.json."
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one run each, small data, short windows (a few minutes): checks the plumbing; "
        "the table says it was a quick run",
    )
    parser.add_argument(
        "--only",
        metavar="LIST",
        help="comma-separated subset: " + ", ".join(UNITS) + "; or compare, idle, or figure "
        "numbers 1-6",
    )
    parser.add_argument(
        "--no-write",
        action="store_true",
        help="print the table; leave docs/performance.md and bench/results/ alone",
    )
    parser.add_argument(
        "--write",
        action="store_true",
        help="with --only or --quick, replace the table anyway (by default a partial run "
        "leaves the last full run's table in place)",
    )
    parser.add_argument("--render-from", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.render_from:
        data, meta = load(args.render_from)
    else:
        units = select(args.only)
        work = Path(tempfile.mkdtemp(prefix="syncd-bench-"))
        env = child_env()
        runs = {s: script_args(s, units, args.quick) for s in SCRIPTS if units_of(s, units)}
        meta = {
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "finished": None,
            "nproc": nproc(),
            "python": platform.python_version(),
            "loadavg": os.getloadavg(),
            "quick": args.quick,
            "only": units if args.only else None,
            "commands": {s: f"{s}.py {' '.join(a)}" for s, a in runs.items()},
            "exit_codes": {},
            "seconds": {},
        }
        preflight(units, env)
        for script, script_argv in runs.items():
            t0 = time.monotonic()
            code = run_script(script, script_argv, work, env)
            meta["exit_codes"][script] = code
            meta["seconds"][script] = round(time.monotonic() - t0, 1)
            if code:
                print(f"bench/{script}.py failed with exit status {code}", flush=True)
        meta["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
        (work / "meta.json").write_text(json.dumps(meta, indent=2))
        data, _ = load(work)
        print(f"\nfigures and logs: {work}")

    table = render(Figures(data, meta))
    print("\n" + table + "\n")
    partial = bool(args.only or args.quick) and not args.write
    if partial and not args.no_write:
        print("a partial run (--only or --quick): docs/performance.md keeps the last full run")
    if not args.no_write and not partial:
        write_doc(table)
        LATEST.parent.mkdir(exist_ok=True)
        LATEST.write_text(json.dumps({"meta": meta, **data}, indent=2) + "\n")
        print(f"wrote {DOC.relative_to(ROOT)} and {LATEST.relative_to(ROOT)}")
    failed = [s for s, code in meta.get("exit_codes", {}).items() if code]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
