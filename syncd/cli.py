"""The ``syncd`` command line (DESIGN §4).

Every expected failure ends in one line on stderr and the exit code of its exception
(``syncd.errors``); a traceback only with ``--debug``. Heavy imports stay inside the
commands, so ``syncd --help`` and a quiet ``run --once`` start fast.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from syncd.errors import ConfigError, SyncdError

if TYPE_CHECKING:
    from syncd.config import Config
    from syncd.store.database import Database

app = typer.Typer(
    name="syncd",
    help="Keeps a local database in step with an InventoryArts account.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
auth_app = typer.Typer(help="Store and inspect the connections' tokens.", no_args_is_help=True)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
pdfs_app = typer.Typer(help="The PDF archive.", no_args_is_help=True)
events_app = typer.Typer(help="Inspect and re-deliver events.", no_args_is_help=True)
app.add_typer(auth_app, name="auth")
app.add_typer(events_app, name="events")
app.add_typer(db_app, name="db")
app.add_typer(pdfs_app, name="pdfs")


class _State:
    config_path: str | None = None
    debug: bool = False


state = _State()


@app.callback()
def _global(
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            "-c",
            help="Config file (default: $SYNCD_CONFIG, ./syncd.toml, /etc/syncd/syncd.toml).",
        ),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
) -> None:
    state.config_path = config
    state.debug = debug


def _load() -> Config:
    from syncd.config import find_config_path, load_config
    from syncd.logging import configure_logging

    config = load_config(find_config_path(state.config_path, os.environ), os.environ)
    level = "debug" if state.debug else config.daemon.log_level
    configure_logging(level, config.daemon.log_format)
    return config


@contextmanager
def _database(config: Config) -> Iterator[Database]:
    from syncd.store.database import open_database

    db = open_database(config.database.url)
    try:
        yield db
    finally:
        db.close()


def _echo(line: str) -> None:
    typer.echo(line)


def _ago(when: datetime | None, now: datetime) -> str:
    if when is None:
        return "never"
    seconds = int((now - when).total_seconds())
    return f"{when:%Y-%m-%d %H:%M:%S}Z ({_duration(seconds)} ago)"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if abs(seconds) < 120:
        return f"{seconds}s"
    if abs(seconds) < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


# --- run ------------------------------------------------------------------------------


@app.command()
def run(
    once: Annotated[
        bool, typer.Option("--once", help="One full cycle (poll, deliver), then exit.")
    ] = False,
) -> None:
    """Run the daemon (or one cycle with --once)."""
    from syncd.daemon import exit_code_for, run_daemon, run_once

    config = _load()
    if not once:
        raise typer.Exit(run_daemon(config))
    errors = run_once(config)
    for error in errors:
        _fail_line(error)
    raise typer.Exit(exit_code_for(errors))


# --- health ---------------------------------------------------------------------------


@app.command()
def health(
    ready: Annotated[
        bool, typer.Option("--ready", help="Ask /readyz (doing its job) instead of /healthz.")
    ] = False,
) -> None:
    """Ask the running daemon whether it is alive (exit 0) or not (exit 1): for HEALTHCHECK."""
    import httpx

    from syncd.config import find_config_path, load_listen

    listen = load_listen(find_config_path(state.config_path, os.environ), os.environ)
    if not listen:
        raise ConfigError("[daemon] listen is empty: the daemon serves no health endpoint")
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - a wildcard bind is reached on loopback
        host = "127.0.0.1" if host != "::" else "::1"
    url_host = f"[{host}]" if ":" in host else host
    path = "/readyz" if ready else "/healthz"
    try:
        response = httpx.get(f"http://{url_host}:{port}{path}", timeout=5)
    except httpx.HTTPError as exc:
        _fail_line(f"daemon not answering on {listen}: {type(exc).__name__}")
        raise typer.Exit(1) from None
    _echo(response.text.strip())
    raise typer.Exit(0 if response.status_code == 200 else 1)


# --- check ----------------------------------------------------------------------------


@app.command()
def check() -> None:
    """Validate the config and database, and call me.php for each connection."""
    from syncd.daemon import build_runtime, exit_code_for

    config = _load()
    errors: list[SyncdError] = []
    with _database(config) as db:  # no instance lock: this does not poll
        runtime = build_runtime(config, db, channels=[])
        try:
            for name, client in runtime.clients.items():
                try:
                    profile = client.me()
                except SyncdError as exc:
                    errors.append(exc)
                    _fail_line(exc)
                    continue
                label = profile.get("connection_label") or profile.get("name") or "?"
                _echo(f"{name}: {label}")
        finally:
            runtime.close()
    if not errors:
        _echo(f"config {config.path} and database ok")
    raise typer.Exit(exit_code_for(errors))


# --- status ---------------------------------------------------------------------------


def _status_report(config: Config) -> dict[str, Any]:
    from sqlalchemy import func, select

    from syncd.store import outbox, pdf_jobs, tokens
    from syncd.store.database import open_database
    from syncd.store.mirror import MIRROR
    from syncd.store.state import load_state

    now = datetime.now(UTC)
    db = open_database(config.database.url)
    try:
        connections = []
        for connection in config.connections:
            st = load_state(db, connection.name) or {}
            token = tokens.load(db, connection.name)
            with db.read() as conn:
                mirrored = conn.execute(
                    select(func.count())
                    .select_from(MIRROR)
                    .where(MIRROR.c.connection == connection.name)
                ).scalar_one()
            pdfs = pdf_jobs.status(db, connection.name)
            if token is None:
                auth = "no token" if not connection.refresh_token else "bootstrap token configured"
            elif token.needs_authorization:
                auth = "needs authorization"
            else:
                auth = "authorized"
            connections.append(
                {
                    "name": connection.name,
                    "authorization": auth,
                    "auth_error": token.auth_error if token else None,
                    "needs_authorization_since": _iso(
                        token.needs_authorization_since if token else None
                    ),
                    "token_expires_at": _iso(token.expires_at if token else None),
                    "refresh_in_doubt_since": _iso(token.refresh_in_doubt_since if token else None),
                    "last_poll_at": _iso(st.get("last_poll_at")),
                    "last_outcome": st.get("last_outcome"),
                    "last_error": st.get("last_error"),
                    "last_success_at": _iso(st.get("last_success_at")),
                    "failing_since": _iso(st.get("failing_since")),
                    "gap_open": bool(st.get("gap_open", False)),
                    "orders_mirrored": int(mirrored),
                    "pdfs": {
                        "pending": pdfs.pending,
                        "archived": pdfs.archived,
                        "failed": pdfs.failed,
                        "nearest_deadline": _iso(pdfs.nearest_deadline),
                    },
                }
            )
        sinks = []
        for sink in config.sinks:
            s = outbox.sink_status(db, sink.name)
            sinks.append(
                {
                    "name": sink.name,
                    "type": sink.type,
                    "cursor": s.position,
                    "pending": s.pending,
                    "delivered": s.delivered,
                    "dead_letters": s.dead_letters,
                    "last_error": s.last_error,
                    "last_error_at": _iso(s.last_error_at),
                }
            )
    finally:
        db.close()
    return {"generated_at": _iso(now), "connections": connections, "sinks": sinks}


def _iso(when: datetime | None) -> str | None:
    return when.isoformat().replace("+00:00", "Z") if when else None


def _parse_iso(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Per connection: last poll and outcome, orders, token; per sink: pending, dead letters."""
    config = _load()
    report = _status_report(config)
    if as_json:
        _echo(json.dumps(report, indent=2))
        return
    now = datetime.now(UTC)
    for c in report["connections"]:
        _echo(f"connection {c['name']}")
        outcome = c["last_outcome"] or "not polled yet"
        _echo(f"  last poll      {_ago(_parse_iso(c['last_poll_at']), now)}: {outcome}")
        if c["last_error"] and c["last_outcome"] != "ok":
            _echo(f"  last error     {c['last_error']}")
        _echo(f"  orders         {c['orders_mirrored']} mirrored")
        _echo(f"  pdfs           {_pdf_line(c['pdfs'], now)}")
        _echo(f"  authorization  {_auth_line(c, now)}")
        if c["gap_open"]:
            _echo("  gap            open: orders may have been missed, polling sooner")
    for s in report["sinks"]:
        _echo(f"sink {s['name']} ({s['type']})")
        _echo(f"  pending        {s['pending']} (cursor {s['cursor']})")
        _echo(f"  dead letters   {s['dead_letters']}")
        if s["last_error"]:
            _echo(f"  last error     {s['last_error']}")


