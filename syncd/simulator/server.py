"""HTTP glue and the public face of the simulator: :class:`Simulator` and :func:`serve`.

A stdlib ``ThreadingHTTPServer`` speaking HTTP/1.1 with keep-alive and an exact
Content-Length on every response. Each request is parsed, checked against the scripted
faults, answered by :class:`~syncd.simulator.app.App`, recorded in the statistics and
only then written, so a test that got its response always finds it in ``stats``.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, TextIO, cast
from urllib.parse import parse_qsl, urlsplit

from syncd.simulator.app import (
    App,
    Consent,
    Request,
    Response,
    dump_json,
    error_response,
    token_body,
)
from syncd.simulator.faults import Fault, Faults, RequestRecord, Stats
from syncd.simulator.state import State

__all__ = ["Simulator", "serve"]

_ADMIN_PREFIX = "/_sim/"
_MAX_BODY = 1024 * 1024  # request bodies are tiny JSON; refuse anything absurd
_MAINTENANCE_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Down for maintenance</title></head><body>"
    b"<h1>InventoryArts is down for scheduled maintenance</h1>"
    b"<p>We'll be back shortly. Thank you for your patience.</p></body></html>\n"
)


class _BadRequest(Exception):
    """The request's framing cannot be trusted: answer 400 and close."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], app: App, faults: Faults, stats: Stats) -> None:
        self.app = app
        self.faults = faults
        self.stats = stats
        self._conn_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        super().__init__(address, _Handler)

    # Track open sockets so stop() can end idle keep-alive connections and their threads.
    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conn_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conn_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._conn_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up mid-response is routine here (faults, tests); stay quiet.
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "InventoryArtsSimulator/1.0"
    sys_version = ""
    # Headers and body go out as separate writes: without TCP_NODELAY every keep-alive
    # answer would wait ~40 ms for the client's delayed ACK, which no real server does.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        """No request logging: tests and the demo want a quiet stderr."""

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    # ----------------------------------------------------------------- framing

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        raw = self.headers.get("Content-Length")
        if raw is None:
            return b""
        if not raw.strip().isdigit() or int(raw) > _MAX_BODY:
            raise _BadRequest
        return self.rfile.read(int(raw))

    def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            size_line = self.rfile.readline(1024).split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError as exc:
                raise _BadRequest from exc
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return bytes(body)
            if len(body) + size > _MAX_BODY:
                raise _BadRequest
            body += self.rfile.read(size)
            self.rfile.readline(1024)

    def _dispatch(self) -> None:
        server = cast(_Server, self.server)
        split = urlsplit(self.path)
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        try:
            body = self._read_body()
        except _BadRequest:
            self.close_connection = True
            self._write(error_response(400, "bad_request"))
            return
        request = Request(
            method=self.command,
            path=split.path,
            query=dict(parse_qsl(split.query, keep_blank_values=True)),
            headers=headers,
            body=body,
        )
        record = not request.path.startswith(_ADMIN_PREFIX)
        fault = server.faults.take(request.path)
        if fault is not None and fault.kind == "drop":
            if record:
                server.stats.record(self._record(request, 0))
            self.close_connection = True  # ends the connection without a byte written
            return
        response = self._respond(server, request, fault)
        if record:
            server.stats.record(self._record(request, response.status))
        truncate = fault is not None and fault.kind == "reset_mid_body"
        self._write(response, truncate=truncate)

    def _respond(self, server: _Server, request: Request, fault: Fault | None) -> Response:
        if fault is not None:
            if fault.kind == "slow":
                time.sleep(fault.delay)
            response = self._fault_response(fault)
            if response is None:  # slow and reset_mid_body answer as usual
                response = self._handle(server, request)
            if fault.retry_after is not None:
                response.headers["Retry-After"] = fault.retry_after
            response.headers.update(fault.headers)
            return response
        return self._handle(server, request)

    @staticmethod
    def _fault_response(fault: Fault) -> Response | None:
        if fault.kind == "status":
            status = fault.status or 500
            if fault.body is not None:
                return Response(status, fault.body.encode())
            error = (
                "rate_limited" if status == 429 else "server_error" if status >= 500 else "error"
            )
            return Response(status, dump_json({"error": error, "status": status}).encode())
        if fault.kind == "html":
            return Response(
                fault.status or 200, _MAINTENANCE_PAGE, content_type="text/html; charset=utf-8"
            )
        if fault.kind == "body":
            return Response(fault.status or 200, (fault.body or "").encode())
        return None

    @staticmethod
    def _handle(server: _Server, request: Request) -> Response:
        try:
            return server.app.handle(request)
        except Exception:
            # A simulator bug: show it, but still answer so the client is not left hanging.
            traceback.print_exc()
            return error_response(500, "simulator_error")

    @staticmethod
    def _record(request: Request, status: int) -> RequestRecord:
        return RequestRecord(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers=dict(request.headers),
            status=status,
        )

    def _write(self, response: Response, *, truncate: bool = False) -> None:
        length = response.length
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(length))
        for name, value in response.headers.items():
            self.send_header(name, value)
        if truncate or self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command == "HEAD":
            return
        budget = length // 2 if truncate else length
        try:
            for chunk in response.chunks():
                if budget <= 0:
                    break
                piece = chunk[:budget]
                self.wfile.write(piece)
                budget -= len(piece)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
            return
        if truncate:
            # Shut the socket now so the client sees the body cut short, not a stall.
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)


