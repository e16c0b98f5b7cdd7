"""structlog set-up and the redaction that keeps secrets out of every log line.

Secrets reach syncd from three places: the configuration (client secrets, bootstrap
refresh tokens), the token store (access and refresh tokens, rotated hourly) and the
API itself (signed ``pdf_url`` query tokens). The first two are registered with
:data:`secrets` as soon as they are known and replaced wherever they appear; the shapes
of the third (``token=…``, ``Bearer …``, ``"refresh_token": "…"``) are masked by pattern,
so a secret we never saw still does not leak. :func:`redact` is also used for the one
line the CLI prints on failure.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections import OrderedDict
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog
from structlog.typing import FilteringBoundLogger

MASK = "[REDACTED]"

# Keys whose value is a secret whatever it looks like.
_SECRET_KEYS = re.compile(
    r"(token|secret|password|passwd|authorization|api[_-]?key|credential)", re.IGNORECASE
)
# Secret shapes inside free text: URL query tokens/signatures, bearer headers, JSON fields.
_SECRET_PATTERNS = (
    re.compile(
        r"(?i)([?&](?:token|signature|sig|access_token|refresh_token|client_secret|code)=)"
        r"[^&\s'\"]+"
    ),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"),
    re.compile(
        r"(?i)([\"']?(?:access_token|refresh_token|client_secret|secret)[\"']?\s*[:=]\s*[\"']?)"
        r"[^\"'\s,}&]+"
    ),
    re.compile(r"(whsec_)[A-Za-z0-9+/=]+"),
)


class SecretRegistry:
    """Known secret values, replaced verbatim wherever they appear in output."""

    def __init__(self, capacity: int = 512) -> None:
        self._values: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def add(self, value: str | None) -> None:
        # Very short values would mask ordinary words; real secrets are long.
        if not value or len(value) < 6:
            return
        with self._lock:
            self._values[value] = None
            self._values.move_to_end(value)
            while len(self._values) > self._capacity:
                self._values.popitem(last=False)

    def scrub(self, text: str) -> str:
        with self._lock:
            values = sorted(self._values, key=len, reverse=True)
        for value in values:
            if value in text:
                text = text.replace(value, MASK)
        return text

    def clear(self) -> None:
        with self._lock:
            self._values.clear()


secrets = SecretRegistry()


def redact(text: str) -> str:
    """Return ``text`` with every known secret and every secret-shaped substring masked."""
    text = secrets.scrub(text)
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + MASK, text)
    return text


def _redact_value(key: str, value: Any) -> Any:
    if isinstance(value, str):
        return MASK if _SECRET_KEYS.search(key) and value else redact(value)
    if isinstance(value, Mapping):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(key, v) for v in value]
    if isinstance(value, BaseException):
        return redact(f"{type(value).__name__}: {value}")
    return value


def redact_processor(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: mask secrets in every key and value of a log event."""
    for key, value in list(event_dict.items()):
        if key == "event" and isinstance(value, str):
            event_dict[key] = redact(value)
        else:
            event_dict[key] = _redact_value(key, value)
    return event_dict


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_LEVELS["error"] = logging.ERROR


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Set up structlog: JSON lines when not on a terminal, console output on one."""
    out = stream if stream is not None else sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=out.isatty())
        if use_console
        else structlog.processors.JSONRenderer()
    )
    shared: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_processor,
    ]
    numeric_level = _LEVELS.get(level, logging.INFO)
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, *shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    # Libraries (APScheduler, httpx, alembic) log through the standard library: render
    # their lines the same way, redaction included, so the output stays one format.
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric_level)
    # Their per-tick INFO lines ("Running job ...") are noise; warnings still come through.
    for noisy in ("apscheduler", "httpx", "httpcore", "alembic"):
        logging.getLogger(noisy).setLevel(max(numeric_level, logging.WARNING))


def get_logger(**bound: Any) -> FilteringBoundLogger:
    """A structlog logger with ``bound`` keys (connection, job, sink) on every line."""
    logger: FilteringBoundLogger = structlog.get_logger("syncd").bind(**bound)
    return logger