def _pdf_line(pdfs: dict[str, Any], now: datetime) -> str:
    line = f"{pdfs['archived']} archived, {pdfs['pending']} pending, {pdfs['failed']} failed"
    deadline = _parse_iso(pdfs["nearest_deadline"])
    if deadline is not None:
        left = (deadline - now).total_seconds()
        line += (
            f"; nearest link deadline in {_duration(left)}"
            if left > 0
            else "; waiting for a fresh link from the next poll"
        )
    return line


def _auth_line(c: dict[str, Any], now: datetime) -> str:
    if c["authorization"] == "needs authorization":
        since = _parse_iso(c["needs_authorization_since"])
        return f"NEEDS AUTHORIZATION since {_ago(since, now)}: {c['auth_error']}"
    expires = _parse_iso(c["token_expires_at"])
    line = str(c["authorization"])
    if c["authorization"] == "authorized" and expires is not None:
        left = (expires - now).total_seconds()
        when = f"expires in {_duration(left)}" if left > 0 else "access token expired"
        line = f"authorized, {when} (refreshed automatically)"
    doubt = _parse_iso(c.get("refresh_in_doubt_since"))
    if doubt is not None:
        line += (
            f"; REFRESH IN DOUBT since {_ago(doubt, now)}: the last refresh's answer was "
            "lost, the next refresh retries it once"
        )
    return line


