"""The API client against httpx.MockTransport: retries, errors, validation, check-in."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

import httpx
import pytest

from syncd.api import (
    InventoryArtsClient,
    RetryPolicy,
    parse_retry_after,
    refresh_grant,
    retry_delay,
)
from syncd.errors import AuthError, PermanentApiError, RateLimited, TransientApiError

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
ORDER = {
    "id": 105,
    "po_number": "PO-260105-1",
    "vendor_name": "Sweetwater",
    "grand_total": "1200.50",
    "status": "Draft",
    "pdf_url": "https://inventoryarts.com/print_po.php?po_id=105&token=t",
    "items_summary": "1x Yamaha Synth",
}
Handler = Callable[[httpx.Request], httpx.Response]


class FakeTokens:
    """A TokenSource that counts refreshes."""

    def __init__(self) -> None:
        self.token = "access-1"
        self.refreshes = 0

    def access_token(self) -> str:
        return self.token

    def refresh_after_401(self, rejected: str) -> str:
        self.refreshes += 1
        self.token = f"access-{self.refreshes + 1}"
        return self.token


class Recorder:
    """Serves scripted responses in turn and records the requests."""

    def __init__(self, *responses: httpx.Response | Exception | Handler) -> None:
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []
        self.authorizations: list[str | None] = []  # as sent (the request is reused)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.authorizations.append(request.headers.get("authorization"))
        item = self.responses.pop(0) if len(self.responses) > 1 else self.responses[0]
        if isinstance(item, Exception):
            raise item
        if callable(item) and not isinstance(item, httpx.Response):
            return item(request)
        return item


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def make_client(sleeps: list[float]) -> Callable[..., InventoryArtsClient]:
    def make(
        recorder: Recorder, *, tokens: FakeTokens | None = None, max_attempts: int = 4
    ) -> InventoryArtsClient:
        return InventoryArtsClient(
            "https://inventoryarts.test/",
            tokens or FakeTokens(),
            policy=RetryPolicy(max_attempts=max_attempts, retry_after_max=60),
            transport=httpx.MockTransport(recorder),
            sleep=sleeps.append,
            clock=NOW.timestamp,
            rand=lambda: 0.5,
        )

    return make


def ok(body: object) -> httpx.Response:
    return httpx.Response(200, content=json.dumps(body).encode())


# --- pure decisions -------------------------------------------------------------------


def test_retry_after_seconds() -> None:
    """Delta-seconds parse as seconds."""
    assert parse_retry_after("120", NOW) == 120


def test_retry_after_http_date() -> None:
    """An HTTP date is the time left until then."""
    assert parse_retry_after("Mon, 05 Jan 2026 12:00:30 GMT", NOW) == 30


def test_retry_after_garbage_is_ignored() -> None:
    """An unreadable header is as if absent."""
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after(None, NOW) is None


def test_retry_delay_full_jitter_grows_and_caps() -> None:
    """Without Retry-After: rand * min(cap, base * 2**(n-1))."""
    policy = RetryPolicy(max_attempts=10, backoff_base=1, backoff_max=8)
    error = TransientApiError("x")
    assert retry_delay(1, error, policy, lambda: 1.0) == 1
    assert retry_delay(3, error, policy, lambda: 1.0) == 4
    assert retry_delay(6, error, policy, lambda: 1.0) == 8
    assert retry_delay(6, error, policy, lambda: 0.25) == 2


def test_retry_delay_honours_retry_after_up_to_cap() -> None:
    """Retry-After within the cap is waited; beyond it the caller gives up."""
    policy = RetryPolicy(retry_after_max=300)
    assert retry_delay(1, RateLimited("x", retry_after=30), policy, lambda: 0.5) == 30
    assert retry_delay(1, RateLimited("x", retry_after=301), policy, lambda: 0.5) is None


def test_retry_delay_gives_up_after_max_attempts() -> None:
    """The last attempt is not followed by a sleep."""
    policy = RetryPolicy(max_attempts=3)
    assert retry_delay(2, TransientApiError("x"), policy, lambda: 0.5) is not None
    assert retry_delay(3, TransientApiError("x"), policy, lambda: 0.5) is None


def test_retry_delay_never_for_permanent_errors() -> None:
    """4xx and non-retryable errors are not retried."""
    policy = RetryPolicy()
    assert retry_delay(1, PermanentApiError("x"), policy, lambda: 0.5) is None
    assert retry_delay(1, TransientApiError("x", retryable=False), policy, lambda: 0.5) is None
    assert retry_delay(1, ValueError("x"), policy, lambda: 0.5) is None


# --- GET purchase_orders --------------------------------------------------------------


def test_purchase_orders_parsed(make_client: Callable[..., InventoryArtsClient]) -> None:
    """A good window becomes validated orders, with the bearer token sent."""
    recorder = Recorder(ok([ORDER]))
    window = make_client(recorder).purchase_orders()
    assert [o.id for o in window.orders] == [105]
    assert window.orders[0].grand_total == Decimal("1200.50")
    assert recorder.requests[0].headers["authorization"] == "Bearer access-1"
    assert recorder.requests[0].url.path == "/api/v1/purchase_orders.php"


def test_numeric_total_stays_exact(make_client: Callable[..., InventoryArtsClient]) -> None:
    """A JSON number is read as Decimal, never through float."""
    body = json.dumps([ORDER]).replace('"1200.50"', "1200.10000000000000001").encode()
    window = make_client(Recorder(httpx.Response(200, content=body))).purchase_orders()
    assert window.orders[0].grand_total == Decimal("1200.10000000000000001")


def test_503_retry_after_is_waited_out(
    make_client: Callable[..., InventoryArtsClient], sleeps: list[float]
) -> None:
    """503 with Retry-After: 2 sleeps 2 s and then succeeds."""
    recorder = Recorder(httpx.Response(503, headers={"Retry-After": "2"}), ok([ORDER]))
    window = make_client(recorder).purchase_orders()
    assert len(window.orders) == 1
    assert sleeps == [2.0]
    assert len(recorder.requests) == 2


def test_429_with_http_date(
    make_client: Callable[..., InventoryArtsClient], sleeps: list[float]
) -> None:
    """429 with an HTTP-date Retry-After waits until that date."""
    recorder = Recorder(
        httpx.Response(429, headers={"Retry-After": "Mon, 05 Jan 2026 12:00:05 GMT"}),
        ok([]),
    )
    make_client(recorder).purchase_orders()
    assert sleeps == [5.0]


def test_429_beyond_cap_gives_up_at_once(
    make_client: Callable[..., InventoryArtsClient], sleeps: list[float]
) -> None:
    """A Retry-After longer than retry_after_max ends the attempt, keeping the wish."""
    recorder = Recorder(httpx.Response(429, headers={"Retry-After": "3600"}))
    with pytest.raises(RateLimited) as info:
        make_client(recorder).purchase_orders()
    assert info.value.retry_after == 3600
    assert sleeps == []
    assert len(recorder.requests) == 1


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_retried_with_jitter(
    status: int, make_client: Callable[..., InventoryArtsClient], sleeps: list[float]
) -> None:
    """Retryable 5xx back off with full jitter (rand fixed at 0.5)."""
    recorder = Recorder(httpx.Response(status), httpx.Response(status), ok([]))
    make_client(recorder).purchase_orders()
    assert sleeps == [0.5, 1.0]


def test_persistent_5xx_gives_up_after_max_attempts(
    make_client: Callable[..., InventoryArtsClient],
) -> None:
    """After max_attempts the transient error is raised (exit 4)."""
    recorder = Recorder(httpx.Response(503))
    with pytest.raises(TransientApiError) as info:
        make_client(recorder, max_attempts=3).purchase_orders()
    assert len(recorder.requests) == 3
    assert info.value.exit_code == 4


@pytest.mark.parametrize("status", [400, 403, 404, 501])
def test_other_statuses_not_retried(
    status: int, make_client: Callable[..., InventoryArtsClient]
) -> None:
    """Other 4xx (and 501) are permanent: one request only."""
    recorder = Recorder(httpx.Response(status, json={"error": "bad_request"}))
    with pytest.raises(PermanentApiError, match=f"HTTP {status}"):
        make_client(recorder).purchase_orders()
    assert len(recorder.requests) == 1


def test_timeouts_and_resets_are_retried(
    make_client: Callable[..., InventoryArtsClient],
) -> None:
    """A read timeout and a dropped connection are transient."""
    recorder = Recorder(httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("reset"), ok([ORDER]))
    assert len(make_client(recorder).purchase_orders().orders) == 1
    assert len(recorder.requests) == 3


def test_html_body_is_an_upstream_error(
    make_client: Callable[..., InventoryArtsClient],
) -> None:
    """A maintenance page with 200 is a transient upstream error, not a crash."""
    page = httpx.Response(
        200, text="<html>maintenance</html>", headers={"content-type": "text/html"}
    )
    with pytest.raises(TransientApiError, match="not JSON"):
        make_client(Recorder(page), max_attempts=2).purchase_orders()


def test_json_object_is_an_upstream_error(
    make_client: Callable[..., InventoryArtsClient],
) -> None:
    """A JSON object where a list belongs is an upstream error."""
    with pytest.raises(TransientApiError, match="expected a JSON list"):
        make_client(Recorder(ok({"error": "x"})), max_attempts=1).purchase_orders()


def test_401_refreshes_once_and_retries_once(
    make_client: Callable[..., InventoryArtsClient],
) -> None:
    """A 401 triggers one refresh and one resend with the new token."""
    tokens = FakeTokens()
    recorder = Recorder(httpx.Response(401), ok([]))
    make_client(recorder, tokens=tokens).purchase_orders()
    assert tokens.refreshes == 1
    assert recorder.authorizations == [
        "Bearer access-1",
        "Bearer access-2",
    ]


def test_401_after_refresh_is_auth_error(
    make_client: Callable[..., InventoryArtsClient],
) -> None:
    """A second 401 is not refreshed again: AuthError, no loop."""
    tokens = FakeTokens()
    recorder = Recorder(httpx.Response(401))
    with pytest.raises(AuthError):
        make_client(recorder, tokens=tokens).purchase_orders()
    assert tokens.refreshes == 1
    assert len(recorder.requests) == 2


def test_redirects_are_not_followed(make_client: Callable[..., InventoryArtsClient]) -> None:
    """A redirect elsewhere is not followed, so the bearer token stays home."""
    recorder = Recorder(httpx.Response(302, headers={"Location": "https://evil.test/steal"}))
    with pytest.raises(PermanentApiError):
        make_client(recorder).purchase_orders()
    assert [r.url.host for r in recorder.requests] == ["inventoryarts.test"]


def test_me_returns_profile(make_client: Callable[..., InventoryArtsClient]) -> None:
    """me.php gives the account profile."""
    profile = make_client(Recorder(ok({"connection_label": "jdoe - Band"}))).me()
    assert profile["connection_label"] == "jdoe - Band"


# --- POST item_checkin ----------------------------------------------------------------


def test_checkin_success(make_client: Callable[..., InventoryArtsClient]) -> None:
    """The server's message comes back; the body is the documented JSON."""
    recorder = Recorder(ok({"success": True, "id": 502, "message": "Returned."}))
    result = make_client(recorder).item_checkin(502, "return_borrowed")
    assert result.message == "Returned."
    assert json.loads(recorder.requests[0].content) == {"id": 502, "type": "return_borrowed"}


