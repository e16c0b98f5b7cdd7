"""Bearer tokens of one connection: read from the store, refreshed single-flight.

Refresh tokens rotate (the old one dies when the new pair is issued), so the new pair
is committed before it is used, and only one refresh per connection runs at a time:
a thread lock inside the process, the token row's lock across processes. A rejected
refresh is final: the connection is marked as needing authorization in the same
transaction that records ``connection.auth_failed``, and nothing calls the refresh
endpoint again until an operator stores a new token.

A refresh whose answer was lost (the request was sent, no usable response came back)
leaves the token in doubt: the server may have rotated it. That is written to the token
row, so the next refresh, in this process or after a restart, is the one retry with the
same token. If the retry is rejected, or its answer is lost too, the connection needs
authorization, with a message that names the cause.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx

from syncd.api import TokenPair, refresh_grant
from syncd.errors import ApiError, AuthError, TransientApiError
from syncd.events import auth_failed_event
from syncd.logging import get_logger, secrets
from syncd.store import tokens
from syncd.store.database import Database

REFRESH_MARGIN_SECONDS = 300.0  # refresh this long before the access token expires
REFRESH_PATH = "oauth/oauth_refresh.php"


@dataclass(frozen=True)
class ConnectionAuth:
    """What the token manager needs to know about a connection, and nothing more."""

    name: str
    refresh_url: str
    client_id: str
    client_secret: str
    bootstrap_refresh_token: str | None = None


def reauthorize_hint(name: str) -> str:
    return (
        f"run 'syncd auth login --connection {name}', or 'syncd auth import --connection "
        f"{name} --refresh-token TOKEN' with a token from a new authorization"
    )


def answer_lost(error: ApiError) -> bool:
    """True when a refresh request may have reached the server but no pair came back.

    A connection that was never made, and an HTTP error status, leave the token as it
    was; a dropped connection, a timeout after sending, or a 200 whose body is not a
    token pair may hide a rotation.
    """
    if not isinstance(error, TransientApiError):
        return False
    if isinstance(error.__context__, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return False  # refresh_grant raises these "from None": the cause is the context
    return error.status_code is None or error.status_code == 200


LOST = "the refresh response was lost"


def _detail(error: AuthError) -> str:
    """The server's reason in a rejected refresh ("invalid_grant"), else the whole message."""
    text = str(error)
    prefix = "refresh token rejected ("
    return text[len(prefix) : -1] if text.startswith(prefix) and text.endswith(")") else text


def is_fresh(token: tokens.StoredToken, now: datetime, margin: float) -> bool:
    """True while the access token is usable for at least ``margin`` more seconds."""
    return bool(
        token.access_token
        and token.expires_at is not None
        and token.expires_at - timedelta(seconds=margin) > now
    )


