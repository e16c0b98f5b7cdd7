"""``syncd demo``: the simulator, the daemon and a console sink in one process.

A newcomer sees orders mirrored and events flowing within seconds, on an embedded
SQLite database, without an account or a config file of their own.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
from pathlib import Path

from syncd.config import load_config
from syncd.daemon import Daemon, opened
from syncd.logging import configure_logging
from syncd.outbox import Channel
from syncd.simulator import Simulator
from syncd.sinks.jsonl import JsonlSink
from syncd.sinks.stdout import StdoutSink

DEMO_CONFIG = """\
# Written by 'syncd demo': a daemon polling the bundled simulator every 2 seconds.
[daemon]
state_dir = "."
log_level = "warning"
listen = ""

[[connections]]
name = "demo"
base_url = "{base_url}"
client_id = "{client_id}"
client_secret = "${{SYNCD_DEMO_CLIENT_SECRET:-demo}}"
refresh_token = "${{SYNCD_DEMO_REFRESH_TOKEN:-}}"
poll_interval = "2s"

[[sinks]]
name = "events-file"
type = "jsonl"
path = "events.jsonl"
"""


def run_demo(directory: Path, seconds: float | None) -> int:
    out = sys.stdout
    if directory.exists():
        shutil.rmtree(directory)  # each demo starts from an empty mirror
    directory.mkdir(parents=True)
    sim = Simulator(seed=7, orders=25, new_order_every=3.0, change_every=4.0).start()
    try:
        config_path = directory / "syncd.toml"
        config_path.write_text(DEMO_CONFIG.format(base_url=sim.base_url, client_id=sim.client_id))
        environ = dict(os.environ)
        environ["SYNCD_DEMO_CLIENT_SECRET"] = sim.client_secret
        environ["SYNCD_DEMO_REFRESH_TOKEN"] = sim.issue_tokens()["refresh_token"]
        config = load_config(config_path, environ)
        configure_logging(config.daemon.log_level, "console")
        out.write(
            f"InventoryArts simulator at {sim.base_url}; mirror in {config.database.url}\n"
            f"events also appended to {directory / 'events.jsonl'}. "
            "New orders every 3 s, changes every 4 s. Ctrl-C to stop.\n\n"
        )
        out.flush()
        channels = [
            Channel(StdoutSink("console", pretty=True)),
            Channel(JsonlSink("events-file", directory / "events.jsonl")),
        ]
        with opened(config, daemon=True) as db:
            daemon = Daemon(config, db, channels=channels)
            stop = daemon.request_stop
            previous = signal.signal(signal.SIGINT, stop), signal.signal(signal.SIGTERM, stop)
            timer = threading.Timer(seconds, stop) if seconds else None
            try:
                daemon.start()
                if timer:
                    timer.start()
                daemon.wait()
            finally:
                if timer:
                    timer.cancel()
                daemon.shutdown()
                signal.signal(signal.SIGINT, previous[0])
                signal.signal(signal.SIGTERM, previous[1])
        out.write(f"\nstopped. Try: syncd --config {config_path} status\n")
    finally:
        sim.stop()
    return 0
