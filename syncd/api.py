"""The InventoryArts API client: every documented endpoint, its retries and its errors.

The decisions are pure functions (:func:`classify_status`, :func:`parse_retry_after`,
:func:`retry_delay`); tenacity drives them, with the sleep, clock
and random source handed in so tests control time. GETs are retried on connect errors,
timeouts, 429, 500, 502, 503 and 504 with full-jitter exponential backoff, honouring
``Retry-After`` up to ``retry_after_max``; a POST is sent again only when it provably
never left this machine (the connection was not established).
"""

from __future__ import annotations

import contextlib
import functools
import json
import random
import ssl
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any, Literal, Protocol, TypeVar

import certifi
import httpx
from structlog.typing import FilteringBoundLogger
from tenacity import RetryCallState, Retrying, retry_if_exception

from syncd.backoff import full_jitter
from syncd.errors import ApiError, AuthError, PermanentApiError, RateLimited, TransientApiError
from syncd.logging import get_logger
from syncd.records import ValidatedWindow, validate_window

ME_PATH = "api/v1/me.php"
PURCHASE_ORDERS_PATH = "api/v1/purchase_orders.php"
CHECKIN_PATH = "api/v1/item_checkin.php"
REFRESH_PATH = "oauth/oauth_refresh.php"

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
CheckinType = Literal["return_borrowed", "checkin_loaned"]
CHECKIN_TYPES: tuple[CheckinType, ...] = ("return_borrowed", "checkin_loaned")

T = TypeVar("T")


# --- pure decisions -------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How a GET is retried (DESIGN §3); built from ``[http]``."""

    max_attempts: int = 6
    retry_after_max: float = 300.0
    backoff_base: float = 1.0
    backoff_max: float = 60.0


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def retry_delay(
    attempt: int, error: BaseException, policy: RetryPolicy, rand: Callable[[], float]
) -> float | None:
    """Seconds to sleep before attempt ``attempt + 1``, or None to give up now."""
    if not isinstance(error, ApiError) or not error.retryable:
        return None
    if attempt >= policy.max_attempts:
        return None
    if error.retry_after is not None:
        # A server that asks for more than we may wait is not hammered early: give up,
        # keep the work, and let the next scheduled poll come after its wish.
        return error.retry_after if error.retry_after <= policy.retry_after_max else None
    return full_jitter(attempt, policy.backoff_base, policy.backoff_max, rand)


def classify_status(
    status: int, endpoint: str, retry_after: float | None, detail: str = ""
) -> ApiError | None:
    """The error an HTTP status means for a request to ``endpoint`` (None for 2xx)."""
    if 200 <= status < 300:
        return None
    suffix = f": {detail}" if detail else ""
    if status == 429:
        return RateLimited(
            f"{endpoint}: rate limited (HTTP 429)", status_code=429, retry_after=retry_after
        )
    if status in RETRY_STATUSES:
        return TransientApiError(
            f"{endpoint}: upstream error (HTTP {status}){suffix}",
            status_code=status,
            retry_after=retry_after,
        )
    return PermanentApiError(f"{endpoint}: HTTP {status}{suffix}", status_code=status)


def error_detail(response: httpx.Response) -> str:
    """A short, safe description of an error body (the JSON ``error``/``message`` field)."""
    try:
        body = response.json()
    except ValueError:
        return ""
    if isinstance(body, dict):
        for key in ("message", "error_description", "error"):
            if isinstance(body.get(key), str):
                return str(body[key])[:200]
    return ""


def parse_json(response: httpx.Response, endpoint: str) -> Any:
    """The JSON body with every non-integer number as Decimal; garbage is an upstream error."""
    try:
        return json.loads(response.content, parse_float=Decimal)
    except ValueError:
        kind = response.headers.get("content-type", "unknown").split(";")[0]
        raise TransientApiError(
            f"{endpoint}: upstream returned a body that is not JSON ({kind})",
            status_code=response.status_code,
        ) from None


# --- tokens ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: float


class TokenSource(Protocol):
    """Where the client gets its bearer token (implemented by ``syncd.auth``)."""

    def access_token(self) -> str: ...

    def refresh_after_401(self, rejected: str) -> str: ...


