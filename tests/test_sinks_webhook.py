"""The webhook sink against a real HTTP receiver on loopback.

The receiver is a stdlib ThreadingHTTPServer speaking HTTP/1.1 (so keep-alive is real),
recording every request and answering from a script. Signatures are checked with a
verifier written here from the Standard Webhooks spec, not with the sink's own code.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from syncd.config import WebhookSinkConfig
from syncd.errors import ConfigError, SinkRejected, SinkUnavailable
from syncd.events import PO_CREATED, Event, StoredEvent, event_id, source_of
from syncd.sinks.base import sink_class
from syncd.sinks.webhook import WebhookSink

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
NOW = 1_700_000_000.0


def make_events(count: int, connection: str = "band") -> list[StoredEvent]:
    """``count`` real created events, stored as the outbox stores them."""
    events = []
    for n in range(1, count + 1):
        order = {
            "id": 1000 + n,
            "po_number": f"PO-{n:05d}",
            "vendor_name": "Müller & Söhne",  # non-ASCII: the body must stay UTF-8 as stored
            "grand_total": f"{n}.50",
            "status": "open",
            "items_summary": "2 cello strings, Ä and D",
            "version": 1,
        }
        event = Event(
            id=event_id(connection, order["id"], 1, PO_CREATED),
            type=PO_CREATED,
            source=source_of(connection),
            subject=str(order["id"]),
            time=datetime(2024, 5, 1, 12, 0, n % 60, tzinfo=UTC),
            data={"purchase_order": order},
        )
        events.append(
            StoredEvent(n, event.id, event.type, event.subject, connection, event.to_json())
        )
    return events


# ------------------------------------------------------------------------------ receiver


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    client_port: int


@dataclass(frozen=True)
class Reply:
    status: int = 204
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class Receiver:
    """An HTTP/1.1 server that records requests and answers from ``script`` (then 204)."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.script: list[Reply] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real endpoint would

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver._lock:
                    receiver.requests.append(
                        Received(
                            self.path,
                            {k.lower(): v for k, v in self.headers.items()},
                            body,
                            self.client_address[1],
                        )
                    )
                    reply = receiver.script.pop(0) if receiver.script else Reply()
                if reply.delay:
                    time.sleep(reply.delay)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,))
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/in"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A recording HTTP receiver on a free loopback port."""
    server = Receiver()
    yield server
    server.stop()


