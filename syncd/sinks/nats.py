"""The NATS sink: publishes each CloudEvent to NATS, through JetStream by default.

The subject comes from the ``subject`` template, whose ``{type}``, ``{connection}`` and
``{subject}`` placeholders take the event's values (``inventoryarts.{type}`` gives
``inventoryarts.com.inventoryarts.purchase_order.created``: the dots of an event type
become subject tokens, which is what lets consumers filter on them). Characters that a
subject token may not hold (whitespace, ``*``, ``>``) become ``_``.

With ``jetstream = true`` every message carries ``Nats-Msg-Id`` = the event id, so the
server drops a redelivered event within the stream's duplicate window. On ``open`` the
sink makes sure a stream captures its subjects: when none does, it creates the stream
named by ``stream`` (default ``INVENTORYARTS``) over the template's fixed leading tokens
(``inventoryarts.>``), with a 10-minute duplicate window. A batch is pipelined: every
message is published, then the acks are awaited in order, and ``delivered`` is the index
of the first message without a good ack. With ``jetstream = false`` the batch is a core
NATS publish followed by a flush (the server got it; nothing stores it).

nats-py is asyncio-only while the dispatcher is a thread, so each sink runs a private
event loop on its own thread and keeps its connection there across batches.

Needs nats-py (``pip install 'syncd[nats]'``); the import below is what fails without
it, so loading the entry point tells the operator what to install.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
from collections.abc import Coroutine, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar
from urllib.parse import urlsplit

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from syncd.errors import ConfigError, SinkRejected, SinkUnavailable
from syncd.events import StoredEvent
from syncd.logging import secrets
from syncd.sinks.base import Sink
from syncd.sinks.templates import parse_template, render

DEFAULT_TIMEOUT = 10.0
DEFAULT_STREAM = "INVENTORYARTS"
# Long enough to cover the dispatcher's longest backoff (300 s) twice, so an event
# redelivered after a failed ack is still recognised as a duplicate.
DUPLICATE_WINDOW = 600.0
MSG_ID_HEADER = "Nats-Msg-Id"

_UNSAFE = re.compile(r"[\s*>]")


def _clean(value: str) -> str:
    """Unsafe characters in a value from the event become "_"; a token is never empty."""
    return _UNSAFE.sub("_", value) or "_"


_STREAM_NAME = re.compile(r"[^\s.*>/\\]+")
_JS_STREAM_NAME_IN_USE = 10058

T = TypeVar("T")


def valid_subject(subject: str) -> bool:
    """A publishable subject: non-empty tokens, no whitespace, no wildcards."""
    return bool(subject) and all(
        token and not _UNSAFE.search(token) for token in subject.split(".")
    )


def stream_filter(parts: list[tuple[str, str | None]]) -> str | None:
    """The subject filter a new stream needs to capture every rendered subject.

    The template's complete leading tokens plus ``>``; the template itself when it has
    no placeholder; None when it starts with a placeholder (nothing fixed to capture).
    """
    if all(field is None for _, field in parts):
        return "".join(literal for literal, _ in parts)
    fixed = parts[0][0]
    cut = fixed.rfind(".")
    return fixed[: cut + 1] + ">" if cut > 0 else None


class _LoopThread:
    """A private asyncio loop running on its own daemon thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except FutureTimeout:
            future.cancel()
            raise

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()


