"""``syncd auth login``: the OAuth 2.0 authorization code grant with PKCE (DESIGN §3).

The decisions are pure functions: the PKCE verifier and its S256 challenge (RFC 7636),
the ``state``, the authorize URL, where the loopback receiver listens, and what a
callback (or a pasted URL) says. Around them stay thin drivers: a one-shot HTTP
receiver on a loopback IP literal (RFC 8252 §7.3, never "localhost"), the reader of a
pasted URL for ``--no-browser``, and the code exchange at ``token_url`` (a JSON body,
like the refresh grant). The code, the verifier, the client secret and the tokens are
registered for redaction as soon as they exist; ``state`` and the challenge are not
secrets (the authorize URL that carries them is printed).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import html
import ipaddress
import secrets
import socket
import sys
import threading
import time
import webbrowser
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, TextIO, cast
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx

from syncd.api import TokenPair, error_detail, token_pair
from syncd.config import ConnectionConfig
from syncd.errors import AuthError, ConfigError, TransientApiError
from syncd.logging import get_logger
from syncd.logging import secrets as known_secrets
from syncd.store import tokens
from syncd.store.database import Database

LOOPBACK_HOST = "127.0.0.1"  # RFC 8252 §7.3: an IP literal, not "localhost"
CALLBACK_PATH = "/callback"
VERIFIER_BYTES = 32  # 43 base64url characters, the shortest verifier RFC 7636 allows
DEFAULT_TIMEOUT = 300.0


# --- pure: PKCE, state, URLs, callbacks -----------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def new_verifier() -> str:
    """A fresh PKCE code_verifier: 32 random bytes, base64url without padding."""
    return _b64url(secrets.token_bytes(VERIFIER_BYTES))


def code_challenge(verifier: str) -> str:
    """The S256 code_challenge of ``verifier``: BASE64URL(SHA256(ASCII(verifier)))."""
    return _b64url(hashlib.sha256(verifier.encode("ascii")).digest())


def new_state() -> str:
    """A fresh, unguessable ``state`` that ties the callback to this login."""
    return secrets.token_urlsafe(16)


def authorize_url(
    base: str, *, client_id: str, redirect_uri: str, state: str, challenge: str
) -> str:
    """The URL the user opens: ``base`` plus the authorization request (RFC 6749 4.1.1)."""
    parts = urlsplit(base)
    query = parts.query + "&" if parts.query else ""
    query += urlencode(
        {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
    )
    return urlunsplit(parts._replace(query=query))


@dataclass(frozen=True)
class Callback:
    """The OAuth parameters of a redirect back to syncd."""

    code: str | None = None
    state: str | None = None
    error: str | None = None
    error_description: str | None = None


def parse_callback(query: str) -> Callback | None:
    """The parameters in a redirect's query string; None when it carries none of them.

    A browser also asks for things like /favicon.ico: such requests are not a callback.
    """
    fields = parse_qs(query, keep_blank_values=True)

    def first(name: str) -> str | None:
        values = fields.get(name)
        return values[0] if values else None

    callback = Callback(first("code"), first("state"), first("error"), first("error_description"))
    if callback.code is None and callback.state is None and callback.error is None:
        return None
    return callback


def parse_pasted(text: str) -> tuple[Callback | None, bool]:
    """What the operator pasted: a redirected URL, or the bare code.

    Returns the callback and whether it came from a URL (whose ``state`` is checked).
    """
    text = text.strip()
    if not text:
        return None, False
    if "://" in text or text.startswith(("/", "?")):
        return parse_callback(urlsplit(text).query), True
    return Callback(code=text), False


def accept_callback(callback: Callback, expected_state: str, *, check_state: bool = True) -> str:
    """The authorization code of ``callback``, or AuthError (exit 3) saying what went wrong."""
    if check_state and (
        callback.state is None or not hmac.compare_digest(callback.state, expected_state)
    ):
        raise AuthError(
            "login failed: the callback's state does not match this login (a stale or "
            "forged redirect); nothing was stored"
        )
    if callback.error is not None:
        description = f": {callback.error_description}" if callback.error_description else ""
        reason = "authorization denied" if callback.error == "access_denied" else "login failed"
        raise AuthError(f"{reason} ({callback.error}{description}); nothing was stored")
    if not callback.code:
        raise AuthError("login failed: the callback carries no authorization code")
    return callback.code


def is_loopback(host: str) -> bool:
    """True for loopback IP literals (and "localhost", which some clients register)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ListenAddress:
    """Where the loopback receiver listens; port 0 asks for an ephemeral port."""

    host: str
    port: int
    path: str