# --- auth -----------------------------------------------------------------------------


@auth_app.command("login")
def auth_login(
    connection: Annotated[str | None, typer.Option("--connection", help="Connection name.")] = None,
    no_browser: Annotated[
        bool,
        typer.Option(
            "--no-browser", help="Print the URL and read the redirected URL (or code) from stdin."
        ),
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for the authorization.", min=1)
    ] = 300.0,
) -> None:
    """Authorize a connection in the browser (authorization code grant with PKCE)."""
    import httpx

    from syncd.api import InventoryArtsClient
    from syncd.auth import TokenManager
    from syncd.daemon import connection_auth
    from syncd.login import login
    from syncd.store.database import open_database

    config = _load()
    target = config.connection(connection)
    db = open_database(config.database.url)
    try:
        with httpx.Client(timeout=config.http.timeout, follow_redirects=False) as http:
            login(target, db, http, no_browser=no_browser, timeout=timeout, say=_echo)
            manager = TokenManager(connection_auth(target), db, http)
            with InventoryArtsClient(target.base_url, manager, timeout=config.http.timeout) as api:
                profile = api.me()
    finally:
        db.close()
    label = profile.get("connection_label") or profile.get("name") or "?"
    _echo(f"connection {target.name} authorized: {label}")


@auth_app.command("logout")
def auth_logout(
    connection: Annotated[str | None, typer.Option("--connection", help="Connection name.")] = None,
) -> None:
    """Delete a connection's stored tokens."""
    from syncd.store import tokens
    from syncd.store.database import open_database

    config = _load()
    target = config.connection(connection)
    db = open_database(config.database.url)
    try:
        deleted = tokens.forget(db, target.name)
    finally:
        db.close()
    if not deleted:
        _echo(f"connection {target.name} held no stored tokens")
        return
    _echo(f"deleted the stored tokens of connection {target.name}")
    if target.refresh_token:
        _echo(
            "note: its configured refresh_token is used again as a bootstrap; remove it from "
            "the config to keep the connection logged out"
        )


