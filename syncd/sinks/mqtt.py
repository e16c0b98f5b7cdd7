"""The MQTT sink: publishes each CloudEvent to an MQTT broker (paho-mqtt 2.x, MQTT 3.1.1).

The topic comes from the ``topic`` template, whose ``{type}``, ``{connection}`` and
``{subject}`` placeholders take the event's values (``inventoryarts/{type}`` gives
``inventoryarts/com.inventoryarts.purchase_order.created``). Characters a published
topic may not hold (``+``, ``#``, NUL) become ``_``. The payload is the stored event
JSON, byte for byte.

A batch is published at the configured QoS (default 1) and the sink waits for the
broker to acknowledge it (PUBACK, or PUBCOMP at QoS 2; at QoS 0, for the bytes to
leave). ``delivered`` counts the leading events acknowledged in order. After any
failure the client is thrown away and the next send connects afresh with a clean
session, rather than trusting paho's background reconnect to replay half a batch.

Needs paho-mqtt (``pip install 'syncd[mqtt]'``); the import below is what fails without
it, so loading the entry point tells the operator what to install.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from syncd.errors import ConfigError, SinkError, SinkRejected, SinkUnavailable
from syncd.events import StoredEvent
from syncd.logging import secrets
from syncd.sinks.base import Sink
from syncd.sinks.templates import parse_template, render

DEFAULT_TIMEOUT = 10.0
KEEPALIVE = 60
# Enough QoS 1 messages in flight to keep a loopback or LAN link busy; paho queues the
# rest in order and sends each as an earlier one is acknowledged.
MAX_INFLIGHT = 200

_UNSAFE = re.compile(r"[+#\x00]")


def _clean(value: str) -> str:
    """Wildcards in a value from the event would widen the topic: they become "_"."""
    return _UNSAFE.sub("_", value)


_MAX_TOPIC_BYTES = 65535


class MqttSink(Sink):
    """Publishes events to one MQTT broker and waits for their acknowledgements."""

    def __init__(
        self,
        name: str,
        url: str,
        topic: str,
        *,
        qos: int = 1,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(name)
        try:
            self._parts = parse_template(topic)
        except ValueError as exc:
            raise ConfigError(f"sink {name!r}: topic {topic!r}: {exc}") from None
        fixed = "".join(literal for literal, _ in self._parts)
        if _UNSAFE.search(fixed) or topic.startswith("$"):
            raise ConfigError(
                f"sink {name!r}: topic {topic!r} cannot be published to "
                "(no '+', '#' or NUL; '$' topics belong to the broker)"
            )
        if qos not in (0, 1, 2):
            raise ConfigError(f"sink {name!r}: qos must be 0, 1 or 2")
        try:
            parts = urlsplit(url)
            self._tls = parts.scheme == "mqtts"
            self._host = parts.hostname or ""
            self._port = parts.port or (8883 if self._tls else 1883)
            self._username = unquote(parts.username) if parts.username else None
            self._password = unquote(parts.password) if parts.password else None
        except ValueError:
            raise ConfigError(f"sink {name!r}: url is not a valid mqtt:// URL") from None
        self.topic = topic
        self.qos = qos
        self.timeout = timeout
        self._where = f"{self._host}:{self._port}"
        self._client: mqtt.Client | None = None

    @classmethod
    def from_config(cls, config: Any) -> MqttSink:
        sink = cls(config.name, config.url, config.topic, qos=config.qos)
        secrets.add(sink._password)  # keep the URL's password out of every log line
        return sink

    # -- connection --

    def open(self) -> None:
        if self._client is not None and self._client.is_connected():
            return
        self.close()
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            # Unique per process: two clients with one id would keep kicking each other off.
            client_id=f"syncd-{self.name}-{uuid.uuid4().hex[:12]}",
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        client.connect_timeout = self.timeout
        client.max_inflight_messages_set(MAX_INFLIGHT)
        if self._username is not None:
            client.username_pw_set(self._username, self._password)
        if self._tls:
            client.tls_set()
        connack = threading.Event()
        refused: list[ReasonCode] = []

        def on_connect(
            _client: mqtt.Client,
            _userdata: Any,
            _flags: mqtt.ConnectFlags,
            reason: ReasonCode,
            _properties: Any,
        ) -> None:
            if reason.is_failure:
                refused.append(reason)
            connack.set()

        client.on_connect = on_connect
        try:
            client.connect(self._host, self._port, keepalive=KEEPALIVE)
        except (OSError, ValueError) as exc:
            raise SinkUnavailable(self._message("cannot connect", exc)) from None
        client.loop_start()
        if not connack.wait(self.timeout) or refused:
            self._teardown(client)
            why = f"the broker refused: {refused[0]}" if refused else "no CONNACK in time"
            raise SinkUnavailable(
                f"sink {self.name!r}: cannot connect (mqtt at {self._where}): {why}"
            )
        self._client = client

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            self._teardown(client)

    @staticmethod
    def _teardown(client: mqtt.Client) -> None:
        client.disconnect()
        client.loop_stop()

    # -- publishing --

    def send(self, events: Sequence[StoredEvent]) -> None:
        if not events:
            return
        if self._client is None or not self._client.is_connected():
            self.open()  # a clean reconnect after a failure or a dropped connection
        client = self._client
        assert client is not None
        infos: list[mqtt.MQTTMessageInfo] = []
        stop: SinkError | None = None  # raised once the messages already out are settled
        for event in events:
            topic = render(self._parts, event, _clean)
            if len(topic.encode()) > _MAX_TOPIC_BYTES:
                stop = SinkRejected(
                    f"sink {self.name!r}: event {event.event_id} gives a topic longer "
                    "than MQTT allows",
                    delivered=len(infos),
                )
                break
            info = client.publish(topic, event.payload.encode(), qos=self.qos)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                stop = SinkUnavailable(
                    f"sink {self.name!r}: publish failed (mqtt at {self._where}): "
                    f"{mqtt.error_string(info.rc)}",
                    delivered=len(infos),
                )
                break
            infos.append(info)
        deadline = time.monotonic() + self.timeout
        for index, info in enumerate(infos):
            try:
                info.wait_for_publish(max(deadline - time.monotonic(), 0.001))
                acked = info.is_published()
            except (RuntimeError, ValueError) as exc:
                self.close()
                raise SinkUnavailable(
                    self._message("publish failed", exc), delivered=index
                ) from None
            if not acked:
                self.close()
                raise SinkUnavailable(
                    f"sink {self.name!r}: no acknowledgement from mqtt at {self._where} "
                    f"within {self.timeout:g}s",
                    delivered=index,
                )
        if stop is not None:
            if isinstance(stop, SinkUnavailable):
                self.close()
            raise stop

    def _message(self, what: str, exc: BaseException) -> str:
        text = str(exc) or type(exc).__name__
        if self._password:
            text = text.replace(self._password, "***")
        return f"sink {self.name!r}: {what} (mqtt at {self._where}): {text}"