class Simulator:
    """A running stand-in for the InventoryArts API on a loopback port.

    Usable as a context manager (``with Simulator(...).start() as sim``; entering also
    starts it if needed). Everything is thread-safe.
    """

    def __init__(
        self,
        *,
        seed: int = 1,
        orders: int = 25,
        token_ttl: float = 3600.0,
        pdf_ttl: float = 3600.0,
        new_order_every: float | None = None,
        change_every: float | None = None,
        numeric_totals: bool = False,
        clock: Callable[[], float] = time.time,
        pdf_size: int | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
    ) -> None:
        self.client_id = client_id or f"sim-client-{seed}"
        self.client_secret = client_secret or secrets.token_urlsafe(24)
        self._state = State(
            seed=seed,
            orders=orders,
            token_ttl=token_ttl,
            pdf_ttl=pdf_ttl,
            new_order_every=new_order_every,
            change_every=change_every,
            clock=clock,
        )
        self._app = App(
            self._state,
            client_id=self.client_id,
            client_secret=self.client_secret,
            base_url=lambda: self.base_url,
            numeric_totals=numeric_totals,
            pdf_size=pdf_size,
        )
        self._app.stats_summary = self._stats_summary
        self.faults = Faults()
        self.stats = Stats()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._base_url: str | None = None
        self._pdf_server: _Server | None = None

    # ------------------------------------------------------------- lifecycle

    def start(self, host: str = "127.0.0.1", port: int = 0) -> Simulator:
        """Serve in a background thread; returns self. Port 0 picks a free port."""
        if self._server is not None:
            raise RuntimeError("simulator already started")
        server_class = _Server6 if ":" in host else _Server
        server = server_class((host, port), self._app, self.faults, self.stats)
        bound_port = server.server_address[1]
        # A wildcard bind is reached over loopback; advertise that.
        shown = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # noqa: S104
        shown = f"[{shown}]" if ":" in shown else shown
        self._base_url = f"http://{shown}:{bound_port}/"
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"inventoryarts-simulator:{bound_port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def serve_pdfs_from(self, host: str = "127.0.0.2") -> str:
        """Serve PDF links from a second origin on ``host``; returns its base URL.

        The API keeps answering on :attr:`base_url`; ``pdf_url`` then points at the new
        origin, as links to a CDN would, so tests can see which headers reach it.
        """
        server = _Server((host, 0), self._app, self.faults, self.stats)
        threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"inventoryarts-simulator-pdfs:{server.server_address[1]}",
            daemon=True,
        ).start()
        self._pdf_server = server
        self._app.pdf_base_url = f"http://{host}:{server.server_address[1]}/"
        return self._app.pdf_base_url

    def stop(self) -> None:
        """Stop serving and drop open connections. Safe to call twice."""
        pdf_server, self._pdf_server = self._pdf_server, None
        if pdf_server is not None:
            pdf_server.shutdown()
            pdf_server.close_connections()
            pdf_server.server_close()
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Simulator:
        return self if self._server is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/``, always with the trailing slash."""
        if self._base_url is None:
            raise RuntimeError("simulator not started")
        return self._base_url

    # ---------------------------------------------------------------- knobs

    @property
    def numeric_totals(self) -> bool:
        """Send grand_total as a JSON number instead of a string; may change live."""
        return self._app.numeric_totals

    @numeric_totals.setter
    def numeric_totals(self, value: bool) -> None:
        self._app.numeric_totals = value

    @property
    def pdf_size(self) -> int | None:
        """Pad every PDF to at least this many bytes (None: natural size); may change live."""
        return self._app.pdf_size

    @pdf_size.setter
    def pdf_size(self, value: int | None) -> None:
        self._app.pdf_size = value

    @property
    def consent(self) -> Consent:
        """What the user answers on authorize.php: "approve" (default) or "deny"; live."""
        return self._app.consent

    @consent.setter
    def consent(self, value: Consent) -> None:
        self._app.consent = value

    @property
    def redirect_uri(self) -> str | None:
        """The client's registered redirect URI (None: any); authorize.php refuses others."""
        return self._app.registered_redirect_uri

    @redirect_uri.setter
    def redirect_uri(self, value: str | None) -> None:
        self._app.registered_redirect_uri = value

    def freeze(self) -> None:
        """From now on no order appears or changes by itself."""
        self._state.freeze()

    # --------------------------------------------------------------- account

    def issue_tokens(self) -> dict[str, Any]:
        """A fresh token pair, as if the user had just authorized the client."""
        pair = self._state.issue_tokens()
        return token_body(pair.access_token, pair.refresh_token, pair.expires_in)

    def revoke_tokens(self) -> None:
        """Every access and refresh token issued so far stops working."""
        self._state.revoke_tokens()

    def expire_access_tokens(self) -> None:
        """Access tokens expire now; refresh tokens keep working."""
        self._state.expire_access_tokens()

    @property
    def orders(self) -> list[dict[str, Any]]:
        """Copies of all orders, newest first, as the API renders them minus ``pdf_url``.

        ``grand_total`` is always the exact decimal string here (``"1200.50"``), whatever
        ``numeric_totals`` says, and ``status`` is absent when the order has none.
        """
        return self._state.snapshots()

    @property
    def items(self) -> list[dict[str, Any]]:
        """Copies of the inventory items: ``{"id", "name", "state"}``."""
        return self._state.item_snapshots()

    def add_order(self, **fields: Any) -> dict[str, Any]:
        """Create the next order; fields not given are generated. Returns its snapshot."""
        return self._state.add_order(fields)

    def update_order(self, order_id: int, **fields: Any) -> dict[str, Any]:
        """Change business fields (a real change bumps the order's content version)."""
        return self._state.update_order(order_id, fields)

    def pdf_url(self, order_id: int) -> str:
        """A fresh signed link to an order's PDF, as the next poll would carry it."""
        order = self._state.order(order_id)
        if order is None:
            raise KeyError(f"no order with id {order_id}")
        return f"{self.base_url}print_po.php?{self._state.pdf_query(order)}"

    def pdf_bytes(self, order_id: int) -> bytes:
        """The PDF the link serves for an order right now (padded when pdf_size is set)."""
        document = self._app.document_for(order_id)
        if document is None:
            raise KeyError(f"no order with id {order_id}")
        return document.to_bytes()

    def _stats_summary(self) -> dict[str, object]:
        return {
            "requests": len(self.stats.requests),
            "refresh_calls": self.stats.refresh_calls,
            "by_path": self.stats.by_path(),
        }


