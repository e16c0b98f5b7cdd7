"""The simulated InventoryArts endpoints as plain request -> response functions.

No sockets here: :class:`App` takes a parsed :class:`Request` and returns a
:class:`Response`; ``server.py`` does the HTTP framing, the faults and the statistics.
The endpoints follow the vendor document, filled in by DESIGN §3 where it is silent.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from syncd.simulator.pdf import PdfDocument, render_pdf
from syncd.simulator.state import WINDOW, State, format_money

__all__ = ["App", "Request", "Response", "dump_json", "error_response"]

PROFILE: dict[str, object] = {
    "id": 1,
    "username": "jdoe",
    "email": "jdoe@example.com",
    "name": "John Doe",
    "connection_label": "jdoe - High School Band",
}
CHECKIN_TYPES = ("return_borrowed", "checkin_loaned")
Consent = Literal["approve", "deny"]


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes = b""


@dataclass
class Response:
    """A status, headers and a body given either as bytes or as a streamed PDF."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    document: PdfDocument | None = None

    @property
    def length(self) -> int:
        return self.document.size if self.document is not None else len(self.body)

    def chunks(self) -> Iterator[bytes]:
        if self.document is not None:
            yield from self.document.chunks()
        else:
            yield self.body


def dump_json(value: object) -> str:
    """JSON text in which a Decimal is written as an exact number literal (``1200.50``).

    The json module would need a float for that, which is how binary artefacts creep in.
    """
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, dict):
        items = (f"{json.dumps(str(k))}: {dump_json(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(dump_json(v) for v in value) + "]"
    return json.dumps(value)


def json_response(status: int, value: object, headers: dict[str, str] | None = None) -> Response:
    return Response(status, dump_json(value).encode(), headers=dict(headers or {}))


def error_response(status: int, error: str, headers: dict[str, str] | None = None) -> Response:
    return json_response(status, {"error": error}, headers)


def _html(status: int, title: str, text: str) -> Response:
    page = f"<!DOCTYPE html>\n<html><head><title>{title}</title></head>"
    page += f"<body><h1>{title}</h1><p>{text}</p></body></html>\n"
    return Response(status, page.encode(), content_type="text/html; charset=utf-8")


def _parse_json(body: bytes) -> Any:
    """The decoded JSON body, or None when it is not JSON at all."""
    try:
        return json.loads(body)
    except ValueError:  # includes UnicodeDecodeError and JSONDecodeError
        return None


Handler = Callable[[Request], Response]