def listen_address(redirect_uri: str | None) -> ListenAddress:
    """Where to receive the redirect: the configured URI's, else 127.0.0.1, any port.

    ConfigError when the configured URI is not one syncd can listen on.
    """
    if redirect_uri is None:
        return ListenAddress(LOOPBACK_HOST, 0, CALLBACK_PATH)
    parts = urlsplit(redirect_uri)
    host = parts.hostname or ""
    if parts.scheme != "http" or not is_loopback(host):
        raise ConfigError(
            f"redirect_uri {redirect_uri} is not an http:// loopback address, so syncd "
            "cannot receive the redirect: run 'syncd auth login --no-browser' and paste "
            "the URL the browser was sent to"
        )
    return ListenAddress(
        LOOPBACK_HOST if host == "localhost" else host, parts.port or 80, parts.path or "/"
    )


def loopback_redirect_uri(host: str, port: int, path: str = CALLBACK_PATH) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}{path}"


# --- the code exchange ----------------------------------------------------------------


def exchange_code(
    http: httpx.Client,
    token_url: str,
    *,
    client_id: str,
    client_secret: str,
    code: str,
    redirect_uri: str,
    verifier: str,
) -> TokenPair:
    """POST the authorization code grant (JSON body, like refresh) for a token pair.

    Never retried: a code is single-use. Any 4xx is an AuthError (exit 3).
    """
    endpoint = "token endpoint"
    body = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "client_id": client_id,
        "client_secret": client_secret,
        "code_verifier": verifier,
    }
    try:
        response = http.post(token_url, json=body, headers={"Accept": "application/json"})
    except httpx.HTTPError as exc:
        raise TransientApiError(
            f"{endpoint}: no answer to the code exchange ({type(exc).__name__}); "
            "run 'syncd auth login' again",
            retryable=False,
        ) from None
    if 400 <= response.status_code < 500:
        detail = error_detail(response) or f"HTTP {response.status_code}"
        raise AuthError(
            f"login failed: the {endpoint} refused the authorization code ({detail}); "
            "nothing was stored",
            status_code=response.status_code,
        )
    pair = token_pair(response, endpoint)
    known_secrets.add(pair.access_token)
    known_secrets.add(pair.refresh_token)
    return pair


# --- receiving the redirect -----------------------------------------------------------

_DONE_PAGE = "syncd is authorized. You may close this window."


class _ReceiverServer(HTTPServer):
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], receiver: CallbackReceiver) -> None:
        self.receiver = receiver
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _CallbackHandler)


class _CallbackHandler(BaseHTTPRequestHandler):
    timeout = 2  # a client that connects and says nothing must not stall the login

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the request line carries the authorization code."""

    def do_GET(self) -> None:
        receiver = cast(_ReceiverServer, self.server).receiver
        parts = urlsplit(self.path)
        callback = parse_callback(parts.query) if parts.path == receiver.path else None
        if callback is None:
            self._page(404, "Not found", "This is syncd's login callback; nothing here.")
            return
        try:
            code = accept_callback(callback, receiver.expected_state)
        except AuthError as exc:
            receiver.result = exc
            self._page(400, "syncd login failed", str(exc))
            return
        known_secrets.add(code)
        receiver.result = code
        self._page(200, "syncd login", _DONE_PAGE)

    def _page(self, status: int, title: str, text: str) -> None:
        body = (
            f"<!DOCTYPE html>\n<html><head><title>{html.escape(title)}</title></head>"
            f"<body><h1>{html.escape(title)}</h1><p>{html.escape(text)}</p></body></html>\n"
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


class CallbackReceiver:
    """A one-shot HTTP server on a loopback address, waiting for the one redirect.

    Requests that are not a callback (no code, state or error; another path) get a 404
    and are ignored; the first callback ends the wait, with its code or its error.
    """

    def __init__(self, address: ListenAddress, expected_state: str) -> None:
        self.path = address.path
        self.expected_state = expected_state
        self.result: str | AuthError | None = None
        try:
            self._server = _ReceiverServer((address.host, address.port), self)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {address.host}:{address.port} for the login redirect: "
                f"{exc.strerror or exc}"
            ) from None
        self.host = address.host
        self.port = int(self._server.server_address[1])

    @property
    def redirect_uri(self) -> str:
        return loopback_redirect_uri(self.host, self.port, self.path)

    def wait(self, timeout: float, clock: Callable[[], float] = time.monotonic) -> str:
        """The authorization code, or AuthError: a failed callback or the timeout."""
        deadline = clock() + timeout
        while self.result is None:
            left = deadline - clock()
            if left <= 0:
                raise AuthError(
                    f"login timed out after {timeout:g} s without a callback; nothing was "
                    "stored (run 'syncd auth login' again, or --timeout SECONDS)"
                )
            self._server.timeout = min(0.5, left)
            self._server.handle_request()
        if isinstance(self.result, AuthError):
            raise self.result
        return self.result

    def close(self) -> None:
        self._server.server_close()

    def __enter__(self) -> CallbackReceiver:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def read_pasted(stream: TextIO, expected_state: str, timeout: float) -> str:
    """The code from the line the operator pastes (a redirected URL, or the bare code)."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not lines:
        raise AuthError(
            f"login timed out after {timeout:g} s waiting for the pasted URL; nothing was stored"
        )
    callback, from_url = parse_pasted(lines[0])
    if callback is None:
        raise AuthError("login failed: nothing pasted (expected the redirected URL or the code)")
    code = accept_callback(callback, expected_state, check_state=from_url)
    known_secrets.add(code)
    return code


