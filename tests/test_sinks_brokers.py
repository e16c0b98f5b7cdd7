"""The redis, nats, mqtt and amqp sinks against the real brokers on this machine.

Each test sends real CloudEvents through a sink, reads them back with the broker's own
client (XRANGE, a JetStream consumer, an MQTT subscriber, a bound queue) and compares
ids, order and bytes. Names are unique per test (uuid) and removed afterwards. Broker
URLs come from the environment; a broker that does not answer skips its tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import urlsplit

import nats
import paho.mqtt.client as mqtt
import pika
import pytest
import redis
from nats.js.api import DiscardPolicy
from paho.mqtt.enums import CallbackAPIVersion

from syncd.config import AmqpSinkConfig, MqttSinkConfig, NatsSinkConfig, RedisSinkConfig
from syncd.errors import ConfigError, SinkRejected, SinkUnavailable
from syncd.events import (
    PO_CREATED,
    PO_PDF_ARCHIVED,
    PO_UPDATED,
    Event,
    StoredEvent,
    event_id,
    source_of,
)
from syncd.sinks.amqp import AmqpSink
from syncd.sinks.base import sink_class
from syncd.sinks.mqtt import MqttSink
from syncd.sinks.nats import NatsSink
from syncd.sinks.redis import RedisSink

REDIS_URL = os.environ.get("SYNCD_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
NATS_URL = os.environ.get("SYNCD_TEST_NATS_URL", "nats://127.0.0.1:4222")
MQTT_URL = os.environ.get("SYNCD_TEST_MQTT_URL", "mqtt://127.0.0.1:1883")
AMQP_URL = os.environ.get("SYNCD_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")

PASSWORD = "s3cr3t-broker-pw"
TYPES = (PO_CREATED, PO_UPDATED, PO_PDF_ARCHIVED)
Entries = list[tuple[bytes, dict[bytes, bytes]]]  # what XRANGE returns


def make_events(count: int, connection: str = "band") -> list[StoredEvent]:
    """``count`` real CloudEvents of three types, stored as the outbox stores them."""
    events = []
    for n in range(1, count + 1):
        event_type = TYPES[n % len(TYPES)]
        order = {
            "id": 5000 + n,
            "po_number": f"PO-{n:05d}",
            "vendor_name": "Ørsted Brass",
            "grand_total": f"{n}.25",
            "status": "open",
            "items_summary": "valve oil",
            "version": 1,
        }
        event = Event(
            id=event_id(connection, order["id"], 1, event_type),
            type=event_type,
            source=source_of(connection),
            subject=str(order["id"]),
            time=datetime(2024, 5, 1, 12, 0, n % 60, tzinfo=UTC),
            data={"purchase_order": order},
        )
        events.append(
            StoredEvent(n, event.id, event.type, event.subject, connection, event.to_json())
        )
    return events


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def free_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def with_credentials(url: str, port: int, user: str = "syncd") -> str:
    """``url`` pointing at ``port`` on loopback, with a password in its userinfo."""
    parts = urlsplit(url)
    return parts._replace(netloc=f"{user}:{PASSWORD}@127.0.0.1:{port}").geturl()


def no_password_in(error: BaseException) -> bool:
    text = "".join(traceback.format_exception(error)) + repr(error)
    return PASSWORD not in text


def require(url: str, default_port: int, what: str, how: str) -> None:
    """Skip unless something accepts TCP connections at ``url``."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or default_port
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        pytest.skip(f"{what} is unreachable at {host}:{port}: start it ({how}) or set its URL")


@pytest.fixture
def redis_url() -> str:
    require(REDIS_URL, 6379, "Redis", "redis-server --daemonize yes; URL in SYNCD_TEST_REDIS_URL")
    return REDIS_URL


@pytest.fixture
def nats_url() -> str:
    require(NATS_URL, 4222, "NATS", "nats-server -js &; URL in SYNCD_TEST_NATS_URL")
    return NATS_URL


