"""The JSONL sink: one CloudEvent per line, appended and fsynced before the cursor moves."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from syncd.errors import SinkUnavailable
from syncd.events import StoredEvent
from syncd.sinks.base import Sink

_TAIL = 1 << 16


def repair_torn_tail(fd: int) -> int:
    """Cut a last line that a crash left without its newline; return bytes removed.

    The events of that line were not acknowledged, so they are delivered again whole.
    """
    size = os.fstat(fd).st_size
    if size == 0:
        return 0
    start = max(0, size - _TAIL)
    tail = os.pread(fd, size - start, start)
    if tail.endswith(b"\n"):
        return 0
    cut = tail.rfind(b"\n")
    keep = start + cut + 1 if cut >= 0 else (0 if start == 0 else size)
    if keep == size:  # a line longer than the tail window: leave it to the reader
        return 0
    os.ftruncate(fd, keep)
    os.fsync(fd)
    return size - keep


class JsonlSink(Sink):
    """Appends events to a file; safe to tail, safe across kill -9."""

    def __init__(self, name: str, path: Path) -> None:
        super().__init__(name)
        self.path = path
        self._fd: int | None = None

    @classmethod
    def from_config(cls, config: Any) -> JsonlSink:
        return cls(config.name, Path(config.path))

    def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
            repair_torn_tail(self._fd)
        except OSError as exc:
            raise SinkUnavailable(
                f"sink {self.name!r}: cannot open {self.path}: {exc.strerror}"
            ) from None

    def send(self, events: Sequence[StoredEvent]) -> None:
        if not events:
            return
        if self._fd is None:
            self.open()
        assert self._fd is not None
        data = "".join(event.payload + "\n" for event in events).encode()
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
        except OSError as exc:
            # Nothing is acknowledged: a partial line is cut on the next open.
            self.close()
            raise SinkUnavailable(
                f"sink {self.name!r}: cannot write {self.path}: {exc.strerror}"
            ) from None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
