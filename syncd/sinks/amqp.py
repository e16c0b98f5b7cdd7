"""The AMQP sink: publishes each CloudEvent to a RabbitMQ (AMQP 0-9-1) exchange.

The routing key comes from the ``routing_key`` template, whose ``{type}``,
``{connection}`` and ``{subject}`` placeholders take the event's values (the default
``{type}`` gives ``com.inventoryarts.purchase_order.created``, which topic bindings such
as ``com.inventoryarts.purchase_order.*`` select on). The body is the stored event
JSON, byte for byte, with the properties ``content_type`` =
``application/cloudevents+json``, ``message_id`` = the event id, ``type`` = the event
type and ``delivery_mode`` = 2 (persistent).

The channel is in publisher-confirm mode and every message is ``mandatory``: an event is
delivered once the broker confirms it, and one that no queue would receive (returned
as unroutable) or that the broker nacks stops the batch with :class:`SinkUnavailable`
at its index — it stays in the outbox until a queue is bound, rather than vanishing.
``open`` declares ``exchange`` as a durable topic exchange when it does not exist (an
existing one is used as it is, whatever its type); ``exchange = ""`` is the default
exchange, where the routing key names a queue.

Needs pika (``pip install 'syncd[amqp]'``); the import below is what fails without it,
so loading the entry point tells the operator what to install.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from syncd.errors import ConfigError, SinkRejected, SinkUnavailable
from syncd.events import StoredEvent
from syncd.logging import secrets
from syncd.sinks.base import Sink
from syncd.sinks.templates import parse_template, render

CONTENT_TYPE = "application/cloudevents+json"
DEFAULT_TIMEOUT = 10.0
PERSISTENT = 2
_NOT_FOUND = 404
_MAX_ROUTING_KEY_BYTES = 255  # a routing key is an AMQP short string


class AmqpSink(Sink):
    """Publishes events to one exchange with publisher confirms."""

    def __init__(
        self,
        name: str,
        url: str,
        exchange: str,
        routing_key: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(name)
        try:
            self._parts = parse_template(routing_key)
        except ValueError as exc:
            raise ConfigError(f"sink {name!r}: routing_key {routing_key!r}: {exc}") from None
        try:
            parts = urlsplit(url)
            self._password = unquote(parts.password) if parts.password else None
            self._where = (
                f"{parts.hostname}:{parts.port or (5671 if parts.scheme == 'amqps' else 5672)}"
            )
            self._params = pika.URLParameters(url)
        except ValueError:
            raise ConfigError(f"sink {name!r}: url is not a valid amqp:// URL") from None
        # The dispatcher owns retrying: one attempt, bounded in time.
        self._params.connection_attempts = 1
        self._params.socket_timeout = timeout
        self._params.stack_timeout = timeout * 2
        self._params.blocked_connection_timeout = timeout * 3
        self.exchange = exchange
        self.routing_key = routing_key
        self.timeout = timeout
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None

    @classmethod
    def from_config(cls, config: Any) -> AmqpSink:
        sink = cls(config.name, config.url, config.exchange, config.routing_key)
        secrets.add(sink._password)  # keep the URL's password out of every log line
        return sink

    # -- connection --

    def open(self) -> None:
        if self._usable():
            return
        self.close()
        try:
            connection = pika.BlockingConnection(self._params)
        except pika.exceptions.AMQPError as exc:
            raise SinkUnavailable(self._message("cannot connect", exc)) from None
        try:
            channel = self._ready_channel(connection)
        except pika.exceptions.AMQPError as exc:
            _quietly_close(connection)
            raise SinkUnavailable(self._message("cannot set up the exchange", exc)) from None
        self._connection, self._channel = connection, channel

    def _ready_channel(self, connection: pika.BlockingConnection) -> BlockingChannel:
        channel = connection.channel()
        if self.exchange:
            try:
                # Passive first: an existing exchange is used as it is, whatever its type
                # or flags, where an active declare with other arguments would fail.
                channel.exchange_declare(self.exchange, passive=True)
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code != _NOT_FOUND:
                    raise
                # The failed passive declare closed that channel.
                channel = connection.channel()
                channel.exchange_declare(self.exchange, exchange_type="topic", durable=True)
        channel.confirm_delivery()
        return channel

    def _usable(self) -> bool:
        return (
            self._connection is not None
            and self._connection.is_open
            and self._channel is not None
            and self._channel.is_open
        )

    def close(self) -> None:
        connection = self._connection
        self._connection = self._channel = None
        if connection is not None:
            _quietly_close(connection)

    # -- publishing --

    def send(self, events: Sequence[StoredEvent]) -> None:
        if not events:
            return
        if self._usable():
            assert self._connection is not None
            try:
                # Handles heartbeats and a close the broker sent while we were idle, so a
                # connection that died between batches is replaced before publishing.
                self._connection.process_data_events(0)
            except pika.exceptions.AMQPError:
                self.close()
        if not self._usable():
            self.open()
        channel = self._channel
        assert channel is not None
        for index, event in enumerate(events):
            routing_key = render(self._parts, event)
            if len(routing_key.encode()) > _MAX_ROUTING_KEY_BYTES:
                raise SinkRejected(
                    f"sink {self.name!r}: event {event.event_id} gives a routing key longer "
                    f"than {_MAX_ROUTING_KEY_BYTES} bytes",
                    delivered=index,
                )
            properties = pika.BasicProperties(
                content_type=CONTENT_TYPE,
                delivery_mode=PERSISTENT,
                message_id=event.event_id,
                type=event.type,
                app_id="syncd",
            )
            try:
                # With confirms on, this returns once the broker has confirmed it.
                channel.basic_publish(
                    self.exchange,
                    routing_key,
                    event.payload.encode(),
                    properties,
                    mandatory=True,
                )
            except pika.exceptions.UnroutableError:
                raise SinkUnavailable(
                    f"sink {self.name!r}: event {event.event_id} is unroutable: no queue is "
                    f"bound to exchange {self.exchange!r} for routing key {routing_key!r}",
                    delivered=index,
                ) from None
            except pika.exceptions.NackError:
                raise SinkUnavailable(
                    f"sink {self.name!r}: the broker at {self._where} nacked event "
                    f"{event.event_id}",
                    delivered=index,
                ) from None
            except pika.exceptions.AMQPError as exc:
                self.close()
                raise SinkUnavailable(
                    self._message("publish failed", exc), delivered=index
                ) from None

    def _message(self, what: str, exc: BaseException) -> str:
        text = str(exc)
        if not text and exc.args:
            # pika's connection errors wrap the cause and have no text of their own.
            text = "; ".join(repr(arg) for arg in exc.args)
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        if self._password:
            text = text.replace(self._password, "***")
        return f"sink {self.name!r}: {what} (amqp at {self._where}): {text}"


def _quietly_close(connection: pika.BlockingConnection) -> None:
    """Close, ignoring a connection that is already gone (it may fail to close)."""
    try:
        if connection.is_open:
            connection.close()
    except (pika.exceptions.AMQPError, OSError):
        pass