@pytest.fixture
def mqtt_url() -> str:
    require(MQTT_URL, 1883, "Mosquitto", "mosquitto -d; URL in SYNCD_TEST_MQTT_URL")
    return MQTT_URL


@pytest.fixture
def amqp_url() -> str:
    require(AMQP_URL, 5672, "RabbitMQ", "rabbitmq-server -detached; URL in SYNCD_TEST_AMQP_URL")
    return AMQP_URL


# ------------------------------------------------------------------------ all the brokers


@pytest.mark.parametrize(
    ("sink_type", "module"),
    [("redis", "redis"), ("nats", "nats"), ("mqtt", "paho.mqtt.client"), ("amqp", "pika")],
)
def test_missing_client_library_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, sink_type: str, module: str
) -> None:
    """Without its client library a sink type is a ConfigError naming the pip extra."""
    monkeypatch.setitem(sys.modules, module, None)  # None makes `import module` fail
    monkeypatch.delitem(sys.modules, f"syncd.sinks.{sink_type}", raising=False)
    with pytest.raises(ConfigError) as caught:
        sink_class(sink_type)
    assert f"pip install 'syncd[{sink_type}]'" in str(caught.value)


@pytest.mark.parametrize(
    ("config", "cls"),
    [
        (RedisSinkConfig(name="r", type="redis"), RedisSink),
        (NatsSinkConfig(name="n", type="nats"), NatsSink),
        (MqttSinkConfig(name="m", type="mqtt"), MqttSink),
        (AmqpSinkConfig(name="a", type="amqp"), AmqpSink),
    ],
)
def test_entry_points_build_each_sink(config: Any, cls: type) -> None:
    """Each broker's entry point builds its sink from the default [[sinks]] entry."""
    sink = sink_class(config.type).from_config(config)
    assert type(sink) is cls
    sink.close()  # never opened: must not fail


# ----------------------------------------------------------------------------------- redis


@pytest.fixture
def redis_stream(redis_url: str) -> Iterator[tuple[redis.Redis, str]]:
    """A client and a fresh stream key, deleted afterwards."""
    client = redis.Redis.from_url(redis_url)
    key = unique("syncd-test-")
    yield client, key
    client.delete(key)
    client.close()


def test_redis_stream_holds_the_batch_in_order(
    redis_url: str, redis_stream: tuple[redis.Redis, str]
) -> None:
    """50 events become 50 XADD entries, in order, with id, type, subject and exact data."""
    client, key = redis_stream
    events = make_events(50)
    sink = RedisSink("r", redis_url, key)
    sink.open()
    sink.send(events)
    sink.close()
    entries = cast(Entries, client.xrange(key))
    expected = [
        {
            b"id": e.event_id.encode(),
            b"type": e.type.encode(),
            b"subject": e.subject.encode(),
            b"data": e.payload.encode(),
        }
        for e in events
    ]
    assert [fields for _, fields in entries] == expected


def test_redis_maxlen_trims_the_stream(
    redis_url: str, redis_stream: tuple[redis.Redis, str]
) -> None:
    """With maxlen = 10, 1,000 events leave about 10 entries (approximate), newest kept."""
    client, key = redis_stream
    events = make_events(1000)
    sink = RedisSink("r", redis_url, key, maxlen=10)
    for start in range(0, 1000, 250):
        sink.send(events[start : start + 250])
    sink.close()
    length = client.xlen(key)
    # Approximate trimming drops whole nodes (stream-node-max-entries, 100 by default).
    assert 10 <= length <= 10 + 100
    last = cast(Entries, client.xrevrange(key, count=1))[0][1]
    assert last[b"id"] == events[-1].event_id.encode()


def test_redis_key_of_another_type_is_unavailable(
    redis_url: str, redis_stream: tuple[redis.Redis, str]
) -> None:
    """A stream key that holds a string makes every XADD fail: SinkUnavailable(delivered=0)."""
    client, key = redis_stream
    client.set(key, "not a stream")
    sink = RedisSink("r", redis_url, key)
    with pytest.raises(SinkUnavailable) as caught:
        sink.send(make_events(3))
    sink.close()
    assert caught.value.delivered == 0
    assert "WRONGTYPE" in str(caught.value)