def test_checkin_refused_carries_message(
    make_client: Callable[..., InventoryArtsClient],
) -> None:
    """success: false is an error with the server's message."""
    recorder = Recorder(httpx.Response(404, json={"success": False, "message": "Item not found."}))
    with pytest.raises(PermanentApiError, match=r"Item not found\. \(HTTP 404\)"):
        make_client(recorder).item_checkin(1, "return_borrowed")


def test_checkin_not_resent_after_timeout(
    make_client: Callable[..., InventoryArtsClient],
) -> None:
    """A timeout after sending is an unknown outcome, never retried."""
    recorder = Recorder(httpx.ReadTimeout("slow"))
    with pytest.raises(TransientApiError, match="unknown outcome"):
        make_client(recorder).item_checkin(1, "return_borrowed")
    assert len(recorder.requests) == 1


def test_checkin_not_resent_after_503(make_client: Callable[..., InventoryArtsClient]) -> None:
    """A 5xx answer to a POST is not retried either."""
    recorder = Recorder(httpx.Response(503))
    with pytest.raises(TransientApiError):
        make_client(recorder).item_checkin(1, "return_borrowed")
    assert len(recorder.requests) == 1


def test_checkin_resent_when_never_connected(
    make_client: Callable[..., InventoryArtsClient],
) -> None:
    """A connect error means nothing was sent: safe to try again."""
    recorder = Recorder(httpx.ConnectError("refused"), ok({"success": True, "message": "ok"}))
    assert make_client(recorder).item_checkin(1, "checkin_loaned").message == "ok"
    assert len(recorder.requests) == 2