class NatsSink(Sink):
    """Publishes events to NATS (JetStream with server-side dedup, or core NATS)."""

    def __init__(
        self,
        name: str,
        servers: Sequence[str],
        subject: str,
        *,
        jetstream: bool = True,
        stream: str = DEFAULT_STREAM,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(name)
        try:
            self._parts = parse_template(subject)
        except ValueError as exc:
            raise ConfigError(f"sink {name!r}: subject {subject!r}: {exc}") from None
        fixed = "".join(literal for literal, _ in self._parts)
        if any(not token for token in subject.split(".")) or _UNSAFE.search(fixed):
            raise ConfigError(
                f"sink {name!r}: subject {subject!r} is not a NATS subject "
                "(dot-separated tokens without spaces, '*' or '>')"
            )
        if _STREAM_NAME.fullmatch(stream) is None:
            raise ConfigError(
                f"sink {name!r}: stream {stream!r} is not a JetStream stream name "
                "(no spaces, '.', '*', '>', '/' or '\\')"
            )
        self.servers = list(servers)
        self.subject = subject
        self.jetstream = jetstream
        self.stream = stream
        self.timeout = timeout
        self._passwords: list[str] = []
        self._where = ", ".join(self._location(server) for server in self.servers)
        self._loop: _LoopThread | None = None
        self._nc: Client | None = None
        self._last_error: str | None = None

    @classmethod
    def from_config(cls, config: Any) -> NatsSink:
        sink = cls(
            config.name,
            config.servers,
            config.subject,
            jetstream=config.jetstream,
            stream=config.stream,
        )
        for password in sink._passwords:
            secrets.add(password)  # keep server passwords out of every log line
        return sink

    def _location(self, url: str) -> str:
        try:
            parts = urlsplit(url if "://" in url else f"nats://{url}")
            if parts.password:
                self._passwords.append(parts.password)
            return f"{parts.hostname}:{parts.port or 4222}"
        except ValueError:
            return "<invalid URL>"

    # -- connection --

    def open(self) -> None:
        if self._nc is not None and self._nc.is_connected:
            return
        self.close()
        self._loop = _LoopThread(f"syncd-nats-{self.name}")
        try:
            self._run(self._connect(), self.timeout * 4)
        except Exception as exc:
            self.close()
            raise SinkUnavailable(self._message("cannot connect", exc)) from None

    async def _connect(self) -> None:
        async def on_error(exc: Exception) -> None:
            # Replaces nats-py's default, which logs a traceback per failed attempt.
            self._last_error = self._scrub(f"{type(exc).__name__}: {exc}")

        self._nc = await nats.connect(
            servers=self.servers,
            name=f"syncd-{self.name}",
            connect_timeout=max(1, int(self.timeout)),
            # A few quick reconnects bridge a blip; after that the send fails and the
            # dispatcher's backoff takes over (it reopens the sink).
            max_reconnect_attempts=2,
            reconnect_time_wait=0.5,
            error_cb=on_error,
        )
        if self.jetstream:
            await self._ensure_stream(self._nc.jetstream(timeout=self.timeout))

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        wanted = stream_filter(self._parts)
        probe = wanted or render(self._parts, _PROBE, _clean)
        try:
            await js.find_stream_name_by_subject(probe)
            return  # some stream already captures these subjects
        except nats.js.errors.NotFoundError:
            pass
        if wanted is None:
            raise _Problem(
                f"no JetStream stream captures {self.subject!r} and none can be created "
                "for it (the subject starts with a placeholder): create one"
            )
        try:
            await js.add_stream(
                name=self.stream, subjects=[wanted], duplicate_window=DUPLICATE_WINDOW
            )
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code == _JS_STREAM_NAME_IN_USE:
                raise _Problem(
                    f"JetStream stream {self.stream!r} exists but does not capture "
                    f"{wanted!r}: add that subject to it or set another stream name"
                ) from None
            raise

    def close(self) -> None:
        loop, nc = self._loop, self._nc
        self._loop = self._nc = None
        if loop is None:
            return
        if nc is not None and not nc.is_closed:
            # Closing a broken connection may fail too; the loop goes either way.
            with contextlib.suppress(Exception):
                loop.run(nc.close(), self.timeout)
        loop.stop()

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        assert self._loop is not None
        return self._loop.run(coro, timeout)

    # -- publishing --

    def send(self, events: Sequence[StoredEvent]) -> None:
        if not events:
            return
        if self._nc is None or self._nc.is_closed:
            self.open()
        subjects = [render(self._parts, event, _clean) for event in events]
        bad = next((i for i, subject in enumerate(subjects) if not valid_subject(subject)), None)
        batch = events if bad is None else events[:bad]
        try:
            if self.jetstream:
                delivered, error = self._run(self._publish_js(batch, subjects), self.timeout * 2)
            else:
                delivered, error = self._run(self._publish_core(batch, subjects), self.timeout * 2)
        except Exception as exc:  # the loop itself timed out or the connection broke
            raise SinkUnavailable(self._message("publish failed", exc)) from None
        if error is not None:
            if isinstance(error, nats.errors.MaxPayloadError):
                size = len(events[delivered].payload.encode())
                raise SinkRejected(
                    f"sink {self.name!r}: event {events[delivered].event_id} ({size} bytes) "
                    "is larger than the server's max_payload",
                    delivered=delivered,
                )
            raise SinkUnavailable(self._message("publish failed", error), delivered=delivered)
        if bad is not None:
            raise SinkRejected(
                f"sink {self.name!r}: event {events[bad].event_id} gives the subject "
                f"{subjects[bad]!r}, which is not a valid NATS subject",
                delivered=bad,
            )

    async def _publish_js(
        self, events: Sequence[StoredEvent], subjects: Sequence[str]
    ) -> tuple[int, BaseException | None]:
        """Publish all, then read the acks in order: (leading acked, first error).

        Done by hand on core NATS rather than with nats-py's ``publish_async``, whose
        reply handler raises on an error ack (e.g. "maximum messages exceeded") instead
        of settling the future, so such an ack would only surface as a timeout. Each
        message's reply subject ends with its index in the batch.
        """
        assert self._nc is not None
        nc = self._nc
        loop = asyncio.get_running_loop()
        acks: list[asyncio.Future[Msg]] = [loop.create_future() for _ in events]
        inbox = nc.new_inbox()

        async def on_ack(msg: Msg) -> None:
            index = msg.subject.rpartition(".")[2]
            if index.isdigit() and int(index) < len(acks) and not acks[int(index)].done():
                acks[int(index)].set_result(msg)

        subscription = await nc.subscribe(inbox + ".*", cb=on_ack)
        try:
            sent, error = 0, None
            for event, subject in zip(events, subjects, strict=False):
                try:
                    await nc.publish(
                        subject,
                        event.payload.encode(),
                        reply=f"{inbox}.{sent}",
                        headers={MSG_ID_HEADER: event.event_id},
                    )
                except Exception as exc:
                    error = exc  # the messages already out may still be acked: count them
                    break
                sent += 1
            deadline = loop.time() + self.timeout
            for index in range(sent):
                try:
                    ack = await asyncio.wait_for(acks[index], max(deadline - loop.time(), 0))
                except TimeoutError:
                    return index, TimeoutError(f"no JetStream ack within {self.timeout:g}s")
                refusal = _refusal(ack)
                if refusal is not None:
                    return index, refusal
            return sent, error
        finally:
            for pending in acks:
                pending.cancel()
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    async def _publish_core(
        self, events: Sequence[StoredEvent], subjects: Sequence[str]
    ) -> tuple[int, BaseException | None]:
        """Publish all, then flush: (published before the first error, that error).

        Nothing is counted unless the flush (a PING/PONG round trip) succeeds.
        """
        assert self._nc is not None
        sent, error = 0, None
        for event, subject in zip(events, subjects, strict=False):
            try:
                await self._nc.publish(
                    subject, event.payload.encode(), headers={MSG_ID_HEADER: event.event_id}
                )
            except Exception as exc:
                error = exc
                break
            sent += 1
        try:
            await self._nc.flush(timeout=int(max(1, self.timeout)))
        except Exception as exc:
            return 0, exc
        return sent, error

    # -- messages --

    def _message(self, what: str, exc: BaseException) -> str:
        if isinstance(exc, _Problem | _Refused):
            detail = str(exc)
        elif isinstance(exc, nats.errors.NoServersError) and self._last_error:
            detail = f"no server answered ({self._last_error})"
        else:
            text = str(exc)
            detail = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        return self._scrub(f"sink {self.name!r}: {what} (nats at {self._where}): {detail}")

    def _scrub(self, text: str) -> str:
        for password in self._passwords:
            text = text.replace(password, "***")
        return text


class _Problem(Exception):
    """A stream set-up problem, already worded for the operator."""


class _Refused(Exception):
    """JetStream answered a publish with an error instead of an ack."""


def _refusal(ack: Msg) -> _Refused | None:
    """Why JetStream did not store the message this ack answers, or None if it did."""
    if ack.headers and ack.headers.get("Status") == "503":
        return _Refused("no JetStream stream captures the subject (no responders)")
    try:
        body = json.loads(ack.data)
    except ValueError:
        return _Refused("the ack is not JSON")
    error = body.get("error") if isinstance(body, dict) else None
    if error is None and isinstance(body, dict) and "seq" in body:
        return None  # stored, or a duplicate the server already holds
    if not isinstance(error, dict):
        return _Refused("the ack has neither a sequence nor an error")
    return _Refused(
        f"JetStream refused the message: {error.get('description', 'no description')} "
        f"(code {error.get('code')}, err_code {error.get('err_code')})"
    )


# A stand-in event, to render a template that has no fixed prefix.
_PROBE = StoredEvent(0, "probe", "probe", "probe", "probe", "")