class TokenManager:
    """The :class:`syncd.api.TokenSource` of one connection."""

    def __init__(
        self,
        auth: ConnectionAuth,
        db: Database,
        http: httpx.Client,
        *,
        clock: Callable[[], float] = time.time,
        margin: float = REFRESH_MARGIN_SECONDS,
    ) -> None:
        self._auth = auth
        self._db = db
        self._http = http
        self._clock = clock
        self._margin = margin
        self._lock = threading.Lock()
        # The last access token read or issued, and its expiry: a quiet poll needs no
        # database read while it stays fresh. The row stays the truth for refreshes.
        self._cached: tuple[str, datetime] | None = None
        self._log = get_logger(connection=auth.name, job="auth")
        secrets.add(auth.client_secret)
        secrets.add(auth.bootstrap_refresh_token)
        # Fail at start-up, as one line, when the token key cannot read the stored row.
        tokens.load(db, auth.name)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def access_token(self) -> str:
        """A usable access token, refreshed first when it is about to expire."""
        cached = self._cached
        if cached is not None and cached[1] - timedelta(seconds=self._margin) > self._now():
            return cached[0]
        token = tokens.load(self._db, self._auth.name)
        if token is not None:
            self._check_usable(token)
            # A refresh in doubt is settled by its retry before anything else.
            if token.refresh_in_doubt_since is None and is_fresh(token, self._now(), self._margin):
                return self._remember(token.access_token, token.expires_at)
        return self._refresh(stale_access=None)

    def _remember(self, access_token: str | None, expires_at: datetime | None) -> str:
        assert access_token is not None
        assert expires_at is not None
        secrets.add(access_token)
        self._cached = (access_token, expires_at)
        return access_token

    def refresh_after_401(self, rejected: str) -> str:
        """The API refused ``rejected``: refresh once (unless another caller just did)."""
        return self._refresh(stale_access=rejected)

    def _check_usable(self, token: tokens.StoredToken) -> None:
        name = self._auth.name
        if token.needs_authorization:
            since = token.needs_authorization_since
            when = f" since {since:%Y-%m-%d %H:%M UTC}" if since else ""
            raise AuthError(
                f"connection '{name}' needs authorization{when}: {token.auth_error}; "
                + reauthorize_hint(name),
                connection=name,
            )
        if not token.refresh_token and not token.access_token:
            raise AuthError(
                f"connection '{name}' has no token; " + reauthorize_hint(name), connection=name
            )

    def _refresh(self, stale_access: str | None) -> str:
        name = self._auth.name
        failure: ApiError | None = None
        self._cached = None
        with self._lock:
            now = self._now()
            with tokens.locked(
                self._db, name, bootstrap_refresh_token=self._auth.bootstrap_refresh_token, now=now
            ) as txn:
                token = txn.token
                if token is None:
                    raise AuthError(
                        f"connection '{name}' has no token; " + reauthorize_hint(name),
                        connection=name,
                    )
                self._check_usable(token)
                in_doubt = token.refresh_in_doubt_since is not None
                # Another thread or process may have refreshed while we waited for the lock.
                if (
                    not in_doubt
                    and token.access_token != stale_access
                    and is_fresh(token, now, self._margin)
                ):
                    return self._remember(token.access_token, token.expires_at)
                if not token.refresh_token:
                    raise AuthError(
                        f"connection '{name}' has an expired access token and no refresh "
                        "token; " + reauthorize_hint(name),
                        connection=name,
                    )
                secrets.add(token.refresh_token)
                # Failures are recorded when this block commits, and raised after it.
                try:
                    pair = self._call_refresh(token.refresh_token)
                except AuthError as exc:
                    reason = str(exc)
                    if in_doubt:
                        reason = (
                            f"{LOST} and the retried refresh was rejected ({_detail(exc)}): "
                            "the server rotated the token but syncd never received it"
                        )
                    failure = self._reject(txn, token.refresh_token, reason, now, exc.status_code)
                except TransientApiError as exc:
                    if not answer_lost(exc):
                        raise  # nothing was rotated: the next refresh is an ordinary one
                    if in_doubt:
                        reason = (
                            f"{LOST}, and so was the answer to its one retry ({exc}): the "
                            "server may have rotated the token without syncd receiving it"
                        )
                        failure = self._reject(txn, token.refresh_token, reason, now, None)
                    else:
                        txn.mark_refresh_in_doubt(now)
                        failure = TransientApiError(
                            f"connection '{name}': {LOST} ({exc}); the next attempt retries "
                            "once with the same refresh token",
                            retryable=False,
                        )
                else:
                    # Committed when this block ends, before the new token is used.
                    txn.save_pair(
                        pair.access_token,
                        pair.refresh_token,
                        now + timedelta(seconds=pair.expires_in),
                        now,
                    )
        if isinstance(failure, AuthError):
            self._log.error("authorization lost", error=str(failure))
            raise failure
        if failure is not None:
            self._log.warning("token refresh in doubt", error=str(failure))
            raise failure
        self._log.info("access token refreshed", expires_in=pair.expires_in)
        return self._remember(pair.access_token, now + timedelta(seconds=pair.expires_in))

    def _reject(
        self,
        txn: tokens.TokenTransaction,
        refresh_token: str,
        reason: str,
        now: datetime,
        status_code: int | None,
    ) -> AuthError:
        """Mark the connection as needing authorization (one auth_failed per token)."""
        name = self._auth.name
        txn.mark_needs_authorization(
            reason, auth_failed_event(name, reason, refresh_token, now), now
        )
        return AuthError(
            f"connection '{name}' needs authorization: {reason}; " + reauthorize_hint(name),
            connection=name,
            status_code=status_code,
        )

    def _call_refresh(self, refresh_token: str) -> TokenPair:
        pair = refresh_grant(
            self._http,
            self._auth.refresh_url,
            self._auth.client_id,
            self._auth.client_secret,
            refresh_token,
        )
        secrets.add(pair.access_token)
        secrets.add(pair.refresh_token)
        return pair