class BearerAuth(httpx.Auth):
    """Adds the bearer token; on a 401, refreshes once and sends the request once more."""

    def __init__(self, tokens: TokenSource) -> None:
        self._tokens = tokens

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self._tokens.access_token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            request.headers["Authorization"] = f"Bearer {self._tokens.refresh_after_401(token)}"
            yield request


def refresh_grant(
    http: httpx.Client, url: str, client_id: str, client_secret: str, refresh_token: str
) -> TokenPair:
    """POST the refresh grant (credentials in the JSON body, as the vendor documents).

    Never retried after the request may have reached the server: the old refresh token
    might already be dead. Any 4xx is final (AuthError); 5xx and network trouble are
    transient but not retryable here.
    """
    endpoint = "oauth_refresh.php"
    body = {
        "refresh_token": refresh_token,
        "client_id": client_id,
        "client_secret": client_secret,
        "grant_type": "refresh_token",
    }
    try:
        response = http.post(url, json=body, headers={"Accept": "application/json"})
    except httpx.ConnectError as exc:
        raise TransientApiError(f"{endpoint}: cannot connect ({exc})", retryable=False) from None
    except httpx.HTTPError as exc:
        raise TransientApiError(
            f"{endpoint}: no answer to the token refresh ({type(exc).__name__})", retryable=False
        ) from None
    if 400 <= response.status_code < 500:
        detail = error_detail(response) or f"HTTP {response.status_code}"
        raise AuthError(f"refresh token rejected ({detail})", status_code=response.status_code)
    return token_pair(response, endpoint)


def token_pair(response: httpx.Response, endpoint: str) -> TokenPair:
    """The token pair of a token endpoint's answer (refresh or code exchange), whose 4xx
    the caller has already judged; anything else unusable is a non-retryable upstream
    error (the grant may have been spent)."""
    if response.status_code != 200:
        raise TransientApiError(
            f"{endpoint}: upstream error (HTTP {response.status_code})",
            status_code=response.status_code,
            retryable=False,
        )
    data = parse_json(response, endpoint)
    if isinstance(data, dict):
        access, refresh = data.get("access_token"), data.get("refresh_token")
        expires_in = data.get("expires_in", 3600)
        if (
            isinstance(access, str)
            and isinstance(refresh, str)
            and access
            and refresh
            and isinstance(expires_in, int | float | str | Decimal)
        ):
            with contextlib.suppress(ValueError, ArithmeticError):
                return TokenPair(access, refresh, float(expires_in))
    raise TransientApiError(f"{endpoint}: malformed token response", retryable=False)


# --- the client -----------------------------------------------------------------------


