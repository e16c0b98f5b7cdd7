"""The webhook sink: POSTs each CloudEvent to an HTTP endpoint, signed per Standard Webhooks.

The body is the stored event JSON, byte for byte, sent as
``application/cloudevents+json`` (DESIGN §6); with ``batch_size > 1`` a JSON array of
them is sent as ``application/cloudevents-batch+json``. When a ``secret``
(``whsec_<base64>``) is configured every request carries the Standard Webhooks headers
``webhook-id``, ``webhook-timestamp`` and ``webhook-signature``.

How answers map onto the dispatcher's contract:

=========================================  =============================================
2xx                                        delivered
408, 429, 5xx, connect errors, timeouts    :class:`SinkUnavailable` (retried later)
410 Gone                                   :class:`SinkUnavailable`, and ``disabled``
3xx, 401, 403, 404                         :class:`SinkUnavailable`: the endpoint or its
                                           credentials are wrong, not the event; every
                                           event would be refused, so none is
                                           dead-lettered and the operator is told
other 4xx (400, 409, 413, 422, ...)        :class:`SinkRejected` (dead-lettered after
                                           the dispatcher's attempts)
=========================================  =============================================

``delivered`` counts the leading events whose request got a 2xx. Error messages name
the endpoint by scheme, host and path only: its userinfo and query may carry
credentials, and the secret never appears anywhere.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
import uuid
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import httpx

from syncd.errors import ConfigError, SinkRejected, SinkUnavailable
from syncd.events import EVENT_NAMESPACE, StoredEvent
from syncd.sinks.base import Sink

CONTENT_TYPE = "application/cloudevents+json"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret
DEFAULT_TIMEOUT = 10.0

# Statuses that say "not now" rather than "never": the same request may succeed later.
_RETRYABLE = frozenset({408, 425, 429})
# The endpoint or our credentials are wrong: every event would get the same answer.
_MISCONFIGURED = frozenset({401, 403, 404})


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret ``whsec_<base64>``.

    The ``whsec_`` prefix is optional, as in the reference libraries; missing base64
    padding is tolerated. ValueError never quotes the secret.
    """
    encoded = secret.removeprefix(SECRET_PREFIX).strip()
    encoded += "=" * (-len(encoded) % 4)
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the webhook secret is not whsec_ followed by base64") from None
    if not key:
        raise ValueError("the webhook secret is empty")
    return key


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def safe_url(url: str) -> str:
    """``url`` as scheme://host[:port]/path: no userinfo, query or fragment."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "<invalid URL>"
    host = f"[{parsed.host}]" if ":" in parsed.host else parsed.host  # an IPv6 address
    port = f":{parsed.port}" if parsed.port is not None else ""
    return f"{parsed.scheme}://{host}{port}{parsed.path}"


def _user_agent() -> str:
    try:
        return f"syncd/{version('syncd')}"
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "syncd"


class WebhookSink(Sink):
    """POSTs events to one URL over a kept-alive connection.

    ``disabled`` becomes True when the endpoint answered 410 Gone: from then on every
    send fails at once without calling the endpoint.
    """

    def __init__(
        self,
        name: str,
        url: str,
        *,
        secret: str | None = None,
        batch_size: int = 1,
        timeout: float = DEFAULT_TIMEOUT,
        clock: Callable[[], float] = time.time,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(name)
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError):
            raise ConfigError(f"sink {name!r}: the webhook url is not a valid URL") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ConfigError(f"sink {name!r}: the webhook url must be http:// or https://")
        if batch_size < 1:
            raise ConfigError(f"sink {name!r}: batch_size must be at least 1")
        try:
            # Only the decoded key is kept, so the secret text is never around to leak.
            self._key = decode_secret(secret) if secret else None
        except ValueError as exc:
            raise ConfigError(f"sink {name!r}: {exc}") from None
        self.url = url
        self.batch_size = batch_size
        self.timeout = timeout
        self.disabled = False
        self._clock = clock
        self._transport = transport
        self._where = safe_url(url)
        # Strings that must never reach a message: the URL's userinfo and query.
        self._sensitive = [url, parsed.userinfo.decode(), parsed.query.decode()]
        self._client: httpx.Client | None = None

    @classmethod
    def from_config(cls, config: Any) -> WebhookSink:
        secret = config.secret.get_secret_value() if config.secret is not None else None
        return cls(
            config.name,
            config.url,
            secret=secret,
            batch_size=config.batch_size,
            timeout=config.timeout,
        )

    @property
    def signed(self) -> bool:
        return self._key is not None

    def signature(self, msg_id: str, timestamp: int, body: bytes) -> str:
        """The ``webhook-signature`` this sink sends for these values (needs a secret)."""
        if self._key is None:
            raise ValueError(f"sink {self.name!r} has no secret to sign with")
        return sign(self._key, msg_id, timestamp, body)

    def open(self) -> None:
        # No request here: connections are made on the first POST and then kept alive.
        # A probe request would be an event the receiver never asked for.
        if self._client is None:
            self._client = httpx.Client(
                transport=self._transport,
                timeout=self.timeout,
                follow_redirects=False,
                headers={"user-agent": _user_agent()},
            )

    def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            client.close()

    def send(self, events: Sequence[StoredEvent]) -> None:
        if not events:
            return
        if self.disabled:
            raise SinkUnavailable(self._gone(), delivered=0)
        if self._client is None:
            self.open()
        assert self._client is not None
        delivered = 0
        for start in range(0, len(events), self.batch_size):
            chunk = events[start : start + self.batch_size]
            body, headers = self.request(chunk)
            try:
                response = self._client.post(self.url, content=body, headers=headers)
            except httpx.TimeoutException:
                raise SinkUnavailable(
                    f"sink {self.name!r}: POST {self._where} timed out after {self.timeout:g}s",
                    delivered=delivered,
                ) from None
            except httpx.HTTPError as exc:
                raise SinkUnavailable(
                    f"sink {self.name!r}: POST {self._where} failed: {self._describe(exc)}",
                    delivered=delivered,
                ) from None
            self._check(response, delivered)
            delivered += len(chunk)

    def request(self, chunk: Sequence[StoredEvent]) -> tuple[bytes, dict[str, str]]:
        """The body and headers of the POST that carries ``chunk``."""
        if self.batch_size == 1:
            (event,) = chunk
            body = event.payload.encode("utf-8")
            msg_id = event.event_id
            content_type = CONTENT_TYPE
        else:
            body = b"[" + b",".join(event.payload.encode("utf-8") for event in chunk) + b"]"
            # Deterministic, so a retried identical batch carries the same webhook-id.
            msg_id = str(
                uuid.uuid5(EVENT_NAMESPACE, "batch:" + ",".join(e.event_id for e in chunk))
            )
            content_type = BATCH_CONTENT_TYPE
        timestamp = int(self._clock())
        headers = {
            "content-type": content_type,
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
        }
        if self._key is not None:
            headers["webhook-signature"] = sign(self._key, msg_id, timestamp, body)
        return body, headers

    def _check(self, response: httpx.Response, delivered: int) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        answer = f"POST {self._where} answered {status} {response.reason_phrase}".rstrip()
        if status == 410:
            self.disabled = True
            raise SinkUnavailable(self._gone(), delivered=delivered)
        if status in _RETRYABLE or status >= 500:
            raise SinkUnavailable(f"sink {self.name!r}: {answer}", delivered=delivered)
        if 300 <= status < 400:
            # Following a redirect would send signed events somewhere nobody configured.
            raise SinkUnavailable(
                f"sink {self.name!r}: {answer}; redirects are not followed, "
                "configure the endpoint's final URL",
                delivered=delivered,
            )
        if status in _MISCONFIGURED:
            raise SinkUnavailable(
                f"sink {self.name!r}: {answer}; check the sink's url and secret",
                delivered=delivered,
            )
        if 400 <= status < 500:
            raise SinkRejected(f"sink {self.name!r}: {answer}", delivered=delivered)
        raise SinkUnavailable(f"sink {self.name!r}: {answer}", delivered=delivered)

    def _gone(self) -> str:
        return (
            f"sink {self.name!r}: the endpoint {self._where} is gone (410 Gone); "
            "the sink is disabled until its url is fixed and syncd restarts"
        )

    def _describe(self, exc: Exception) -> str:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        for part in sorted(self._sensitive, key=len, reverse=True):
            if part:
                text = text.replace(part, "***")
        return text
