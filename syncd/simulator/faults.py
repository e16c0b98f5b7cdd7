"""Scripted faults and request statistics, the two knobs tests turn on a running simulator.

:class:`Faults` is a queue of misbehaviours matched by exact request path; the HTTP layer
asks it first for every request. :class:`Stats` records every API request it answered.
Both are thread-safe with their own small lock, apart from the account state.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal, get_args

__all__ = ["Fault", "FaultKind", "Faults", "RequestRecord", "Stats"]

FaultKind = Literal["status", "drop", "reset_mid_body", "slow", "html", "body"]
REFRESH_PATH = "/oauth/oauth_refresh.php"


@dataclass
class Fault:
    """One scripted misbehaviour; ``remaining`` is None for "until cleared"."""

    path: str
    kind: FaultKind
    remaining: int | None = 1
    status: int | None = None
    retry_after: str | None = None
    delay: float = 0.0
    body: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    fired: int = 0


class Faults:
    """Faults fire in the order added, each for its next ``times`` matching requests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(
        self,
        path: str,
        kind: FaultKind,
        *,
        times: int | None = 1,
        status: int | None = None,
        retry_after: str | None = None,
        delay: float = 0.0,
        body: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Fault:
        """Queue a fault for requests to exactly ``path`` (no query string)."""
        if kind not in get_args(FaultKind):
            raise ValueError(f"unknown fault kind {kind!r}")
        if not path.startswith("/"):
            raise ValueError("path must start with '/', e.g. /api/v1/purchase_orders.php")
        if kind == "status" and status is None:
            raise ValueError("a 'status' fault needs status=...")
        if kind == "body" and body is None:
            raise ValueError("a 'body' fault needs body=...")
        if times is not None and times < 1:
            raise ValueError("times must be >= 1 or None")
        fault = Fault(
            path=path,
            kind=kind,
            remaining=times,
            status=status,
            retry_after=retry_after,
            delay=delay,
            body=body,
            headers=dict(headers or {}),
        )
        with self._lock:
            self._faults.append(fault)
        return fault

    def take(self, path: str) -> Fault | None:
        """The first live fault for ``path``, consumed once; None when there is none."""
        with self._lock:
            for fault in self._faults:
                if fault.path != path:
                    continue
                fault.fired += 1
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                return fault
            return None

    def clear(self) -> None:
        """Forget every queued fault."""
        with self._lock:
            self._faults.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._faults)


@dataclass(frozen=True)
class RequestRecord:
    """One answered request. ``status`` is 0 when the connection was dropped unanswered."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    status: int


class Stats:
    """Every request the simulator saw (admin ``/_sim/`` calls excepted)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[RequestRecord] = []

    def record(self, record: RequestRecord) -> None:
        with self._lock:
            self._records.append(record)

    @property
    def requests(self) -> list[RequestRecord]:
        """A copy of the records, oldest first."""
        with self._lock:
            return list(self._records)

    def count(self, path: str) -> int:
        """How many requests reached ``path``."""
        with self._lock:
            return sum(1 for r in self._records if r.path == path)

    @property
    def refresh_calls(self) -> int:
        """POSTs to the refresh endpoint, successful or not (faulted ones too)."""
        with self._lock:
            return sum(1 for r in self._records if r.path == REFRESH_PATH and r.method == "POST")

    def by_path(self) -> dict[str, int]:
        with self._lock:
            return dict(Counter(r.path for r in self._records))

    def clear(self) -> None:
        with self._lock:
            self._records.clear()
