"""`syncd auth login`: PKCE and callback logic, the simulator's authorization endpoints, and
the whole authorization code grant over loopback, with the test playing the browser."""

from __future__ import annotations

import io
import logging
import re
import socket
import string
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import structlog

from syncd.config import ConnectionConfig
from syncd.errors import AuthError, ConfigError
from syncd.logging import configure_logging
from syncd.login import (
    Callback,
    ListenAddress,
    accept_callback,
    authorize_url,
    code_challenge,
    listen_address,
    login,
    new_state,
    new_verifier,
    parse_callback,
    parse_pasted,
)
from syncd.simulator import Simulator
from syncd.store import tokens
from syncd.store.database import Database, open_database
from tests.conftest import Setup, start_syncd

TOKEN_PATH = "/oauth/oauth_token.php"
UNRESERVED = set(string.ascii_letters + string.digits + "-._~")


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = open_database(f"sqlite:///{tmp_path / 'syncd.db'}")
    yield database
    database.close()


def connection_for(sim: Simulator, **extra: str) -> ConnectionConfig:
    return ConnectionConfig(
        name="band",
        base_url=sim.base_url,
        client_id=sim.client_id,
        client_secret=sim.client_secret,
        **extra,  # type: ignore[arg-type]
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Browser:
    """Plays the user's browser: authorize.php without following, then the redirect."""

    tamper_state: bool = False
    favicon_first: bool = False
    seen: list[httpx.Response] = field(default_factory=list)
    authorize_location: str = ""
    done: threading.Event = field(default_factory=threading.Event)

    def __call__(self, url: str) -> bool:
        threading.Thread(target=self._visit, args=(url,), daemon=True).start()
        return True

    def _visit(self, url: str) -> None:
        try:
            with httpx.Client(timeout=5) as client:
                location = client.get(url).headers["location"]
                self.authorize_location = location
                if self.tamper_state:
                    location = re.sub(r"state=[^&]+", "state=forged", location)
                if self.favicon_first:
                    origin = location.split("/callback")[0]
                    self.seen.append(client.get(origin + "/favicon.ico"))
                self.seen.append(client.get(location))
        finally:
            self.done.set()


# --- pure functions -------------------------------------------------------------------


def test_rfc7636_appendix_b_vector() -> None:
    """The S256 challenge of the RFC 7636 Appendix B verifier is the RFC's value."""
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert code_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_verifier_and_state_are_fresh_and_well_formed() -> None:
    """Verifiers are 43 unreserved characters (RFC 7636 4.1) and never repeat; so is state."""
    verifiers = {new_verifier() for _ in range(50)}
    assert len(verifiers) == 50
    assert all(len(v) == 43 and set(v) <= UNRESERVED for v in verifiers)
    assert len({new_state() for _ in range(50)}) == 50


def test_authorize_url_carries_the_request_and_keeps_the_base_query() -> None:
    """The authorize URL adds every PKCE/OAuth parameter to whatever query it already had."""
    url = authorize_url(
        "https://auth.example.org/authorize?tenant=7",
        client_id="cid",
        redirect_uri="http://127.0.0.1:5000/callback",
        state="st",
        challenge="ch",
    )
    parts = urlsplit(url)
    assert (parts.netloc, parts.path) == ("auth.example.org", "/authorize")
    assert parse_qs(parts.query) == {
        "tenant": ["7"],
        "response_type": ["code"],
        "client_id": ["cid"],
        "redirect_uri": ["http://127.0.0.1:5000/callback"],
        "state": ["st"],
        "code_challenge": ["ch"],
        "code_challenge_method": ["S256"],
    }


def test_parse_callback_ignores_requests_without_oauth_parameters() -> None:
    """A query without code, state or error is no callback; one with them is parsed."""
    assert parse_callback("") is None
    assert parse_callback("v=2") is None
    assert parse_callback("code=abc&state=xyz") == Callback(code="abc", state="xyz")
    denied = parse_callback("error=access_denied&state=xyz")
    assert denied == Callback(state="xyz", error="access_denied")


def test_parse_pasted_tells_a_url_from_a_bare_code() -> None:
    """A pasted URL is parsed (its state checked later); a bare code is taken as it is."""
    callback, from_url = parse_pasted(" http://127.0.0.1:1/callback?code=c1&state=s1 \n")
    assert (callback, from_url) == (Callback(code="c1", state="s1"), True)
    assert parse_pasted("c2\n") == (Callback(code="c2"), False)
    assert parse_pasted("\n") == (None, False)


def test_accept_callback_checks_state_before_anything_else() -> None:
    """Wrong or missing state fails even for a denial; access_denied says so; else the code."""
    with pytest.raises(AuthError, match="state does not match"):
        accept_callback(Callback(code="c", state="other"), "expected")
    with pytest.raises(AuthError, match="state does not match"):
        accept_callback(Callback(code="c"), "expected")
    with pytest.raises(AuthError, match=r"authorization denied \(access_denied\)") as info:
        accept_callback(Callback(error="access_denied", state="expected"), "expected")
    assert info.value.exit_code == 3
    assert accept_callback(Callback(code="c", state="expected"), "expected") == "c"
    assert accept_callback(Callback(code="c"), "expected", check_state=False) == "c"


def test_listen_address_follows_redirect_uri() -> None:
    """No redirect_uri: 127.0.0.1, any port; a loopback one is used; others need pasting."""
    assert listen_address(None) == ListenAddress("127.0.0.1", 0, "/callback")
    assert listen_address("http://127.0.0.1:8765/oauth/cb") == ListenAddress(
        "127.0.0.1", 8765, "/oauth/cb"
    )
    assert listen_address("http://[::1]:8765/") == ListenAddress("::1", 8765, "/")
    with pytest.raises(ConfigError, match="--no-browser"):
        listen_address("https://app.example.org/callback")


# --- the simulator's authorization endpoints ------------------------------------------


def authorize(sim: Simulator, **overrides: str) -> httpx.Response:
    params = {
        "response_type": "code",
        "client_id": sim.client_id,
        "redirect_uri": "http://127.0.0.1:9/callback",
        "state": "s",
        "code_challenge": code_challenge("v" * 43),
        "code_challenge_method": "S256",
        **overrides,
    }
    params = {k: v for k, v in params.items() if v != ""}
    return httpx.get(sim.base_url + "oauth/authorize.php", params=params)


def redirect_query(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 302, response.text
    return {k: v[0] for k, v in parse_qs(urlsplit(response.headers["location"]).query).items()}


def exchange(sim: Simulator, code: str, **overrides: str) -> httpx.Response:
    body = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": "http://127.0.0.1:9/callback",
        "client_id": sim.client_id,
        "client_secret": sim.client_secret,
        "code_verifier": "v" * 43,
        **overrides,
    }
    return httpx.post(sim.base_url + TOKEN_PATH[1:], json=body)


def test_simulator_authorize_validates_the_request(sim: Simulator) -> None:
    """Unknown client or no redirect_uri: an error page; bad PKCE or type: redirected error."""
    assert authorize(sim, client_id="nope").status_code == 400
    assert authorize(sim, redirect_uri="").status_code == 400
    assert redirect_query(authorize(sim, code_challenge_method="plain"))["error"] == (
        "invalid_request"
    )
    assert redirect_query(authorize(sim, code_challenge=""))["error"] == "invalid_request"
    assert redirect_query(authorize(sim, response_type="token"))["error"] == (
        "unsupported_response_type"
    )
    approved = redirect_query(authorize(sim))
    assert approved["state"] == "s"
    assert approved["code"]


def test_simulator_token_endpoint_checks_the_code(sim: Simulator) -> None:
    """A code is single-use and bound to its verifier, redirect URI and client."""

    def code() -> str:
        return redirect_query(authorize(sim))["code"]

    assert exchange(sim, code(), code_verifier="w" * 43).json() == {"error": "invalid_grant"}
    assert exchange(sim, code(), redirect_uri="http://127.0.0.1:10/x").status_code == 400
    wrong_client = exchange(sim, code(), client_secret="wrong")
    assert (wrong_client.status_code, wrong_client.json()) == (401, {"error": "invalid_client"})
    once = code()
    first = exchange(sim, once)
    assert first.status_code == 200
    assert set(first.json()) == {"access_token", "refresh_token", "expires_in", "token_type"}
    assert exchange(sim, once).json() == {"error": "invalid_grant"}


def test_simulator_token_endpoint_refuses_an_expired_code() -> None:
    """A code older than its ten-minute lifetime is invalid_grant."""
    now = [time.time()]
    with Simulator(clock=lambda: now[0]).start() as sim:
        code = redirect_query(authorize(sim))["code"]
        now[0] += 601
        response = exchange(sim, code)
    assert (response.status_code, response.json()) == (400, {"error": "invalid_grant"})


# --- the whole flow, in-process -------------------------------------------------------


def test_login_over_loopback_stores_a_working_pair(sim: Simulator, db: Database) -> None:
    """Browser approves, the loopback receiver takes the code, the pair is stored and works."""
    browser = Browser()
    lines: list[str] = []
    with httpx.Client(timeout=5) as http:
        pair = login(connection_for(sim), db, http, browser=browser, timeout=10, say=lines.append)
    stored = tokens.load(db, "band")
    assert stored is not None
    assert (stored.access_token, stored.refresh_token) == (pair.access_token, pair.refresh_token)
    assert not stored.needs_authorization
    me = httpx.get(
        sim.base_url + "api/v1/me.php", headers={"Authorization": f"Bearer {pair.access_token}"}
    )
    assert me.status_code == 200
    assert any(line.startswith(sim.base_url + "oauth/authorize.php?") for line in lines)
    browser.done.wait(5)
    assert [r.status_code for r in browser.seen] == [200]
    assert urlsplit(browser.authorize_location).hostname == "127.0.0.1"  # RFC 8252 7.3
    assert "code" in parse_qs(urlsplit(browser.authorize_location).query)


def test_login_ignores_a_request_without_code_or_state(sim: Simulator, db: Database) -> None:
    """/favicon.ico on the receiver is answered 404 and the login still completes."""
    browser = Browser(favicon_first=True)
    with httpx.Client(timeout=5) as http:
        login(connection_for(sim), db, http, browser=browser, timeout=10, say=lambda _: None)
    browser.done.wait(5)
    assert [r.status_code for r in browser.seen] == [404, 200]
    assert tokens.load(db, "band") is not None


def test_login_with_a_wrong_state_fails_and_stores_nothing(sim: Simulator, db: Database) -> None:
    """A callback whose state does not match gets an error page; exit 3; no code exchange."""
    browser = Browser(tamper_state=True)
    with httpx.Client(timeout=5) as http, pytest.raises(AuthError, match="state") as info:
        login(connection_for(sim), db, http, browser=browser, timeout=10, say=lambda _: None)
    assert info.value.exit_code == 3
    browser.done.wait(5)
    assert [r.status_code for r in browser.seen] == [400]
    assert tokens.load(db, "band") is None
    assert sim.stats.count(TOKEN_PATH) == 0


def test_login_denied_by_the_user_fails_with_access_denied(sim: Simulator, db: Database) -> None:
    """Consent denied: the callback carries access_denied; exit 3; nothing stored."""
    sim.consent = "deny"
    with httpx.Client(timeout=5) as http, pytest.raises(AuthError, match="access_denied") as info:
        login(connection_for(sim), db, http, browser=Browser(), timeout=10, say=lambda _: None)
    assert info.value.exit_code == 3
    assert "denied" in str(info.value)
    assert tokens.load(db, "band") is None
    assert sim.stats.count(TOKEN_PATH) == 0


def test_login_times_out_without_a_callback(sim: Simulator, db: Database) -> None:
    """No browser ever comes back: AuthError after --timeout seconds."""
    started = time.monotonic()
    with httpx.Client(timeout=5) as http, pytest.raises(AuthError, match="timed out"):
        login(connection_for(sim), db, http, browser=lambda _: False, timeout=0.5, say=print)
    assert time.monotonic() - started < 3
    assert tokens.load(db, "band") is None


def test_login_replaces_a_needs_authorization_state(sim: Simulator, db: Database) -> None:
    """A connection marked as needing authorization is authorized again by a login."""
    from datetime import UTC, datetime

    from syncd.events import auth_failed_event

    now = datetime.now(UTC)
    tokens.store_pair(
        db, "band", refresh_token="dead-token", access_token=None, expires_at=None, now=now
    )
    with tokens.locked(db, "band", bootstrap_refresh_token=None, now=now) as txn:
        txn.mark_needs_authorization("revoked", auth_failed_event("band", "x", "dead", now), now)
    with httpx.Client(timeout=5) as http:
        login(connection_for(sim), db, http, browser=Browser(), timeout=10, say=lambda _: None)
    stored = tokens.load(db, "band")
    assert stored is not None
    assert not stored.needs_authorization
    assert stored.auth_error is None


def test_login_uses_the_configured_redirect_uri(sim: Simulator, db: Database) -> None:
    """With redirect_uri set, login listens on that host, port and path, and sends it."""
    fixed = f"http://127.0.0.1:{free_port()}/oauth/done"
    sim.redirect_uri = fixed  # the client's registration allows nothing else
    browser = Browser()
    with httpx.Client(timeout=5) as http:
        login(
            connection_for(sim, redirect_uri=fixed),
            db,
            http,
            browser=browser,
            timeout=10,
            say=lambda _: None,
        )
    assert browser.authorize_location.startswith(fixed + "?code=")
    assert tokens.load(db, "band") is not None


class PastingStdin(io.StringIO):
    """stdin for --no-browser: once the URL is printed, the 'operator' pastes a line."""

    def __init__(self, sim: Simulator, make_line: Callable[[str], str]) -> None:
        super().__init__()
        self.sim = sim
        self.make_line = make_line
        self.location = ""

    def say(self, line: str) -> None:
        if line.startswith(self.sim.base_url):
            self.location = httpx.get(line).headers["location"]
            self.write(self.make_line(self.location) + "\n")
            self.seek(0)


@pytest.mark.parametrize(
    "paste",
    [
        pytest.param(lambda location: location, id="redirected-url"),
        pytest.param(lambda location: parse_qs(urlsplit(location).query)["code"][0], id="code"),
    ],
)
def test_no_browser_login_reads_the_pasted_url_or_code(
    sim: Simulator, db: Database, paste: Callable[[str], str]
) -> None:
    """--no-browser: the operator pastes the redirected URL, or the bare code; both work."""
    stdin = PastingStdin(sim, paste)
    with httpx.Client(timeout=5) as http:
        login(connection_for(sim), db, http, no_browser=True, stdin=stdin, say=stdin.say)
    assert urlsplit(stdin.location).hostname == "127.0.0.1"
    assert tokens.load(db, "band") is not None


def test_no_browser_login_checks_the_state_of_a_pasted_url(sim: Simulator, db: Database) -> None:
    """A pasted URL with another login's state is refused before the code is exchanged."""
    stdin = PastingStdin(sim, lambda location: re.sub(r"state=[^&]+", "state=old", location))
    with httpx.Client(timeout=5) as http, pytest.raises(AuthError, match="state"):
        login(connection_for(sim), db, http, no_browser=True, stdin=stdin, say=stdin.say)
    assert sim.stats.count(TOKEN_PATH) == 0
    assert tokens.load(db, "band") is None


def test_code_exchange_rejected_is_exit_3(sim: Simulator, db: Database) -> None:
    """A code the token endpoint refuses (here: wrong client secret) fails with exit 3."""
    connection = ConnectionConfig(
        name="band", base_url=sim.base_url, client_id=sim.client_id, client_secret="wrong-secret"
    )
    with httpx.Client(timeout=5) as http, pytest.raises(AuthError, match="invalid_client") as info:
        login(connection, db, http, browser=Browser(), timeout=10, say=lambda _: None)
    assert info.value.exit_code == 3
    assert tokens.load(db, "band") is None


def test_login_logs_and_says_no_secret(
    sim: Simulator, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Neither the verifier, the code, the tokens nor the client secret reach logs or output."""
    verifier = "k" * 20 + "known-verifier-value-123"
    monkeypatch.setattr("syncd.login.new_verifier", lambda: verifier)
    logs = io.StringIO()
    saved = structlog.get_config()
    configure_logging("debug", "json", stream=logs)
    said: list[str] = []
    browser = Browser()
    try:
        with httpx.Client(timeout=5) as http:
            pair = login(
                connection_for(sim), db, http, browser=browser, timeout=10, say=said.append
            )
            auth_code = parse_qs(urlsplit(browser.authorize_location).query)["code"][0]
            with pytest.raises(AuthError, match="invalid_grant") as info:  # the code, again
                login(
                    connection_for(sim),
                    db,
                    http,
                    no_browser=True,
                    say=said.append,
                    stdin=io.StringIO(auth_code + "\n"),
                )
    finally:
        structlog.configure(**saved)
        logging.getLogger().handlers.clear()
    text = "\n".join([*said, logs.getvalue(), str(info.value)])
    assert "authorized" in logs.getvalue()
    for secret in (verifier, auth_code, pair.access_token, pair.refresh_token, sim.client_secret):
        assert secret not in text


# --- the command, as its own process --------------------------------------------------


def run_login(setup: Setup, browser: Callable[[str], None], *args: str) -> tuple[int, str]:
    """`syncd auth login ARGS` with the test as the browser; returns (exit code, output)."""
    proc = start_syncd(setup, "auth", "login", *args)
    assert proc.stdout is not None
    output = ""
    try:
        for line in proc.stdout:
            output += line
            if "/oauth/authorize.php?" in line:
                browser(line.strip())
                break
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, output + out + err


def test_cli_login_prints_the_label_and_leaks_no_secret(
    sim: Simulator, make_config: Callable[..., Setup]
) -> None:
    """`syncd auth login`: exit 0, the account's label; no code, token or secret in output."""
    setup = make_config(sim, refresh_token="")
    browser = Browser()
    code, output = run_login(setup, browser, "--connection", "band")
    assert code == 0, output
    assert "connection band authorized: jdoe - High School Band" in output
    db = open_database(f"sqlite:///{setup.state_dir / 'syncd.db'}")
    try:
        stored = tokens.load(db, "band")
    finally:
        db.close()
    assert stored is not None
    auth_code = parse_qs(urlsplit(browser.authorize_location).query)["code"][0]
    for secret in (auth_code, stored.access_token, stored.refresh_token, sim.client_secret):
        assert secret
        assert secret not in output
    assert "Traceback" not in output


def test_cli_login_with_a_wrong_state_exits_3_with_one_line(
    sim: Simulator, make_config: Callable[..., Setup]
) -> None:
    """A forged callback ends `syncd auth login` with exit 3 and one 'syncd:' line."""
    setup = make_config(sim, refresh_token="")
    code, output = run_login(setup, Browser(tamper_state=True))
    assert code == 3, output
    errors = [line for line in output.splitlines() if line.startswith("syncd: ")]
    assert len(errors) == 1
    assert "state" in errors[0]
    assert "Traceback" not in output
