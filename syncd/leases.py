"""Who polls which connection and delivers which sink, when several processes share a
PostgreSQL database (DESIGN §8).

A lease is a PostgreSQL *session* advisory lock held on one dedicated connection per
process: when the process dies (kill -9, a cut network once TCP keepalives notice) its
session ends and every lease it held is free at once; the others take them over on their
next round, which comes at least twice per poll interval. Processes count each other by
a membership lock each holds, and every process keeps about ``ceil(connections /
processes)`` connection leases, so a process that joins gets its share. Sinks go to
whoever takes them first: one holder per sink keeps each order's events in order.

On SQLite only one daemon may run (``InstanceLock``), so :class:`LocalLeases` grants all.
"""

from __future__ import annotations

import hashlib
import math
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from syncd.logging import get_logger

CONNECTION = "connection"
SINK = "sink"


class Leases(Protocol):
    def holds(self, kind: str, name: str) -> bool: ...

    def rebalance(self) -> list[str]:
        """One round; returns the connections this process has just taken over."""
        ...

    def close(self) -> None: ...


class LocalLeases:
    """The only process on its database holds every lease."""

    def holds(self, kind: str, name: str) -> bool:
        return True

    def rebalance(self) -> list[str]:
        return []

    def close(self) -> None:
        return None


def fair_share(total: int, members: int) -> int:
    """How many of ``total`` leases one of ``members`` processes should hold."""
    return math.ceil(total / max(1, members))


def preference(node: str, name: str) -> int:
    """Rendezvous hashing: each process prefers a different, stable subset of connections."""
    return int.from_bytes(hashlib.sha256(f"{node}/{name}".encode()).digest()[:8], "big")


@dataclass(frozen=True)
class Plan:
    """One node's next move toward its fair share."""

    release: list[str]  # held beyond the share, least preferred first to go
    candidates: list[str]  # not held, most preferred first: try them in turn ...
    wanted: int  # ... until this many were taken


def plan(node: str, names: Sequence[str], held: set[str], members: int) -> Plan:
    """What this node should release or try to take (pure)."""
    target = fair_share(len(names), members)
    ranked = sorted(names, key=lambda name: preference(node, name), reverse=True)
    mine = [name for name in ranked if name in held]
    if len(mine) > target:
        return Plan(mine[target:], [], 0)
    return Plan([], [name for name in ranked if name not in held], target - len(mine))


class PostgresLeases:
    """Session advisory locks on a connection of their own."""

    def __init__(
        self,
        url: str,
        connections: Sequence[str],
        sinks: Sequence[str],
        node: str | None = None,
        *,
        member: bool = True,
    ) -> None:
        # member=False: a passer-by (run --once) that takes free sinks but does not count
        # as a process sharing the connections, so the daemons do not rebalance for it.
        self._member = member
        self._url = url.replace("postgresql+psycopg://", "postgresql://", 1)
        self._connections = list(connections)
        self._sinks = list(sinks)
        self.node = node or f"{socket.gethostname()}:{os.getpid()}"
        self._conn: Any = None
        self._held: set[tuple[str, str]] = set()
        self._log = get_logger(job="leases", node=self.node)

    # -- the session --

    def _session(self) -> Any:
        if self._conn is None or self._conn.closed:
            import psycopg

            self._held.clear()
            self._conn = psycopg.connect(
                self._url,
                autocommit=True,
                application_name=f"syncd {self.node}",
                # Notice a dead peer in ~25 s on both sides, so a cut network frees leases.
                keepalives=1,
                keepalives_idle=10,
                keepalives_interval=5,
                keepalives_count=3,
            )
            for setting in ("idle 10", "interval 5", "count 3"):
                name, value = setting.split()
                self._conn.execute(f"SET tcp_keepalives_{name} = {value}")
            self._member_ns = self._namespace("member")
            self._lease_ns = self._namespace("lease")
            if self._member:
                self._conn.execute(
                    "SELECT pg_advisory_lock(%s, pg_backend_pid())", (self._member_ns,)
                )
        return self._conn

    def _namespace(self, purpose: str) -> int:
        # Per schema, so that databases shared by several syncd installations (or tests)
        # keep their leases apart.
        row = self._conn.execute(
            "SELECT (abs(hashtext(%s || current_schema())::bigint) %% 2147483647)::int",
            (f"syncd-{purpose}:",),
        ).fetchone()
        return int(row[0])

    def _try(self, kind: str, name: str) -> bool:
        row = (
            self._session()
            .execute(
                "SELECT pg_try_advisory_lock(%s, hashtext(%s))", (self._lease_ns, f"{kind}:{name}")
            )
            .fetchone()
        )
        return bool(row[0])

    def _release(self, kind: str, name: str) -> None:
        self._session().execute(
            "SELECT pg_advisory_unlock(%s, hashtext(%s))", (self._lease_ns, f"{kind}:{name}")
        )

    def _members(self) -> int:
        row = (
            self._session()
            .execute(
                "SELECT count(DISTINCT pid) FROM pg_locks WHERE locktype = 'advisory' "
                "AND classid = %s::oid AND objsubid = 2 "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                (self._member_ns,),
            )
            .fetchone()
        )
        return max(1, int(row[0]))

    # -- the protocol --

    def holds(self, kind: str, name: str) -> bool:
        return (kind, name) in self._held

    def rebalance(self) -> list[str]:
        """One round: count the processes, release or take connection leases, take sinks.

        Returns the connections taken over in this round.
        """
        try:
            members = self._members()
            held = {name for kind, name in self._held if kind == CONNECTION}
            step = plan(self.node, self._connections, held, members)
            release = step.release
            for name in release:
                self._release(CONNECTION, name)
                self._held.discard((CONNECTION, name))
            connections: list[str] = []
            for name in step.candidates:
                if len(connections) == step.wanted:
                    break
                if self._try(CONNECTION, name):
                    connections.append(name)
            sinks = [
                name
                for name in self._sinks
                if (SINK, name) not in self._held and self._try(SINK, name)
            ]
            self._held.update((CONNECTION, name) for name in connections)
            self._held.update((SINK, name) for name in sinks)
            if release or connections or sinks:
                self._log.info(
                    "leases changed",
                    processes=members,
                    released=release,
                    took_connections=connections,
                    took_sinks=sinks,
                )
            return connections
        except Exception as exc:  # the session is gone: so are its locks
            if self._held:
                self._log.error("lost the lease session; every lease dropped", error=str(exc))
            self._held.clear()
            self.close()
            return []

    def held(self) -> list[tuple[str, str]]:
        return sorted(self._held)

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
                self._held.clear()


def leases_for(
    url: str, connections: Sequence[str], sinks: Sequence[str], *, is_postgresql: bool
) -> Leases:
    if is_postgresql:
        return PostgresLeases(url, connections, sinks)
    return LocalLeases()