def test_redis_unreachable_is_unavailable(redis_url: str) -> None:
    """A Redis that refuses connections is SinkUnavailable from open() and send(), no password."""
    sink = RedisSink("r", with_credentials(redis_url, free_port()) + "/15", "s")
    with pytest.raises(SinkUnavailable) as opened:
        sink.open()
    with pytest.raises(SinkUnavailable) as sent:
        sink.send(make_events(1))
    assert sent.value.delivered == 0
    assert no_password_in(opened.value)
    assert no_password_in(sent.value)


def test_redis_send_nothing_is_a_no_op(redis_url: str) -> None:
    """send([]) neither connects nor fails, even when the server is unreachable."""
    RedisSink("r", with_credentials(redis_url, free_port()), "s").send([])


# ------------------------------------------------------------------------------------ nats


async def _read_stream(url: str, stream: str, count: int) -> list[tuple[str, str, bytes]]:
    """(subject, Nats-Msg-Id, data) of the first ``count`` messages, via a pull consumer."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        consumer = await js.pull_subscribe(">", stream=stream)
        messages: list[Any] = []
        while len(messages) < count:
            messages.extend(await consumer.fetch(count - len(messages), timeout=5))
        for message in messages:
            await message.ack()
        return [(m.subject, (m.headers or {}).get("Nats-Msg-Id", ""), m.data) for m in messages]
    finally:
        await nc.close()


async def _stream_state(url: str, stream: str) -> tuple[int, list[str]]:
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().stream_info(stream)
        return info.state.messages, list(info.config.subjects or [])
    finally:
        await nc.close()


async def _delete_stream(url: str, stream: str) -> None:
    nc = await nats.connect(url)
    try:
        await nc.jetstream().delete_stream(stream)
    except nats.js.errors.NotFoundError:
        pass
    finally:
        await nc.close()


@pytest.fixture
def nats_names(nats_url: str) -> Iterator[tuple[str, str]]:
    """A fresh subject prefix and stream name; the stream is deleted afterwards."""
    prefix, stream = unique("syncdtest"), unique("SYNCDTEST")
    yield prefix, stream
    asyncio.run(_delete_stream(nats_url, stream))


def test_nats_jetstream_holds_the_batch_in_order(
    nats_url: str, nats_names: tuple[str, str]
) -> None:
    """50 events reach a JetStream consumer in order, with Nats-Msg-Id and exact data."""
    prefix, stream = nats_names
    events = make_events(50)
    sink = NatsSink("n", [nats_url], prefix + ".{type}", stream=stream)
    sink.open()
    sink.send(events)
    sink.close()
    received = asyncio.run(_read_stream(nats_url, stream, 50))
    assert received == [(f"{prefix}.{e.type}", e.event_id, e.payload.encode()) for e in events]


def test_nats_creates_a_stream_over_the_subject_prefix(
    nats_url: str, nats_names: tuple[str, str]
) -> None:
    """With no stream capturing the subject, open() creates one over '<prefix>.>'."""
    prefix, stream = nats_names
    sink = NatsSink("n", [nats_url], prefix + ".{connection}.{type}", stream=stream)
    sink.open()
    sink.close()
    assert asyncio.run(_stream_state(nats_url, stream)) == (0, [prefix + ".>"])


def test_nats_server_deduplicates_a_resent_batch(
    nats_url: str, nats_names: tuple[str, str]
) -> None:
    """Sending the same 50 events twice leaves 50 messages: the server dedupes on Nats-Msg-Id."""
    prefix, stream = nats_names
    events = make_events(50)
    sink = NatsSink("n", [nats_url], prefix + ".{type}", stream=stream)
    sink.send(events)
    sink.send(events)
    sink.close()
    assert asyncio.run(_stream_state(nats_url, stream))[0] == 50


async def _add_small_stream(url: str, stream: str, subject: str) -> None:
    nc = await nats.connect(url)
    try:
        await nc.jetstream().add_stream(
            name=stream, subjects=[subject], max_msgs=10, discard=DiscardPolicy.NEW
        )
    finally:
        await nc.close()


def test_nats_failed_ack_stops_at_its_index(nats_url: str, nats_names: tuple[str, str]) -> None:
    """A stream that refuses the 11th message: SinkUnavailable(delivered=10), 10 stored."""
    prefix, stream = nats_names
    asyncio.run(_add_small_stream(nats_url, stream, prefix + ".>"))
    sink = NatsSink("n", [nats_url], prefix + ".{type}", stream="UNUSED")
    with pytest.raises(SinkUnavailable) as caught:
        sink.send(make_events(50))
    sink.close()
    assert caught.value.delivered == 10
    assert asyncio.run(_stream_state(nats_url, stream))[0] == 10


@pytest.mark.parametrize("jetstream", [True, False])
def test_nats_oversized_event_is_rejected_at_its_index(
    nats_url: str, nats_names: tuple[str, str], jetstream: bool
) -> None:
    """An event above the server's max_payload is SinkRejected(delivered=its index)."""
    prefix, stream = nats_names
    events = make_events(5)
    huge = events[3]
    events[3] = StoredEvent(huge.seq, huge.event_id, huge.type, huge.subject, "band", "x" * 2**21)
    sink = NatsSink("n", [nats_url], prefix + ".{type}", jetstream=jetstream, stream=stream)
    with pytest.raises(SinkRejected) as caught:
        sink.send(events)
    sink.close()
    assert caught.value.delivered == 3
    assert "max_payload" in str(caught.value)