@pytest.fixture
def make_sink(receiver: Receiver) -> Iterator[Callable[..., WebhookSink]]:
    """Builds webhook sinks aimed at the receiver (by default) and closes them afterwards."""
    sinks: list[WebhookSink] = []

    def make(**options: Any) -> WebhookSink:
        url = options.pop("url", receiver.url)
        options.setdefault("clock", lambda: NOW)
        sink = WebhookSink("hook", url, **options)
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        sink.close()


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Standard Webhooks verification, written from the spec (not the sink's code)."""
    key = base64.b64decode(secret[len("whsec_") :])
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    offered = headers["webhook-signature"].split(" ")
    return any(
        version == "v1" and hmac.compare_digest(sig, expected)
        for version, _, sig in (item.partition(",") for item in offered)
    )


# --------------------------------------------------------------------------------- signing


def test_standard_webhooks_test_vector() -> None:
    """The sink's signing reproduces the published Standard Webhooks test vector."""
    sink = WebhookSink("hook", "http://127.0.0.1:9/", secret=SECRET)
    signature = sink.signature("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_signature_verifies_independently(
    receiver: Receiver, make_sink: Callable[..., WebhookSink]
) -> None:
    """Each request has id, timestamp and a v1 signature an independent verifier accepts."""
    events = make_events(3)
    make_sink(secret=SECRET).send(events)
    assert len(receiver.requests) == 3
    for event, request in zip(events, receiver.requests, strict=True):
        assert request.headers["webhook-id"] == event.event_id
        assert request.headers["webhook-timestamp"] == str(int(NOW))
        assert verify(SECRET, request.headers, request.body)


def test_tampered_body_fails_verification(
    receiver: Receiver, make_sink: Callable[..., WebhookSink]
) -> None:
    """The independent verifier does reject a body the signature was not made for."""
    make_sink(secret=SECRET).send(make_events(1))
    request = receiver.requests[0]
    assert not verify(SECRET, request.headers, request.body + b" ")


def test_unsigned_without_secret(receiver: Receiver, make_sink: Callable[..., WebhookSink]) -> None:
    """Without a secret no webhook-signature header is sent."""
    make_sink().send(make_events(1))
    assert "webhook-signature" not in receiver.requests[0].headers


def test_bad_secret_is_a_config_error_that_does_not_quote_it() -> None:
    """A secret that is not whsec_<base64> is a ConfigError that never shows the secret."""
    with pytest.raises(ConfigError) as caught:
        WebhookSink("hook", "http://127.0.0.1:9/", secret="whsec_not*base64!!secretish")
    assert "secretish" not in str(caught.value)


# ------------------------------------------------------------------------------ the request


def test_body_is_the_stored_payload_bytes(
    receiver: Receiver, make_sink: Callable[..., WebhookSink]
) -> None:
    """The body is the stored payload, byte for byte (UTF-8, not re-serialised)."""
    events = make_events(2)
    make_sink().send(events)
    assert [r.body for r in receiver.requests] == [e.payload.encode("utf-8") for e in events]


def test_content_type_is_cloudevents_json(
    receiver: Receiver, make_sink: Callable[..., WebhookSink]
) -> None:
    """Each request is a POST of application/cloudevents+json to the configured path."""
    make_sink().send(make_events(1))
    assert receiver.requests[0].headers["content-type"] == "application/cloudevents+json"
    assert receiver.requests[0].path == "/hooks/in"


def test_batch_size_posts_json_arrays(
    receiver: Receiver, make_sink: Callable[..., WebhookSink]
) -> None:
    """With batch_size = 3, seven events go as arrays of 3, 3 and 1 (cloudevents-batch+json)."""
    events = make_events(7)
    make_sink(batch_size=3, secret=SECRET).send(events)
    assert [len(json.loads(r.body)) for r in receiver.requests] == [3, 3, 1]
    sent = [item for r in receiver.requests for item in json.loads(r.body)]
    assert sent == [json.loads(e.payload) for e in events]
    for request in receiver.requests:
        assert request.headers["content-type"] == "application/cloudevents-batch+json"
        assert verify(SECRET, request.headers, request.body)


def test_send_nothing_makes_no_request(
    receiver: Receiver, make_sink: Callable[..., WebhookSink]
) -> None:
    """send([]) is a no-op."""
    make_sink().send([])
    assert receiver.requests == []


def test_keep_alive_uses_one_connection(
    receiver: Receiver, make_sink: Callable[..., WebhookSink]
) -> None:
    """Many events travel over one kept-alive TCP connection (one client port)."""
    sink = make_sink()
    sink.send(make_events(10))
    sink.send(make_events(10))
    assert len(receiver.requests) == 20
    assert len({r.client_port for r in receiver.requests}) == 1


# ------------------------------------------------------------------------------- failures


def test_500_stops_then_the_rest_is_sent(
    receiver: Receiver, make_sink: Callable[..., WebhookSink]
) -> None:
    """A 500 on the 3rd event is SinkUnavailable(delivered=2); sending the rest then works."""
    events = make_events(5)
    receiver.script = [Reply(200), Reply(202), Reply(500)]
    sink = make_sink()
    with pytest.raises(SinkUnavailable) as caught:
        sink.send(events)
    assert caught.value.delivered == 2
    sink.send(events[caught.value.delivered :])
    ids = [r.headers["webhook-id"] for r in receiver.requests]
    assert ids == [e.event_id for e in events[:3]] + [e.event_id for e in events[2:]]


@pytest.mark.parametrize("status", [408, 429, 502, 503])
def test_retryable_statuses_are_unavailable(
    receiver: Receiver, make_sink: Callable[..., WebhookSink], status: int
) -> None:
    """408, 429 and 5xx are SinkUnavailable at the failed event's index."""
    receiver.script = [Reply(200), Reply(status)]
    with pytest.raises(SinkUnavailable) as caught:
        make_sink().send(make_events(3))
    assert caught.value.delivered == 1


def test_422_is_rejected_at_its_index(
    receiver: Receiver, make_sink: Callable[..., WebhookSink]
) -> None:
    """A 422 on the 3rd event is SinkRejected(delivered=2), and nothing after it is sent."""
    receiver.script = [Reply(200), Reply(200), Reply(422)]
    with pytest.raises(SinkRejected) as caught:
        make_sink().send(make_events(5))
    assert caught.value.delivered == 2
    assert len(receiver.requests) == 3


@pytest.mark.parametrize("status", [401, 403, 404])
def test_endpoint_errors_keep_the_events(
    receiver: Receiver, make_sink: Callable[..., WebhookSink], status: int
) -> None:
    """401/403/404 blame the endpoint, not the event: SinkUnavailable, nothing dead-lettered."""
    receiver.script = [Reply(200), Reply(status)]
    with pytest.raises(SinkUnavailable, match="check the sink's url and secret") as caught:
        make_sink().send(make_events(3))
    assert caught.value.delivered == 1


def test_410_disables_the_sink(receiver: Receiver, make_sink: Callable[..., WebhookSink]) -> None:
    """410 Gone is SinkUnavailable saying the sink is disabled; later sends call nobody."""
    receiver.script = [Reply(410)]
    sink = make_sink()
    with pytest.raises(SinkUnavailable) as caught:
        sink.send(make_events(2))
    assert sink.disabled is True
    assert "gone" in str(caught.value)
    assert "disabled" in str(caught.value)
    with pytest.raises(SinkUnavailable):
        sink.send(make_events(2))
    assert len(receiver.requests) == 1


def test_redirect_is_not_followed(
    receiver: Receiver, make_sink: Callable[..., WebhookSink]
) -> None:
    """A 307 to another path keeps the events and the Location is never requested."""
    receiver.script = [Reply(307, {"location": f"http://127.0.0.1:{receiver.port}/elsewhere"})]
    with pytest.raises(SinkUnavailable, match="redirects are not followed") as caught:
        make_sink().send(make_events(1))
    assert caught.value.delivered == 0
    assert [r.path for r in receiver.requests] == ["/hooks/in"]


def test_slow_endpoint_times_out(receiver: Receiver, make_sink: Callable[..., WebhookSink]) -> None:
    """An answer slower than the timeout is SinkUnavailable at that event's index."""
    receiver.script = [Reply(200), Reply(200, delay=1.0)]
    with pytest.raises(SinkUnavailable) as caught:
        make_sink(timeout=0.2).send(make_events(3))
    assert caught.value.delivered == 1
    assert "timed out" in str(caught.value)


def _full_text(error: BaseException) -> str:
    return "".join(traceback.format_exception(error)) + repr(error)


def test_secret_and_url_credentials_never_in_errors(
    receiver: Receiver, make_sink: Callable[..., WebhookSink]
) -> None:
    """Neither the secret nor the URL's password or query token appears in any error text."""
    closed = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    dead_port = closed.server_address[1]
    closed.server_close()  # nothing listens there any more: connection refused
    errors: list[BaseException] = []
    for url, script in [
        (f"http://hookuser:hunter2pass@127.0.0.1:{dead_port}/in?token=tok3nvalue", []),
        (f"http://hookuser:hunter2pass@127.0.0.1:{receiver.port}/in?token=tok3nvalue", [500]),
        (f"http://hookuser:hunter2pass@127.0.0.1:{receiver.port}/in?token=tok3nvalue", [403]),
    ]:
        receiver.script = [Reply(status) for status in script]
        with pytest.raises((SinkUnavailable, SinkRejected)) as caught:
            make_sink(url=url, secret=SECRET).send(make_events(1))
        errors.append(caught.value)
    for error in errors:
        text = _full_text(error)
        for secret in (SECRET, SECRET.removeprefix("whsec_"), "hunter2pass", "tok3nvalue"):
            assert secret not in text
        assert "127.0.0.1" in text  # still says where it failed


def test_entry_point_builds_the_sink_from_config(receiver: Receiver) -> None:
    """The 'webhook' entry point builds a WebhookSink from its [[sinks]] config entry."""
    config = WebhookSinkConfig.model_validate(
        {"name": "erp", "type": "webhook", "url": receiver.url, "secret": SECRET, "batch_size": 2}
    )
    sink = sink_class("webhook").from_config(config)
    try:
        assert isinstance(sink, WebhookSink)
        sink.send(make_events(2))
        assert len(receiver.requests) == 1
        assert verify(SECRET, receiver.requests[0].headers, receiver.requests[0].body)
    finally:
        sink.close()


def test_close_is_idempotent(make_sink: Callable[..., WebhookSink]) -> None:
    """close() may be called twice, and before open()."""
    sink = make_sink()
    sink.close()
    sink.open()
    sink.close()
    sink.close()


def test_receiver_that_recovers_gets_every_event_in_order(
    receiver: Receiver, make_sink: Callable[..., WebhookSink], tmp_path: Path
) -> None:
    """Through the dispatcher: a receiver failing for a while (503s, a reset) then
    recovering holds every event once after deduplication on id, each order's in order."""
    from decimal import Decimal

    from syncd.outbox import Channel, Dispatcher
    from syncd.records import PurchaseOrder
    from syncd.store import outbox
    from syncd.store.database import open_database
    from syncd.store.mirror import apply_poll
    from tests.conftest import assert_delivered_in_order

    db = open_database(f"sqlite:///{tmp_path / 'syncd.db'}")
    try:
        base = [
            PurchaseOrder(i, f"PO-{i}", "V", Decimal("1.00"), "Draft", None, None)
            for i in range(1, 11)
        ]
        apply_poll(db, "band", tuple(base), datetime.now(UTC))
        changed = [
            PurchaseOrder(o.id, o.po_number, o.vendor_name, Decimal("2.00"), "Sent", None, None)
            for o in base
        ]
        apply_poll(db, "band", tuple(changed), datetime.now(UTC))  # a second event each
        receiver.script = (
            [Reply(204), Reply(503), Reply(204), Reply(503), Reply(502)]
            + [Reply(204)] * 3
            + [Reply(500)]
        )
        now = [1_000.0]
        dispatcher = Dispatcher(db, [Channel(make_sink())], clock=lambda: now[0], rand=lambda: 1.0)
        for _ in range(20):
            result = dispatcher.deliver_due()
            if not result.failing:
                break
            assert result.next_attempt_at is not None
            now[0] = result.next_attempt_at
        assert outbox.sink_status(db, "hook").pending == 0
        stored = [e.event_id for e in outbox.read_after(db, 0, 100)]
    finally:
        db.close()
    received = [json.loads(r.body) for r in receiver.requests if r.body]
    assert len(received) > len(stored)  # some were sent more than once
    assert_delivered_in_order(received, stored)