@auth_app.command("import")
def auth_import(
    refresh_token: Annotated[
        str, typer.Option("--refresh-token", help="The refresh token.", show_default=False)
    ],
    connection: Annotated[str | None, typer.Option("--connection", help="Connection name.")] = None,
    access_token: Annotated[
        str | None, typer.Option("--access-token", help="A current access token.")
    ] = None,
    expires_in: Annotated[
        int | None, typer.Option("--expires-in", help="Seconds the access token is valid.")
    ] = None,
) -> None:
    """Store a token pair obtained elsewhere."""
    from syncd.logging import secrets
    from syncd.store import tokens
    from syncd.store.database import open_database

    secrets.add(refresh_token)
    secrets.add(access_token)
    config = _load()
    target = config.connection(connection)
    if (access_token is None) != (expires_in is None):
        raise ConfigError("--access-token and --expires-in go together")
    now = datetime.now(UTC)
    db = open_database(config.database.url)
    try:
        tokens.store_pair(
            db,
            target.name,
            refresh_token=refresh_token,
            access_token=access_token,
            expires_at=now + timedelta(seconds=expires_in) if expires_in is not None else None,
            now=now,
        )
    finally:
        db.close()
    _echo(f"stored tokens for connection {target.name}")


@auth_app.command("status")
def auth_status() -> None:
    """Which connections hold tokens, when they expire, which need authorization."""
    from syncd.store import tokens
    from syncd.store.database import open_database
    from syncd.store.state import load_state

    config = _load()
    now = datetime.now(UTC)
    db = open_database(config.database.url)
    try:
        stored = tokens.load_all(db)
        polls = {c.name: load_state(db, c.name) or {} for c in config.connections}
    finally:
        db.close()
    needs = False
    for connection in config.connections:
        token = stored.get(connection.name)
        if token is None:
            if connection.refresh_token:
                line = "no stored token yet (a bootstrap refresh token is configured)"
            else:
                line, needs = "NO TOKEN: run 'syncd auth login' (or 'syncd auth import')", True
        elif token.needs_authorization:
            needs = True
            line = (
                f"NEEDS AUTHORIZATION since {_ago(token.needs_authorization_since, now)}: "
                f"{token.auth_error}"
            )
        elif token.expires_at is None:
            line = "refresh token stored, no access token yet"
        else:
            left = (token.expires_at - now).total_seconds()
            line = (
                f"authorized, access token expires in {_duration(left)}"
                if left > 0
                else "authorized, access token expired (refreshed on next use)"
            )
        if token is not None and token.refresh_in_doubt_since is not None:
            line += (
                f"; REFRESH IN DOUBT since {_ago(token.refresh_in_doubt_since, now)} "
                "(its answer was lost; the next use retries once)"
            )
        poll = polls[connection.name]
        if poll.get("last_outcome") not in (None, "ok", "needs_authorization"):
            line += f"; last poll failed: {poll.get('last_error')}"
        _echo(f"{connection.name}: {line}")
    raise typer.Exit(3 if needs else 0)


# --- checkin --------------------------------------------------------------------------


@app.command()
def checkin(
    item_id: Annotated[int, typer.Argument(help="The inventory item id.", show_default=False)],
    action: Annotated[
        str,
        typer.Option("--type", help="return_borrowed or checkin_loaned.", show_default=False),
    ],
    connection: Annotated[str | None, typer.Option("--connection", help="Connection name.")] = None,
) -> None:
    """Check an item back in (item_checkin.php) and print the server's message."""
    from syncd.api import CHECKIN_TYPES

    if action not in CHECKIN_TYPES:
        raise ConfigError(f"--type must be one of {', '.join(CHECKIN_TYPES)}, not {action!r}")
    from syncd.daemon import build_runtime

    config = _load()
    target = config.connection(connection)
    with _database(config) as db:  # no instance lock: this does not poll
        runtime = build_runtime(config, db, channels=[])
        try:
            result = runtime.clients[target.name].item_checkin(item_id, action)
        finally:
            runtime.close()
    _echo(result.message)