def test_nats_core_publish_reaches_a_subscriber(nats_url: str) -> None:
    """With jetstream = false, a core subscriber receives the 50 events in order."""
    prefix = unique("syncdcore")
    events = make_events(50)
    sink = NatsSink("n", [nats_url], prefix + ".{type}", jetstream=False)

    async def run() -> list[tuple[str, bytes]]:
        nc = await nats.connect(nats_url)
        sub = await nc.subscribe(prefix + ".>")
        await nc.flush()
        await asyncio.to_thread(sink.send, events)  # the sink's own loop, not this one
        received = [await sub.next_msg(timeout=5) for _ in events]
        await nc.close()
        return [(m.subject, m.data) for m in received]

    try:
        assert asyncio.run(run()) == [(f"{prefix}.{e.type}", e.payload.encode()) for e in events]
    finally:
        sink.close()


def test_nats_unreachable_is_unavailable(nats_url: str) -> None:
    """A NATS server that refuses connections is SinkUnavailable, without the password."""
    sink = NatsSink("n", [with_credentials(nats_url, free_port())], "x.{type}")
    with pytest.raises(SinkUnavailable) as opened:
        sink.open()
    assert no_password_in(opened.value)
    assert "cannot connect" in str(opened.value)


# ------------------------------------------------------------------------------------ mqtt


class Subscriber:
    """An MQTT client subscribed (QoS 1) to ``topic`` before anything is sent."""

    def __init__(self, url: str, topic: str) -> None:
        parts = urlsplit(url)
        self.messages: list[tuple[str, bytes]] = []
        self._got = threading.Condition()
        subscribed = threading.Event()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        self.client.on_message = lambda _c, _u, msg: self._add(msg.topic, bytes(msg.payload))
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
        self.client.loop_start()
        assert subscribed.wait(5), "no SUBACK"

    def _add(self, topic: str, payload: bytes) -> None:
        with self._got:
            self.messages.append((topic, payload))
            self._got.notify_all()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[tuple[str, bytes]]:
        with self._got:
            self._got.wait_for(lambda: len(self.messages) >= count, timeout)
            return list(self.messages)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def mqtt_topic(mqtt_url: str) -> Iterator[tuple[str, Subscriber]]:
    """A fresh topic prefix and a subscriber to everything under it."""
    prefix = unique("syncd-test/")
    subscriber = Subscriber(mqtt_url, prefix + "/#")
    yield prefix, subscriber
    subscriber.stop()