class App:
    """Routes requests to the endpoints; ``numeric_totals`` and ``pdf_size`` may change live."""

    def __init__(
        self,
        state: State,
        *,
        client_id: str,
        client_secret: str,
        base_url: Callable[[], str],
        numeric_totals: bool = False,
        pdf_size: int | None = None,
    ) -> None:
        self.state = state
        self.client_id = client_id
        self.client_secret = client_secret
        self.base_url = base_url
        self.numeric_totals = numeric_totals
        self.pdf_size = pdf_size
        self.routes: dict[str, dict[str, Handler]] = {
            "/api/v1/me.php": {"GET": self._authed(self._me)},
            "/api/v1/purchase_orders.php": {"GET": self._authed(self._purchase_orders)},
            "/api/v1/item_checkin.php": {"POST": self._authed(self._checkin)},
            "/oauth/oauth_refresh.php": {"POST": self._refresh},
            "/oauth/authorize.php": {"GET": self._authorize},
            "/oauth/oauth_token.php": {"POST": self._token},
            "/print_po.php": {"GET": self._print_po},
            "/_sim/state": {"GET": self._sim_state},
            "/_sim/orders": {"POST": self._sim_add_order},
            "/_sim/tokens": {"POST": self._sim_tokens},
        }
        self.stats_summary: Callable[[], dict[str, object]] = dict
        # Set when PDFs are served from another origin (a CDN, in real life).
        self.pdf_base_url: str | None = None
        # What the user answers on the consent page of authorize.php.
        self.consent: Consent = "approve"
        # The client's registered redirect URI; None accepts any.
        self.registered_redirect_uri: str | None = None

    def handle(self, request: Request) -> Response:
        """Answer one request (faults have already been considered by the caller)."""
        methods = self.routes.get(request.path)
        if methods is None:
            return error_response(404, "not_found")
        handler = methods.get(request.method)
        if handler is None:
            return error_response(405, "method_not_allowed", {"Allow": ", ".join(methods)})
        return handler(request)

    # ------------------------------------------------------------------ auth

    def _authed(self, handler: Handler) -> Handler:
        def wrapper(request: Request) -> Response:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not self.state.access_token_valid(token.strip()):
                return error_response(
                    401, "invalid_token", {"WWW-Authenticate": 'Bearer error="invalid_token"'}
                )
            return handler(request)

        return wrapper

    def _refresh(self, request: Request) -> Response:
        data = _parse_json(request.body)
        if not isinstance(data, dict):
            return error_response(400, "invalid_request")
        grant_type = data.get("grant_type")
        refresh_token = data.get("refresh_token")
        if not isinstance(grant_type, str) or not isinstance(refresh_token, str):
            return error_response(400, "invalid_request")
        if grant_type != "refresh_token":
            return error_response(400, "unsupported_grant_type")
        if (
            data.get("client_id") != self.client_id
            or data.get("client_secret") != self.client_secret
        ):
            return error_response(401, "invalid_client")
        pair = self.state.rotate(refresh_token)
        if pair is None:
            return error_response(400, "invalid_grant")
        return json_response(
            200, token_body(pair.access_token, pair.refresh_token, pair.expires_in)
        )

    def _authorize(self, request: Request) -> Response:
        """The authorization code grant's front door (RFC 6749 4.1.1, PKCE RFC 7636 4.3).

        Until the client and redirect URI are known good, errors are a page for the user;
        after that they travel back to the client on the redirect.
        """
        query = request.query
        if query.get("client_id") != self.client_id:
            return _html(400, "Unknown client", "The client_id is missing or unknown.")
        redirect_uri = query.get("redirect_uri", "")
        if not redirect_uri:
            return _html(400, "Invalid request", "The redirect_uri is missing.")
        if self.registered_redirect_uri not in (None, redirect_uri):
            return _html(
                400, "Invalid request", "The redirect_uri does not match the registered one."
            )
        state = query.get("state")
        error: str | None = None
        if query.get("response_type") != "code":
            error = "unsupported_response_type"
        elif query.get("code_challenge_method") != "S256" or not query.get("code_challenge"):
            error = "invalid_request"  # PKCE with S256 is required of every client
        elif self.consent == "deny":
            error = "access_denied"
        if error is not None:
            return _redirect(redirect_uri, {"error": error, "state": state})
        code = self.state.issue_code(self.client_id, redirect_uri, query["code_challenge"])
        return _redirect(redirect_uri, {"code": code, "state": state})

    def _token(self, request: Request) -> Response:
        """Exchange an authorization code (JSON body, like the refresh endpoint)."""
        no_store = {"Cache-Control": "no-store"}
        data = _parse_json(request.body)
        if not isinstance(data, dict):
            return error_response(400, "invalid_request", no_store)
        if data.get("grant_type") != "authorization_code":
            return error_response(400, "unsupported_grant_type", no_store)
        if (
            data.get("client_id") != self.client_id
            or data.get("client_secret") != self.client_secret
        ):
            return error_response(401, "invalid_client", no_store)
        fields = [data.get(key) for key in ("code", "redirect_uri", "code_verifier")]
        code, redirect_uri, verifier = fields
        if not all(isinstance(value, str) and value for value in fields):
            return error_response(400, "invalid_request", no_store)
        pair = self.state.redeem_code(
            str(code),
            client_id=self.client_id,
            redirect_uri=str(redirect_uri),
            verifier=str(verifier),
        )
        if pair is None:
            return error_response(400, "invalid_grant", no_store)
        body = token_body(pair.access_token, pair.refresh_token, pair.expires_in)
        return json_response(200, body, no_store)

    # ----------------------------------------------------------------- api v1

    def _me(self, request: Request) -> Response:
        return json_response(200, PROFILE)

    def _purchase_orders(self, request: Request) -> Response:
        base = self.pdf_base_url or self._link_base(request)
        rendered: list[dict[str, object]] = []
        with self.state.lock:
            for order in self.state.newest(WINDOW):
                # A Decimal is written as a bare number literal by dump_json.
                total: object = (
                    order.grand_total if self.numeric_totals else format_money(order.grand_total)
                )
                item: dict[str, object] = {
                    "id": order.id,
                    "po_number": order.po_number,
                    "vendor_name": order.vendor_name,
                    "grand_total": total,
                }
                if order.status is not None:
                    item["status"] = order.status
                item["pdf_url"] = f"{base}print_po.php?{self.state.pdf_query(order)}"
                item["items_summary"] = order.items_summary
                rendered.append(item)
        return json_response(200, rendered)

    def _link_base(self, request: Request) -> str:
        """Links point where the client reached us (Host), so they work behind port mapping."""
        host = request.headers.get("host")
        return f"http://{host}/" if host else self.base_url()

    def _checkin(self, request: Request) -> Response:
        data = _parse_json(request.body)
        if not isinstance(data, dict):
            return json_response(
                400, {"success": False, "message": "Request body must be a JSON object."}
            )
        raw_id = data.get("id")
        item_id: int | None = None
        # PHP would take "502" as readily as 502.
        if isinstance(raw_id, int) and not isinstance(raw_id, bool):
            item_id = raw_id
        elif isinstance(raw_id, str) and raw_id.isdigit():
            item_id = int(raw_id)
        if item_id is None:
            return json_response(400, {"success": False, "message": "Missing or invalid id."})
        if data.get("type") not in CHECKIN_TYPES:
            message = "Invalid type. Use return_borrowed or checkin_loaned."
            return json_response(400, {"success": False, "message": message})
        result = self.state.checkin(item_id, str(data["type"]))
        return json_response(result.status, result.body)

    # ------------------------------------------------------------------- pdfs

    def document_for(self, order_id: int) -> PdfDocument | None:
        """The PDF ``print_po.php`` serves for an order right now (None: unknown order)."""
        with self.state.lock:
            order = self.state.order(order_id)
            if order is None:
                return None
            title = f"Purchase Order {order.po_number}"
            return render_pdf(title, order.pdf_lines(), pad_to=self.pdf_size)

    def _print_po(self, request: Request) -> Response:
        raw_id = request.query.get("po_id", "")
        order = self.state.order(int(raw_id)) if raw_id.isdigit() else None
        if order is None:
            return _html(404, "Not Found", "No such purchase order.")
        raw_expires = request.query.get("expires", "")
        token = request.query.get("token", "")
        if not raw_expires.isdigit() or not token:
            return _html(403, "Forbidden", "This link is not valid.")
        problem = self.state.check_pdf_link(order, int(raw_expires), token)
        if problem == "invalid":
            return _html(403, "Forbidden", "This link is not valid.")
        if problem == "expired":
            return _html(403, "Link expired", "This link has expired. Request a new one.")
        document = self.document_for(order.id)
        if document is None:  # vanished between the two lock scopes; orders never do
            return _html(404, "Not Found", "No such purchase order.")
        return Response(
            200,
            content_type="application/pdf",
            headers={"Content-Disposition": f'inline; filename="{order.po_number}.pdf"'},
            document=document,
        )

    # ------------------------------------------------------------------ admin

    def _sim_state(self, request: Request) -> Response:
        return json_response(
            200,
            {
                "orders": self.state.snapshots(),
                "items": self.state.item_snapshots(),
                "stats": self.stats_summary(),
            },
        )

    def _sim_add_order(self, request: Request) -> Response:
        data = _parse_json(request.body) if request.body else {}
        if not isinstance(data, dict):
            return error_response(400, "invalid_request")
        try:
            return json_response(201, self.state.add_order(data))
        except (TypeError, ValueError) as exc:
            return json_response(400, {"error": "invalid_request", "message": str(exc)})

    def _sim_tokens(self, request: Request) -> Response:
        pair = self.state.issue_tokens()
        return json_response(
            200, token_body(pair.access_token, pair.refresh_token, pair.expires_in)
        )


def _redirect(uri: str, params: dict[str, str | None]) -> Response:
    """302 to ``uri`` with ``params`` added to its query (None values left out)."""
    parts = urlsplit(uri)
    query = parse_qsl(parts.query, keep_blank_values=True)
    query += [(key, value) for key, value in params.items() if value is not None]
    location = urlunsplit(parts._replace(query=urlencode(query)))
    return Response(302, b"", content_type="text/plain", headers={"Location": location})


def token_body(access: str, refresh: str, expires_in: float) -> dict[str, object]:
    """The documented token response; expires_in is an integer when the TTL is whole."""
    return {
        "access_token": access,
        "refresh_token": refresh,
        "expires_in": int(expires_in) if float(expires_in).is_integer() else expires_in,
        "token_type": "Bearer",
    }
