"""One poll of one connection, end to end: fetch the window, apply it, record the outcome.

Logs changes of state, not ticks: a failure is logged when it starts (or changes kind),
"recovered" once when it ends, and a quiet poll only at debug level.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from syncd.api import InventoryArtsClient
from syncd.errors import ApiError, AuthError, RateLimited
from syncd.logging import get_logger
from syncd.store.database import Database
from syncd.store.mirror import PollOutcome, apply_poll
from syncd.store.state import OK, record_failure


def outcome_of(error: ApiError) -> str:
    """The connection-state name of a failed poll."""
    if isinstance(error, AuthError):
        return "needs_authorization"
    if isinstance(error, RateLimited):
        return "rate_limited"
    return "failed"


def poll_connection(
    name: str,
    client: InventoryArtsClient,
    db: Database,
    *,
    clock: Callable[[], float] = time.time,
) -> PollOutcome:
    """Fetch one window and commit it; on failure record it and re-raise."""
    log = get_logger(connection=name, job="poll")
    try:
        window = client.purchase_orders()
    except ApiError as exc:
        outcome = outcome_of(exc)
        previous = record_failure(db, name, outcome, str(exc), _now(clock))
        if previous != outcome:
            level = log.warning if isinstance(exc, AuthError) else log.error
            level("poll failed", outcome=outcome, error=str(exc))
        else:
            log.debug("poll still failing", outcome=outcome, error=str(exc))
        raise
    result = apply_poll(db, name, window.orders, _now(clock))
    if result.previous_outcome not in (None, OK):
        log.info("recovered", was=result.previous_outcome)
    if result.created or result.updated:
        log.info("orders synced", created=result.created, updated=result.updated)
    else:
        log.debug("poll quiet", returned=result.returned)
    if result.gap_detected:
        log.warning(
            "gap detected: no returned order was known, orders may have been missed; "
            "polling sooner until the window overlaps",
            returned=result.returned,
        )
    return result


def _now(clock: Callable[[], float]) -> datetime:
    return datetime.fromtimestamp(clock(), UTC)
