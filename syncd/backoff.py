"""Full-jitter exponential backoff (pure): one formula for API retries and sink delivery."""

from __future__ import annotations

from collections.abc import Callable


def full_jitter(attempt: int, base: float, cap: float, rand: Callable[[], float]) -> float:
    """AWS "full jitter": uniform in [0, min(cap, base * 2**(attempt-1)))."""
    return rand() * min(cap, base * 2.0 ** (attempt - 1))