def serve(
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    orders: int = 25,
    seed: int = 1,
    token_ttl: float = 3600.0,
    pdf_ttl: float = 3600.0,
    new_order_every: float | None = 30.0,
    change_every: float | None = 45.0,
    out: TextIO = sys.stdout,
    stop: threading.Event | None = None,
) -> None:
    """Run a simulator until ``stop`` is set or Ctrl-C, after printing how to connect."""
    sim = Simulator(
        seed=seed,
        orders=orders,
        token_ttl=token_ttl,
        pdf_ttl=pdf_ttl,
        new_order_every=new_order_every,
        change_every=change_every,
    )
    sim.start(host=host, port=port)
    try:
        tokens = sim.issue_tokens()
        out.write(
            f"InventoryArts simulator listening on {sim.base_url}\n"
            f"  client_id:     {sim.client_id}\n"
            f"  client_secret: {sim.client_secret}\n"
            f"  refresh_token: {tokens['refresh_token']}  (single use: refresh tokens rotate)\n"
            "\n"
            "Paste into syncd.toml:\n"
            "\n"
            "[[connections]]\n"
            'name = "simulator"\n'
            f'base_url = "{sim.base_url}"\n'
            f'client_id = "{sim.client_id}"\n'
            f'client_secret = "{sim.client_secret}"\n'
            "poll_interval = 10\n"
            f'refresh_token = "{tokens["refresh_token"]}"\n'
        )
        out.flush()
        stop_event = stop or threading.Event()
        try:
            while not stop_event.wait(0.2):
                pass
        except KeyboardInterrupt:
            pass
    finally:
        sim.stop()