@dataclass(frozen=True)
class CheckinResult:
    item_id: int
    message: str


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One TLS context (with the CA bundle) for every client syncd makes: loading the
    bundle costs tens of milliseconds and megabytes each time."""
    return ssl.create_default_context(cafile=certifi.where())


def api_http_client(
    *, max_connections: int = 10, transport: httpx.BaseTransport | None = None
) -> httpx.Client:
    """The HTTP client API calls go through: bounded, no redirects (a redirect must not
    carry the bearer token anywhere)."""
    return httpx.Client(
        verify=tls_context(),
        transport=transport,
        follow_redirects=False,
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
        headers={"Accept": "application/json", "User-Agent": "syncd"},
    )


class InventoryArtsClient:
    """One connection's view of the API. The bearer token goes to ``base_url`` only."""

    def __init__(
        self,
        base_url: str,
        tokens: TokenSource,
        *,
        timeout: float = 30.0,
        policy: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        log: FilteringBoundLogger | None = None,
        http: httpx.Client | None = None,
    ) -> None:
        self.base_url = base_url
        self._policy = policy or RetryPolicy()
        self._sleep = sleep
        self._clock = clock
        self._rand = rand
        self._log = log or get_logger()
        self._auth = BearerAuth(tokens)
        self._timeout = timeout
        # Many connections share one bounded pool (``http``); the token goes per request.
        self._owns_http = http is None
        self._http = http or api_http_client(transport=transport)

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self._http.request(
            method, self.base_url + path, auth=self._auth, timeout=self._timeout, **kwargs
        )

    def __enter__(self) -> InventoryArtsClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- endpoints --

    def me(self) -> Mapping[str, Any]:
        """``GET me.php``: the account profile (``connection_label`` names the account)."""
        data = self._get_json(ME_PATH, "me.php")
        if not isinstance(data, dict):
            raise TransientApiError("me.php: expected a JSON object")
        return data

    def purchase_orders(self) -> ValidatedWindow:
        """``GET purchase_orders.php``: the 20 newest orders, each validated on its own."""
        data = self._get_json(PURCHASE_ORDERS_PATH, "purchase_orders.php")
        if not isinstance(data, list):
            raise TransientApiError(
                f"purchase_orders.php: expected a JSON list, got a JSON {type(data).__name__}"
            )
        window = validate_window(data)
        for rejected in window.rejected:
            self._log.warning(
                "skipping invalid purchase order",
                index=rejected.index,
                order_id=rejected.id,
                reason=rejected.reason,
            )
        if window.duplicate_ids:
            self._log.warning("duplicate ids in one response", ids=list(window.duplicate_ids))
        return window

    def item_checkin(self, item_id: int, action: CheckinType) -> CheckinResult:
        """``POST item_checkin.php``. Sent again only if it never reached the server."""
        endpoint = "item_checkin.php"
        if action not in CHECKIN_TYPES:
            raise PermanentApiError(f"{endpoint}: unknown check-in type {action!r}")

        def send() -> httpx.Response:
            try:
                return self._request("POST", CHECKIN_PATH, json={"id": item_id, "type": action})
            except httpx.ConnectError as exc:  # nothing was sent: safe to try again
                raise TransientApiError(f"{endpoint}: cannot connect ({exc})") from None
            except httpx.HTTPError as exc:
                raise TransientApiError(
                    f"{endpoint}: unknown outcome ({type(exc).__name__} after the request was "
                    "sent): check the item before trying again",
                    retryable=False,
                ) from None

        response = self._retrying(send)
        data = parse_json(response, endpoint) if response.content else {}
        message = data.get("message") if isinstance(data, dict) else None
        status = response.status_code
        if status == 200 and isinstance(data, dict) and data.get("success") is True:
            return CheckinResult(item_id, str(message or "checked in"))
        detail = message if isinstance(message, str) and message else "the server refused it"
        if status == 401:
            raise AuthError(
                f"{endpoint}: access token rejected even after a refresh", status_code=401
            )
        if status in RETRY_STATUSES:
            raise TransientApiError(f"{endpoint}: {detail} (HTTP {status})", status_code=status)
        raise PermanentApiError(f"{endpoint}: {detail} (HTTP {status})", status_code=status)

    # -- plumbing --

    def _get_json(self, path: str, endpoint: str) -> Any:
        def attempt() -> Any:
            try:
                response = self._request("GET", path)
                response.read()
            except httpx.TimeoutException:
                raise TransientApiError(f"{endpoint}: timed out") from None
            except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                raise TransientApiError(
                    f"{endpoint}: connection failed ({type(exc).__name__})"
                ) from None
            if response.status_code == 401:
                raise AuthError(
                    f"{endpoint}: access token rejected even after a refresh", status_code=401
                )
            if not response.is_success:  # only an error's body is read for its detail
                retry_after = parse_retry_after(
                    response.headers.get("retry-after"),
                    datetime.fromtimestamp(self._clock(), UTC),
                )
                error = classify_status(
                    response.status_code, endpoint, retry_after, error_detail(response)
                )
                if error is not None:
                    raise error
            return parse_json(response, endpoint)

        return self._retrying(attempt)

    def _retrying(self, fn: Callable[[], T]) -> T:
        policy, rand = self._policy, self._rand
        decided: dict[int, float | None] = {}

        def delay_for(state: RetryCallState) -> float | None:
            # stop and wait both ask; decide once per attempt so the jitter is one draw.
            if state.attempt_number not in decided:
                exc = state.outcome.exception() if state.outcome else None
                decided[state.attempt_number] = (
                    None if exc is None else retry_delay(state.attempt_number, exc, policy, rand)
                )
            return decided[state.attempt_number]

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            self._log.info(
                "request failed, retrying",
                error=str(exc),
                attempt=state.attempt_number,
                retry_in=round(delay_for(state) or 0.0, 3),
            )

        retrying = Retrying(
            retry=retry_if_exception(lambda e: isinstance(e, ApiError) and e.retryable),
            stop=lambda state: delay_for(state) is None,
            wait=lambda state: delay_for(state) or 0.0,
            sleep=self._sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        return retrying(fn)