# --- refresh grant --------------------------------------------------------------------


def _refresh(recorder: Recorder) -> object:
    with httpx.Client(transport=httpx.MockTransport(recorder)) as http:
        return refresh_grant(http, "https://ia.test/oauth/oauth_refresh.php", "cid", "csec", "rt-1")


def test_refresh_sends_documented_body() -> None:
    """Credentials go in the JSON body; the new pair comes back."""
    recorder = Recorder(
        ok(
            {
                "access_token": "a2",
                "refresh_token": "r2",
                "expires_in": 3600,
                "token_type": "Bearer",
            }
        )
    )
    pair = _refresh(recorder)
    assert json.loads(recorder.requests[0].content) == {
        "refresh_token": "rt-1",
        "client_id": "cid",
        "client_secret": "csec",
        "grant_type": "refresh_token",
    }
    assert "authorization" not in recorder.requests[0].headers
    assert pair == type(pair)("a2", "r2", 3600.0)  # type: ignore[call-arg]


def test_refresh_invalid_grant_is_auth_error() -> None:
    """A 4xx from the refresh endpoint is final."""
    with pytest.raises(AuthError, match="invalid_grant"):
        _refresh(Recorder(httpx.Response(400, json={"error": "invalid_grant"})))


def test_refresh_5xx_is_not_retryable() -> None:
    """A 5xx is transient but the POST is not sent again."""
    recorder = Recorder(httpx.Response(503))
    with pytest.raises(TransientApiError) as info:
        _refresh(recorder)
    assert info.value.retryable is False
    assert len(recorder.requests) == 1


def test_refresh_malformed_response() -> None:
    """A 200 without tokens is an upstream error, not a crash."""
    with pytest.raises(TransientApiError, match="malformed"):
        _refresh(Recorder(ok({"access_token": "a2"})))