def test_mqtt_subscriber_gets_the_batch_in_order(
    mqtt_url: str, mqtt_topic: tuple[str, Subscriber]
) -> None:
    """50 events published at QoS 1 reach a subscriber in order, on their topics, exact bytes."""
    prefix, subscriber = mqtt_topic
    events = make_events(50)
    sink = MqttSink("m", mqtt_url, prefix + "/{type}", qos=1)
    sink.open()
    sink.send(events)
    sink.close()
    assert subscriber.wait_for(50) == [(f"{prefix}/{e.type}", e.payload.encode()) for e in events]


class Proxy:
    """A loopback TCP forwarder whose live connections can be cut or silenced."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._sockets: list[socket.socket] = []
        self._silenced: set[int] = set()  # ids of client sockets whose bytes are dropped
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b, id(client)), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, key: int) -> None:
        try:
            while data := source.recv(65536):
                if key not in self._silenced:
                    sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Drop every live connection, as a broker restart would."""
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._sockets.clear()

    def silence(self) -> None:
        """Live connections stay open but carry nothing more, as a dead route would."""
        with self._lock:
            self._silenced.update(id(s) for s in self._sockets)

    def stop(self) -> None:
        self._listener.close()
        self.cut()


@pytest.fixture
def mqtt_proxy(mqtt_url: str) -> Iterator[Proxy]:
    """A proxy in front of the MQTT broker."""
    parts = urlsplit(mqtt_url)
    proxy = Proxy((parts.hostname or "127.0.0.1", parts.port or 1883))
    yield proxy
    proxy.stop()


def test_mqtt_send_after_a_dropped_connection_reconnects(
    mqtt_topic: tuple[str, Subscriber], mqtt_proxy: Proxy
) -> None:
    """When the broker dropped the connection between batches, the next send reconnects."""
    prefix, subscriber = mqtt_topic
    events = make_events(20)
    sink = MqttSink("m", f"mqtt://127.0.0.1:{mqtt_proxy.port}", prefix + "/{type}", timeout=2)
    try:
        sink.send(events[:10])
        mqtt_proxy.cut()
        time.sleep(0.5)  # paho notices the EOF at once, and waits 1 s before its own retry
        sink.send(events[10:])
    finally:
        sink.close()
    payloads = [payload for _, payload in subscriber.wait_for(20)]
    assert payloads == [e.payload.encode() for e in events]


def test_mqtt_failed_send_is_retried_on_a_fresh_connection(
    mqtt_topic: tuple[str, Subscriber], mqtt_proxy: Proxy
) -> None:
    """A batch left unacknowledged is SinkUnavailable; the next send uses a new connection."""
    prefix, subscriber = mqtt_topic
    events = make_events(10)
    sink = MqttSink("m", f"mqtt://127.0.0.1:{mqtt_proxy.port}", prefix + "/{type}", timeout=1)
    try:
        sink.open()
        mqtt_proxy.silence()  # the open connection now swallows everything
        with pytest.raises(SinkUnavailable) as caught:
            sink.send(events)
        assert caught.value.delivered == 0
        assert "acknowledgement" in str(caught.value)
        sink.send(events)  # through a new, working connection
    finally:
        sink.close()
    payloads = [payload for _, payload in subscriber.wait_for(10)]
    assert payloads == [e.payload.encode() for e in events]


def test_mqtt_unreachable_is_unavailable(mqtt_url: str) -> None:
    """A broker that refuses connections is SinkUnavailable from open(), without the password."""
    sink = MqttSink("m", with_credentials(mqtt_url, free_port()), "t/{type}")
    with pytest.raises(SinkUnavailable) as opened:
        sink.open()
    assert no_password_in(opened.value)