# --- db -------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply pending migrations."""
    from syncd.store.database import open_database, upgrade

    config = _load()
    db = open_database(config.database.url, migrate=False)
    try:
        revision = upgrade(db)
    finally:
        db.close()
    _echo(f"database at revision {revision}")


@db_app.command("copy")
def db_copy(
    to: Annotated[str, typer.Option("--to", help="The target database URL (an empty database).")],
) -> None:
    """Copy the whole database (mirror, tokens, outbox, cursors, PDF jobs) into another,
    e.g. from SQLite to PostgreSQL; then point [database] url at the target."""
    from syncd.daemon import opened
    from syncd.logging import redact
    from syncd.store.copy import copy_database
    from syncd.store.database import open_database

    config = _load()
    # The daemon's lock: nothing may write to the source while it is copied.
    with opened(config, daemon=True) as source:
        target = open_database(to)
        try:
            copied = copy_database(
                source, target, lambda table, rows: _echo(f"{table:<18} {rows} rows")
            )
        finally:
            target.close()
    _echo(
        f"copied {sum(copied.values())} rows to {redact(to)}; set [database] url to it "
        "and start syncd there"
    )


# --- events ---------------------------------------------------------------------------


@events_app.command("list")
def events_list(
    after: Annotated[int, typer.Option("--after", help="Only events after this seq.")] = 0,
    limit: Annotated[int, typer.Option("--limit", help="At most this many.")] = 50,
    event_type: Annotated[
        str | None, typer.Option("--type", help="fnmatch filter on the event type.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One CloudEvent per line.")] = False,
) -> None:
    """List events from the outbox, oldest first."""
    from syncd.outbox import matches
    from syncd.store import outbox
    from syncd.store.database import open_database

    config = _load()
    db = open_database(config.database.url)
    try:
        shown = 0
        while shown < limit:
            batch = outbox.read_after(db, after, 500)
            if not batch:
                break
            after = batch[-1].seq
            for event in batch:
                if event_type and not matches(event.type, (event_type,)):
                    continue
                if as_json:
                    _echo(event.payload)
                else:
                    time_ = json.loads(event.payload).get("time", "")
                    kind = event.type.removeprefix("com.inventoryarts.")
                    _echo(
                        f"{event.seq:>8}  {time_}  {kind:<28} {event.subject:<8} {event.event_id}"
                    )
                shown += 1
                if shown == limit:
                    break
    finally:
        db.close()


def _open_sink_channel(config: Config, name: str) -> Any:
    from syncd.daemon import build_sinks

    for channel in build_sinks(config):
        if channel.name == name:
            return channel
    names = ", ".join(s.name for s in config.sinks) or "none"
    raise ConfigError(f"no sink named {name!r} (configured: {names})")


@events_app.command("replay")
def events_replay(
    sink: Annotated[str, typer.Option("--sink", help="The sink to re-deliver to.")],
    from_seq: Annotated[
        int, typer.Option("--from-seq", help="Re-deliver from this seq on (default: all).")
    ] = 1,
) -> None:
    """Re-deliver events to one sink, with the same ids (consumers deduplicate on them)."""
    from syncd.daemon import deliver_all
    from syncd.outbox import Dispatcher
    from syncd.store import outbox
    from syncd.store.database import open_database

    config = _load()
    channel = _open_sink_channel(config, sink)
    db = open_database(config.database.url)
    try:
        outbox.reset_cursor(db, sink, max(0, from_seq - 1), datetime.now(UTC))
        dispatcher = Dispatcher(db, [channel], max_attempts=config.http.max_attempts)
        errors = deliver_all(dispatcher, config.http.max_attempts, time.sleep, time.time)
        dispatcher.close()
        status = outbox.sink_status(db, sink)
    finally:
        db.close()
    for error in errors:
        _fail_line(error)
    _echo(f"sink {sink}: cursor at {status.position}, {status.pending} pending")
    raise typer.Exit(4 if errors else 0)