@contextlib.contextmanager
def _reserved_loopback_port() -> Iterator[int]:
    """An ephemeral loopback port held (bound, not listening) for the block.

    For --no-browser: the browser's redirect to it fails at once, leaving the URL in the
    address bar to copy, and no other local program can take the port meanwhile.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK_HOST, 0))
        yield int(sock.getsockname()[1])


def open_browser(url: str) -> bool:
    """Open ``url`` in a graphical browser when there is one; never fails.

    A console browser (lynx, w3m) would take over this terminal, so it is not used.
    """
    try:
        browser = webbrowser.get()
        if type(browser) is webbrowser.GenericBrowser:
            return False
        return bool(browser.open(url, new=1))
    except Exception:  # no browser, a broken one: the printed URL is enough
        return False


# --- the whole login ------------------------------------------------------------------


def login(
    connection: ConnectionConfig,
    db: Database,
    http: httpx.Client,
    *,
    no_browser: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    say: Callable[[str], None] = print,
    stdin: TextIO | None = None,
    browser: Callable[[str], bool] = open_browser,
    clock: Callable[[], float] = time.time,
) -> TokenPair:
    """Authorize ``connection`` and store its new token pair; returns the pair."""
    client_secret = connection.client_secret.get_secret_value()
    known_secrets.add(client_secret)
    verifier = new_verifier()
    known_secrets.add(verifier)
    state = new_state()
    challenge = code_challenge(verifier)
    log = get_logger(connection=connection.name, job="login")

    def url_for(redirect_uri: str) -> str:
        return authorize_url(
            connection.authorize_url,
            client_id=connection.client_id,
            redirect_uri=redirect_uri,
            state=state,
            challenge=challenge,
        )

    if no_browser:
        with contextlib.ExitStack() as stack:
            redirect_uri = connection.redirect_uri or loopback_redirect_uri(
                LOOPBACK_HOST, stack.enter_context(_reserved_loopback_port())
            )
            say(f"Open this URL in a browser to authorize connection {connection.name}:")
            say(url_for(redirect_uri))
            say(
                "After you approve, the browser is sent to a page that may not load: paste "
                "its full URL (or just the code) here and press Enter:"
            )
            code = read_pasted(stdin or sys.stdin, state, timeout)
    else:
        with CallbackReceiver(listen_address(connection.redirect_uri), state) as receiver:
            redirect_uri = connection.redirect_uri or receiver.redirect_uri
            url = url_for(redirect_uri)
            opened = browser(url)
            say(
                "Opened your browser to authorize connection "
                f"{connection.name}; if it did not open, visit:"
                if opened
                else f"Open this URL in a browser to authorize connection {connection.name}:"
            )
            say(url)
            say(f"Waiting for the redirect to {redirect_uri} ...")
            code = receiver.wait(timeout)
    pair = exchange_code(
        http,
        connection.token_url,
        client_id=connection.client_id,
        client_secret=client_secret,
        code=code,
        redirect_uri=redirect_uri,
        verifier=verifier,
    )
    now = datetime.fromtimestamp(clock(), UTC)
    tokens.store_pair(
        db,
        connection.name,
        refresh_token=pair.refresh_token,
        access_token=pair.access_token,
        expires_at=now + timedelta(seconds=pair.expires_in),
        now=now,
    )
    log.info("authorized: new tokens stored", expires_in=pair.expires_in)
    return pair