# ------------------------------------------------------------------------------------ amqp


@pytest.fixture
def amqp_channel(amqp_url: str) -> Iterator[tuple[Any, str]]:
    """A channel of our own and a fresh exchange name, deleted afterwards."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    exchange = unique("syncd-test-")
    yield channel, exchange
    if connection.is_open:
        connection.close()
    # A fresh connection: a failed test may have left ours closed by the broker.
    cleanup = pika.BlockingConnection(pika.URLParameters(amqp_url))
    cleanup.channel().exchange_delete(exchange)
    cleanup.close()


def _bind_queue(channel: Any, exchange: str, key: str = "#") -> str:
    queue: str = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(queue, exchange, key)
    return queue


def test_amqp_queue_gets_the_batch_in_order(amqp_url: str, amqp_channel: tuple[Any, str]) -> None:
    """50 confirmed events land in a bound queue in order, with their AMQP properties."""
    channel, exchange = amqp_channel
    events = make_events(50)
    sink = AmqpSink("a", amqp_url, exchange, "{type}")
    sink.open()  # declares the exchange, so the queue can be bound to it
    queue = _bind_queue(channel, exchange)
    sink.send(events)
    sink.close()
    received = []
    for _ in events:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        assert method is not None, "queue ran dry"
        received.append(
            (
                method.routing_key,
                properties.message_id,
                properties.type,
                properties.content_type,
                properties.delivery_mode,
                body,
            )
        )
    assert received == [
        (e.type, e.event_id, e.type, "application/cloudevents+json", 2, e.payload.encode())
        for e in events
    ]


def test_amqp_declares_a_durable_topic_exchange(
    amqp_url: str, amqp_channel: tuple[Any, str]
) -> None:
    """open() declares a missing exchange as durable topic (a matching redeclare succeeds)."""
    channel, exchange = amqp_channel
    sink = AmqpSink("a", amqp_url, exchange, "{type}")
    sink.open()
    sink.close()
    # Redeclaring with other flags would close our channel with 406 PRECONDITION_FAILED.
    channel.exchange_declare(exchange, exchange_type="topic", durable=True)
    assert channel.is_open


def test_amqp_unroutable_event_is_unavailable_at_its_index(
    amqp_url: str, amqp_channel: tuple[Any, str]
) -> None:
    """An event no queue is bound for stops the batch: SinkUnavailable(delivered=its index)."""
    channel, exchange = amqp_channel
    events = make_events(6)  # types cycle updated, pdf_archived, created, ...
    sink = AmqpSink("a", amqp_url, exchange, "{type}")
    sink.open()
    _bind_queue(channel, exchange, PO_UPDATED)
    with pytest.raises(SinkUnavailable) as caught:
        sink.send(events)
    sink.close()
    assert caught.value.delivered == 1
    assert "unroutable" in str(caught.value)


def test_amqp_unreachable_is_unavailable(amqp_url: str) -> None:
    """A broker that refuses connections is SinkUnavailable from open(), without the password."""
    sink = AmqpSink("a", with_credentials(amqp_url, free_port()), "x", "{type}")
    with pytest.raises(SinkUnavailable) as opened:
        sink.open()
    assert no_password_in(opened.value)


def test_amqp_wrong_password_is_unavailable_without_it(amqp_url: str) -> None:
    """A login the broker refuses is SinkUnavailable, and the message hides the password."""
    port = urlsplit(amqp_url).port or 5672
    sink = AmqpSink("a", with_credentials(amqp_url, port, user="guest"), "x", "{type}")
    with pytest.raises(SinkUnavailable) as opened:
        sink.open()
    assert no_password_in(opened.value)
    assert "ACCESS_REFUSED" in str(opened.value)


def test_payloads_are_valid_cloudevents() -> None:
    """The events these tests send are CloudEvents 1.0 whose id is the stored event id."""
    for event in make_events(3):
        body = json.loads(event.payload)
        assert body["specversion"] == "1.0"
        assert body["id"] == event.event_id
