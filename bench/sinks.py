"""Benchmark: events per second through each event sink's ``send()``, on loopback.

Pushes N real CloudEvents (default 100,000) through each sink in batches of 500 (the
dispatcher's batch size) and prints events/s per sink, the median of 3 runs. Only the
``send()`` calls are timed: building the events and ``open()`` are not. After each run
the benchmark checks that the broker (or receiver) really holds N events, then removes
what it created.

The webhook sink posts to a minimal asyncio HTTP/1.1 receiver running in another
process, so the receiver does not compete with the sink for the GIL.

Not part of the test suite. Run from the repository root:

    .venv/bin/python bench/sinks.py                    # every sink
    .venv/bin/python bench/sinks.py --sinks redis,nats --events 20000
    .venv/bin/python bench/sinks.py --json sinks.json  # also write the figures

Broker URLs: the same SYNCD_TEST_*_URL variables as tests/test_sinks_brokers.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

from syncd.events import PO_CREATED, PO_UPDATED, Event, StoredEvent, event_id, source_of
from syncd.sinks.base import Sink

REDIS_URL = os.environ.get("SYNCD_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
NATS_URL = os.environ.get("SYNCD_TEST_NATS_URL", "nats://127.0.0.1:4222")
MQTT_URL = os.environ.get("SYNCD_TEST_MQTT_URL", "mqtt://127.0.0.1:1883")
AMQP_URL = os.environ.get("SYNCD_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
# Signing is part of the webhook's cost; this is the Standard Webhooks test vector's key.
BENCH_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # noqa: S105 - a published test key
# Issue #9's targets, events/s through send(), by --sinks name; the others have none.
TARGETS = {"jsonl": 20_000, "redis": 10_000, "nats": 10_000, "webhook": 1_000}


def make_events(count: int) -> list[StoredEvent]:
    """``count`` realistic purchase-order events (about 400 bytes each)."""
    events = []
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    for n in range(count):
        event_type = PO_CREATED if n % 2 else PO_UPDATED
        order = {
            "id": n,
            "po_number": f"PO-{n:07d}",
            "vendor_name": "Bench Instruments GmbH",
            "grand_total": f"{n % 10000}.50",
            "status": "open",
            "items_summary": "3 x violin strings, 1 x rosin",
            "version": 1,
        }
        event = Event(
            id=event_id("bench", n, 1, event_type),
            type=event_type,
            source=source_of("bench"),
            subject=str(n),
            time=now,
            data={"purchase_order": order},
        )
        events.append(
            StoredEvent(n + 1, event.id, event.type, event.subject, "bench", event.to_json())
        )
    return events


# ------------------------------------------------------------------------- webhook receiver


class _Receiver(asyncio.Protocol):
    """Reads pipelined HTTP/1.1 requests and answers each with 204, nothing more."""

    def __init__(self, counter: Synchronized[int]) -> None:
        self._counter = counter
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while (end := self._buffer.find(b"\r\n\r\n")) >= 0:
            head = bytes(self._buffer[:end]).lower()
            length = 0
            start = head.find(b"content-length:")
            if start >= 0:
                stop = head.find(b"\r\n", start)
                length = int(head[start + 15 : stop if stop >= 0 else None])
            if len(self._buffer) < end + 4 + length:
                return
            del self._buffer[: end + 4 + length]
            with self._counter.get_lock():
                self._counter.value += 1
            assert self._transport is not None
            self._transport.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")


def _serve(port_out: Any, counter: Synchronized[int]) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Receiver(counter), "127.0.0.1", 0)
        port_out.send(server.sockets[0].getsockname()[1])
        await server.serve_forever()

    asyncio.run(main())


@contextmanager
def receiver() -> Iterator[tuple[str, Synchronized[int]]]:
    """A fast HTTP receiver in a child process: its URL and its request counter."""
    counter: Synchronized[int] = multiprocessing.Value("q", 0)
    parent, child = multiprocessing.Pipe()
    process = multiprocessing.Process(target=_serve, args=(child, counter), daemon=True)
    process.start()
    try:
        port = parent.recv()
        yield f"http://127.0.0.1:{port}/bench", counter
    finally:
        process.terminate()
        process.join()


# ------------------------------------------------------------------------------ the cases


@dataclass
class Case:
    """One sink set-up: build a fresh sink, and check then clean up after a run."""

    name: str
    build: Callable[[], Sink]
    check: Callable[[int], int]  # the number of events the far side holds
    cleanup: Callable[[], None] = lambda: None
    at_most_once: bool = False  # MQTT QoS 0: the far side may hold fewer, by design


def webhook_case(url: str, counter: Synchronized[int], batch_size: int) -> Case:
    from syncd.sinks.webhook import WebhookSink

    def build() -> Sink:
        with counter.get_lock():
            counter.value = 0
        return WebhookSink("bench", url, secret=BENCH_SECRET, batch_size=batch_size)

    def check(_expected: int) -> int:
        return int(counter.value) * batch_size  # requests, each carrying batch_size events

    label = "webhook" if batch_size == 1 else f"webhook (batch_size={batch_size})"
    return Case(label, build, check)


def redis_case() -> Case:
    import redis

    from syncd.sinks.redis import RedisSink

    key = f"syncd-bench-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(REDIS_URL)

    def build() -> Sink:
        client.delete(key)
        return RedisSink("bench", REDIS_URL, key)

    def cleanup() -> None:
        client.delete(key)
        client.close()

    return Case("redis", build, lambda _expected: int(client.xlen(key)), cleanup)


def nats_case(jetstream: bool) -> Case:
    import nats

    from syncd.sinks.nats import NatsSink

    token = uuid.uuid4().hex[:8]
    subject, stream = f"syncdbench{token}.{{type}}", f"SYNCDBENCH{token}"
    stream_name = stream if jetstream else f"SYNCDBENCHCORE{token}"

    async def count() -> int:
        nc = await nats.connect(NATS_URL)
        try:
            return int((await nc.jetstream().stream_info(stream_name)).state.messages)
        finally:
            await nc.close()

    async def delete() -> None:
        nc = await nats.connect(NATS_URL)
        try:
            await nc.jetstream().delete_stream(stream_name)
        except Exception:  # noqa: S110 - already gone
            pass
        finally:
            await nc.close()

    async def capture() -> None:
        # Core NATS stores nothing: a stream over the subjects counts what the server got.
        nc = await nats.connect(NATS_URL)
        try:
            await nc.jetstream().add_stream(name=stream_name, subjects=[f"syncdbench{token}.>"])
        finally:
            await nc.close()

    def build() -> Sink:
        # A fresh stream each run: the same event ids again would only measure dedup.
        asyncio.run(delete())
        if not jetstream:
            asyncio.run(capture())
        return NatsSink("bench", [NATS_URL], subject, jetstream=jetstream, stream=stream)

    def check(_expected: int) -> int:
        # Core publishes were flushed but JetStream may still be storing the last ones.
        deadline = time.monotonic() + 10
        got = asyncio.run(count())
        while got < _expected and time.monotonic() < deadline:
            time.sleep(0.1)
            got = asyncio.run(count())
        return got

    return Case(
        "nats (jetstream)" if jetstream else "nats (core)",
        build,
        check,
        lambda: asyncio.run(delete()),
    )


def mqtt_case(qos: int) -> Case:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from syncd.sinks.mqtt import MqttSink

    topic = f"syncd-bench/{uuid.uuid4().hex[:8]}"
    received = [0]
    subscriber = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)

    def on_message(*_: Any) -> None:
        received[0] += 1

    subscriber.on_message = on_message

    def build() -> Sink:
        # A QoS 0 subscriber counts what the broker accepted, without slowing it down much.
        received[0] = 0
        if not subscriber.is_connected():
            subscriber.connect("127.0.0.1", int(MQTT_URL.rsplit(":", 1)[1]))
            subscriber.subscribe(topic + "/#", qos=0)
            subscriber.loop_start()
            time.sleep(0.2)
        return MqttSink("bench", MQTT_URL, topic + "/{type}", qos=qos)

    def check(expected: int) -> int:
        deadline = time.monotonic() + 10
        while received[0] < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        return received[0]

    def cleanup() -> None:
        subscriber.disconnect()
        subscriber.loop_stop()

    return Case(f"mqtt (qos {qos})", build, check, cleanup, at_most_once=qos == 0)


def amqp_case() -> Case:
    import pika

    from syncd.sinks.amqp import AmqpSink

    exchange = f"syncd-bench-{uuid.uuid4().hex[:8]}"
    queue = exchange
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.exchange_declare(exchange, exchange_type="topic", durable=True)

    def build() -> Sink:
        # Publishes are mandatory: a bound queue must exist, and starts empty each run.
        channel.queue_declare(queue, durable=True)
        channel.queue_bind(queue, exchange, "#")
        channel.queue_purge(queue)
        return AmqpSink("bench", AMQP_URL, exchange, "{type}")

    def check(_expected: int) -> int:
        return int(channel.queue_declare(queue, passive=True).method.message_count)

    def cleanup() -> None:
        channel.queue_delete(queue)
        channel.exchange_delete(exchange)
        connection.close()

    return Case("amqp", build, check, cleanup)


def jsonl_case() -> Case:
    """The JSONL sink into a fresh file (each batch appended and fsynced)."""
    from syncd.sinks.jsonl import JsonlSink

    directory = Path(tempfile.mkdtemp(prefix="syncd-bench-"))
    path = directory / "events.jsonl"

    def build() -> Sink:
        path.unlink(missing_ok=True)
        return JsonlSink("bench", path)

    def check(_expected: int) -> int:
        return path.read_bytes().count(b"\n")

    def cleanup() -> None:
        path.unlink(missing_ok=True)
        directory.rmdir()

    return Case("jsonl (fsync per batch)", build, check, cleanup)


# --------------------------------------------------------------------------------- runner


def run_once(case: Case, events: Sequence[StoredEvent], batch: int) -> float:
    """Seconds spent in send() for all ``events``, after checking the far side has them."""
    sink = case.build()
    sink.open()
    try:
        started = time.perf_counter()
        for start in range(0, len(events), batch):
            sink.send(events[start : start + batch])
        elapsed = time.perf_counter() - started
    finally:
        sink.close()
    held = case.check(len(events))
    if held < len(events) and case.at_most_once:
        print(f"  {case.name}: the far side holds {held} of {len(events)} events (at most once)")
    elif held < len(events):
        raise SystemExit(f"{case.name}: the far side holds {held} of {len(events)} events")
    return elapsed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--sinks",
        default="jsonl,webhook,webhook-batch,redis,nats,nats-core,mqtt,mqtt-qos0,amqp",
        help="comma-separated: jsonl, webhook, webhook-batch, redis, nats, nats-core, mqtt, "
        "mqtt-qos0, amqp",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    wanted = [name.strip() for name in args.sinks.split(",") if name.strip()]
    events = make_events(args.events)
    size = sum(len(e.payload) for e in events) // len(events)
    print(
        f"{args.events:,} events of ~{size} bytes, send() batches of {args.batch}, "
        f"median of {args.runs} runs; Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs",
        flush=True,
    )
    results: dict[str, Any] = {
        "events": args.events,
        "batch": args.batch,
        "runs": args.runs,
        "event_bytes": size,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "sinks": {},
    }
    with receiver() as (url, counter):
        factories: dict[str, Callable[[], Case]] = {
            "jsonl": jsonl_case,
            "webhook": lambda: webhook_case(url, counter, 1),
            "webhook-batch": lambda: webhook_case(url, counter, args.batch),
            "redis": redis_case,
            "nats": lambda: nats_case(jetstream=True),
            "nats-core": lambda: nats_case(jetstream=False),
            "mqtt": lambda: mqtt_case(qos=1),
            "mqtt-qos0": lambda: mqtt_case(qos=0),
            "amqp": amqp_case,
        }
        print(f"{'sink':<30}{'events/s (median)':>18}   runs", flush=True)
        for name in wanted:
            if name not in factories:
                parser.error(f"unknown sink {name!r}")
            case = factories[name]()
            try:
                rates = [args.events / run_once(case, events, args.batch) for _ in range(args.runs)]
            finally:
                case.cleanup()
            runs = ", ".join(f"{rate:,.0f}" for rate in rates)
            print(f"{case.name:<30}{statistics.median(rates):>18,.0f}   {runs}", flush=True)
            results["sinks"][name] = {
                "label": case.name,
                "median_per_s": statistics.median(rates),
                "runs_per_s": rates,
                "target_per_s": TARGETS.get(name),
            }
            if args.json:  # after every sink, so a later failure keeps what was measured
                args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
