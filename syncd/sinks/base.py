"""The sink plugin interface and its registry (the ``syncd.sinks`` entry-point group).

A sink receives batches of stored events, oldest first, and either takes the whole
batch or raises a :class:`~syncd.errors.SinkError` saying how many of its leading
events it did take (``delivered``). A third party ships a sink in its own package by
declaring an entry point in that group; the name is the ``type`` in ``[[sinks]]``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import Any

from syncd.errors import ConfigError
from syncd.events import StoredEvent

ENTRY_POINT_GROUP = "syncd.sinks"


class Sink(ABC):
    """One configured destination for events.

    A sink sets ``disabled`` when its destination said it is gone for good (a webhook's
    410): the dispatcher then stops sending to it and keeps its events.
    """

    disabled = False

    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    @abstractmethod
    def from_config(cls, config: Any) -> Sink:
        """Build the sink from its ``[[sinks]]`` entry."""

    def open(self) -> None:  # noqa: B027 - optional hook
        """Connect or open files; called once before the first batch."""

    @abstractmethod
    def send(self, events: Sequence[StoredEvent]) -> None:
        """Deliver ``events`` in order, durably, or raise SinkError(delivered=N)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what :meth:`open` took."""


def sink_class(sink_type: str) -> type[Sink]:
    """The installed sink class for a ``type``; ConfigError says what to install."""
    for ep in entry_points(group=ENTRY_POINT_GROUP, name=sink_type):
        try:
            cls = ep.load()
        except ImportError as exc:
            raise ConfigError(
                f"sink type {sink_type!r} cannot be loaded ({exc.name or exc} is missing): "
                f"pip install 'syncd[{sink_type}]'"
            ) from None
        if not (isinstance(cls, type) and issubclass(cls, Sink)):
            raise ConfigError(f"entry point {ep.value!r} for sink type {sink_type!r} is not a Sink")
        return cls
    raise ConfigError(
        f"sink type {sink_type!r} is not installed: no {ENTRY_POINT_GROUP!r} entry point "
        f"named {sink_type!r} (this version of syncd ships: {', '.join(installed_types())})"
    )


def installed_types() -> list[str]:
    return sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