@events_app.command("dead-letters")
def events_dead_letters(
    sink: Annotated[str | None, typer.Option("--sink", help="Only this sink.")] = None,
    retry: Annotated[
        bool, typer.Option("--retry", help="Send each dead letter again; forget it on success.")
    ] = False,
) -> None:
    """List the events sinks refused for good, or send them again."""
    from syncd.errors import SinkError
    from syncd.store import outbox
    from syncd.store.database import open_database

    config = _load()
    db = open_database(config.database.url)
    failed = 0
    try:
        letters = outbox.dead_letters(db, sink)
        channels: dict[str, Any] = {}
        for letter in letters:
            line = f"{letter.id:>6}  {letter.sink:<16} seq {letter.seq:<8} {letter.event_id}"
            if not retry:
                _echo(f"{line}  {_iso(letter.created_at)}  {letter.error}")
                continue
            event = outbox.event_at(db, letter.seq)
            try:
                if letter.sink not in channels:
                    channels[letter.sink] = _open_sink_channel(config, letter.sink)
                    channels[letter.sink].sink.open()
                if event is not None:
                    channels[letter.sink].sink.send([event])
            except SinkError as exc:
                failed += 1
                _echo(f"{line}  still refused: {exc}")
                continue
            outbox.forget_dead_letter(db, letter.id)
            _echo(f"{line}  delivered")
        for channel in channels.values():
            channel.sink.close()
        if not letters:
            _echo("no dead letters")
    finally:
        db.close()
    raise typer.Exit(4 if failed else 0)


# --- pdfs -----------------------------------------------------------------------------


@pdfs_app.command("retry")
def pdfs_retry(
    connection: Annotated[
        str | None, typer.Option("--connection", help="Only this connection.")
    ] = None,
) -> None:
    """Queue failed PDFs again; each is fetched with its order's next fresh link."""
    from syncd.store import pdf_jobs
    from syncd.store.database import open_database

    config = _load()
    name = config.connection(connection).name if connection else None
    db = open_database(config.database.url)
    try:
        count = pdf_jobs.retry_failed(db, name, datetime.now(UTC))
    finally:
        db.close()
    _echo(
        f"{count} failed PDF job(s) queued again; they are archived once their order "
        "is back in the 20-order window (next poll)"
    )


# --- simulator and demo ---------------------------------------------------------------


@app.command()
def simulator(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    orders: Annotated[int, typer.Option(help="Orders to start with.")] = 25,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 1,
) -> None:
    """Serve the bundled InventoryArts simulator."""
    from syncd.simulator import serve

    serve(host, port, orders=orders, seed=seed)


@app.command()
def demo(
    directory: Annotated[
        Path, typer.Option("--dir", help="Where the demo keeps its database and events.")
    ] = Path("demo-state"),
    seconds: Annotated[
        float | None, typer.Option(help="Stop after this many seconds (default: Ctrl-C).")
    ] = None,
) -> None:
    """Simulator + daemon + a console sink on a SQLite file: watch orders flow."""
    from syncd.demo import run_demo

    raise typer.Exit(run_demo(directory, seconds))


# --- entry point ----------------------------------------------------------------------


def _fail_line(error: BaseException | str) -> None:
    from syncd.logging import redact

    text = error if isinstance(error, str) else (str(error) or type(error).__name__)
    sys.stderr.write(f"syncd: {redact(text)}\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: one line and a documented exit code for every failure."""
    command = typer.main.get_command(app)
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        code = command.main(args=args, prog_name="syncd", standalone_mode=False)
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.Abort:
        sys.stderr.write("syncd: aborted\n")
        code = 130
    except typer.TyperException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare group: its help, as is
            sys.stderr.write(exc.format_message() + "\n")
        else:  # usage errors: the parser's own message, as one line (exit 2)
            _fail_line(" ".join(exc.format_message().split()))
        code = exc.exit_code
    except SyncdError as exc:
        if debug:
            raise
        _fail_line(exc)
        code = exc.exit_code
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:
        if debug:
            raise
        _fail_line(f"unexpected error: {type(exc).__name__}: {exc} (--debug shows more)")
        code = 1
    sys.exit(code if isinstance(code, int) else 0)
