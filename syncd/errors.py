"""The one exception tree of syncd.

Every expected failure is one of these; the CLI prints ``str(error)`` as one line and
exits with ``error.exit_code`` (DESIGN §4). Anything else is a bug and exits 1.

    SyncdError                      exit 1
    ├── ConfigError                 exit 2   bad or unknown key, missing ${VAR}, bad usage
    ├── AlreadyRunning              exit 2   another daemon holds the SQLite database
    ├── ApiError                    exit 4   the InventoryArts API failed us
    │   ├── AuthError               exit 3   the connection needs (re-)authorization
    │   ├── RateLimited             exit 4   429 that outlived our retries (carries retry_after)
    │   ├── TransientApiError       exit 4   5xx, timeouts, dropped connections, non-JSON bodies
    │   └── PermanentApiError       exit 1   any other 4xx, or a rejected action: not retried
    ├── PdfUnavailable              exit 4   PDFs still pending after this run's retries
    └── SinkError                   exit 4   an event sink failed
        ├── SinkUnavailable         exit 4   worth retrying later (broker down, 5xx)
        └── SinkRejected            exit 4   the sink refused an event for good (dead letter)

Authorization failure is deliberately apart from transient failure: restarting or
retrying never fixes a revoked refresh token, so callers stop polling that connection
until an operator stores a new token.
"""

from __future__ import annotations


class SyncdError(Exception):
    """Base of every expected syncd failure."""

    exit_code = 1


class ConfigError(SyncdError):
    """The configuration or the command line is wrong."""

    exit_code = 2


class AlreadyRunning(SyncdError):
    """Another syncd process owns the (SQLite) database."""

    exit_code = 2


class ApiError(SyncdError):
    """The InventoryArts API did not give us what we asked for.

    ``retryable`` says whether the same request may be sent again (never for a POST
    that may have reached the server); ``retry_after`` is the server's wish in seconds.
    """

    exit_code = 4
    retryable = False

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        retry_after: float | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.retry_after = retry_after
        if retryable is not None:
            self.retryable = retryable


class AuthError(ApiError):
    """The connection needs authorization: no token, or its refresh token was rejected."""

    exit_code = 3

    def __init__(
        self, message: str, *, connection: str = "", status_code: int | None = None
    ) -> None:
        super().__init__(message, status_code=status_code)
        self.connection = connection


class RateLimited(ApiError):
    """The API answered 429 (too many requests)."""

    retryable = True


class TransientApiError(ApiError):
    """A failure that a later attempt may not see: 5xx, timeouts, resets, garbage bodies."""

    retryable = True


class PermanentApiError(ApiError):
    """A 4xx (other than 401/429) or an action the server refused: retrying will not help."""

    exit_code = 1


class PdfUnavailable(SyncdError):
    """Some PDFs could not be archived in this run; their jobs stay pending."""

    exit_code = 4


class SinkError(SyncdError):
    """An event sink failed after taking the first ``delivered`` events of the batch."""

    exit_code = 4

    def __init__(self, message: str, *, delivered: int = 0) -> None:
        super().__init__(message)
        self.delivered = delivered


class SinkUnavailable(SinkError):
    """The sink cannot take events now; the events stay in the outbox."""


class SinkRejected(SinkError):
    """The sink refused an event; retrying the same event will not help."""
