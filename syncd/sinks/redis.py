"""The Redis sink: appends each CloudEvent to a Redis stream with XADD.

Each entry has the fields ``id``, ``type``, ``subject`` and ``data`` (the stored event
JSON, byte for byte). A batch is one pipeline, so one round trip; the server runs its
commands in order, so the stream holds the events in outbox order. ``maxlen`` trims the
stream approximately (``MAXLEN ~``), which Redis does cheaply at node boundaries.

Consumers read with XREAD/XREADGROUP and deduplicate on the ``id`` field: after a
failure the same events may be appended again (at-least-once).

Needs redis-py (``pip install 'syncd[redis]'``); the import below is what fails without
it, so loading the entry point tells the operator what to install.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.typing import EncodableT, FieldT

from syncd.errors import SinkUnavailable
from syncd.events import StoredEvent
from syncd.logging import secrets
from syncd.sinks.base import Sink

DEFAULT_TIMEOUT = 10.0


def _location(url: str) -> str:
    """Where the server is, for messages: host:port/db or the socket path, no password."""
    try:
        parts = urlsplit(url)
        if parts.scheme == "unix":
            return f"unix:{parts.path}"
        port = parts.port or 6379
    except ValueError:
        return "<invalid URL>"
    return f"{parts.hostname}:{port}{parts.path if parts.path not in ('', '/') else ''}"


class RedisSink(Sink):
    """XADDs events to ``stream``, one pipelined round trip per batch."""

    def __init__(
        self,
        name: str,
        url: str,
        stream: str,
        *,
        maxlen: int | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(name)
        self.url = url
        self.stream = stream
        self.maxlen = maxlen or None  # 0 in the config means "no cap"
        self.timeout = timeout
        self._where = _location(url)
        try:
            self._password = urlsplit(url).password
        except ValueError:
            self._password = None
        self._client: redis.Redis | None = None

    @classmethod
    def from_config(cls, config: Any) -> RedisSink:
        sink = cls(config.name, config.url, config.stream, maxlen=config.maxlen)
        secrets.add(sink._password)  # keep the URL's password out of every log line
        return sink

    def open(self) -> None:
        if self._client is not None:
            return
        client: redis.Redis = redis.Redis.from_url(
            self.url,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            # No retries in the client: a retried pipeline may append a batch twice, and
            # the dispatcher already backs off and retries the whole batch.
            retry=Retry(NoBackoff(), 0),
            health_check_interval=30,
        )
        try:
            client.ping()
        except redis.RedisError as exc:
            client.close()
            raise SinkUnavailable(self._message("cannot connect", exc)) from None
        self._client = client

    def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            client.close()

    def send(self, events: Sequence[StoredEvent]) -> None:
        if not events:
            return
        if self._client is None:
            self.open()
        assert self._client is not None
        pipe = self._client.pipeline(transaction=False)
        for event in events:
            fields: dict[FieldT, EncodableT] = {
                "id": event.event_id,
                "type": event.type,
                "subject": event.subject,
                "data": event.payload,
            }
            pipe.xadd(
                self.stream,
                fields,
                maxlen=self.maxlen,
                approximate=True,
            )
        try:
            results = pipe.execute(raise_on_error=False)
        except redis.RedisError as exc:
            # The connection broke mid-pipeline: some entries may be in, none is known
            # to be, so the whole batch is delivered again (consumers dedupe on id).
            self.close()
            raise SinkUnavailable(self._message("XADD failed", exc)) from None
        for index, result in enumerate(results):
            if isinstance(result, Exception):
                # A command error (WRONGTYPE, OOM, ...) is the server's state, not the
                # event's: keep the events until an operator fixes it.
                raise SinkUnavailable(
                    self._message(f"XADD to {self.stream!r} failed", result), delivered=index
                )

    def _message(self, what: str, exc: BaseException) -> str:
        text = str(exc) or type(exc).__name__
        if self._password:
            text = text.replace(self._password, "***")
        return f"sink {self.name!r}: {what} (redis at {self._where}): {text}"
